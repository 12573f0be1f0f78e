"""``aigc info FILE``: the provenance record of a PNG, or the metadata of a checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aigc.errors import AigcError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print the record embedded in a generated PNG or a checkpoint")
    p.add_argument("file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.exists():
        raise AigcError(f"{path}: no such file")
    if path.suffix.lower() == ".png":
        from aigc.media import read_record

        try:
            record = read_record(path)
        except OSError as exc:
            raise AigcError(f"{path} is not a readable PNG: {exc}") from None
        if record is None:
            raise AigcError(f"{path} has no aigc record (it was not written by aigc)")
        print(json.dumps(record, indent=2, ensure_ascii=False))
        return 0
    from aigc.checkpoints import read_metadata, resolve_checkpoint

    file = resolve_checkpoint(path)
    meta = read_metadata(file)
    decoded = {k: _maybe_json(v) for k, v in meta.items()}
    print(json.dumps({"file": str(file), **decoded}, indent=2, ensure_ascii=False))
    return 0


def _maybe_json(text: str):
    """A metadata value that holds JSON, decoded; anything else (or broken JSON) as it is."""
    if text[:1] in "{[":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text
