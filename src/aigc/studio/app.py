"""The studio's FastAPI application.

    app = create_app(StudioSettings(models_dir=Path("models")))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Models load in the lifespan (never at import); the job runner's worker threads start and stop
with it. Every error, including validation errors and unexpected ones, is answered in one shape:
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from aigc.studio.auth import (
    FRAME_HEADERS,
    LOOPBACK_NAMES,
    SecurityMiddleware,
    error_json,
    is_loopback,
)
from aigc.studio.backends import TextBackend
from aigc.studio.service import ApiError, Studio, StudioSettings

log = logging.getLogger("aigc.studio")
WEB_DIR = Path(__file__).parent / "web"

_HTTP_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
               409: "conflict_error", 413: "invalid_request_error", 429: "rate_limit_error"}


class RequestCounter:
    """Counts answered requests by (method, status) for /metrics (pure ASGI: cheap, and
    streaming responses pass through untouched)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message):
            if message["type"] == "http.response.start":
                studio = getattr(scope["app"].state, "studio", None)
                if studio is not None:
                    key = (scope["method"], message["status"])
                    studio.http_requests[key] = studio.http_requests.get(key, 0) + 1
            await send(message)

        await self.app(scope, receive, counting_send)


TextBackendsFactory = Callable[[StudioSettings], dict[str, TextBackend]]


def build_studio(settings: StudioSettings,
                 text_backends: TextBackendsFactory | None = None) -> Studio:
    """Open the store and load every model (called from the lifespan).

    ``text_backends(settings)`` returns extra text backends by name (the GPT and SmolLM2
    adapters plug in here); they are listed before the n-gram test backend, so the first of
    them is the default text model.
    """
    from aigc.checkpoints import library_versions
    from aigc.studio.backends import (
        NGramTextBackend,
        default_text_corpus,
        find_checkpoints,
        load_image_backends,
        load_music_backends,
        load_text_backends,
    )
    from aigc.studio.jobs import JobRunner
    from aigc.studio.store import Store

    store = Store(settings.data_dir, settings.db_url, files_dir=settings.files_dir)
    paths = find_checkpoints(settings.models_dir) if settings.models_dir else []
    paths += list(settings.model_paths)
    registry, served = None, {}
    if settings.registry_names:
        from aigc.registry import Registry

        registry = Registry(settings.registry_dir)
        for name in settings.registry_names:
            version = registry.resolve(f"{name}@production")
            paths.append((name, version.path))
            served[name] = version.version
    images, skipped = load_image_backends(paths)
    texts: dict[str, TextBackend] = dict(text_backends(settings)) if text_backends else {}
    found, why = load_text_backends(paths, smollm2=settings.smollm2)
    texts.update(found)
    skipped.update(why)
    musics, why = load_music_backends(paths)
    skipped.update(why)
    if settings.ngram:
        corpus = None
        if settings.text_corpus is not None:
            corpus = (settings.text_corpus.name,
                      settings.text_corpus.read_text(encoding="utf-8"))
        else:
            corpus = default_text_corpus()
        if corpus:
            backend = NGramTextBackend(corpus[1], corpus[0], order=settings.ngram_order)
            texts[backend.name] = backend
        else:
            skipped["ngram"] = "no text corpus: pass --text-corpus FILE"
    runner = JobRunner(store, images, texts, max_batch_images=settings.max_batch_images,
                       batching=settings.batching, batch_wait_s=settings.batch_wait_ms / 1000,
                       versions=library_versions(), musics=musics,
                       worker=settings.worker_name, lease_s=settings.lease_s,
                       poll_s=settings.poll_s)
    runner.registry = registry
    return Studio(settings=settings, store=store, images=images, texts=texts, runner=runner,
                  skipped=skipped, key_hashes=store.api_key_hashes(),
                  admin_key_hashes=store.admin_key_hashes(), musics=musics,
                  served_versions=served, registry=registry)


def create_app(settings: StudioSettings | None = None,
               text_backends: TextBackendsFactory | None = None,
               assistant: Callable | None = None) -> FastAPI:
    """The app; nothing is loaded until its lifespan starts. ``text_backends``: see
    :func:`build_studio`; ``assistant``: see :func:`aigc.studio.routes.assistant.load_assistant`.
    """
    settings = settings or StudioSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        studio = build_studio(settings, text_backends)
        from aigc.studio.routes.assistant import load_assistant

        studio.assistant = load_assistant(settings, assistant)
        app.state.studio = studio
        from aigc.studio.jobs import GENERATION_KINDS, JOB_KINDS

        # Without workers of its own the server still runs the feedback loop's jobs (they write
        # the model registry, which lives with the server) and follows the jobs that `aigc
        # worker` processes run, for its clients' events.
        kinds = JOB_KINDS if settings.workers else \
            tuple(k for k in JOB_KINDS if k not in GENERATION_KINDS)
        studio.runner.start(kinds=kinds, follow=True)
        watcher = None
        if studio.registry is not None:
            from aigc.studio.registry_watch import RegistryWatcher

            watcher = RegistryWatcher(studio, studio.registry)
            watcher.start()
        app.state.registry_watcher = watcher
        studio.runner.registry_watcher = watcher
        log.info("studio: %d image, %d text and %d music model(s); data in %s",
                 len(studio.images), len(studio.texts), len(studio.musics), settings.data_dir)
        try:
            yield
        finally:
            if watcher is not None:
                watcher.stop()
            studio.runner.stop()
            studio.store.close()

    app = FastAPI(
        title="aigc studio", version="0.1.0", lifespan=lifespan,
        # served by routes/docs.py: local assets (no CDN), and the API key when keys exist
        docs_url=None, redoc_url=None, openapi_url=None,
        description="Generate images, text and music with your own models, browse and rate what they "
        "made. Native API under /api, OpenAI-compatible API under /v1. Every error has the shape "
        '`{"error": {"message", "type", "param", "code"}}`.',
    )

    # -------------------------------------------------------------- middleware
    hosts = None
    if is_loopback(settings.host):
        hosts = set(LOOPBACK_NAMES) | set(settings.extra_hosts)
    app.add_middleware(SecurityMiddleware, allowed_hosts=hosts,
                       allowed_origins=set(settings.allowed_origins))

    app.add_middleware(RequestCounter)

    # ------------------------------------------------------------------ errors
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_json(exc.status, exc.message, exc.type, exc.code, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        msg = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors[:5])
        # The OpenAI API answers a malformed body with 400 (its clients map 422 to nothing)
        status = 400 if request.url.path.startswith("/v1/") else 422
        return error_json(status, msg or "invalid request", "invalid_request_error",
                          "validation_error", ".".join(loc) or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return error_json(exc.status_code, str(exc.detail),
                          _HTTP_TYPES.get(exc.status_code, "invalid_request_error"),
                          headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        # answered outside the middleware stack (Starlette's ServerErrorMiddleware): add the
        # framing headers the SecurityMiddleware puts on every other response
        return error_json(500, f"internal error: {type(exc).__name__}", "server_error",
                          headers={k.decode(): v.decode() for k, v in FRAME_HEADERS})

    # ------------------------------------------------------------------ routes
    from aigc.studio.routes import assistant as assistant_routes
    from aigc.studio.routes import (
        docs,
        feedback,
        items,
        jobs,
        models,
        monitor,
        openai,
        recommend,
        system,
    )

    for module in (
        models,
        jobs,
        items,
        feedback,
        recommend,
        monitor,
        openai,
        system,
        docs,
        assistant_routes,
    ):
        app.include_router(module.router)
    app.include_router(assistant_routes.v1_router)
    app.include_router(items.files_router)

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.openapi = lambda: _openapi(app)
    return app


def _openapi(app: FastAPI) -> dict:
    """The generated schema, with FastAPI's 422 body replaced by our one error shape and the
    other error statuses each route can answer documented."""
    if app.openapi_schema:
        return app.openapi_schema
    from aigc.studio.schemas import ErrorResponse, JobEvent

    schema = get_openapi(title=app.title, version=app.version, description=app.description,
                         routes=app.routes)
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    err = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in err.pop("$defs", {}).items():
        comps[name] = sub
    comps["ErrorResponse"] = err
    comps["JobEvent"] = JobEvent.model_json_schema()  # the data of /api/jobs/{id}/events
    comps.pop("HTTPValidationError", None)
    comps.pop("ValidationError", None)
    ref = {"content": {"application/json": {"schema": {"$ref":
                                                        "#/components/schemas/ErrorResponse"}}}}
    # The key (when keys exist): Swagger UI's "Authorize" sends it with "Try it out".
    schema["components"]["securitySchemes"] = {"APIKey": {
        "type": "http", "scheme": "bearer",
        "description": "a key from `aigc studio --create-key NAME`; needed only when the server "
                       "has keys (every route but /health then needs it)"}}
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            if path != "/health":
                op["security"] = [{"APIKey": []}]
            responses = op.setdefault("responses", {})
            codes = ["401", "403", "422", "500"]
            if "{" in path:
                codes.append("404")
            if method == "post":
                codes += ["400", "404", "409", "429"]
            if method in ("get", "delete"):
                codes.append("400")  # e.g. a malformed X-Aigc-Rater (routes/feedback.py)
            for code in codes:
                responses[code] = {"description": "error", **ref}
    app.openapi_schema = schema
    return schema
