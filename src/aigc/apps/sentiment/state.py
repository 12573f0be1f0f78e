"""The monitor's state in one SQLite file: per-entity statistics, the ids already seen, the index
points the dashboard plots, the alerts with their webhook outbox, the bad lines, and where in the
followed file the monitor stopped.

Everything one batch of events changes is written in one transaction together with the stream
position, so a monitor killed at any moment restarts from the last committed batch and computes
exactly what an uninterrupted run would have (``tests/test_monitor_state.py``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entities (entity TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS points (
    entity TEXT NOT NULL, seq INTEGER NOT NULL, time REAL NOT NULL,
    sentiment REAL, volume REAL);
CREATE INDEX IF NOT EXISTS points_entity ON points (entity, seq);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_key TEXT NOT NULL UNIQUE,
    entity TEXT NOT NULL, kind TEXT NOT NULL, direction TEXT NOT NULL,
    seq INTEGER NOT NULL, time REAL NOT NULL,
    payload TEXT NOT NULL,
    created REAL NOT NULL,
    delivered_at REAL, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0, last_error TEXT);
CREATE INDEX IF NOT EXISTS alerts_entity ON alerts (entity, id);
CREATE TABLE IF NOT EXISTS bad_lines (
    id INTEGER PRIMARY KEY AUTOINCREMENT, origin TEXT NOT NULL, line INTEGER NOT NULL,
    reason TEXT NOT NULL);
"""

MAX_BAD_LINES_KEPT = 1000  # the newest bad lines kept for the report; the count is kept in full
NEVER = 1e308  # next_attempt of an alert raised with no webhook configured: never sent


class MonitorState:
    """SQLite-backed state (WAL; one connection shared behind a lock, usable from any thread)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"monitor state {self.path} is a folder; give a file path "
                             "(e.g. monitor.db)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"monitor state {self.path} is not a usable SQLite database: "
                             f"{exc}") from exc
        self.lock = threading.RLock()

    def close(self) -> None:
        with self.lock:
            self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: everything inside commits together or not at all."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str, default: Any = None) -> Any:
        with self.lock:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    @staticmethod
    def put_meta(db: sqlite3.Connection, key: str, value: Any) -> None:
        db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                   "SET value = excluded.value", (key, json.dumps(value)))

    # ------------------------------------------------------------------ ids
    def seen_among(self, ids: list[str]) -> set[str]:
        out: set[str] = set()
        with self.lock:
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                marks = ",".join("?" * len(chunk))
                out.update(r[0] for r in self.db.execute(
                    f"SELECT id FROM seen WHERE id IN ({marks})", chunk))
        return out

    # ------------------------------------------------------------------ entities
    def load_entities(self) -> dict[str, dict]:
        with self.lock:
            return {e: json.loads(s) for e, s in self.db.execute(
                "SELECT entity, state FROM entities")}

    # ------------------------------------------------------------------ reading
    def series(self, entity: str, limit: int) -> list[dict]:
        """The newest ``limit`` index points of ``entity``, oldest first."""
        with self.lock:
            rows = self.db.execute(
                "SELECT seq, time, sentiment, volume FROM points WHERE entity = ? "
                "ORDER BY seq DESC LIMIT ?", (entity, limit)).fetchall()
        return [{"seq": s, "time": t, "sentiment": v, "volume": w}
                for s, t, v, w in reversed(rows)]

    def alerts(self, entity: str | None = None, limit: int = 100) -> list[dict]:
        """The newest ``limit`` alerts (of ``entity``), newest first, with delivery status."""
        sql = ("SELECT id, payload, created, delivered_at, attempts, next_attempt, last_error "
               "FROM alerts")
        args: tuple = ()
        if entity is not None:
            sql += " WHERE entity = ?"
            args = (entity,)
        with self.lock:
            rows = self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [{"id": i, **json.loads(p), "created": c, "delivered_at": d, "attempts": a,
                 "next_attempt": n, "last_error": e} for i, p, c, d, a, n, e in rows]

    def pending_alerts(self, now: float) -> list[tuple[int, str, int]]:
        """(row id, payload, attempts) of undelivered alerts due by ``now``, oldest first."""
        with self.lock:
            return self.db.execute(
                "SELECT id, payload, attempts FROM alerts WHERE delivered_at IS NULL "
                "AND next_attempt <= ? ORDER BY id", (now,)).fetchall()

    def outbox_size(self) -> int:
        with self.lock:
            return self.db.execute(
                "SELECT COUNT(*) FROM alerts WHERE delivered_at IS NULL AND next_attempt < ?",
                (NEVER,)).fetchone()[0]

    def mark_delivered(self, row_id: int, at: float) -> None:
        with self.transaction() as db:
            db.execute("UPDATE alerts SET delivered_at = ?, attempts = attempts + 1, "
                       "last_error = NULL WHERE id = ?", (at, row_id))

    def mark_failed(self, row_id: int, error: str, next_attempt: float) -> None:
        with self.transaction() as db:
            db.execute("UPDATE alerts SET attempts = attempts + 1, last_error = ?, "
                       "next_attempt = ? WHERE id = ?", (error[:500], next_attempt, row_id))

    def bad_lines(self, limit: int = 100) -> list[dict]:
        with self.lock:
            rows = self.db.execute("SELECT origin, line, reason FROM bad_lines ORDER BY id DESC "
                                   "LIMIT ?", (limit,)).fetchall()
        return [{"origin": o, "line": n, "reason": r} for o, n, r in rows]
