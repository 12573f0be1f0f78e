"""The running studio: settings, the loaded backends, the store and the job runner, plus the
admission rules (bounds, cost budget, queue size) every generation request passes through.

Routes get the :class:`Studio` with ``Depends(get_studio)``; nothing here is created at import.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, Request

from aigc.studio.auth import cookie_key, hash_key, key_matches, presented_key
from aigc.studio.backends import (
    ImageBackend,
    ImageSettings,
    ImageSpec,
    MusicBackend,
    MusicSpec,
    TextBackend,
    UnsupportedParameter,
    quarters_per_bar,
)
from aigc.studio.jobs import JobRunner
from aigc.studio.schemas import (
    MAX_N,
    MAX_PIECES,
    MAX_SIZE,
    ImageJobRequest,
    MusicJobRequest,
    TextJobRequest,
)
from aigc.studio.store import DEFAULT_LEASE_S, Store, new_id

MAX_RETRY_AFTER_S = 3600  # Retry-After of a full queue is at most an hour


@dataclass(frozen=True)
class StudioSettings:
    """How ``aigc studio`` runs (CLI flags map onto these fields)."""

    data_dir: Path = Path("studio-data")
    db_url: str | None = None  # default: sqlite:///DATA_DIR/studio.db (WAL)
    models_dir: Path | None = Path("models")  # every checkpoint file / run folder is a model
    model_paths: tuple[tuple[str, Path], ...] = ()  # extra (name, path) models
    text_corpus: Path | None = None  # n-gram training text; None: chatterbot-corpus if present
    ngram: bool = True  # serve the n-gram test backend for text
    smollm2: bool = False  # serve SmolLM2-135M-Instruct (loads for tens of seconds)
    ngram_order: int = 6
    host: str = "127.0.0.1"
    port: int = 8000
    extra_hosts: tuple[str, ...] = ()  # Host names served besides the loopback ones
    allowed_origins: tuple[str, ...] = ()  # e.g. "http://localhost:5173"
    max_queue: int = 256  # queued + running jobs
    # A request's cost: image: steps x pixels x n (steps = 1 for one-shot models); text:
    # prompt tokens + max_tokens. Costs are charged in "budget units": 1.0 = the largest
    # request allowed. The queue holds at most max_outstanding units.
    max_image_cost: float = 64 * 256 * 256 * 16.0
    max_text_cost: float = 8192.0
    # music: seconds of audio (bars x quarter notes per bar x 60 / tempo) x pieces; 120 s of
    # WAV (16-bit mono, 22.05 kHz) is about 5 MB
    max_music_cost: float = 120.0
    registry_dir: Path | None = None  # serve registered models' production versions from here
    registry_names: tuple[str, ...] = ()  # the registered names to serve
    max_outstanding: float = 64.0
    max_batch_images: int = 64
    batching: bool = True
    # The image worker waits up to this long for more requests to join a batch, and only while
    # they keep arriving (it stops after a quarter of it without a new one).
    batch_wait_ms: float = 5.0
    wait_timeout_s: float = 300.0  # /v1 requests wait this long for their job
    # False: this process runs no generation job; `aigc worker` processes do (aigc.studio.worker)
    workers: bool = True
    files_dir: Path | None = None  # generated files; default DATA_DIR/files (shared by workers)
    worker_name: str | None = None  # the name claims are held under; default studio@HOST
    lease_s: float = DEFAULT_LEASE_S  # a claim lasts this long unless its heartbeat renews it
    poll_s: float = 1.0  # idle workers look for queued jobs this often (sooner on NOTIFY)
    assistant_index: Path | None = None  # serve the assistant from this knowledge base
    assistant_style: str = "generate"  # "generate" (SmolLM2) or "extractive" (no model)
    embeddings: bool = False  # serve /v1/embeddings (always with an assistant)


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type_
        self.code, self.param, self.headers = code, param, headers


@dataclass
class Studio:
    settings: StudioSettings
    store: Store
    images: dict[str, ImageBackend]
    texts: dict[str, TextBackend]
    runner: JobRunner
    skipped: dict[str, str] = field(default_factory=dict)
    http_requests: dict[tuple[str, int], int] = field(default_factory=dict)
    key_hashes: list[str] = field(default_factory=list)
    admin_key_hashes: list[str] = field(default_factory=list)  # keys made with --admin
    musics: dict[str, MusicBackend] = field(default_factory=dict)
    # registry names served at their production version: name -> version number loaded
    served_versions: dict[str, int] = field(default_factory=dict)
    registry: Any = None  # aigc.registry.Registry when the studio serves registered models
    started: float = field(default_factory=time.time)  # when the models were loaded
    assistant: Any = None  # routes.assistant.AssistantService, set in the lifespan

    # ------------------------------------------------------------------ models
    def models(self) -> list[dict[str, Any]]:
        return [b.describe() for b in self.images.values()] + \
               [b.describe() for b in self.texts.values()] + \
               [b.describe() for b in self.musics.values()]

    @staticmethod
    def _backend(table: dict[str, Any], kind: str, name: str | None, none_hint: str) -> Any:
        """The backend ``name`` of ``table`` (the first one when ``name`` is None), or a 404."""
        if name is None:
            if not table:
                raise ApiError(404, f"no {kind} model is loaded on this server{none_hint}",
                               code="model_not_found", param="model")
            return next(iter(table.values()))
        if name not in table:
            raise ApiError(404, f"{kind} model {name!r} not found; loaded: "
                           f"{', '.join(table) or 'none'}", code="model_not_found", param="model")
        return table[name]

    def image_backend(self, name: str | None) -> ImageBackend:
        return self._backend(self.images, "image", name,
                             "; start it with --models DIR holding checkpoints")

    def text_backend(self, name: str | None) -> TextBackend:
        return self._backend(self.texts, "text", name, "")

    def music_backend(self, name: str | None) -> MusicBackend:
        return self._backend(self.musics, "music", name,
                             "; serve a music GPT checkpoint (the starter music-gpt-bach-and-folk "
                             "is served unless --no-starters)")

    # --------------------------------------------------------------- admission
    def _admit(self, cost: float, kind: str) -> None:
        s = self.settings
        if cost > 1.0:  # no amount of waiting makes it fit: a client error, not a rate limit
            raise ApiError(400, f"request costs {cost:.2f} budget units; one request may cost at "
                           f"most 1.0 (image: steps x pixels x n <= {s.max_image_cost:.0f}; "
                           f"text: prompt tokens + max_tokens <= {s.max_text_cost:.0f}; "
                           f"music: seconds of audio x n <= {s.max_music_cost:.0f})",
                           code="over_budget")
        n, outstanding = self.store.outstanding()
        if n >= s.max_queue or outstanding + cost > s.max_outstanding:
            wait = self.retry_after(n - s.max_queue + 1, outstanding + cost - s.max_outstanding)
            raise ApiError(429, f"the queue is full ({n} jobs, {outstanding:.1f} of "
                           f"{s.max_outstanding:g} budget units); retry in about {wait} s",
                           "rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(wait)})

    def retry_after(self, jobs_needed: int, units_needed: float) -> int:
        """Seconds until ``jobs_needed`` jobs have left the queue and ``units_needed`` budget
        units are free, estimated from the queued and running work of each kind and the mean
        time one job of that kind has taken here (the three workers run side by side).
        Clamped to 1..MAX_RETRY_AFTER_S."""
        jobs_per_s = units_per_s = 0.0
        for kind, (n, cost) in self.store.outstanding_by_kind().items():
            if n == 0:
                continue
            seconds = self.runner.stats.mean_job_seconds(kind)
            jobs_per_s += 1.0 / seconds
            units_per_s += cost / (n * seconds)
        waits = [0.0]
        if jobs_needed > 0:
            waits.append(jobs_needed / jobs_per_s if jobs_per_s else MAX_RETRY_AFTER_S)
        if units_needed > 0:
            waits.append(units_needed / units_per_s if units_per_s else MAX_RETRY_AFTER_S)
        return int(min(MAX_RETRY_AFTER_S, max(1, math.ceil(round(max(waits), 6)))))

    @staticmethod
    def _refuse_nul(param: str, *texts: str | None) -> None:
        """A NUL character cannot be stored in PostgreSQL text (and would fail every job of its
        batch there): refused before anything is queued."""
        if any(t is not None and "\x00" in t for t in texts):
            raise ApiError(400, f"{param} contains a NUL character (\\u0000), which is not "
                           "allowed", param=param, code="invalid_value")

    def enqueue(self, req: ImageJobRequest | TextJobRequest | MusicJobRequest, client: str,
                job_id: str | None = None) -> dict[str, Any]:
        """Queue ``req`` for ``client`` (see :meth:`client_of`): the runner learns the job's
        client before the job exists, so its worker's round robin sees it."""
        job_id = job_id or new_id()
        self.runner.set_client(job_id, client)
        enqueue = {"image": self.enqueue_image, "text": self.enqueue_text,
                   "music": self.enqueue_music}[req.kind]
        try:
            return enqueue(req, job_id=job_id)
        except BaseException:
            self.runner.forget_client(job_id)
            raise

    def enqueue_image(self, req: ImageJobRequest, job_id: str | None = None) -> dict[str, Any]:
        backend = self.image_backend(req.model)
        size = req.size or backend.image_size
        if not backend.image_size <= size <= MAX_SIZE:
            raise ApiError(400, f"size must be between the model's native {backend.image_size} "
                           f"and {MAX_SIZE}, got {size}", param="size", code="bad_size")
        self._refuse_nul("prompt", req.prompt)
        settings = ImageSettings(req.temperature, req.steps, req.guidance, req.sampler)
        try:
            backend.check(settings, ImageSpec(seed=0, label=req.label, prompt=req.prompt))
        except UnsupportedParameter as exc:
            raise ApiError(400, str(exc), code="unsupported_parameter",
                           param=exc.param) from None
        # Every default is resolved now, at queue time: the job and its items record the
        # values that ran, and a request that spells out the defaults batches with one that
        # leaves them out.
        settings = backend.resolve(settings)
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31 - 1 - MAX_N)
        cost = (settings.steps or 1) * size * size * req.n / self.settings.max_image_cost
        self._admit(cost, "image")
        params = {"n": req.n, "seed": seed, "temperature": settings.temperature,
                  "label": req.label, "prompt": req.prompt, "steps": settings.steps,
                  "guidance": settings.guidance, "sampler": settings.sampler,
                  "size": None if size == backend.image_size else size}
        job = self.store.add_job("image", backend.name, params, cost, job_id=job_id)
        self.runner.notify("image")
        return job

    def enqueue_text(self, req: TextJobRequest, job_id: str | None = None) -> dict[str, Any]:
        backend = self.text_backend(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise ApiError(400, "give exactly one of 'prompt' (completion) or 'messages' (chat)",
                           param="prompt")
        self._refuse_nul("prompt", req.prompt)
        for i, m in enumerate(req.messages or ()):
            self._refuse_nul(f"messages.{i}.content", m.content)
        self._refuse_nul("stop", *(req.stop or ()))
        text = req.prompt if req.prompt is not None else \
            "".join(m.content for m in req.messages)
        cost = (backend.count_tokens(text) + req.max_tokens) / self.settings.max_text_cost
        self._admit(cost, "text")
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31 - 1)
        params = {"prompt": req.prompt,
                  "messages": [m.model_dump() for m in req.messages] if req.messages else None,
                  "max_tokens": req.max_tokens, "temperature": req.temperature,
                  "top_p": req.top_p, "seed": seed, "stop": req.stop}
        job = self.store.add_job("text", backend.name, params, cost, job_id=job_id)
        self.runner.notify("text")
        return job

    def enqueue_music(self, req: MusicJobRequest, job_id: str | None = None) -> dict[str, Any]:
        backend = self.music_backend(req.model)
        spec = MusicSpec(style=req.style, key=req.key, meter=req.meter, bars=req.bars,
                         temperature=req.temperature, tempo=req.tempo)
        try:
            backend.check(spec)
        except ValueError as exc:
            param = "key" if "key" in str(exc) else "meter" if "meter" in str(exc) else "style"
            raise ApiError(400, str(exc), code="unsupported_parameter", param=param) from None
        self._refuse_nul("key", req.key)
        self._refuse_nul("meter", req.meter)
        seconds = req.bars * quarters_per_bar(req.meter) * 60.0 / req.tempo
        cost = seconds * req.n / self.settings.max_music_cost
        self._admit(cost, "music")
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31 - 1 - MAX_PIECES)
        params = {"style": req.style, "key": req.key, "meter": req.meter, "bars": req.bars,
                  "n": req.n, "seed": seed, "temperature": req.temperature, "tempo": req.tempo}
        job = self.store.add_job("music", backend.name, params, cost, job_id=job_id)
        self.runner.notify("music")
        return job

    def retry(self, job: dict[str, Any], client: str = "") -> dict[str, Any]:
        """A new job with the same parameters (same seed, so the same output for images)."""
        if job["status"] not in ("failed", "cancelled", "done"):
            raise ApiError(409, f"job {job['id']} is {job['status']}; only finished jobs can be "
                           "retried", code="job_not_finished")
        self._admit(job["cost"], job["kind"])
        job_id = new_id()
        self.runner.set_client(job_id, client)
        new = self.store.add_job(job["kind"], job["model"], job["params"], job["cost"],
                                 retry_of=job["id"], job_id=job_id)
        self.runner.notify(job["kind"])
        return new

    def client_of(self, request: Request) -> str:
        """Who a request comes from, for the workers' per-client round robin: its API key (by
        hash) when keys are configured, else its connection (address and port: a client that
        keeps its connection open, as HTTP clients do, is one client)."""
        key = presented_key({"authorization": request.headers.get("authorization", "")})
        if self.key_hashes and key:
            return "key:" + hash_key(key)[:16]
        peer = request.client
        return f"{peer.host}:{peer.port}" if peer else ""

    # ------------------------------------------------------------------- auth
    def check_key(self, authorization: str | None) -> None:
        if not self.key_hashes:
            return
        if not authorization or not authorization.lower().startswith("bearer "):
            raise ApiError(401, "this server requires an API key: send "
                           "'Authorization: Bearer KEY'", "authentication_error",
                           code="missing_api_key")
        if not key_matches(authorization[7:].strip(), self.key_hashes):
            raise ApiError(401, "invalid API key", "authentication_error",
                           code="invalid_api_key")

    def check_admin_key(self, authorization: str | None) -> None:
        """Actions that change what everyone is served need an admin key when the server has
        keys (without keys it serves loopback only, to whoever uses the machine)."""
        self.check_key(authorization)
        if self.key_hashes and not key_matches(authorization[7:].strip(),
                                               self.admin_key_hashes):
            raise ApiError(403, "this action changes what everyone is served and needs an "
                           "admin key (`aigc studio --create-key NAME --admin`)",
                           "permission_error", code="admin_key_required")


# Both dependencies are ``async`` although they do not wait on anything: FastAPI runs a plain
# ``def`` dependency in its thread pool, a thread hop per dependency on every request.
async def get_studio(request: Request) -> Studio:
    return request.app.state.studio


async def require_key(request: Request, studio: Studio = Depends(get_studio)) -> None:
    """Dependency of every /api and /v1 route: the API key, when keys are configured (a few
    SHA-256 and constant-time compares: fine on the event loop)."""
    studio.check_key(request.headers.get("authorization"))


async def require_admin_key(request: Request, studio: Studio = Depends(get_studio)) -> None:
    """Dependency of the routes that change what everyone is served: approving answers into
    the assistant's knowledge base, improving, promoting and rolling back models."""
    studio.check_admin_key(request.headers.get("authorization"))


async def require_read_key(request: Request, studio: Studio = Depends(get_studio)) -> None:
    """Dependency of the read-only pages (``/files``, ``/metrics``, ``/docs``,
    ``/openapi.json``): the API key, when keys are configured, from the ``Authorization`` header
    or else from the ``aigc_key`` cookie (which a browser sends with ``<img src>``)."""
    authorization = request.headers.get("authorization")
    if authorization is None:
        cookie = cookie_key(request.headers.get("cookie"))
        authorization = f"Bearer {cookie}" if cookie else None
    studio.check_key(authorization)
