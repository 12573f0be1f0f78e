"""OpenAI-compatible endpoints: ``/v1/models`` (and ``/v1/models/{id}``), ``/v1/completions``
(``echo`` puts the prompt before the completion), ``/v1/chat/completions`` (message content as a
string or a list of text parts; the ``developer`` role is ``system``) — ``stream: true``
answers server-sent events ending with ``data: [DONE]``; the chunk with the finish reason carries
``usage``, and ``stream_options: {"include_usage": true}`` adds OpenAI's separate last chunk
with ``usage`` and no choices — and ``/v1/images/generations`` (``prompt, n, size,
response_format`` plus the extensions ``seed, steps, guidance, sampler, temperature``). A body
that fails validation is a 400, as in OpenAI's API.

Each request is a job of the persistent queue like any other: it shows in ``/api/jobs``, its
output lands in the gallery, and the request waits for the job to finish.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from aigc.studio.schemas import (
    ImageJobRequest,
    OAIChatRequest,
    OAICompletionRequest,
    OAIImageRequest,
    TextJobRequest,
)
from aigc.studio.service import ApiError, Studio, get_studio, require_key
from aigc.studio.store import new_id

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_key)])


def _model_entry(studio: Studio, d: dict[str, Any]) -> dict[str, Any]:
    # ``created``: when this server loaded the model (Unix seconds)
    return {"id": d["id"], "object": "model", "created": int(studio.started), "owned_by": "aigc",
            "kind": d["kind"], "family": d["family"], "description": d.get("description", "")}


def _all_models(studio: Studio) -> list[dict[str, Any]]:
    """The generation models, then the assistant and the embedding model when served."""
    return studio.models() + (studio.assistant.models() if studio.assistant else [])


@router.get("/models")
def list_models(studio: Studio = Depends(get_studio)) -> dict[str, Any]:
    """Every loaded model; ``description`` says what it is (the n-gram says it is a test
    backend)."""
    return {"object": "list", "data": [_model_entry(studio, d) for d in _all_models(studio)]}


@router.get("/models/{model_id:path}")
def get_model(model_id: str, studio: Studio = Depends(get_studio)) -> dict[str, Any]:
    """One loaded model, as in ``/v1/models``."""
    for d in _all_models(studio):
        if d["id"] == model_id:
            return _model_entry(studio, d)
    raise ApiError(404, f"model {model_id!r} not found; loaded: "
                   f"{', '.join(d['id'] for d in _all_models(studio)) or 'none'}",
                   "not_found_error",
                   code="model_not_found", param="model")


async def _events(studio: Studio, enqueue: Callable[[str], dict]) -> AsyncIterator[tuple]:
    """Enqueue a job and yield its events until it finishes (channel opened before insert)."""
    job_id = new_id()
    ch = studio.runner.open_channel(job_id, asyncio.get_running_loop())
    try:
        job = await run_in_threadpool(enqueue, job_id)
        yield "queued", job
        deadline = time.monotonic() + studio.settings.wait_timeout_s
        while True:
            try:
                event, value = await asyncio.wait_for(ch.queue.get(),
                                                      max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                yield "failed", f"job {job_id} did not finish in {studio.settings.wait_timeout_s}s"
                return
            yield event, value
            if event in ("done", "failed", "cancelled"):
                return
    finally:
        studio.runner.close_channel(job_id, ch)


async def _finish(studio: Studio, enqueue: Callable[[str], dict]) -> dict:
    async for event, value in _events(studio, enqueue):
        if event == "done":
            return value
        if event == "failed":
            raise ApiError(500, f"generation failed: {value}", "server_error",
                           code="generation_failed")
        if event == "cancelled":
            raise ApiError(409, "the job was cancelled", code="job_cancelled")
    raise AssertionError("unreachable")


def _internal(cls: type[BaseModel], **fields) -> Any:
    """Build a native request from an OpenAI one; its bounds answer 400, never 500."""
    try:
        return cls(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err.get("loc", ())) or None
        raise ApiError(400, f"{param}: {err.get('msg')}", param=param,
                       code="invalid_value") from None


def _sse(obj: dict | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n" \
        .encode()


def _text_job(req: OAIChatRequest | OAICompletionRequest) -> TextJobRequest:
    common = {"model": req.model, "temperature": req.temperature, "top_p": req.top_p,
              "seed": req.seed, "stop": req.stop}
    if isinstance(req, OAIChatRequest):
        max_tokens = req.max_completion_tokens or req.max_tokens or 256
        return _internal(TextJobRequest, messages=req.messages, max_tokens=max_tokens, **common)
    return _internal(TextJobRequest, prompt=req.prompt, max_tokens=req.max_tokens, **common)


async def _text(studio: Studio, req: OAIChatRequest | OAICompletionRequest, chat: bool,
                client: str):
    job_req = _text_job(req)
    studio.text_backend(req.model)  # 404 before anything is queued
    created = int(time.time())
    obj = "chat.completion" if chat else "text_completion"
    prefix = "chatcmpl-" if chat else "cmpl-"
    echo = req.prompt if not chat and req.echo else ""  # completions only (as in OpenAI)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def enqueue(job_id: str) -> dict:
        return studio.enqueue(job_req, client, job_id=job_id)

    if not req.stream:
        job = await _finish(studio, enqueue)
        res = job["result"]
        choice = ({"index": 0, "message": {"role": "assistant", "content": res["text"]},
                   "logprobs": None, "finish_reason": res["finish_reason"]} if chat else
                  {"index": 0, "text": echo + res["text"], "logprobs": None,
                   "finish_reason": res["finish_reason"]})
        return {"id": prefix + job["id"], "object": obj, "created": created,
                "model": req.model, "choices": [choice], "usage": res["usage"],
                "system_fingerprint": None}

    # Admission errors (429, 404) must be answered as errors, not inside a 200 stream: enqueue
    # now, then stream the events of the queued job.
    events = _events(studio, enqueue)
    _, queued = await anext(events)  # raises ApiError from enqueue
    job_id = queued["id"]
    chunk_obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(job_id: str, piece: str | None, finish: str | None, usage=None) -> dict:
        if chat:
            delta = {} if piece is None else {"content": piece}
            if piece == "" and finish is None:
                delta = {"role": "assistant", "content": ""}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
        out = {"id": prefix + job_id, "object": chunk_obj, "created": created,
               "model": req.model, "choices": [choice]}
        if usage is not None:
            out["usage"] = usage
        return out

    async def body() -> AsyncIterator[bytes]:
        try:
            async for piece in _body():
                yield piece
        finally:  # the client may go away mid-stream: close the channel now (the job goes on)
            await events.aclose()

    async def _body() -> AsyncIterator[bytes]:
        if chat:
            yield _sse(chunk(job_id, "", None))
        elif echo:
            yield _sse(chunk(job_id, echo, None))
        while True:
            event, value = await anext(events, ("end", None))
            if event == "piece":
                yield _sse(chunk(job_id, value, None))
            elif event == "done":
                res = value["result"]
                # With include_usage, OpenAI's form: usage only in a last chunk with no choices
                yield _sse(chunk(job_id, None, res["finish_reason"],
                                 None if include_usage else res["usage"]))
                if include_usage:
                    last = chunk(job_id, None, None, res["usage"])
                    yield _sse({**last, "choices": []})
                break
            elif event in ("failed", "cancelled", "end"):
                yield _sse({"error": {"message": f"generation {event}: {value}",
                                      "type": "server_error", "param": None, "code": event}})
                break
        yield _sse("[DONE]")

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/completions")
async def completions(req: OAICompletionRequest, request: Request,
                      studio: Studio = Depends(get_studio)):
    """Text completion of ``prompt`` (OpenAI legacy completions API)."""
    return await _text(studio, req, chat=False, client=studio.client_of(request))


@router.post("/chat/completions")
async def chat_completions(req: OAIChatRequest, request: Request,
                           studio: Studio = Depends(get_studio)):
    """Chat completion of ``messages``; ``stream: true`` for server-sent events. With
    ``model: "assistant"`` the knowledge base answers, with ``sources`` (routes/assistant.py)."""
    if req.model == "assistant" and studio.assistant and studio.assistant.assistant:
        from aigc.studio.routes.assistant import chat_completion

        return await chat_completion(studio, req, client=studio.client_of(request))
    return await _text(studio, req, chat=True, client=studio.client_of(request))


@router.post("/images/generations")
async def images_generations(req: OAIImageRequest, request: Request,
                             studio: Studio = Depends(get_studio)) -> dict[str, Any]:
    """Generate ``n`` images. ``size`` is square, ``SxS``, from the model's native size to 1024
    (nearest-neighbour upscale). ``prompt`` is required by this API, but only a model whose
    ``conditioning`` has ``text`` (see ``/api/models``) reads it; for a class-only model
    a prompt naming one of its classes selects that class; otherwise the prompt is not used and
    not recorded (the items have ``prompt: null``; ``revised_prompt`` says what was used)."""
    backend = studio.image_backend(req.model)
    size = None
    if req.size:
        w, h = (int(x) for x in req.size.split("x"))
        if w != h:
            raise ApiError(400, f"size must be square (SxS), got {req.size}", param="size",
                           code="bad_size")
        size = w
    label = None
    if not backend.takes_prompt and backend.takes_label and req.prompt.strip().lower() in \
            [c.lower() for c in backend.class_names]:
        label = [c.lower() for c in backend.class_names].index(req.prompt.strip().lower())
    prompt = req.prompt if backend.takes_prompt else None
    job_req = _internal(ImageJobRequest, model=backend.name, n=req.n, seed=req.seed, label=label,
                        prompt=prompt, steps=req.steps, guidance=req.guidance,
                        sampler=req.sampler, temperature=req.temperature, size=size)
    client = studio.client_of(request)
    job = await _finish(studio, lambda job_id: studio.enqueue(job_req, client, job_id=job_id))
    base = str(request.base_url).rstrip("/")
    data = []
    seed0 = job["params"]["seed"]
    # What the model was conditioned on: the prompt, the class it named, or nothing.
    revised = prompt if prompt is not None else \
        (backend.class_names[label] if label is not None else "")
    for i, (item_id, name) in enumerate(zip(job["items"], job["files"], strict=True)):
        entry: dict[str, Any] = {"revised_prompt": revised, "seed": seed0 + i, "item_id": item_id}
        if req.response_format == "b64_json":
            path = studio.store.file_path(name)
            entry["b64_json"] = base64.b64encode(path.read_bytes()).decode("ascii")
        else:
            entry["url"] = f"{base}/files/{name}"
        data.append(entry)
    return {"created": int(job["finished"] or time.time()), "data": data}
