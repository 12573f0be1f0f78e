"""The monitor's input: the same id twice counted once; bad lines (not JSON, no text, no id, an
event of 10 MB) counted and reported with their line numbers without stopping the stream; a
followed file that grows, is truncated and is rotated; standard input through ``aigc monitor``."""

import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from monitor_fixtures import TextScorer, stream, write_jsonl

from aigc.apps.sentiment.monitor import Monitor, MonitorConfig, follow_file

ROOT = Path(__file__).resolve().parents[1]


def _monitor(tmp_path, name="m.db", **cfg):
    return Monitor(TextScorer(), MonitorConfig(**cfg), tmp_path / name)


def test_duplicates_counted_once_across_batches_and_within(tmp_path):
    m = _monitor(tmp_path)
    r = m.process_events([{"id": 1, "text": "$ACME [s=0.5]"}, {"id": "1", "text": "$ACME again"},
                          {"id": 2, "text": "$ACME [s=0.1]"}])
    assert (r.accepted, r.duplicates) == (2, 1)
    r = m.process_events([{"id": 2, "text": "$ACME [s=0.9]"}, {"id": 3, "text": "no entity"}])
    assert (r.accepted, r.duplicates, r.untagged) == (1, 1, 1)
    assert m.entities["$ACME"]["n"] == 2
    assert m.status()["events"] == 3 and m.status()["duplicates"] == 2


def test_bad_lines_reported_with_numbers_and_the_stream_goes_on(tmp_path):
    path = tmp_path / "events.jsonl"
    big = json.dumps({"id": "big", "text": "$ACME " + "x" * (10 * 1024 * 1024)})
    write_jsonl(path, [{"id": "a", "text": "$ACME [s=0.2]"}],
                extra=["{not json", json.dumps({"id": "b"}), big, json.dumps({"text": "$ACME"}),
                       json.dumps([1, 2]), "", json.dumps({"id": "c", "text": "$ACME [s=0.3]",
                                                           "time": "2026-11-30T10:00:00Z"}),
                       json.dumps({"id": "d", "text": "$ACME", "time": "yesterday"})])
    m = _monitor(tmp_path)
    seen = []
    follow_file(path, m, threading.Event(), once=True, batch_lines=3,
                on_batch=lambda r: seen.extend(r.bad))
    reasons = {line: reason for _, line, reason in seen}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 9]
    assert reasons[2].startswith("not JSON")
    assert reasons[3] == "missing text"
    assert reasons[4] == "event over 65536 bytes"
    assert reasons[5] == "missing id"
    assert reasons[6].startswith("an event must be a JSON object")
    assert "ISO 8601" in reasons[9]
    status = m.status()
    assert status["events"] == 2 and status["bad"] == 6
    assert {b["line"] for b in status["bad_lines"]} == {2, 3, 4, 5, 6, 9}
    assert m.state.series("$ACME", 10)[-1]["time"] == datetime(2026, 11, 30, 10,
                                                               tzinfo=UTC).timestamp()


def test_oversized_event_through_the_api_path(tmp_path):
    m = _monitor(tmp_path, max_event_bytes=1000)
    r = m.process_events([{"id": 1, "text": "$ACME " + "y" * 2000}, {"id": 2, "text": "$ACME"}])
    assert r.accepted == 1 and r.bad == [("api", 0, "event over 1000 bytes")]


def test_follow_resumes_and_survives_truncation_and_rotation(tmp_path):
    path = tmp_path / "events.jsonl"
    events = stream(30, seed=0)
    write_jsonl(path, events[:10])
    m = _monitor(tmp_path)
    stop = threading.Event()
    follow_file(path, m, stop, once=True)
    assert m.status()["events"] == 10
    # a half-written line waits for its end
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(events[10])[:15])
    thread = threading.Thread(target=follow_file, args=(path, m, stop),
                              kwargs={"poll_s": 0.02})
    thread.start()
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(events[10])[15:] + "\n")
        _wait(lambda: m.status()["events"] == 11)
        # truncated in place and rewritten: read again from its start (ids 0..9 are duplicates)
        path.write_text("", encoding="utf-8")
        _wait(lambda: m.status()["position"]["offset"] == 0)
        write_jsonl(path, events[5:15])
        _wait(lambda: m.status()["events"] == 15)
        assert m.status()["duplicates"] == 6
        # rotated: renamed away (with one more line written to it first), a new file created
        os.rename(path, tmp_path / "events.jsonl.1")
        write_jsonl(tmp_path / "events.jsonl.1", events[15:16])
        write_jsonl(path, events[16:30])
        _wait(lambda: m.status()["events"] == 30)
    finally:
        stop.set()
        thread.join(10)
    assert m.status()["position"]["line"] == 14
    assert m.status()["bad"] == 0


def _wait(cond, timeout=10.0):
    import time

    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def test_cli_reads_stdin_and_reports_bad_lines(tmp_path):
    lines = [json.dumps(e) for e in stream(120, seed=1, shift_at=None)]
    lines.insert(5, "garbage")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "aigc", "monitor", "--state", str(tmp_path / "s.db"),
         "--scorer", "vader"], input="\n".join(lines + lines[:3]) + "\n", text=True,
        capture_output=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "stdin line 6: not JSON" in out.stderr
    assert "120 events, 3 duplicates, 1 bad lines" in out.stderr
    bad = subprocess.run([sys.executable, "-m", "aigc", "monitor", "--once"], text=True,
                         capture_output=True, env=env, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "aigc: error: --once goes with --follow FILE (standard input is read to its end anyway)"]


def test_concurrent_batches_count_every_event_once(tmp_path):
    """The studio ingests from several threads: batches serialize, nothing is lost or doubled,
    and readers can run meanwhile."""
    m = _monitor(tmp_path)
    events = stream(2000, seed=5)
    chunks = [events[i:i + 50] + events[i:i + 5] for i in range(0, 2000, 50)]
    errors = []

    def work(part):
        try:
            for c in part:
                m.process_events(c)
                m.entity_summaries()
                m.status()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(chunks[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    status = m.status()
    assert status["events"] == 2000 and status["duplicates"] == 5 * 40
    assert sum(e["events"] for e in m.entity_summaries()) == 2000


def test_an_event_from_the_future_cannot_end_volume_alerts(tmp_path):
    """A client-supplied time far ahead would move the volume buckets there for good (every
    later event lands in a closed bucket): such an event is refused as bad, the rest taken."""
    m = Monitor(TextScorer(), MonitorConfig(volume_bucket_seconds=60), tmp_path / "m.db",
                clock=lambda: 5000.0)
    m.process_events([{"id": "a", "text": "$ACME news [s=0.1]", "time": 1000.0}])
    bucket = m.bucket
    r = m.process_events([
        {"id": "far", "text": "$ACME news [s=0.1]", "time": 1e12},
        {"id": "iso", "text": "$ACME news [s=0.1]", "time": "2999-01-01T00:00:00Z"},
        {"id": "skew", "text": "$ACME news [s=0.1]", "time": 5000.0 + 3600}])
    assert [(i, "in the future" in why) for _, i, why in r.bad] == [(0, True), (1, True)]
    assert r.accepted == 1 and m.bucket == int((5000.0 + 3600) // 60) != bucket
    m.close()


def test_entities_made_up_by_texts_are_bounded(tmp_path):
    """Any "$ABC" in a text is an entity, and every batch writes (and every closed volume
    bucket visits) all of them: past ``max_entities`` a new one is ignored, known ones go on."""
    m = Monitor(TextScorer(), MonitorConfig(max_entities=3), tmp_path / "m.db")
    r = m.process_events([{"id": f"e{i}", "text": f"$ZZ{i} $ACME news [s=0.1]", "time": 1000.0}
                          for i in range(5)] +
                         [{"id": "only-new", "text": "$NEWONE news [s=0.1]", "time": 1000.0}])
    assert r.accepted == 6 and r.untagged == 1
    assert sorted(m.entities) == ["$ACME", "$ZZ0", "$ZZ1"]
    assert m.entities["$ACME"]["n"] == 5
    m.close()
    with pytest.raises(ValueError, match="max_entities"):
        MonitorConfig(max_entities=0)
