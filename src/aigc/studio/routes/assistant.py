"""The customer-service assistant in the studio (issue 13), and OpenAI-style embeddings.

Native API under ``/api/assistant`` (served when the studio runs with ``--assistant-index DIR``,
a knowledge base written by ``aigc assistant index``; otherwise each answers 404 saying so):

* ``POST /ask`` ``{question, conversation_id?}`` -> the answer, its citations (source and
  section), and whether it was handed off to a person (then ``handoff_id``);
* ``GET /conversations/{id}`` -> the conversation's messages, answers of people included;
* ``GET /handoffs?status=open`` -> the handoff queue; ``GET /handoffs/{id}`` -> one (how a
  ``/v1`` asker, who has no conversation, reads the answer); ``POST /handoffs/{id}/answer``
  ``{text}`` (the answer goes back into the asker's conversation, signed by the person: the
  API key's name, or the page's anonymous id) and ``POST /handoffs/{id}/approve`` (the answer
  joins the knowledge base, which is re-indexed and reloaded);
* ``POST /transcribe`` with a WAV file as the body (``Content-Type: audio/wav``; integer PCM,
  8-96 kHz, 0.1-60 s, within the studio's 1 MB body limit) -> text (PocketSphinx, English
  only: there is no offline Chinese speech-recognition model);
* ``POST /speak`` ``{text, voice?}`` -> ``audio/wav`` (espeak-ng or flite);
* ``GET /`` -> what is loaded: the index, the recogniser, the voices.

``POST /v1/embeddings`` (OpenAI's shape) embeds with all-MiniLM-L6-v2 (384-d, unit length),
served with ``--embeddings`` or with an assistant. ``/v1/chat/completions`` with
``model: "assistant"`` is answered by :func:`chat_completion` (see routes/openai.py).

The models load in the lifespan (:func:`load_assistant`); every call that reads files, runs a
model or a subprocess runs in the thread pool. One lock serialises ``ask`` (one language model)
and the approvals that swap the index under it; past :data:`MAX_WAITING` questions holding or
waiting for it a question is refused (429 ``assistant_busy``), and a conversation takes at most
:data:`MAX_CONVERSATION_MESSAGES` messages (409 ``conversation_full``).
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from aigc.errors import AigcError
from aigc.studio.routes.feedback import rater_of
from aigc.studio.schemas import (
    AssistantAnswer,
    AssistantAskRequest,
    AssistantConversation,
    AssistantHandoff,
    AssistantHandoffAnswer,
    AssistantHandoffList,
    AssistantInfo,
    AssistantSpeakRequest,
    AssistantTranscript,
    ErrorResponse,
    OAIChatRequest,
    OAIEmbeddingRequest,
)
from aigc.studio.service import (
    ApiError,
    Studio,
    StudioSettings,
    get_studio,
    require_admin_key,
    require_key,
)
from aigc.studio.store import new_id

# 404 on every route: a studio started without --assistant-index (or --embeddings)
_NOT_SERVED = {404: {"model": ErrorResponse, "description": "not served by this studio"}}
router = APIRouter(prefix="/api/assistant", tags=["assistant"],
                   dependencies=[Depends(require_key)], responses=_NOT_SERVED)
v1_router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_key)],
                      responses=_NOT_SERVED)

ASSISTANT_MODEL = "assistant"  # the /v1 model id of the assistant
EMBEDDING_MODELS = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
# The first installed voice of each language speaks answers by default. English: flite's slt
# before espeak-ng, whose formant voice PocketSphinx mostly fails to recognise (round-trip WER
# 0.27 against 0.86 in benchmarks/results/assistant-voice-wer.json); Chinese: espeak-ng only.
DEFAULT_VOICES = {"en": ("flite:slt", "espeak-ng:en-us"), "zh": ("espeak-ng:cmn",)}
WAV_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave",
             "application/octet-stream")
MAX_CONVERSATION_MESSAGES = 200  # questions and answers in one conversation
MAX_WAITING = 8  # questions and approvals in progress or waiting for the assistant's lock
NOTE = ("Speech recognition is English only (PocketSphinx ships no Chinese model). "
        "MOS needs human listeners and is not measured.")


@dataclass
class AssistantService:
    """What the assistant routes need, loaded once in the lifespan."""

    assistant: Any = None  # aigc.apps.assistant.answer.Assistant, or None when not served
    recognizer: Any = None  # aigc.apps.assistant.voice.Recognizer, or None
    asr_missing: str = ""  # why there is no recogniser
    embeddings: bool = False  # serve /v1/embeddings
    lock: threading.Lock = field(default_factory=threading.Lock)
    # requests holding or waiting for ``lock``: each waits in a thread of the studio's one
    # pool, so without a bound a burst of questions to a slow model starves every other route
    max_waiting: int = MAX_WAITING
    _waiting: int = 0
    _count: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def turn(self):
        """Hold ``lock``; a 429 instead when ``max_waiting`` requests already hold or wait."""
        with self._count:
            if self._waiting >= self.max_waiting:
                raise ApiError(429, f"the assistant is busy ({self._waiting} questions in "
                               "progress or waiting); retry in a few seconds",
                               "rate_limit_error", code="assistant_busy",
                               headers={"Retry-After": "5"})
            self._waiting += 1
        try:
            with self.lock:
                yield
        finally:
            with self._count:
                self._waiting -= 1

    def require(self) -> Any:
        if self.assistant is None:
            raise ApiError(404, "the assistant is not served: start the studio with "
                           "--assistant-index DIR (an index from `aigc assistant index`)",
                           "not_found_error", code="assistant_not_served")
        return self.assistant

    def models(self) -> list[dict[str, Any]]:
        """The /v1/models entries of the assistant and the embedding model, when served."""
        out = []
        if self.assistant is not None:
            out.append({"id": ASSISTANT_MODEL, "kind": "assistant", "family": "rag",
                        "description": "answers from the knowledge base with sources "
                                       f"({Path(self.assistant.index_dir).name})"})
        if self.embeddings:
            out.append({"id": EMBEDDING_MODELS[0], "kind": "embedding", "family": "minilm",
                        "description": "sentence embeddings, 384-d, unit length, at most 128 "
                                       "tokens per input"})
        return out


# settings -> an Assistant (tests inject one with a stand-in generator)
AssistantFactory = Callable[[StudioSettings], Any]


def load_assistant(settings: StudioSettings, factory: AssistantFactory | None = None
                   ) -> AssistantService:
    """Load the assistant (its index and retriever), the speech recogniser and MiniLM, as
    the settings ask (called from the lifespan). ``factory(settings) -> Assistant`` replaces
    the default ``Assistant(settings.assistant_index, style=settings.assistant_style)``
    (SmolLM2 is loaded here when the style is ``generate``)."""
    service = AssistantService(embeddings=settings.embeddings)
    if settings.assistant_index is not None:
        from aigc.apps.assistant.answer import Assistant

        if factory is not None:
            service.assistant = factory(settings)
        else:
            service.assistant = Assistant(settings.assistant_index,
                                          style=settings.assistant_style)
            if settings.assistant_style == "generate":
                service.assistant.generator  # noqa: B018  (load SmolLM2 now, not on first ask)
        service.embeddings = True  # the retriever embeds every question with MiniLM anyway
        try:
            from aigc.apps.assistant.voice import Recognizer

            service.recognizer = Recognizer()
        except AigcError as exc:
            service.asr_missing = str(exc)
    if service.embeddings:
        from aigc.models.pretrained import embed_sentences

        embed_sentences(["load"])  # MiniLM loads now
    return service


def default_voices() -> dict[str, str]:
    """Language -> the voice that speaks it by default (the first of :data:`DEFAULT_VOICES`
    whose engine is installed; the last one otherwise, so that the error names it)."""
    from aigc.apps.assistant.voice import engine_path

    return {lang: next((v for v in voices if engine_path(v.split(":")[0])), voices[-1])
            for lang, voices in DEFAULT_VOICES.items()}


def get_service(studio: Studio = Depends(get_studio)) -> AssistantService:
    return studio.assistant or AssistantService()


def _bad(exc: AigcError, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, str(exc), param=param, code=code)


# ------------------------------------------------------------------------------ answers


def _answer(answer, conversation_id: str) -> AssistantAnswer:
    return AssistantAnswer(
        conversation_id=conversation_id, answer=answer.text,
        citations=[asdict(c) for c in answer.citations], handed_off=answer.handed_off,
        handoff_id=answer.handoff_id, reason=answer.reason, confidence=answer.confidence,
        lang=answer.lang, timings=answer.timings)


def _conversation_exists(assistant, conversation_id: str) -> list[dict]:
    try:
        return assistant.queue.history(conversation_id)
    except AigcError:
        raise ApiError(404, f"conversation {conversation_id!r} not found", "not_found_error",
                       code="conversation_not_found", param="conversation_id") from None


@router.post("/ask")
async def ask(req: AssistantAskRequest, request: Request, studio: Studio = Depends(get_studio),
              service: AssistantService = Depends(get_service)) -> AssistantAnswer:
    """Answer a question from the knowledge base, citing its passages, or hand it off to a
    person (``handed_off``, ``handoff_id``). Without ``conversation_id`` a conversation
    starts; its id is in the answer."""
    assistant = service.require()

    def run() -> AssistantAnswer:
        cid = req.conversation_id
        if cid is None:
            cid = assistant.queue.new_conversation()
        elif len(_conversation_exists(assistant, cid)) >= MAX_CONVERSATION_MESSAGES:
            # every question reads the whole conversation back, and GET returns it whole
            raise ApiError(409, f"conversation {cid!r} has reached {MAX_CONVERSATION_MESSAGES} "
                           "messages; start a new one (leave out conversation_id)",
                           "conflict_error", code="conversation_full", param="conversation_id")
        with service.turn():
            try:
                answer = assistant.ask(req.question, conversation_id=cid,
                                       client=studio.client_of(request))
            except AigcError as exc:
                raise _bad(exc, "question") from None
        return _answer(answer, cid)

    return await run_in_threadpool(run)


@router.get("/conversations/{conversation_id}")
async def conversation(conversation_id: str, service: AssistantService = Depends(get_service)
                       ) -> AssistantConversation:
    """The messages of a conversation, oldest first (a person's answer to a handoff is signed
    with their name in ``author``)."""
    assistant = service.require()

    def run() -> AssistantConversation:
        _conversation_exists(assistant, conversation_id)
        return AssistantConversation(id=conversation_id,
                                     messages=assistant.queue.history(conversation_id))

    return await run_in_threadpool(run)


# ----------------------------------------------------------------------------- handoffs


def _handoff_call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except AigcError as exc:
        message = str(exc)
        if message.startswith("no handoff"):  # the message names the server's file: not shown
            raise ApiError(404, message.split(" in ")[0], "not_found_error",
                           code="handoff_not_found") from None
        if "re-indexing failed" in message:  # the server's index, not the handoff's state
            raise ApiError(500, message, "server_error", code="reindex_failed") from None
        raise ApiError(409, message, "conflict_error", code="handoff_state") from None


@router.get("/handoffs")
async def handoffs(status: str | None = Query(None, pattern="^(open|answered|approved|rejected)$"),
                   service: AssistantService = Depends(get_service)) -> AssistantHandoffList:
    """The handoff queue, oldest first; ``status`` filters it."""
    assistant = service.require()
    rows = await run_in_threadpool(assistant.queue.list, status)
    return AssistantHandoffList(data=[h.to_dict() for h in rows])


@router.get("/handoffs/{handoff_id}")
async def handoff(handoff_id: int, service: AssistantService = Depends(get_service)
                  ) -> AssistantHandoff:
    """One handoff: its status and, once a person answered, the answer. A ``/v1`` asker (no
    conversation) reads the answer here with the ``handoff_id`` of its reply."""
    assistant = service.require()
    h = await run_in_threadpool(_handoff_call, assistant.queue.get, handoff_id)
    return AssistantHandoff(**h.to_dict())


@router.post("/handoffs/{handoff_id}/answer")
async def answer_handoff(handoff_id: int, req: AssistantHandoffAnswer, request: Request,
                         studio: Studio = Depends(get_studio),
                         service: AssistantService = Depends(get_service)) -> AssistantHandoff:
    """A person answers a handed-off question; the answer appears in the asker's conversation,
    signed ``key:NAME`` (with API keys) or ``anon:ID`` (the page's id)."""
    assistant = service.require()
    if not req.text.strip():  # the queue's AigcError would read as a 409 state conflict
        raise ApiError(400, "text: the answer is empty (only whitespace)", param="text",
                       code="invalid_value")
    by = rater_of(request, studio)
    h = await run_in_threadpool(_handoff_call, assistant.queue.answer, handoff_id, req.text,
                                by=by)
    return AssistantHandoff(**h.to_dict())


@router.post("/handoffs/{handoff_id}/approve",
             dependencies=[Depends(require_admin_key)])  # into what everyone is served
async def approve_handoff(handoff_id: int, service: AssistantService = Depends(get_service)
                          ) -> AssistantHandoff:
    """Put an answered handoff into the knowledge base (re-indexed incrementally, then
    reloaded: the next question finds it)."""
    assistant = service.require()

    def run():
        with service.turn():
            h, _ = _handoff_call(assistant.queue.approve, handoff_id)
            assistant.reload()
        return h

    h = await run_in_threadpool(run)
    return AssistantHandoff(**h.to_dict())


# -------------------------------------------------------------------------------- voice


# Speech runs engines and a decoder for seconds each, and one embeddings request may hold 256
# inputs: a burst of either would take every thread of the studio's pool (and the CPUs), so past
# this many at once a request is refused (429), not queued.
MAX_VOICE_JOBS = 4
MAX_EMBEDDING_JOBS = 4
_voice_slots = threading.BoundedSemaphore(MAX_VOICE_JOBS)
_embedding_slots = threading.BoundedSemaphore(MAX_EMBEDDING_JOBS)


@contextmanager
def _slot(slots: threading.BoundedSemaphore, limit: int, what: str, code: str,
          retry_after_s: int):
    if not slots.acquire(blocking=False):
        raise ApiError(429, f"{what} busy ({limit} requests in progress); retry in a few "
                       "seconds", "rate_limit_error", code=code,
                       headers={"Retry-After": str(retry_after_s)})
    try:
        yield
    finally:
        slots.release()


def _voice_slot():
    return _slot(_voice_slots, MAX_VOICE_JOBS, "speech is", "voice_busy", 5)


def _embedding_slot():
    return _slot(_embedding_slots, MAX_EMBEDDING_JOBS, "embeddings are", "embeddings_busy", 2)


@router.get("")
async def info(service: AssistantService = Depends(get_service)) -> AssistantInfo:
    """What the assistant serves here: the index, the recogniser, the voices."""
    from aigc.apps.assistant.voice import ASR_LANGUAGES, list_voices

    voices = await run_in_threadpool(list_voices)
    a = service.assistant
    return AssistantInfo(
        # the folder's name only: where it lies on the server is not the API client's business
        enabled=a is not None, index=Path(a.index_dir).name if a is not None else None,
        chunks=len(a.retriever) if a is not None else 0,
        asr="pocketsphinx en-us" if service.recognizer is not None else None,
        asr_languages=list(ASR_LANGUAGES) if service.recognizer is not None else [],
        voices=[{"id": v.id, "engine": v.engine, "language": v.language,
                 "description": v.description} for v in voices],
        default_voices=default_voices(), note=NOTE)


@router.post("/transcribe", openapi_extra={"requestBody": {"required": True, "content": {
    media: {"schema": {"type": "string", "format": "binary"}}
    for media in ("audio/wav", "application/octet-stream")}}},
    responses={415: {"model": ErrorResponse, "description": "not sent as audio/wav"}})
async def transcribe(request: Request, language: str = Query("en", max_length=16),
                     service: AssistantService = Depends(get_service)) -> AssistantTranscript:
    """Speech to text: the body is a WAV file (``Content-Type: audio/wav``), integer PCM,
    8-96 kHz, 0.1-60 s. English only."""
    service.require()
    if service.recognizer is None:
        raise ApiError(404, f"speech recognition is unavailable: {service.asr_missing}",
                       "not_found_error", code="asr_unavailable")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in WAV_TYPES:
        raise ApiError(415, f"Content-Type {ctype or 'none'!r} is not accepted; send the WAV "
                       f"file as the body with Content-Type audio/wav", code="bad_content_type")
    body = await request.body()
    from aigc.apps.assistant.voice import AudioError, VoiceError

    try:
        with _voice_slot():
            t = await run_in_threadpool(service.recognizer.transcribe, body, language)
    except AudioError as exc:
        raise _bad(exc, "audio", "bad_audio") from None
    except VoiceError as exc:
        raise _bad(exc, "language", "unsupported_language") from None
    return AssistantTranscript(text=t.text, language=t.language, seconds=round(t.seconds, 3),
                               sample_rate=t.sample_rate)


@router.post("/speak", response_class=Response,
             responses={200: {"content": {"audio/wav": {}}, "description": "a WAV file"}})
async def speak(req: AssistantSpeakRequest, service: AssistantService = Depends(get_service)
                ) -> Response:
    """Text to speech as a WAV file (16-bit mono). ``voice`` defaults by the text's language:
    ``flite:slt`` (``espeak-ng:en-us`` without flite) or ``espeak-ng:cmn``. Served without an
    index too."""
    from aigc.apps.assistant.ingest import language_of
    from aigc.apps.assistant.voice import synthesize

    voice = req.voice or default_voices()[language_of(req.text)]
    try:
        with _voice_slot():
            wav = await run_in_threadpool(synthesize, req.text, voice)
    except AigcError as exc:
        raise _bad(exc, "voice" if "voice" in str(exc) else "text") from None
    return Response(wav, media_type="audio/wav",
                    headers={"X-Aigc-Voice": voice, "Cache-Control": "no-store"})


# ------------------------------------------------------------------------- /v1 (OpenAI)


async def chat_completion(studio: Studio, req: OAIChatRequest, client: str = "") -> Any:
    """``/v1/chat/completions`` with ``model: "assistant"``: the last user message is the
    question, the messages before it the history. The reply carries ``sources`` (source,
    section and chunk of each citation ``[n]``) and ``handed_off`` next to OpenAI's fields.
    Sampling fields are not used (the assistant answers greedily), ``usage`` is null (its
    generator does not count tokens) and ``stream: true`` sends the whole answer as one
    chunk."""
    service: AssistantService = studio.assistant or AssistantService()
    assistant = service.require()
    msgs = [{"role": m.role, "content": m.content} for m in req.messages]
    if msgs[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's question", param="messages",
                       code="invalid_value")
    question, history = msgs[-1]["content"], [m for m in msgs[:-1] if m["role"] != "system"]

    def run():
        with service.turn():
            try:
                return assistant.ask(question, history=history, client=client)
            except AigcError as exc:
                raise _bad(exc, "messages") from None

    answer = await run_in_threadpool(run)
    created = int(time.time())
    cid = "chatcmpl-" + new_id()
    sources = [asdict(c) for c in answer.citations]
    extra = {"sources": sources, "handed_off": answer.handed_off,
             "handoff_id": answer.handoff_id}
    usage = None  # the assistant's generator does not report tokens: null, not a false 0
    if not req.stream:
        return {"id": cid, "object": "chat.completion", "created": created,
                "model": ASSISTANT_MODEL, "system_fingerprint": None,
                "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": answer.text}}],
                "usage": usage, **extra}
    from fastapi.responses import StreamingResponse

    from aigc.studio.routes.openai import _sse

    def chunk(delta: dict, finish: str | None) -> bytes:
        return _sse({"id": cid, "object": "chat.completion.chunk", "created": created,
                     "model": ASSISTANT_MODEL, "choices": [{"index": 0, "delta": delta,
                                                           "logprobs": None,
                                                           "finish_reason": finish}],
                     **({**extra, "usage": usage} if finish else {})})

    async def body():
        yield chunk({"role": "assistant", "content": ""}, None)
        yield chunk({"content": answer.text}, None)
        yield chunk({}, "stop")
        yield _sse("[DONE]")

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@v1_router.post("/embeddings")
async def embeddings(req: OAIEmbeddingRequest, service: AssistantService = Depends(get_service)
                     ) -> dict[str, Any]:
    """Embed ``input`` (a string or up to 256 strings) with all-MiniLM-L6-v2: 384-d vectors of
    unit length (cosine = dot product). An input over 128 tokens is refused (400), not cut."""
    from aigc.models.pretrained import (
        MINILM_DIM,
        MINILM_MAX_TOKENS,
        embed_sentences,
        minilm_token_counts,
    )

    if not service.embeddings:
        raise ApiError(404, "embeddings are not served: start the studio with --embeddings "
                       "(or --assistant-index)", "not_found_error", code="model_not_found",
                       param="model")
    if req.model not in EMBEDDING_MODELS:
        raise ApiError(404, f"embedding model {req.model!r} not found; served: "
                       f"{EMBEDDING_MODELS[0]}", "not_found_error", code="model_not_found",
                       param="model")
    if req.dimensions is not None and req.dimensions != MINILM_DIM:
        raise ApiError(400, f"dimensions: {req.model} has {MINILM_DIM}; got {req.dimensions}",
                       param="dimensions", code="invalid_value")
    texts = [req.input] if isinstance(req.input, str) else list(req.input)

    def run():
        with _embedding_slot():
            counts = minilm_token_counts(texts)
            for i, n in enumerate(counts):
                if n > MINILM_MAX_TOKENS:
                    raise ApiError(400, f"input[{i}] is {n} tokens; {req.model} reads at most "
                                   f"{MINILM_MAX_TOKENS} (nothing was cut)", param="input",
                                   code="context_length_exceeded")
            return counts, embed_sentences(texts).numpy()

    counts, vectors = await run_in_threadpool(run)
    data = []
    for i, v in enumerate(vectors):
        emb: Any = v.astype(np.float32).tolist() if req.encoding_format == "float" else \
            base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
        data.append({"object": "embedding", "index": i, "embedding": emb})
    tokens = int(sum(counts))
    return {"object": "list", "data": data, "model": EMBEDDING_MODELS[0],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def index_dir_problem(path: Path) -> str | None:
    """Why ``path`` is not an assistant index (for the CLI's one-line error), or None."""
    if not path.is_dir():
        return f"--assistant-index {path}: no such folder"
    if not (path / "manifest.json").is_file():
        return (f"--assistant-index {path}: not an assistant index (no manifest.json); build "
                f"one with `aigc assistant index`")
    return None
