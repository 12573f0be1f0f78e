"""``aigc tune FAMILY --config FILE --space FILE --trials N``: hyper-parameter search (Optuna)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="hyper-parameter search over a family's training (Optuna)")
    p.set_defaults(func=lambda args: 0)
