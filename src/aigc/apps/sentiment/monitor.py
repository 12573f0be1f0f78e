"""The sentiment monitor: events in, per-entity rolling sentiment and volume, alerts out.

    monitor = Monitor(load_scorers("vader"), MonitorConfig(), "monitor.db")
    result = monitor.process_events([{"id": "1", "text": "$ACME beats estimates"}])
    follow_file("events.jsonl", monitor, stop=threading.Event())   # like tail -f

An **event** is a JSON object ``{"id", "text", "time"?, "source"?, "lang"?}``: ``id`` a string or
integer (the same id twice is counted once), ``text`` a non-empty string, ``time`` unix seconds or
an ISO 8601 string, at most a day ahead of the monitor's clock (default: when it arrived), ``lang`` ``en`` or ``zh`` (default: ``zh`` when the
text holds CJK characters). A line or event that breaks these rules, or is over
``max_event_bytes``, is counted and reported with its line number (or index), and the stream goes
on.

Per entity (see :mod:`aigc.apps.sentiment.entities`) the monitor keeps:

- **sentiment**: each mentioning text's score in [-1, 1] feeds an EWMA (the plotted index,
  ``sentiment_alpha``) and a two-sided CUSUM (:mod:`aigc.apps.sentiment.changepoint`) with
  warm-up ``sentiment_warmup`` texts, allowance ``sentiment_k`` and threshold ``sentiment_h``
  (in units of the warm-up's standard deviation, floored at ``sentiment_min_sigma``);
- **volume**: mentions are counted in buckets of ``volume_bucket_seconds`` of event time (or of
  ``volume_bucket_events`` events of the whole stream when that is > 0); each closed bucket's
  count feeds an EWMA (``volume_alpha``) and a CUSUM (``volume_warmup`` buckets, ``volume_k``,
  ``volume_h``, sigma floored at ``volume_min_sigma`` mentions).

A CUSUM alarm is an alert: kind ``sentiment`` or ``volume``, direction ``up`` or ``down``, with
the texts behind it (the entity's last ``alert_texts`` texts). Alerts are stored (the studio's
dashboard reads them) and queued in the webhook outbox (:mod:`aigc.apps.sentiment.alerts`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import time as _time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from aigc.apps.sentiment.changepoint import Cusum, ewma
from aigc.apps.sentiment.entities import EntityTagger
from aigc.apps.sentiment.state import MAX_BAD_LINES_KEPT, NEVER, MonitorState

CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
MAX_ID_CHARS = 256
log = logging.getLogger("aigc.monitor")
MAX_FUTURE_S = 86_400  # an event's time may be at most a day ahead of the monitor's clock
MAX_GAP_BUCKETS = 10_000  # an idle stream closes at most this many empty volume buckets at once


class Scorer(Protocol):
    """What the monitor needs of a classifier (``aigc.apps.sentiment.scorer.Scorer``)."""

    def score(self, texts: list[str]) -> list[Any]:  # items with .score in [-1, 1]
        ...


@dataclass(frozen=True)
class MonitorConfig:
    """How the monitor tags, scores and detects (a YAML or JSON file maps onto these fields)."""

    keywords: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    cn_stocks: Mapping[str, str] | None = None  # None: the example table in entities.py
    any_a_share_code: bool = False
    # vader, snownlp, a checkpoint path, or per language en=NAME,zh=NAME (see load_scorers)
    scorer: str = "en=vader,zh=snownlp"
    max_event_bytes: int = 65536
    # entities are made by the texts (any "$ABC" is one): past this many, a new one is ignored,
    # since every batch writes, and every closed volume bucket visits, all of them
    max_entities: int = 10_000
    sentiment_alpha: float = 0.05
    sentiment_warmup: int = 50
    # k = 0.3, h = 14 chosen on the *validation* split with VADER (benchmarks/
    # monitor_tune_sentiment.py): a flip of a 75/25 positive mix to 25/75 moves the mean VADER
    # score by only ~0.5 sigma, and k = 0.5 (tuned for 1-sigma shifts) missed most such turns
    sentiment_k: float = 0.3
    sentiment_h: float = 14.0
    sentiment_min_sigma: float = 0.1
    sentiment_rewarm: int = 50  # the warm-up after an alert (texts)
    volume_bucket_seconds: float = 60.0
    volume_bucket_events: int = 0
    volume_alpha: float = 0.2
    volume_warmup: int = 30
    volume_k: float = 0.5
    volume_h: float = 10.0
    volume_min_sigma: float = 1.0
    volume_rewarm: int = 8  # the warm-up after an alert (buckets)
    alert_texts: int = 10
    # webhook (the secret comes from the environment variable named here, never from the file)
    webhook_url: str | None = None
    webhook_secret_env: str = "AIGC_MONITOR_WEBHOOK_SECRET"
    webhook_timeout_s: float = 5.0
    webhook_backoff_s: float = 1.0
    webhook_max_backoff_s: float = 600.0

    def __post_init__(self) -> None:
        positive = ("max_event_bytes", "max_entities", "sentiment_warmup", "volume_warmup", "alert_texts",
                    "sentiment_h", "volume_h", "sentiment_min_sigma", "volume_min_sigma",
                    "webhook_timeout_s", "webhook_backoff_s", "webhook_max_backoff_s")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"monitor config: {name} must be a number > 0, got {value!r}")
        for name in ("sentiment_alpha", "volume_alpha"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value <= 1:
                raise ValueError(f"monitor config: {name} must be in (0, 1], got {value!r}")
        for name in ("sentiment_k", "volume_k"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"monitor config: {name} must be a number >= 0, got {value!r}")
        for name in ("sentiment_warmup", "volume_warmup", "sentiment_rewarm", "volume_rewarm"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 2:
                raise ValueError(f"monitor config: {name} must be an integer >= 2, got "
                                 f"{getattr(self, name)!r}")
        if self.volume_bucket_seconds <= 0 or self.volume_bucket_events < 0:
            raise ValueError("monitor config: volume_bucket_seconds must be > 0 and "
                             f"volume_bucket_events >= 0, got {self.volume_bucket_seconds} and "
                             f"{self.volume_bucket_events}")

    def tagger(self) -> EntityTagger:
        return EntityTagger(self.keywords, self.cn_stocks, self.any_a_share_code)


def load_config(path: str | Path | None) -> MonitorConfig:
    """A :class:`MonitorConfig` from a YAML (``.yaml``/``.yml``) or JSON file; None: defaults.
    Unknown keys and wrong types are refused with the file's name."""
    if path is None:
        return MonitorConfig()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"monitor config {path}: cannot read it ({exc.strerror})") from exc
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except Exception as exc:
        raise ValueError(f"monitor config {path}: not valid "
                         f"{'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: "
                         f"{exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"monitor config {path}: the top level must be a mapping of settings")
    if "webhook_secret" in raw:
        raise ValueError(f"monitor config {path}: the webhook secret goes in the environment "
                         "variable named by webhook_secret_env, not in the file")
    known = {f.name for f in dataclasses.fields(MonitorConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"monitor config {path}: unknown key(s) {unknown}; allowed: "
                         f"{sorted(known)}")
    kw = dict(raw)
    if "keywords" in kw:
        if not isinstance(kw["keywords"], dict):
            raise ValueError(f"monitor config {path}: keywords must map entity names to lists "
                             "of words")
        kw["keywords"] = {k: tuple(v) if isinstance(v, list) else v
                          for k, v in kw["keywords"].items()}
    if "cn_stocks" in kw and kw["cn_stocks"] is not None:
        if not isinstance(kw["cn_stocks"], dict):
            raise ValueError(f"monitor config {path}: cn_stocks must map six-digit codes "
                             "(strings) to names")
        kw["cn_stocks"] = {str(k): v for k, v in kw["cn_stocks"].items()}
    try:
        config = MonitorConfig(**kw)
        config.tagger()  # checks keywords and the stock table
    except (TypeError, ValueError) as exc:
        raise ValueError(f"monitor config {path}: {exc}") from exc
    return config


# ---------------------------------------------------------------------------- scorers
def load_scorers(spec: str) -> dict[str, Scorer]:
    """Scorers by language from ``"vader"``, ``"snownlp"``, a checkpoint path, or
    ``"en=vader,zh=snownlp"``; one name alone scores every language."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise ValueError(f"scorer: give a name (vader, snownlp, a checkpoint path) or "
                         f"en=NAME,zh=NAME, got {spec!r}")
    out: dict[str, Scorer] = {}
    for part in parts:
        lang, _, name = part.rpartition("=") if "=" in part else ("*", "", part)
        if lang not in ("*", "en", "zh"):
            raise ValueError(f"scorer: language {lang!r} in {spec!r} is not en or zh")
        out[lang] = _load_scorer(name)
    if "*" not in out and set(out) != {"en", "zh"}:
        raise ValueError(f"scorer {spec!r}: name one scorer for every language, or one for "
                         "each of en and zh (e.g. en=vader,zh=snownlp)")
    return out


def _load_scorer(name: str) -> Scorer:
    from aigc.apps.sentiment.scorer import load_scorer  # loads torch: only when needed

    return load_scorer(name)


# ---------------------------------------------------------------------------- events
@dataclass(frozen=True)
class Event:
    id: str
    text: str
    time: float
    source: str | None
    lang: str


@dataclass
class BatchResult:
    """What one batch did: events accepted, duplicates skipped, bad lines (origin, line or
    index, reason), and the alerts raised."""

    accepted: int = 0
    duplicates: int = 0
    untagged: int = 0  # accepted events that mention no entity (not scored)
    bad: list[tuple[str, int, str]] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)


def _parse_time(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("time must be unix seconds or an ISO 8601 string")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("time must be a finite number")
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"time {value[:40]!r} is not ISO 8601") from None
        return parsed.timestamp()
    raise ValueError("time must be unix seconds or an ISO 8601 string")


def parse_event(obj: Any, now: float) -> Event:
    """An :class:`Event` from a decoded JSON value, or ValueError saying what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"an event must be a JSON object, got {type(obj).__name__}")
    if "text" not in obj:
        raise ValueError("missing text")
    text = obj["text"]
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string")
    if "id" not in obj:
        raise ValueError("missing id")
    eid = obj["id"]
    if isinstance(eid, bool) or not isinstance(eid, str | int) or str(eid) == "":
        raise ValueError("id must be a non-empty string or an integer")
    eid = str(eid)
    if len(eid) > MAX_ID_CHARS:
        raise ValueError(f"id longer than {MAX_ID_CHARS} characters")
    t = _parse_time(obj["time"]) if obj.get("time") is not None else now
    if t > now + MAX_FUTURE_S:
        # one such event would move the volume buckets there for good: every later event
        # would fall in a closed bucket and no volume alert could fire again
        raise ValueError(f"time {t:.0f} is more than {MAX_FUTURE_S} s after now ({now:.0f}); "
                         "a time in the future is refused")
    source = obj.get("source")
    if source is not None and not isinstance(source, str):
        raise ValueError("source must be a string")
    lang = obj.get("lang")
    if lang is None:
        lang = "zh" if CJK.search(text) else "en"
    elif lang not in ("en", "zh"):
        raise ValueError(f"lang must be 'en' or 'zh', got {str(lang)[:20]!r}")
    return Event(eid, text, t, source, lang)


# ---------------------------------------------------------------------------- the monitor
class Monitor:
    """Follows events, keeps per-entity statistics in ``state_path`` and raises alerts.

    Args:
        scorers: a scorer for every language (``{"*": s}``), or per language (``{"en": a,
            "zh": b}``); a bare scorer object is taken for every language.
        config: the :class:`MonitorConfig`.
        state_path: the SQLite file; an existing one is resumed.
        clock: the time of an event without one (and of alert creation).
        sender: the :class:`~aigc.apps.sentiment.alerts.WebhookSender` alerts are queued for;
            alerts raised without one are stored for the dashboard but never sent (configuring
            a webhook later does not flood it with the past).
    """

    def __init__(self, scorers: Scorer | Mapping[str, Scorer], config: MonitorConfig,
                 state_path: str | Path, clock: Callable[[], float] = _time.time,
                 sender=None):
        self.scorers = dict(scorers) if isinstance(scorers, Mapping) else {"*": scorers}
        self.config = config
        self.tagger = config.tagger()
        self.clock = clock
        self.state = MonitorState(state_path)
        self.entities = self.state.load_entities()
        self.counters: dict[str, int] = self.state.get_meta(
            "counters", {"events": 0, "duplicates": 0, "bad": 0, "untagged": 0, "alerts": 0})
        self.bucket: int | None = self.state.get_meta("bucket")
        self.sender = sender

    def close(self) -> None:
        self.state.close()

    # -------------------------------------------------------------- inputs
    def process_events(self, events: list[Any], origin: str = "api") -> BatchResult:
        """Events as decoded JSON values (the studio's POST); bad ones are reported by index."""
        items = []
        for i, obj in enumerate(events):
            size = len(json.dumps(obj, ensure_ascii=False).encode())
            items.append((i, None if size > self.config.max_event_bytes else obj,
                          f"event over {self.config.max_event_bytes} bytes"
                          if size > self.config.max_event_bytes else None))
        return self._ingest(items, origin)

    def process_lines(self, lines: Iterable[tuple[int, bytes]], origin: str = "stdin",
                      position: dict | None = None) -> BatchResult:
        """JSONL lines as (line number, raw bytes; None for a line over the size bound).
        ``position`` (where the reader stands) is committed with the batch."""
        items = []
        for number, raw in lines:
            if raw is None or len(raw) > self.config.max_event_bytes:
                items.append((number, None, f"event over {self.config.max_event_bytes} bytes"))
                continue
            if not raw.strip():
                continue  # a blank line is not an event
            try:
                items.append((number, json.loads(raw), None))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                items.append((number, None, f"not JSON: {exc.msg if hasattr(exc, 'msg') else exc}"))
        return self._ingest(items, origin, position)

    # -------------------------------------------------------------- the path
    def _ingest(self, items: list[tuple[int, Any, str | None]], origin: str,
                position: dict | None = None) -> BatchResult:
        with self.state.lock:  # one batch at a time (the studio posts from several threads)
            return self._ingest_locked(items, origin, position)

    def _ingest_locked(self, items: list[tuple[int, Any, str | None]], origin: str,
                       position: dict | None) -> BatchResult:
        result = BatchResult()
        now = self.clock()
        events: list[Event] = []
        for number, obj, error in items:
            if error is None:
                try:
                    events.append(parse_event(obj, now))
                    continue
                except ValueError as exc:
                    error = str(exc)
            result.bad.append((origin, number, error))
        # the same id twice is counted once (within the batch and against everything seen)
        seen = self.state.seen_among([e.id for e in events])
        fresh: list[Event] = []
        for e in events:
            if e.id in seen:
                result.duplicates += 1
            else:
                seen.add(e.id)
                fresh.append(e)
        tags = self._admit([self.tagger.tag(e.text) for e in fresh])
        scores = self._score([e for e, t in zip(fresh, tags, strict=True) if t])
        points: list[tuple] = []
        alerts: list[dict] = []
        it = iter(scores)
        for e, entity_ids in zip(fresh, tags, strict=True):
            self.counters["events"] += 1
            seq = self.counters["events"]
            alerts += self._advance_volume(e, seq)
            if not entity_ids:
                result.untagged += 1
                continue
            s = next(it)
            for entity in entity_ids:
                alerts += self._update_sentiment(entity, e, s, seq, points)
        result.accepted = len(fresh)
        result.alerts = alerts
        self.counters["duplicates"] += result.duplicates
        self.counters["bad"] += len(result.bad)
        self.counters["untagged"] += result.untagged
        self.counters["alerts"] += len(alerts)
        self._commit(fresh, points, alerts, result.bad, position)
        return result

    def _admit(self, tags: list[list[str]]) -> list[list[str]]:
        """The tags without the new entities past ``max_entities`` (logged, not stored)."""
        known, room, refused = set(self.entities), self.config.max_entities - len(self.entities), 0
        out = []
        for ids in tags:
            kept = []
            for entity in ids:
                if entity not in known:
                    if room <= 0:
                        refused += 1
                        continue
                    known.add(entity)
                    room -= 1
                kept.append(entity)
            out.append(kept)
        if refused:
            log.warning("monitor: %d mention(s) of new entities ignored: at the limit of %d "
                        "entities (max_entities)", refused, self.config.max_entities)
        return out

    def _score(self, events: list[Event]) -> list[float]:
        out: list[float | None] = [None] * len(events)
        by_lang: dict[str, list[int]] = {}
        for i, e in enumerate(events):
            by_lang.setdefault(e.lang if e.lang in self.scorers else "*", []).append(i)
        for lang, idx in by_lang.items():
            if lang not in self.scorers:
                raise ValueError(f"no scorer for language {lang!r}; loaded: "
                                 f"{sorted(self.scorers)}")
            scored = self.scorers[lang].score([events[i].text for i in idx])
            for i, s in zip(idx, scored, strict=True):
                value = float(s.score)
                if not -1.0 <= value <= 1.0:
                    raise ValueError(f"the scorer returned {value} outside [-1, 1]")
                out[i] = value
        return out  # type: ignore[return-value]

    def _entity(self, entity: str) -> dict:
        st = self.entities.get(entity)
        if st is None:
            c = self.config
            st = self.entities[entity] = {
                "n": 0, "index": None, "volume": None, "count": 0, "last_time": None,
                "sentiment": Cusum(c.sentiment_k, c.sentiment_h, c.sentiment_warmup,
                                   c.sentiment_min_sigma, rewarm=c.sentiment_rewarm).to_dict(),
                "rate": Cusum(c.volume_k, c.volume_h, c.volume_warmup,
                              c.volume_min_sigma, rewarm=c.volume_rewarm).to_dict(),
                "recent": [],
            }
        return st

    def _update_sentiment(self, entity: str, e: Event, score: float, seq: int,
                          points: list[tuple]) -> list[dict]:
        st = self._entity(entity)
        st["n"] += 1
        st["count"] += 1
        st["last_time"] = e.time
        st["index"] = ewma(st["index"], score, self.config.sentiment_alpha)
        st["recent"] = (st["recent"] + [{"id": e.id, "text": e.text[:500], "score": score,
                                          "time": e.time, "source": e.source}]
                        )[-self.config.alert_texts:]
        points.append((entity, seq, e.time, st["index"], st["volume"]))
        det = Cusum.from_dict(st["sentiment"])
        baseline = (det.mu0, det.sigma0)
        direction = det.update(score)
        st["sentiment"] = det.to_dict()
        if direction is None:
            return []
        return [self._alert(entity, "sentiment", direction, seq, e.time, baseline,
                            st["index"])]

    def _bucket_of(self, e: Event, seq: int) -> int:
        if self.config.volume_bucket_events > 0:
            return (seq - 1) // self.config.volume_bucket_events
        return math.floor(e.time / self.config.volume_bucket_seconds)

    def _advance_volume(self, e: Event, seq: int) -> list[dict]:
        """Close the volume buckets before ``e``'s for every entity (late events count in the
        open bucket)."""
        b = self._bucket_of(e, seq)
        if self.bucket is None:
            self.bucket = b
        if b <= self.bucket:
            return []
        alerts = []
        for entity in sorted(self.entities):
            st = self.entities[entity]
            det = Cusum.from_dict(st["rate"])
            counts = [st["count"]] + [0] * min(b - self.bucket - 1, MAX_GAP_BUCKETS)
            for count in counts:
                baseline = (det.mu0, det.sigma0)
                st["volume"] = ewma(st["volume"], float(count), self.config.volume_alpha)
                direction = det.update(float(count))
                if direction is not None:
                    alerts.append(self._alert(entity, "volume", direction, seq, e.time,
                                              baseline, st["volume"], count=count))
            st["count"] = 0
            st["rate"] = det.to_dict()
        self.bucket = b
        return alerts

    def _alert(self, entity: str, kind: str, direction: str, seq: int, t: float,
               baseline: tuple, current: float | None, count: int | None = None) -> dict:
        st = self.entities[entity]
        alert = {
            "alert_id": f"{entity}:{kind}:{seq}",
            "entity": entity, "name": self.tagger.display(entity),
            "kind": kind, "direction": direction,
            "event_seq": seq, "entity_events": st["n"], "time": t,
            "baseline": baseline[0], "sigma": baseline[1], "current": current,
            "texts": list(st["recent"]),
        }
        if count is not None:
            alert["bucket_count"] = count
        return alert

    def _commit(self, fresh: list[Event], points: list[tuple], alerts: list[dict],
                bad: list[tuple[str, int, str]], position: dict | None) -> None:
        created = self.clock()
        with self.state.transaction() as db:
            db.executemany("INSERT INTO seen (id) VALUES (?)", [(e.id,) for e in fresh])
            db.executemany(
                "INSERT INTO entities (entity, state) VALUES (?, ?) ON CONFLICT(entity) "
                "DO UPDATE SET state = excluded.state",
                [(k, json.dumps(v)) for k, v in self.entities.items()])
            db.executemany("INSERT INTO points (entity, seq, time, sentiment, volume) "
                           "VALUES (?, ?, ?, ?, ?)", points)
            db.executemany(
                "INSERT OR IGNORE INTO alerts (alert_key, entity, kind, direction, seq, time, "
                "payload, created, next_attempt, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(a["alert_id"], a["entity"], a["kind"], a["direction"], a["event_seq"],
                  a["time"], json.dumps(a, ensure_ascii=False), created,
                  0.0 if self.sender is not None else NEVER,
                  None if self.sender is not None else "no webhook configured")
                 for a in alerts])
            db.executemany("INSERT INTO bad_lines (origin, line, reason) VALUES (?, ?, ?)", bad)
            if bad:
                db.execute("DELETE FROM bad_lines WHERE id <= (SELECT MAX(id) FROM bad_lines) "
                           "- ?", (MAX_BAD_LINES_KEPT,))
            MonitorState.put_meta(db, "counters", self.counters)
            MonitorState.put_meta(db, "bucket", self.bucket)
            if position is not None:
                MonitorState.put_meta(db, "position", position)

    def save_position(self, position: dict) -> None:
        """Record where the reader stands when no batch carries it (a truncated file)."""
        with self.state.transaction() as db:
            MonitorState.put_meta(db, "position", position)

    # -------------------------------------------------------------- reading
    # (readers take the state's lock: the studio reads while another request ingests)
    def status(self) -> dict:
        """Counters, entities, the webhook outbox, the reader's position, the newest bad
        lines."""
        with self.state.lock:
            return {**self.counters, "entities": len(self.entities),
                    "outbox": self.state.outbox_size(),
                    "position": self.state.get_meta("position"),
                    "bad_lines": self.state.bad_lines(20)}

    def entity_summaries(self) -> list[dict]:
        """Every entity seen, the most mentioned first."""
        with self.state.lock:
            return [{"entity": k, "name": self.tagger.display(k), "events": v["n"],
                     "index": v["index"], "volume": v["volume"], "last_time": v["last_time"],
                     "warming_up": v["sentiment"]["mu0"] is None}
                    for k, v in sorted(self.entities.items(), key=lambda kv: -kv[1]["n"])]


# ---------------------------------------------------------------------------- readers
def _read_line(f, limit: int) -> tuple[bytes | None, bool, bool]:
    """One line of at most ``limit`` bytes from the binary file ``f``: (the bytes, or None for
    an oversized line whose bytes were skipped; whether the line ended with a newline; whether
    anything was read). An oversized line is never held in memory whole."""
    raw = f.readline(limit + 1)
    if not raw:
        return None, False, False
    if raw.endswith(b"\n"):
        return raw, True, True
    if len(raw) <= limit:
        return raw, False, True  # the last line, or one still being written
    while True:  # over the bound: skip to its end
        chunk = f.readline(1 << 16)
        if not chunk:
            return None, False, True
        if chunk.endswith(b"\n"):
            return None, True, True


def read_stream(stream, monitor: Monitor, batch_lines: int = 256,
                on_batch: Callable[[BatchResult], None] | None = None) -> dict[str, int]:
    """Read JSONL from a binary stream (standard input) to its end; returns totals."""
    totals = {"accepted": 0, "duplicates": 0, "bad": 0, "alerts": 0}
    number, batch = 0, []
    limit = monitor.config.max_event_bytes

    def flush():
        r = monitor.process_lines(batch, origin="stdin")
        for k, v in (("accepted", r.accepted), ("duplicates", r.duplicates),
                     ("bad", len(r.bad)), ("alerts", len(r.alerts))):
            totals[k] += v
        if on_batch:
            on_batch(r)
        batch.clear()

    while True:
        raw, _, got = _read_line(stream, limit)
        if not got:
            break
        number += 1
        batch.append((number, raw))
        if len(batch) >= batch_lines:
            flush()
    if batch:
        flush()
    return totals


def follow_file(path: str | Path, monitor: Monitor, stop, poll_s: float = 0.5,
                batch_lines: int = 256, once: bool = False,
                on_batch: Callable[[BatchResult], None] | None = None,
                on_idle: Callable[[], None] | None = None) -> None:
    """Follow the JSONL file ``path`` like ``tail -F`` until ``stop`` (a threading.Event) is set
    (or, with ``once``, until its end).

    Where it stands (the file's inode, byte offset and line number) is committed with every
    batch, so a restarted monitor resumes after the last committed line. A file truncated in
    place is read again from its start; a rotated file (renamed away and a new one created) is
    read to its end first, then the new file from its start. A line still being written (no
    newline yet) waits for its end.
    """
    import os

    path = Path(path)
    limit = monitor.config.max_event_bytes
    origin = str(path)
    pos = monitor.state.get_meta("position")
    f = None
    inode = offset = line = 0
    skipping = False  # inside an oversized line reported already; drop bytes to its newline
    try:
        while not stop.is_set():
            if f is None:
                try:
                    f = open(path, "rb")  # noqa: SIM115 - held open across the loop
                except FileNotFoundError:
                    if once:
                        raise ValueError(f"{path}: no such file to follow") from None
                    stop.wait(poll_s)
                    continue
                st = os.fstat(f.fileno())
                inode, offset, line, skipping = st.st_ino, 0, 0, False
                if pos and pos.get("path") == origin and pos.get("inode") == inode \
                        and pos.get("offset", 0) <= st.st_size:
                    offset, line, skipping = pos["offset"], pos["line"], pos.get("skipping",
                                                                                 False)
                f.seek(offset)
                pos = None  # the saved position applies to the first open only
            batch: list[tuple[int, bytes | None]] = []
            at_end = False
            while len(batch) < batch_lines:
                start = f.tell()
                if skipping:
                    chunk = f.readline(1 << 16)
                    if not chunk:
                        at_end = True
                        break
                    skipping = not chunk.endswith(b"\n")
                    offset = f.tell()
                    continue
                raw, complete, got = _read_line(f, limit)
                if not got:
                    at_end = True
                    break
                if not complete:
                    if raw is None:  # oversized and still being written: report it now
                        line += 1
                        batch.append((line, None))
                        skipping, offset = True, f.tell()
                        continue
                    if not once:  # wait for the rest of the line
                        f.seek(start)
                        at_end = True
                        break
                line += 1
                batch.append((line, raw))
                offset = f.tell()
            position = {"path": origin, "inode": inode, "offset": offset, "line": line,
                        "skipping": skipping}
            if batch:
                r = monitor.process_lines(batch, origin=origin, position=position)
                if on_batch:
                    on_batch(r)
            if not at_end:
                continue
            if on_idle:
                on_idle()
            # rotated (the path now names another file) or truncated in place?
            try:
                now_inode = os.stat(path).st_ino
            except FileNotFoundError:
                now_inode = None
            if now_inode != inode:
                if once:
                    break
                if now_inode is not None:
                    f.close()
                    f = None
                    continue
            elif os.fstat(f.fileno()).st_size < offset:
                f.seek(0)
                offset, line, skipping = 0, 0, False
                monitor.save_position({"path": origin, "inode": inode, "offset": 0, "line": 0,
                                       "skipping": False})
                continue
            if once:
                break
            stop.wait(poll_s)
    finally:
        if f is not None:
            f.close()
