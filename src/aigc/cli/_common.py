"""Helpers shared by the sub-commands: config flags generated from dataclass fields, and the
checks every command makes on ``--seed`` and ``--out`` before it does any work."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_type_hints

from aigc.config import check_seed, parse_cli_value
from aigc.errors import AigcError


def add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str, *,
                     defaults: Mapping[str, Any] | None = None,
                     from_data: Mapping[str, str] | None = None) -> None:
    """One ``--field-name`` flag per field of the config dataclass ``cls`` (value: unset).

    The help of each flag shows the value a run really uses when the flag is left out: the
    command's ``defaults`` (a family's ``TRAIN_DEFAULTS``, ``MODEL_DEFAULTS``) over the dataclass
    default, or, for a field in ``from_data``, what the data sets it to. A default is written the
    way the flag takes it (a tuple as ``0.9,0.95``).
    """
    group = parser.add_argument_group(title)
    hints = get_type_hints(cls)
    defaults, from_data = defaults or {}, from_data or {}
    unknown = (set(defaults) | set(from_data)) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise AssertionError(f"defaults for fields {sorted(unknown)} that {cls.__name__} lacks")
    for f in dataclasses.fields(cls):
        if f.name in from_data:
            shown = from_data[f.name]
        else:
            shown = flag_text(defaults[f.name] if f.name in defaults else f.default)
        group.add_argument(
            f"--{f.name.replace('_', '-')}", dest=f"cfg__{cls.__name__}__{f.name}", default=None,
            metavar=_metavar(hints[f.name]), help=f"(default: {shown})",
        )


def flag_text(value: Any) -> str:
    """``value`` as a config flag takes it (inverse of :func:`aigc.config.parse_cli_value`)."""
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return str(value)


def _metavar(tp: Any) -> str:
    name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
    return name.upper() if name in ("int", "float", "str", "bool") else name


def config_flags(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` given on the command line, parsed and type-checked."""
    hints = get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        raw = getattr(args, f"cfg__{cls.__name__}__{f.name}", None)
        if raw is not None:
            out[f.name] = parse_cli_value(raw, hints[f.name], f.name)
    return out


def check_seed_flag(args: argparse.Namespace) -> None:
    """Refuse a ``--seed`` outside 0..MAX_SEED (one line, exit 2) before a command starts work.

    Called by :func:`aigc.cli.main` for every command whose parser has a ``--seed`` flag; commands
    that parse a second argv of their own (``aigc eval``) call it on that namespace too.
    """
    seed = getattr(args, "seed", None)
    if seed is not None:
        check_seed(seed, "--seed")


def check_out_file(path: str | Path, flag: str = "--out") -> Path:
    """Check, before any work, that the file ``path`` can be written: it is not a folder, and its
    folder exists or can be created. Nothing is created here, so a refused run leaves nothing.

    Returns the path. Raises :class:`AigcError` naming the flag, the path and the reason.
    """
    path = Path(path)
    if path.is_dir():
        raise AigcError(f"{flag} {path} is a folder; give a file path, e.g. {path / 'out.png'}")
    if path.name in ("", ".", ".."):
        raise AigcError(f"{flag} {path!s} names no file")
    parent = path.parent
    while not parent.exists():  # the nearest folder that exists must be a writable folder
        if parent.is_symlink():  # a dangling link in the way
            raise AigcError(f"{flag} {path}: {parent} is a broken link, so the folder cannot be "
                            "created")
        parent = parent.parent
    if not parent.is_dir():
        raise AigcError(f"{flag} {path}: its folder cannot be created, {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AigcError(f"{flag} {path}: {parent} is not writable")
    return path


def check_out_folder(path: str | Path, flag: str = "--out") -> Path:
    """Check, before any work, that the folder ``path`` can be used: it is not a file, and it
    exists or can be created (its nearest existing ancestor is a writable folder). Nothing is
    created here."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AigcError(f"{flag} {path} is a file; give a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise AigcError(f"{flag} {path} is not writable")
        return path
    check_out_file(path, flag)  # the same rules for the folder that will hold it
    return path
