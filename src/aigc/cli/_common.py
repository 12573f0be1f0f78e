"""Helpers shared by the sub-commands: config flags generated from dataclass fields."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, get_type_hints

from aigc.config import parse_cli_value


def add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """One ``--field-name`` flag per field of the config dataclass ``cls`` (default: unset)."""
    group = parser.add_argument_group(title)
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        group.add_argument(
            f"--{f.name.replace('_', '-')}", dest=f"cfg__{cls.__name__}__{f.name}", default=None,
            metavar=_metavar(hints[f.name]), help=f"(default: {default})",
        )


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
