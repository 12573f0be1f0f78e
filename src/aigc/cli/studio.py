"""``aigc studio``: the web studio and HTTP API (see :mod:`aigc.studio`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from aigc.errors import AigcError

DEMO_RUN = Path("out/demo/run")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "studio", help="serve the web studio and the HTTP API (native + OpenAI-compatible)",
        description="Start the studio on 127.0.0.1: a web page to generate images, text and music, a "
        "gallery with ratings, the native /api and the OpenAI-compatible /v1 API (docs at "
        "/docs). The starter models shipped with aigc, every checkpoint file or run folder in "
        "--models, and the run of `aigc demo` (out/demo/run, when it exists) are served.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; others need API keys)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    add_model_arguments(p, "serve")
    p.add_argument("--no-workers", action="store_true",
                   help="run no generation jobs in this process: only `aigc worker` processes "
                        "(sharing --db and the files folder) run them")
    p.add_argument("--assistant-index", default=None, metavar="DIR",
                   help="serve the customer-service assistant (page, /api/assistant, model "
                        "'assistant' in /v1) from this knowledge base (`aigc assistant index`); "
                        "loads MiniLM, the speech recogniser and, with --assistant-style "
                        "generate, SmolLM2")
    p.add_argument("--assistant-style", choices=("generate", "extractive"), default="generate",
                   help="how the assistant answers: SmolLM2 writes from the passages, or the "
                        "best passage's opening is the answer (default: generate)")
    p.add_argument("--embeddings", action="store_true",
                   help="serve /v1/embeddings with all-MiniLM-L6-v2 (on with --assistant-index)")
    p.add_argument("--max-queue", type=int, default=256, help="queued+running jobs (256)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="another web origin allowed to POST (repeatable)")
    p.add_argument("--allow-host", action="append", default=[], metavar="HOST",
                   help="another Host name served on a loopback bind (repeatable)")
    p.add_argument("--create-key", metavar="NAME",
                   help="create an API key, print it once, store its hash, and exit")
    p.add_argument("--admin", action="store_true",
                   help="with --create-key: the key may also approve answers into the "
                        "assistant's knowledge base and improve, promote or roll back models")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def add_model_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    """The storage, model and batching flags that ``aigc studio`` and ``aigc worker`` share
    (a worker must serve its models under the same names as the server)."""
    p.add_argument("--data", default="studio-data",
                   help="data folder: database and generated files (default studio-data)")
    p.add_argument("--db", default=None, help="SQLAlchemy URL instead of SQLite in --data, "
                   "e.g. postgresql+psycopg://user@host/aigc")
    p.add_argument("--models", default="models",
                   help="folder of models: checkpoint files and run folders (default models)")
    p.add_argument("--model", action="append", default=[], metavar="[NAME=]PATH",
                   help=f"{verb} one more checkpoint (repeatable)")
    p.add_argument("--text-corpus", default=None, metavar="FILE",
                   help="training text of the n-gram test backend (default: chatterbot-corpus)")
    p.add_argument("--no-starters", action="store_true",
                   help=f"do not {verb} the starter models shipped with aigc")
    p.add_argument("--smollm2", action="store_true",
                   help=f"{verb} the SmolLM2-135M-Instruct chat model (loads for tens of "
                        "seconds)")
    p.add_argument("--no-ngram", action="store_true", help=f"do not {verb} the n-gram backend")
    p.add_argument("--no-batching", action="store_true",
                   help="run image jobs one at a time (for comparisons)")
    p.add_argument("--max-batch-images", type=int, default=64, help="images per batch (64)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="at most this many ms the image worker waits for more requests to join "
                        "a batch, while they keep arriving, 0..100 (default 5)")


def check_model_arguments(args: argparse.Namespace) -> None:
    if not 1 <= args.max_batch_images <= 1024:
        raise AigcError(f"--max-batch-images must be in 1..1024, got {args.max_batch_images}")
    if not 0 <= args.batch_wait_ms <= 100:
        raise AigcError(f"--batch-wait-ms must be in 0..100, got {args.batch_wait_ms}")


def model_settings(args: argparse.Namespace) -> dict:
    """The :class:`StudioSettings` fields of the flags of :func:`add_model_arguments`."""
    models = list(args.model)
    # Registered models are served at their production version and follow promotions; the
    # small starter models shipped in the package are the first versions of their names.
    from aigc.registry import Registry, starter_names

    registry = Registry()
    starters = set(starter_names())
    served = tuple(n for n in registry.names() if not (args.no_starters and n in starters)
                   and registry.state(n)["aliases"].get("production") is not None)
    if DEMO_RUN.is_dir() and not any(s.endswith(str(DEMO_RUN)) for s in models):
        models.append(f"demo-vae={DEMO_RUN}")
    text_corpus = Path(args.text_corpus) if args.text_corpus else None
    if text_corpus is not None and not text_corpus.is_file():
        raise AigcError(f"--text-corpus {text_corpus}: no such file")
    return dict(data_dir=Path(args.data), db_url=args.db, models_dir=Path(args.models),
                model_paths=_model_paths(models), text_corpus=text_corpus,
                ngram=not args.no_ngram, smollm2=args.smollm2,
                max_batch_images=args.max_batch_images, batching=not args.no_batching,
                batch_wait_ms=args.batch_wait_ms, registry_dir=registry.root,
                registry_names=served)


def _model_paths(specs: list[str]) -> tuple[tuple[str, Path], ...]:
    out = []
    for spec in specs:
        name, _, path = spec.rpartition("=")
        path_ = Path(path)
        if not path_.exists():
            raise AigcError(f"--model {spec}: {path_} does not exist")
        out.append((name or (path_.stem if path_.is_file() else path_.name), path_))
    return tuple(out)


def run(args: argparse.Namespace) -> int:
    import logging

    from aigc.studio.auth import check_bind, hash_key, new_api_key
    from aigc.studio.service import StudioSettings
    from aigc.studio.store import Store

    if not 0 < args.port < 65536:
        raise AigcError(f"--port must be in 1..65535, got {args.port}")
    check_model_arguments(args)
    if args.admin and args.create_key is None:
        raise AigcError("--admin goes with --create-key NAME")
    if args.create_key is not None:
        name = args.create_key
        if not name.strip() or len(name) > 100 or not name.isprintable():
            raise AigcError(f"--create-key NAME must be 1..100 printable characters, not blank; "
                            f"got {name!r}")
        store = Store(args.data, args.db)
        key = new_api_key()
        try:
            store.add_api_key(args.create_key, hash_key(key), admin=args.admin)
        except Exception as exc:  # unique name
            raise AigcError(f"could not store key {args.create_key!r}: "
                            f"{type(exc).__name__} (does a key of that name exist?)") from None
        kind = "admin API key" if args.admin else "API key"
        print(f"{kind} {args.create_key!r} (shown once; only its hash is stored):\n{key}")
        return 0
    store = Store(args.data, args.db)
    n_keys = len(store.api_key_hashes())
    store.close()
    check_bind(args.host, n_keys)
    assistant_index = Path(args.assistant_index) if args.assistant_index else None
    if assistant_index is not None:
        from aigc.studio.routes.assistant import index_dir_problem

        problem = index_dir_problem(assistant_index)
        if problem:
            raise AigcError(problem)
    settings = StudioSettings(
        **model_settings(args), host=args.host, port=args.port,
        extra_hosts=tuple(args.allow_host), allowed_origins=tuple(args.allow_origin),
        max_queue=args.max_queue, workers=not args.no_workers,
        assistant_index=assistant_index, assistant_style=args.assistant_style,
        embeddings=args.embeddings)
    import uvicorn

    from aigc.studio.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(message)s")
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"aigc studio: http://{host}:{args.port}/  (API docs: /docs; keys: {n_keys})",
          flush=True)
    uvicorn.run(create_app(settings), host=args.host, port=args.port,
                log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0
