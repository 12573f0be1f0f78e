"""Shared helpers of the monitor tests: a scorer that reads the score out of the text, and
seeded synthetic streams."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

SCORE = re.compile(r"\[s=(-?[0-9.]+)\]")


@dataclass(frozen=True)
class FakeSentiment:
    label: str
    score: float


class TextScorer:
    """Scores ``"... [s=0.4]"`` as 0.4 (0 without a tag): tests choose every score."""

    def __init__(self):
        self.calls = 0

    def score(self, texts: list[str]) -> list[FakeSentiment]:
        self.calls += 1
        out = []
        for t in texts:
            m = SCORE.search(t)
            s = float(m.group(1)) if m else 0.0
            out.append(FakeSentiment("positive" if s > 0 else "negative" if s < 0 else "neutral",
                                     s))
        return out


def stream(n: int, seed: int, shift_at: int | None = None, entity: str = "$ACME",
           before: float = 0.4, after: float = -0.4, noise: float = 0.35,
           other_every: int = 3) -> list[dict]:
    """``n`` events about ``entity`` (and every ``other_every``-th about $OTHER) one second
    apart; sentiment ``before`` then (``entity`` only) ``after`` from event ``shift_at`` on, plus
    uniform noise."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        who = "$OTHER" if other_every and i % other_every == 0 else entity
        shifted = shift_at is not None and i >= shift_at and who == entity
        s = max(-1.0, min(1.0, (after if shifted else before) + rng.uniform(-noise, noise)))
        events.append({"id": f"e{i}", "text": f"{who} news {i} [s={s:.3f}]", "time": 1000.0 + i})
    return events


def write_jsonl(path: Path, events: list, extra: list[str] = ()) -> Path:
    with open(path, "a", encoding="utf-8") as f:
        for e in events:
            f.write((e if isinstance(e, str) else json.dumps(e)) + "\n")
        for line in extra:
            f.write(line + "\n")
    return path
