"""State survives a restart: a monitor killed mid-stream (SIGKILL, at any point of a batch) and
restarted on the same state gives exactly the alerts, statistics and counters of an
uninterrupted run; so does one closed and reopened between batches."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from monitor_fixtures import TextScorer, stream, worded_stream, write_jsonl

from aigc.apps.sentiment.monitor import Monitor, MonitorConfig, follow_file, load_scorers

ROOT = Path(__file__).resolve().parents[1]
CFG = MonitorConfig(volume_bucket_seconds=20, volume_warmup=10)


def _alerts(state_path) -> list[dict]:
    with sqlite3.connect(state_path) as db:
        rows = db.execute("SELECT payload FROM alerts ORDER BY seq, alert_key").fetchall()
    return [json.loads(p) for (p,) in rows]


def _counters(state_path) -> dict:
    with sqlite3.connect(state_path) as db:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        entities = dict(db.execute("SELECT entity, state FROM entities").fetchall())
    return {"counters": json.loads(meta["counters"]), "bucket": json.loads(meta["bucket"]),
            "entities": {k: json.loads(v) for k, v in entities.items()}}


def test_reopen_between_batches_equals_one_run(tmp_path):
    events = stream(1500, seed=4, shift_at=900)
    one = Monitor(TextScorer(), CFG, tmp_path / "one.db")
    one.process_events(events)
    for cut in (1, 377, 1000):
        path = tmp_path / f"cut{cut}.db"
        first = Monitor(TextScorer(), CFG, path)
        first.process_events(events[:cut])
        del first  # no close(): what was committed is all there is
        second = Monitor(TextScorer(), CFG, path)
        overlap = min(cut, 5)  # the last events of the first run are sent again: duplicates
        second.process_events(events[cut - overlap:])
        assert _alerts(path) == _alerts(tmp_path / "one.db")
        got, want = _counters(path), _counters(tmp_path / "one.db")
        assert got["counters"]["duplicates"] == overlap
        got["counters"]["duplicates"] = 0
        assert got == want
    assert [(a["entity"], a["kind"]) for a in _alerts(tmp_path / "one.db")].count(
        ("$ACME", "sentiment")) == 1


def test_sigkill_mid_stream_then_restart_gives_the_same_alerts(tmp_path):
    events = worded_stream(3000, seed=7, flip_at=2000)
    feed = write_jsonl(tmp_path / "events.jsonl", events)
    config = tmp_path / "monitor.json"
    config.write_text(json.dumps({"volume_bucket_seconds": 20, "volume_warmup": 10}))

    # the uninterrupted run, in this process
    whole = Monitor(load_scorers("vader"), CFG, tmp_path / "whole.db")
    follow_file(feed, whole, threading.Event(), once=True)
    want = _alerts(tmp_path / "whole.db")
    assert ("$ACME", "sentiment", "down") in {(a["entity"], a["kind"], a["direction"])
                                              for a in want}

    # the killed one: `aigc monitor --follow` in small batches, SIGKILLed part-way
    state = tmp_path / "killed.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "aigc", "monitor", "--follow", str(feed), "--state",
           str(state), "--config", str(config), "--scorer", "vader", "--batch", "7"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while True:
            assert time.time() < deadline and proc.poll() is None, "the monitor did not start"
            if state.exists():
                try:
                    with sqlite3.connect(state, timeout=0.1) as db:
                        row = db.execute("SELECT value FROM meta WHERE key='counters'").fetchone()
                    if row and json.loads(row[0])["events"] >= 1200:
                        break
                except sqlite3.OperationalError:
                    pass
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    done_before = _counters(state)["counters"]["events"]
    assert 1200 <= done_before < 3000
    restarted = subprocess.run(cmd + ["--once"], env=env, capture_output=True, text=True,
                               timeout=120)
    assert restarted.returncode == 0, restarted.stderr
    assert "3000 events, 0 duplicates" in restarted.stderr
    assert _alerts(state) == want
    assert _counters(state) == _counters(tmp_path / "whole.db")
