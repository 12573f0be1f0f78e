"""Frozen, typed configuration dataclasses and their strict (de)serialisation.

Every model family has one frozen config dataclass; training has :class:`TrainConfig`. Configs
are stored as JSON inside every checkpoint, so a checkpoint alone rebuilds its model::

    cfg = config_from_dict(VAEConfig, {"latent_dim": 16})
    config_to_dict(cfg)  # {"latent_dim": 16, ...}

Unknown keys and values of the wrong type are rejected with a :class:`ConfigError` naming the
key, the value received and what is allowed. Nothing is silently coerced except ``int`` -> ``float``
and JSON lists -> tuples.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from aigc.errors import ConfigError

C = TypeVar("C")

# Seeds are 0..MAX_SEED everywhere (CLI flags, TrainConfig, the studio's API): derived seeds such
# as ``seed * 1_000_003 + epoch`` then stay inside the 64 bits torch.Generator accepts.
MAX_SEED = 2**31 - 1


def check_seed(value: Any, name: str = "seed") -> None:
    """Raise a :class:`ConfigError` naming ``name`` unless ``value`` is an int in 0..MAX_SEED."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{name} must be an integer between 0 and {MAX_SEED}, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """How the model-agnostic trainer runs (see :mod:`aigc.train`)."""

    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio at the last step
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    ema_decay: float = 0.999  # 0 disables the EMA copy
    bf16: bool = False  # bf16 autocast on CPU or CUDA
    augment: bool = False  # random flip and pad-crop for image data
    eval_every: int = 500  # validation loss every N steps (0: only at the end)
    eval_batches: int = 20  # batches of the validation split per evaluation
    patience: int = 0  # early stopping after N evaluations without improvement (0: off)
    sample_every: int = 500  # sample grid every N steps (0: off)
    log_every: int = 50  # CSV/TensorBoard scalars every N steps
    ckpt_every: int = 500  # checkpoint every N steps (and always at the end)
    keep_checkpoints: int = 2  # older step checkpoints are removed
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    time_limit_s: float = 0.0  # stop (and checkpoint) after this much wall time (0: no limit)
    # Speed options (see aigc.train and benchmarks/README.md); none changes the loss objective.
    compile: bool = False  # torch.compile the training step's forward + loss (eager on failure)
    adamw_impl: Literal["auto", "for-loop", "foreach", "fused"] = "auto"  # auto: fused on CPU/CUDA
    channels_last: bool = False  # NHWC memory format for the model and 4-D batch tensors

    def __post_init__(self) -> None:
        _check_positive(self, "steps", "batch_size", "log_every", "eval_batches")
        _check_non_negative(
            self, "warmup_steps", "weight_decay", "grad_clip", "eval_every", "patience",
            "sample_every", "ckpt_every", "time_limit_s", "keep_checkpoints",
        )
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr must be in (0, 1), got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        check_seed(self.seed)


def _check_positive(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value <= 0:
            raise ConfigError(f"{name} must be > 0, got {value}")


def _check_non_negative(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value < 0:
            raise ConfigError(f"{name} must be >= 0, got {value}")


# Public aliases so model configs can use the same checks.
check_positive = _check_positive
check_non_negative = _check_non_negative


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_from_dict(cls: type[C], data: dict[str, Any], *, where: str = "") -> C:
    """Build ``cls`` from a dict, rejecting unknown keys and wrong types.

    Args:
        cls: a config dataclass.
        data: keys are field names; missing keys take the field default.
        where: names the source (a file path, "checkpoint ...") in error messages.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a JSON object, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    prefix = f"{where}: " if where else ""
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(
            f"{prefix}unknown key(s) {', '.join(repr(k) for k in unknown)} for {cls.__name__}; "
            f"known keys: {', '.join(sorted(fields))}"
        )
    values = {}
    for key, value in data.items():
        values[key] = _coerce(value, hints[key], f"{prefix}{cls.__name__}.{key}")
    return cls(**values)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON config file: ``{"model": {...}, "train": {...}}`` (either part optional)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not set(data) <= {"family", "model", "train", "data"}:
        raise ConfigError(
            f"config file {path}: expected an object with keys among 'family', 'model', "
            f"'train', 'data'; got {sorted(data) if isinstance(data, dict) else type(data).__name__}"
        )
    return data


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Check ``value`` against the annotation ``tp``; allow only int->float and list->tuple."""
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, option, name)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{name}: {value!r} matches none of {tp}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{name} must have {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{name}: unsupported config type {tp}")  # pragma: no cover


def parse_cli_value(text: str, tp: Any, name: str) -> Any:
    """Parse one CLI flag value for a field annotated ``tp`` (JSON for tuples)."""
    origin = get_origin(tp)
    if tp is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--{name.replace('_', '-')} expects true/false, got {text!r}")
    if tp is int or tp is float:
        try:
            return _coerce(json.loads(text), tp, f"--{name.replace('_', '-')}")
        except json.JSONDecodeError:
            raise ConfigError(f"--{name.replace('_', '-')} expects a number, got {text!r}") from None
    if origin is tuple:
        parts = [p for p in text.replace(",", " ").split() if p]
        try:
            parsed = [json.loads(p) for p in parts]
        except json.JSONDecodeError:
            parsed = parts
        return _coerce(parsed, tp, f"--{name.replace('_', '-')}")
    if origin in (typing.Union, types.UnionType):
        if text.lower() == "none" and type(None) in get_args(tp):
            return None
        for option in get_args(tp):
            if option is type(None):
                continue
            try:
                return parse_cli_value(text, option, name)
            except ConfigError:
                continue
        raise ConfigError(f"--{name.replace('_', '-')}: {text!r} matches none of {tp}")
    return _coerce(text, tp, f"--{name.replace('_', '-')}")
