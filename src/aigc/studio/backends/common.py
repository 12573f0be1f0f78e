"""What every studio backend shares: the errors a job raises, checkpoint discovery in a models
folder and the metric card found beside a checkpoint."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("aigc.studio")


class JobCancelled(Exception):
    """Raised from a progress callback to stop a generation whose job was cancelled."""


class UnsupportedParameter(ValueError):
    """A request parameter the model cannot use; ``param`` names it."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def _metric_card(ckpt_path: Path, sha256: str) -> dict[str, Any] | None:
    """The ``metrics.json`` written by ``aigc eval`` for this checkpoint, when one is found.

    Looked for beside the file (``<stem>.metrics.json``, a starter's ``<stem>.card.json``, or
    ``metrics.json``), in its run folder
    and the run folder's parent; a card that names another checkpoint's hash is ignored.
    """
    candidates = [ckpt_path.with_suffix(".metrics.json"), ckpt_path.with_suffix(".card.json"),
                  ckpt_path.parent / "metrics.json"]
    if ckpt_path.parent.parent.name == "checkpoints":
        run = ckpt_path.parent.parent.parent
        candidates += [run / "metrics.json", run.parent / "metrics.json"]
    for c in candidates:
        if c.is_file():
            try:
                card = json.loads(c.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            # an `aigc eval` card names its checkpoint in the protocol; a starter card at the top
            named = (card.get("protocol") or {}).get("checkpoint_sha256") or card.get("sha256")
            if named in (None, sha256):
                return card
    return None


def find_checkpoints(models_dir: Path) -> list[tuple[str, Path]]:
    """(name, path) of each model in a folder: ``*.safetensors`` files, run/checkpoint
    folders and diffusers pipeline folders, named after the file stem or the folder."""
    found: list[tuple[str, Path]] = []
    if not models_dir.is_dir():
        return found
    for p in sorted(models_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix == ".safetensors":
            found.append((p.stem if p.stem != "model" else models_dir.name, p))
        elif p.is_dir() and ((p / "model.safetensors").is_file()
                             or (p / "checkpoints" / "latest").is_file()
                             or (p / "model_index.json").is_file()):  # a diffusers folder
            found.append((p.name, p))
    return found


def checkpoint_headers(paths: list[tuple[str, Path]]) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """``(name, path, header metadata)`` of each model whose safetensors header reads (the
    header only, not the weights): how the text and music loaders pick their checkpoints. A
    path that does not read is skipped here; the image loader reports it."""
    from aigc.checkpoints import read_metadata, resolve_checkpoint
    from aigc.errors import AigcError

    for name, path in paths:
        try:
            yield name, path, read_metadata(resolve_checkpoint(path))
        except (AigcError, OSError):
            continue
