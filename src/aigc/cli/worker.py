"""``aigc worker``: run studio jobs away from the API server (see :mod:`aigc.studio.worker`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from aigc.cli.studio import add_model_arguments, check_model_arguments, model_settings
from aigc.errors import AigcError

KINDS = ("image", "text", "music")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker", help="run the studio's generation jobs in this process, on any machine",
        description="Run the image, text and music jobs that an `aigc studio` server queues, "
        "for the models this worker loads (give it the same model flags as the server, so "
        "that the names match). It shares only the database (--db; PostgreSQL for several "
        "machines) and the files folder (--files) with the server. Stop it with Ctrl-C or "
        "SIGTERM; a job of a worker that died returns to the queue when its lease ends.")
    add_model_arguments(p, "run jobs of")
    p.add_argument("--files", default=None, metavar="DIR",
                   help="the folder of generated files the server serves (default DATA/files); "
                        "on another machine: a shared mount of it")
    p.add_argument("--name", default=None,
                   help="the name this worker holds its jobs under (default HOST:PID); a worker "
                        "restarted under the same name takes its unfinished jobs back at once")
    p.add_argument("--kinds", default=",".join(KINDS),
                   help="comma-separated job kinds to run, of image,text,music (default all)")
    p.add_argument("--lease-s", type=float, default=30.0,
                   help="seconds a claimed job stays this worker's without a heartbeat; a dead "
                        "worker's jobs return to the queue after it (default 30, 3..3600)")
    p.add_argument("--poll-s", type=float, default=1.0,
                   help="seconds between looks at the queue when idle (PostgreSQL also wakes "
                        "workers with NOTIFY), 0.05..60 (default 1)")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def _kinds(spec: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in spec.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if not kinds or bad:
        raise AigcError(f"--kinds must be a comma-separated list of {','.join(KINDS)}, got "
                        f"{spec!r}")
    return tuple(dict.fromkeys(kinds))


def run(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from aigc.studio.service import StudioSettings
    from aigc.studio.worker import Worker

    check_model_arguments(args)
    kinds = _kinds(args.kinds)
    if not 3 <= args.lease_s <= 3600:
        raise AigcError(f"--lease-s must be in 3..3600, got {args.lease_s}")
    if not 0.05 <= args.poll_s <= 60:
        raise AigcError(f"--poll-s must be in 0.05..60, got {args.poll_s}")
    if args.name is not None and not (0 < len(args.name) <= 200 and args.name.isprintable()):
        raise AigcError(f"--name must be 1..200 printable characters, got {args.name!r}")
    files = Path(args.files) if args.files else None
    if files is not None and files.exists() and not files.is_dir():
        raise AigcError(f"--files {files}: not a folder")
    from aigc.studio.jobs import default_worker_name

    settings = StudioSettings(**model_settings(args), files_dir=files,
                              worker_name=args.name or default_worker_name(),
                              lease_s=args.lease_s, poll_s=args.poll_s)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(message)s")
    worker = Worker(settings, kinds)
    served = worker.models()
    if not any(served.values()):
        worker.studio.store.close()
        raise AigcError(f"this worker loaded no model of the kinds {','.join(kinds)}; give it "
                        "the server's model flags (--models, --model, ...)")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    shown = ", ".join(f"{k}: {', '.join(v) or 'none'}" for k, v in served.items())
    print(f"aigc worker {settings.worker_name}: {shown}; files in {worker.studio.store.files_dir}",
          flush=True)
    worker.run(stop)
    return 0
