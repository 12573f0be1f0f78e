"""``aigc monitor``: follow a stream of texts, keep per-entity sentiment and volume, raise alerts
(see :mod:`aigc.apps.sentiment.monitor`)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from aigc.apps.sentiment.monitor import MonitorConfig
from aigc.errors import AigcError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "monitor", help="follow a JSONL stream of texts and alert when an entity's sentiment or "
        "volume turns",
        description="Read events {id, text, time?, source?, lang?} as JSON lines from a file it "
        "follows (like tail -F; survives truncation and rotation) or from standard input, tag "
        "entities (cashtags like $ACME, configured keywords, Chinese stock names and six-digit "
        "codes), keep each entity's rolling sentiment and volume, and raise an alert (one JSON "
        "line on stdout, the state database, and the webhook when configured) when a CUSUM "
        "detector sees either turn. Bad lines are reported on stderr with their line number and "
        "never stop the stream; an event id seen before is counted once. State persists in "
        "--state: a restarted monitor resumes where it stopped.")
    p.add_argument("--follow", metavar="FILE",
                   help="the JSONL file to follow; without it, read standard input to its end")
    p.add_argument("--once", action="store_true",
                   help="with --follow: read the file to its end, then exit")
    p.add_argument("--state", default="monitor.db",
                   help="SQLite file with the monitor's state (default monitor.db)")
    p.add_argument("--config", metavar="FILE",
                   help="YAML or JSON settings: keywords, cn_stocks, detector parameters, "
                        "webhook_url (docs/monitor.md)")
    p.add_argument("--scorer",
                   help="sentiment scorer: vader, snownlp, a checkpoint path, or per language "
                        "en=NAME,zh=NAME (default: the config's scorer, else "
                        f"{MonitorConfig.scorer})")
    p.add_argument("--poll", type=float, default=0.5,
                   help="seconds between looks at a followed file that has no new lines "
                        "(default 0.5)")
    p.add_argument("--batch", type=int, default=256,
                   help="lines scored and committed together (default 256)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from aigc.apps.sentiment.alerts import sender_from_config
    from aigc.apps.sentiment.monitor import Monitor, follow_file, load_config, load_scorers

    if not 0.01 <= args.poll <= 60:
        raise AigcError(f"--poll must be in [0.01, 60] seconds, got {args.poll}")
    if not 1 <= args.batch <= 100_000:
        raise AigcError(f"--batch must be in [1, 100000], got {args.batch}")
    if args.once and not args.follow:
        raise AigcError("--once goes with --follow FILE (standard input is read to its end "
                        "anyway)")
    if args.follow and Path(args.follow).is_dir():
        raise AigcError(f"--follow {args.follow} is a folder; give a JSONL file")
    try:
        config = load_config(args.config)
        sender = sender_from_config(config)
        scorers = load_scorers(args.scorer or config.scorer)
        monitor = Monitor(scorers, config, args.state, sender=sender)
    except ValueError as exc:
        raise AigcError(str(exc)) from exc

    def on_batch(result) -> None:
        for origin, line, reason in result.bad:
            print(f"aigc monitor: {origin} line {line}: {reason}", file=sys.stderr)
        for alert in result.alerts:
            print(json.dumps(alert, ensure_ascii=False), flush=True)
        deliver()

    def deliver() -> None:
        if sender is not None:
            sender.deliver_due(monitor.state)

    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if args.follow:
            try:
                follow_file(args.follow, monitor, stop, poll_s=args.poll,
                            batch_lines=args.batch, once=args.once, on_batch=on_batch,
                            on_idle=deliver)
            except KeyboardInterrupt:
                pass
        else:
            from aigc.apps.sentiment.monitor import read_stream

            read_stream(sys.stdin.buffer, monitor, batch_lines=args.batch, on_batch=on_batch)
        deliver()
        status = monitor.status()
        print(f"aigc monitor: {status['events']} events, {status['duplicates']} duplicates, "
              f"{status['bad']} bad lines, {status['alerts']} alerts, {status['entities']} "
              f"entities, {status['outbox']} alerts waiting for the webhook; state in "
              f"{args.state}", file=sys.stderr)
    except ValueError as exc:
        raise AigcError(str(exc)) from exc
    finally:
        signal.signal(signal.SIGTERM, previous)
        monitor.close()
    return 0
