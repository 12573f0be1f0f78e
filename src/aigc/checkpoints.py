"""Checkpoints: safetensors weights + JSON config, optimizer and RNG state; atomic; resumable.

Layout of a run folder::

    runs/vae-mnist/
      checkpoints/step-00001000/model.safetensors          weights ("model.*", "ema.*") + metadata
      checkpoints/step-00001000/trainer_state.safetensors  optimizer tensors, RNG states + JSON
      checkpoints/latest                                   name of the newest complete checkpoint

``model.safetensors`` alone rebuilds the model: its header metadata holds the family, the model
config, the training config, the step and the data it was trained on. Nothing here ever loads a
pickle.

Saving is atomic: files are written and fsynced in a hidden temporary folder that is renamed into
place, and only then is ``latest`` replaced (write-to-temp + ``os.replace``). A process killed at
any moment leaves ``latest`` naming a complete checkpoint; leftovers of an interrupted save are
removed on the next save.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import random
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from aigc.errors import CheckpointError

FORMAT = "aigc-checkpoint/1"
MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.safetensors"
LATEST = "latest"
_HEADER_LIMIT = 100 * 1024 * 1024  # a safetensors header larger than this is not ours


@dataclass
class Checkpoint:
    """A loaded ``model.safetensors``: weights plus the metadata needed to rebuild the model."""

    path: Path
    family: str
    model_config: dict[str, Any]
    step: int
    weights: dict[str, torch.Tensor]
    ema_weights: dict[str, torch.Tensor] | None
    train_config: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return file_sha256(self.path)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {"torch": torch.__version__, "numpy": np.__version__}
    for dist in ("aigc", "safetensors"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "unknown"
    return versions


# ----------------------------------------------------------------------------------- saving


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    # clone() breaks storage sharing (tied weights), which safetensors refuses to write.
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(plain, str(path), metadata=metadata)
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def write_atomic_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new content, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def model_metadata(
    family: str,
    model_config: dict[str, Any],
    step: int,
    train_config: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, str]:
    return {
        "format": FORMAT,
        "family": family,
        "model_config": json.dumps(model_config, sort_keys=True),
        "train_config": json.dumps(train_config, sort_keys=True),
        "step": str(step),
        "meta": json.dumps(meta or {}, sort_keys=True, ensure_ascii=False),
        "versions": json.dumps(library_versions(), sort_keys=True),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def save_model_file(
    path: str | Path,
    *,
    family: str,
    model_config: dict[str, Any],
    weights: dict[str, torch.Tensor],
    ema_weights: dict[str, torch.Tensor] | None = None,
    step: int = 0,
    train_config: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a standalone ``model.safetensors`` atomically (e.g. an exported starter model)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in weights.items()}
    if ema_weights is not None:
        tensors.update({f"ema.{k}": v for k, v in ema_weights.items()})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _save_tensors(tensors, model_metadata(family, model_config, step, train_config, meta), tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def save_checkpoint(
    run_dir: str | Path,
    *,
    step: int,
    family: str,
    model_config: dict[str, Any],
    weights: dict[str, torch.Tensor],
    ema_weights: dict[str, torch.Tensor] | None = None,
    train_config: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    trainer_tensors: dict[str, torch.Tensor] | None = None,
    trainer_json: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write ``checkpoints/step-N/`` atomically and point ``latest`` at it.

    Returns the folder of the new checkpoint.
    """
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    for stale in ckpt_root.glob(".tmp-*"):  # leftovers of a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    name = f"step-{step:08d}"
    tmp = ckpt_root / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir()
    tensors = {f"model.{k}": v for k, v in weights.items()}
    if ema_weights is not None:
        tensors.update({f"ema.{k}": v for k, v in ema_weights.items()})
    _save_tensors(
        tensors, model_metadata(family, model_config, step, train_config, meta), tmp / MODEL_FILE
    )
    state_meta = {"format": FORMAT, "state": json.dumps(trainer_json or {})}
    _save_tensors(trainer_tensors or {}, state_meta, tmp / STATE_FILE)
    _fsync_dir(tmp)
    final = ckpt_root / name
    if final.exists():  # re-saving the same step (e.g. final save right after a periodic one)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(ckpt_root)
    write_atomic_text(ckpt_root / LATEST, name + "\n")
    _prune(ckpt_root, keep=keep, protect=name)
    return final


def _prune(ckpt_root: Path, *, keep: int, protect: str) -> None:
    if keep <= 0:
        return
    steps = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------- loading


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a run folder, a checkpoint folder or a ``.safetensors`` file; return the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_file():
        return path
    if (path / MODEL_FILE).is_file():
        return path / MODEL_FILE
    latest = path / "checkpoints" / LATEST
    if latest.is_file():
        name = latest.read_text(encoding="utf-8").strip()
        candidate = path / "checkpoints" / name / MODEL_FILE
        if candidate.is_file():
            return candidate
        raise CheckpointError(f"{latest} names {name!r}, which has no {MODEL_FILE}")
    raise CheckpointError(
        f"{path} is a folder without {MODEL_FILE} or checkpoints/{LATEST}; "
        "pass a run folder, a checkpoint folder or a .safetensors file"
    )


def read_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors header metadata, after checking the file is a complete safetensors file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > min(_HEADER_LIMIT, size - 8):
            raise CheckpointError(f"{path} is not a safetensors file, or it is truncated")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{path} is not a safetensors file (bad header)") from None
    ends = _tensor_ends(path, header)
    if 8 + n + max(ends, default=0) > size:
        raise CheckpointError(
            f"{path} is truncated: header promises {8 + n + max(ends, default=0)} bytes, "
            f"file has {size}"
        )
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError(f"{path} is not a safetensors file (its __metadata__ is not an "
                              "object of strings)")
    return metadata


def _tensor_ends(path: Path, header: Any) -> list[int]:
    """The end offset of each tensor a safetensors header lists, after checking its shape: an
    object whose entries are objects with ``data_offsets: [begin, end]``."""
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (its header is a JSON "
                              f"{type(header).__name__}, not an object)")
    ends = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0
                        for o in offsets)):
            raise CheckpointError(f"{path} is not a safetensors file (tensor {key!r} has no "
                                  "valid data_offsets)")
        ends.append(offsets[1])
    return ends


def _metadata_json(file: Path, meta: dict[str, str], key: str, default: str | None = None) -> Any:
    """One JSON-valued entry of an aigc checkpoint's metadata, or a CheckpointError naming it."""
    text = meta.get(key, default)
    if text is None:
        raise CheckpointError(f"{file} is an incomplete aigc checkpoint: metadata {key!r} is missing")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise CheckpointError(f"{file}: metadata {key!r} is not valid JSON") from None


def load_checkpoint(path: str | Path, *, map_location: str = "cpu") -> Checkpoint:
    """Load an aigc ``model.safetensors`` (or the latest one of a run folder)."""
    file = resolve_checkpoint(path)
    meta = read_metadata(file)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{file} is a safetensors file but not an aigc checkpoint "
            f"(metadata format={meta.get('format')!r}, expected {FORMAT!r})"
        )
    try:
        tensors = load_file(str(file), device=map_location)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{file} could not be read: {exc}") from None
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")} or None
    model_config = _metadata_json(file, meta, "model_config")
    train_config = _metadata_json(file, meta, "train_config", "null")
    extra = _metadata_json(file, meta, "meta", "{}")
    step = meta.get("step", "0")
    if "family" not in meta or not isinstance(model_config, dict) or not step.isdigit() or not (
        train_config is None or isinstance(train_config, dict)
    ) or not isinstance(extra, dict):
        raise CheckpointError(f"{file} is an incomplete aigc checkpoint (family, model_config, "
                              "train_config, step or meta is missing or of the wrong kind)")
    return Checkpoint(
        path=file,
        family=meta["family"],
        model_config=model_config,
        step=int(step),
        weights=weights,
        ema_weights=ema,
        train_config=train_config,
        meta=extra,
    )


def load_trainer_state(ckpt_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    file = Path(ckpt_dir) / STATE_FILE
    if not file.is_file():
        raise CheckpointError(f"cannot resume: {file} is missing")
    meta = read_metadata(file)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not an aigc trainer state")
    state = _metadata_json(file, meta, "state")
    try:
        return load_file(str(file)), state
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{file} could not be read: {exc}") from None


def latest_checkpoint_dir(run_dir: str | Path) -> Path | None:
    latest = Path(run_dir) / "checkpoints" / LATEST
    if not latest.is_file():
        return None
    folder = latest.parent / latest.read_text(encoding="utf-8").strip()
    return folder if folder.is_dir() else None


# ------------------------------------------------------------------- optimizer + RNG state


def optimizer_to_tensors(
    name: str, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into safetensors-ready tensors and JSON."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{name}.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(
    name: str, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict
) -> None:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"optim.{name}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            pid, skey = key[len(prefix):].split(".", 1)
            state.setdefault(int(pid), {})[skey] = value
    for pid, extra in info["scalars"].items():
        state.setdefault(int(pid), {}).update(extra)
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    info = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, info


def set_rng_state(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    py = info["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = info["numpy"]
    np.random.set_state((npy[0], np.array(npy[1], dtype=np.uint32), *npy[2:]))
