"""Shared helpers of the monitor tests: a scorer that reads the score out of the text, and
seeded synthetic streams."""

from __future__ import annotations

import http.server
import json
import random
import re
import socket
import threading
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


POSITIVE = ["great results", "strong growth", "love the new product", "excellent quarter",
            "beats estimates, good news", "wonderful guidance"]
NEGATIVE = ["terrible loss", "awful guidance", "hate this drop", "bad quarter, weak sales",
            "horrible news", "disappointing results"]


def worded_stream(n: int, seed: int, flip_at: int) -> list[dict]:
    """Texts VADER scores: $ACME positive until ``flip_at`` then negative; $OTHER mixed."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        if i % 3 == 0:
            who, words = "$OTHER", rng.choice(POSITIVE + NEGATIVE)
        else:
            pos = rng.random() < (0.8 if i < flip_at else 0.2)
            who, words = "$ACME", rng.choice(POSITIVE if pos else NEGATIVE)
        events.append({"id": f"w{i}", "text": f"{who} {words} #{i}", "time": 1000.0 + i})
    return events


class Receiver:
    """A webhook receiver on a free loopback port that answers ``statuses`` in turn (then
    200) and keeps every request."""

    def __init__(self, statuses=(), port=None):
        self.statuses, self.requests = list(statuses), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((dict(self.headers), body))
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port or free_port()),
                                                      Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
