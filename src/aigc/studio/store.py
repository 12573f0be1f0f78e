"""Storage of the studio: jobs, generated items, ratings and API keys, behind SQLAlchemy.

SQLite in WAL mode in the data folder by default (``sqlite:///DATA/studio.db``); any SQLAlchemy
URL (e.g. ``postgresql+psycopg://...``) otherwise. Generated files live beside it in a
content-addressed folder (``DATA/files/<sha256>.<ext>``), so writing the same bytes twice is a
no-op and a job re-run after a crash produces the same file name.

Exactly-once job completion rests on three things here:

* a job is claimed with ``UPDATE jobs SET status='running' WHERE id=? AND status='queued'`` —
  only one claimer sees ``rowcount == 1``;
* a job's items and its ``done`` status are written in ONE transaction (:meth:`Store.finish_job`),
  and ``(job_id, index)`` is unique, so a job cannot produce its items twice;
* at start-up :meth:`Store.recover` puts jobs left ``running`` by a killed server back to
  ``queued``; nothing they wrote was committed, so they simply run again — at most
  ``MAX_ATTEMPTS`` times in all: a job that keeps being interrupted is failed instead.

Files are written before the transaction that references them (a crash in between leaves an
unreferenced file, never a row naming a missing file); when that transaction fails, or a job
was cancelled meanwhile, the files it wrote that no stored item references are deleted again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    cast,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger("aigc.studio")
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
# A job claimed this many times without finishing (each start ended in a killed or crashed
# server) is failed by :meth:`Store.recover` instead of being queued again.
MAX_ATTEMPTS = 3
FILE_NAME = re.compile(r"^[0-9a-f]{64}\.(png|txt|mid|wav)$")
MIME = {"png": "image/png", "txt": "text/plain; charset=utf-8", "mid": "audio/midi",
        "wav": "audio/wav"}

metadata = MetaData()

jobs = Table(
    "jobs", metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),  # image | text
    Column("model", String(200), nullable=False),
    Column("params", JSON, nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("progress", Float, nullable=False, default=0.0),
    Column("cost", Float, nullable=False, default=0.0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("error", Text),
    Column("result", JSON),  # text jobs: {"text", "usage", "finish_reason"}
    Column("retry_of", String(32)),
    Column("created", Float, nullable=False, index=True),
    Column("started", Float),
    Column("finished", Float),
)

items = Table(
    "items", metadata,
    Column("id", String(32), primary_key=True),
    Column("job_id", String(32), ForeignKey("jobs.id"), nullable=False, index=True),
    Column("index", Integer, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("model", String(200), nullable=False, index=True),
    Column("model_sha256", String(64), nullable=False),
    Column("file", String(80), nullable=False),
    Column("prompt", Text),
    Column("seed", Integer),
    Column("text", Text),
    Column("record", JSON, nullable=False),
    Column("created", Float, nullable=False, index=True),
    UniqueConstraint("job_id", "index", name="uq_item_job_index"),
)

ratings = Table(
    "ratings", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("item_id", String(32), ForeignKey("items.id"), nullable=False, index=True),
    Column("stars", Integer, nullable=False),
    Column("created", Float, nullable=False),
)

comparisons = Table(
    "comparisons", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("a", String(32), ForeignKey("items.id"), nullable=False, index=True),
    Column("b", String(32), ForeignKey("items.id"), nullable=False, index=True),
    Column("winner", String(4), nullable=False),  # a | b | tie
    Column("created", Float, nullable=False),
)

# Every reaction to an item, one row each: stars (score 1-5), a comparison with another item
# (value a | b | tie, other_id the second item), a flag (value: its reason, note: free text)
# and implicit signals (value download | regenerate | copy). ``rater`` is who gave it: an API
# key's name ("key:NAME") or a browser's anonymous id ("anon:ID"). Deleting feedback deletes
# the row: nothing deleted can reach an export. (The older ``ratings`` and ``comparisons``
# tables are read once, into this one, when a studio of an earlier version is opened.)
feedback = Table(
    "feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("item_id", String(32), ForeignKey("items.id"), nullable=False, index=True),
    Column("other_id", String(32), ForeignKey("items.id"), index=True),
    Column("kind", String(16), nullable=False, index=True),  # stars | comparison | flag | signal
    Column("value", String(32), nullable=False),
    Column("score", Float),
    Column("note", Text),
    Column("rater", String(120), nullable=False, index=True),
    Column("created", Float, nullable=False, index=True),
)
FEEDBACK_KINDS = ("stars", "comparison", "flag", "signal")

api_keys = Table(
    "api_keys", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("sha256", String(64), nullable=False, unique=True),
    Column("created", Float, nullable=False),
)


@dataclass
class ItemOut:
    """One generated item ready to be stored: its bytes and its provenance."""

    data: bytes
    ext: str
    record: dict[str, Any]
    prompt: str | None = None
    seed: int | None = None
    text: str | None = None


def new_id() -> str:
    return uuid.uuid4().hex


def _row(r) -> dict[str, Any]:
    return dict(r._mapping)


class Store:
    """All database and file access of the studio. Thread-safe (one engine, short transactions)."""

    def __init__(self, data_dir: str | Path, url: str | None = None):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.files_dir = self.data_dir / "files"
        self.files_dir.mkdir(exist_ok=True)
        self.url = url or f"sqlite:///{(self.data_dir / 'studio.db').resolve()}"
        self.engine = self._make_engine(self.url)
        if not self.engine.dialect.update_returning:
            from aigc.errors import AigcError

            raise AigcError(f"the studio's database must support UPDATE ... RETURNING (SQLite "
                            f">= 3.35, PostgreSQL); {self.engine.dialect.name} here does not")
        metadata.create_all(self.engine)
        self._adopt_old_ratings()

    @staticmethod
    def _make_engine(url: str) -> Engine:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn, _record):  # WAL: readers never block the writer
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                # NORMAL is durable against a killed process (not against power loss) in WAL.
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()

            return engine
        return create_engine(url, pool_pre_ping=True)

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------------- files
    def put_file(self, data: bytes, ext: str) -> str:
        """Store bytes under their SHA-256; returns the file name (``<sha256>.<ext>``)."""
        return self._put_file(data, ext)[0]

    def _put_file(self, data: bytes, ext: str) -> tuple[str, bool]:
        """:meth:`put_file`, and whether this call created the file."""
        name = f"{hashlib.sha256(data).hexdigest()}.{ext}"
        assert FILE_NAME.match(name), name
        path = self.files_dir / name
        created = not path.exists()
        if created:
            tmp = path.with_name(f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            # No fsync: like the database (WAL, synchronous=NORMAL) the files are durable against
            # a killed process, not against power loss; they are written before the commit
            # that references them.
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        return name, created

    def discard_unreferenced(self, names: list[str]) -> list[str]:
        """Delete those of the files ``names`` that no stored item references (as its file or
        in its record, e.g. a music piece's MIDI); returns the names deleted. When the database
        cannot be read, nothing is deleted (an orphan file is better than a missing one)."""
        wanted = {n for n in names if FILE_NAME.match(n)}
        if not wanted:
            return []
        try:
            with self.engine.connect() as conn:
                used = {r[0] for r in conn.execute(
                    select(items.c.file).where(items.c.file.in_(sorted(wanted))))}
                for name in sorted(wanted - used):  # names are hex: no LIKE wildcards inside
                    if conn.execute(select(items.c.id).where(
                            cast(items.c.record, Text).like(f"%{name}%")).limit(1)).first():
                        used.add(name)
        except SQLAlchemyError:
            log.warning("could not check which files are unreferenced; kept %d", len(wanted))
            return []
        gone = sorted(wanted - used)
        for name in gone:
            (self.files_dir / name).unlink(missing_ok=True)
        return gone

    def file_path(self, name: str) -> Path | None:
        """The path of a stored file, or ``None`` when ``name`` is not a plain file of the folder.

        Only names of the exact form ``<64 hex>.<ext>`` are accepted (no ``..``, no separators,
        no absolute paths), and the resolved path must be a regular file inside the folder and
        not a symlink.
        """
        if not FILE_NAME.match(name):
            return None
        path = self.files_dir / name
        if path.is_symlink() or not path.is_file():
            return None
        root = self.files_dir.resolve()
        if path.resolve().parent != root:
            return None
        return path

    # -------------------------------------------------------------------------- jobs
    def add_job(self, kind: str, model: str, params: dict[str, Any], cost: float,
                retry_of: str | None = None, job_id: str | None = None) -> dict[str, Any]:
        row = {"id": job_id or new_id(), "kind": kind, "model": model, "params": params, "status": "queued",
               "progress": 0.0, "cost": cost, "attempts": 0, "retry_of": retry_of,
               "created": time.time()}
        with self.engine.begin() as conn:
            conn.execute(insert(jobs).values(**row))
        return {**row, "error": None, "result": None, "started": None, "finished": None,
                "items": []}

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
            if r is None:
                return None
            job = _row(r)
            job["items"] = [x[0] for x in conn.execute(
                select(items.c.id).where(items.c.job_id == job_id).order_by(items.c.index))]
        return job

    def list_jobs(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        q = select(jobs).order_by(jobs.c.created.desc()).limit(limit)
        if status:
            q = q.where(jobs.c.status == status)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(q)]

    def queued_jobs(self, kind: str, limit: int) -> list[dict[str, Any]]:
        q = (select(jobs).where(and_(jobs.c.kind == kind, jobs.c.status == "queued"))
             .order_by(jobs.c.created, jobs.c.id).limit(limit))
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(q)]

    def outstanding(self) -> tuple[int, float]:
        """(number of queued + running jobs, their total cost)."""
        q = select(func.count(), func.coalesce(func.sum(jobs.c.cost), 0.0)).where(
            jobs.c.status.in_(("queued", "running")))
        with self.engine.connect() as conn:
            n, cost = conn.execute(q).one()
        return int(n), float(cost)

    def outstanding_by_kind(self) -> dict[str, tuple[int, float]]:
        """``{kind: (number of queued + running jobs, their total cost)}``."""
        q = (select(jobs.c.kind, func.count(), func.coalesce(func.sum(jobs.c.cost), 0.0))
             .where(jobs.c.status.in_(("queued", "running"))).group_by(jobs.c.kind))
        with self.engine.connect() as conn:
            return {kind: (int(n), float(cost)) for kind, n, cost in conn.execute(q)}

    def claim(self, job_id: str) -> bool:
        """queued -> running, atomically; False when someone else claimed or cancelled it."""
        return bool(self.claim_many([job_id]))

    def claim_many(self, job_ids: list[str]) -> list[str]:
        """:meth:`claim` for several jobs in one statement; returns the ids claimed, in order."""
        if not job_ids:
            return []
        stmt = (update(jobs).where(and_(jobs.c.id.in_(job_ids), jobs.c.status == "queued"))
                .values(status="running", started=time.time(), attempts=jobs.c.attempts + 1,
                        progress=0.0))
        with self.engine.begin() as conn:
            won = _changed_ids(conn, stmt)
        return [j for j in dict.fromkeys(job_ids) if j in won]  # each id once

    def set_progress(self, job_id: str, progress: float) -> None:
        self.set_progress_many([job_id], progress)

    def set_progress_many(self, job_ids: list[str], progress: float) -> None:
        """The progress of several running jobs (a batch), in one statement."""
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(and_(jobs.c.id.in_(job_ids),
                                                 jobs.c.status == "running"))
                         .values(progress=float(progress)))

    def statuses(self, job_ids: list[str]) -> dict[str, str]:
        """``{id: status}`` of the jobs that exist among ``job_ids``, in one query."""
        with self.engine.connect() as conn:
            return dict(conn.execute(select(jobs.c.id, jobs.c.status)
                                     .where(jobs.c.id.in_(job_ids))).all())

    def finish_job(self, job: dict[str, Any], outputs: list[ItemOut],
                   result: dict[str, Any] | None = None, model_sha256: str = "") -> bool:
        """Write the items and mark the job done in one transaction. False if it was no longer
        running (e.g. cancelled meanwhile): then nothing is written."""
        return bool(self.finish_jobs([(job, outputs, result)], model_sha256))

    def finish_jobs(self, done: list[tuple[dict[str, Any], list[ItemOut], dict[str, Any] | None]],
                    model_sha256: str = "") -> list[dict[str, Any]]:
        """Finish several jobs in one transaction (a batch). A job no longer ``running`` (it was
        cancelled meanwhile) is skipped and writes nothing. Returns the finished jobs, updated
        in memory (status, finished, items)."""
        now = time.time()
        finished = []
        named, created = [], []
        try:
            for job, outs, result in done:  # idempotent writes, before the commit
                names = []
                for o in outs:
                    name, new = self._put_file(o.data, o.ext)
                    names.append(name)
                    if new:
                        created.append(name)
                named.append((job, outs, result, names))
            won = self._commit_finished(named, now, model_sha256, finished)
        except BaseException:  # e.g. a value the database refuses, or a full disk
            self.discard_unreferenced(created + _record_files(o for _, outs, _ in done
                                                              for o in outs))
            raise
        lost = [(outs, names) for job, outs, _, names in named if job["id"] not in won]
        if lost:  # cancelled meanwhile: what they wrote is not referenced by anything
            self.discard_unreferenced([n for _, names in lost for n in names if n in created]
                                      + _record_files(o for outs, _ in lost for o in outs))
        return finished

    def _commit_finished(self, named: list[tuple[dict[str, Any], list[ItemOut],
                                                 dict[str, Any] | None, list[str]]],
                         now: float, model_sha256: str,
                         finished: list[dict[str, Any]]) -> set[str]:
        """The transaction of :meth:`finish_jobs`; appends to ``finished``, returns the ids of
        the jobs it finished."""
        with self.engine.begin() as conn:
            # One guarded UPDATE for the jobs without a result (an image batch), one per job with
            # a result (text); then one multi-row INSERT of the items of the jobs it finished.
            done_values = {"status": "done", "progress": 1.0, "finished": now, "error": None}
            plain = [job["id"] for job, _, result, _ in named if result is None]
            won = set()
            if plain:
                won |= _changed_ids(conn, update(jobs).where(
                    and_(jobs.c.id.in_(plain), jobs.c.status == "running"))
                    .values(**done_values, result=None))
            for job, _, result, _ in named:
                if result is not None:
                    won |= _changed_ids(conn, update(jobs).where(
                        and_(jobs.c.id == job["id"], jobs.c.status == "running"))
                        .values(**done_values, result=result))
            rows: list[dict[str, Any]] = []
            for job, outputs, result, names in named:
                if job["id"] not in won:
                    continue
                ids = [new_id() for _ in outputs]
                rows += [{"id": item_id, "job_id": job["id"], "index": i, "kind": job["kind"],
                          "model": job["model"], "model_sha256": model_sha256, "file": name,
                          "prompt": o.prompt, "seed": o.seed, "text": o.text,
                          "record": o.record, "created": now}
                         for i, (item_id, o, name) in enumerate(zip(ids, outputs, names,
                                                                    strict=True))]
                finished.append({**job, "status": "done", "progress": 1.0, "finished": now,
                                 "result": result, "error": None, "items": ids,
                                 "files": names,
                                 "attempts": job.get("attempts", 0) + 1})
            if rows:
                conn.execute(insert(items), rows)
        return won

    def fail_job(self, job_id: str, error: str, status: str = "failed") -> None:
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(and_(jobs.c.id == job_id, jobs.c.status == "running"))
                         .values(status=status, error=error[:2000], finished=time.time()))

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued or running job; returns the status it had (None if unknown)."""
        with self.engine.begin() as conn:
            r = conn.execute(select(jobs.c.status).where(jobs.c.id == job_id)).first()
            if r is None:
                return None
            if r[0] in ("queued", "running"):
                conn.execute(update(jobs).where(and_(jobs.c.id == job_id,
                                                     jobs.c.status.in_(("queued", "running"))))
                             .values(status="cancelled", finished=time.time()))
            return r[0]

    def recover(self) -> int:
        """Jobs left ``running`` by a killed server go back to ``queued``; returns how many.
        A job already claimed ``MAX_ATTEMPTS`` times is failed instead, so that a job that
        stops the server (or cannot be stored) is not retried forever."""
        now = time.time()
        with self.engine.begin() as conn:
            message = (f"the job was started {MAX_ATTEMPTS} times and never finished (the "
                       "server stopped while it ran, each time); it is not retried again")
            given_up = conn.execute(update(jobs).where(
                and_(jobs.c.status == "running", jobs.c.attempts >= MAX_ATTEMPTS))
                .values(status="failed", finished=now, error=message)).rowcount
            res = conn.execute(update(jobs).where(jobs.c.status == "running")
                               .values(status="queued", progress=0.0))
        if given_up:
            log.warning("studio: %d job(s) failed after %d attempts", given_up, MAX_ATTEMPTS)
        return res.rowcount

    def job_counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status))
            counts = {s: 0 for s in JOB_STATES}
            counts.update({s: int(n) for s, n in rows})
        return counts

    # ------------------------------------------------------------------------- items
    def _item_query(self):
        stars = (select(feedback.c.item_id, func.avg(feedback.c.score).label("stars"),
                        func.count().label("n_ratings")).where(feedback.c.kind == "stars")
                 .group_by(feedback.c.item_id).subquery())
        q = (select(items, stars.c.stars, stars.c.n_ratings)
             .select_from(items.outerjoin(stars, stars.c.item_id == items.c.id)))
        return q, stars

    def list_items(self, *, kind: str | None = None, model: str | None = None,
                   min_stars: float | None = None, q: str | None = None, seed: int | None = None,
                   limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        query, stars = self._item_query()
        if kind:
            query = query.where(items.c.kind == kind)
        if model:
            query = query.where(items.c.model == model)
        if seed is not None:
            query = query.where(items.c.seed == seed)
        if min_stars is not None:
            query = query.where(stars.c.stars >= min_stars)
        if q:  # a substring, taken literally: '%' and '_' are escaped, not wildcards
            query = query.where(or_(*(col.contains(q, autoescape=True)
                                      for col in (items.c.prompt, items.c.text, items.c.model))))
        query = query.order_by(items.c.created.desc(), items.c.index).limit(limit).offset(offset)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query)]

    def get_item(self, item_id: str) -> dict[str, Any] | None:
        query, _ = self._item_query()
        with self.engine.connect() as conn:
            r = conn.execute(query.where(items.c.id == item_id)).first()
        return _row(r) if r else None

    def count_items(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(items)).scalar_one())

    # ---------------------------------------------------------------------- feedback
    def add_rating(self, item_id: str, stars: int, rater: str = "anon:unknown") -> dict[str, Any]:
        self.add_feedback(item_id, "stars", str(stars), rater, score=float(stars))
        return self.get_item(item_id)

    def add_comparison(self, a: str, b: str, winner: str,
                       rater: str = "anon:unknown") -> dict[str, Any]:
        row = self.add_feedback(a, "comparison", winner, rater, other_id=b)
        return {"id": row["id"], "a": a, "b": b, "winner": winner, "created": row["created"]}

    def add_feedback(self, item_id: str, kind: str, value: str, rater: str, *,
                     other_id: str | None = None, score: float | None = None,
                     note: str | None = None) -> dict[str, Any]:
        """Store one piece of feedback; returns its row."""
        if kind not in FEEDBACK_KINDS:
            raise ValueError(f"feedback kind must be one of {FEEDBACK_KINDS}, got {kind!r}")
        row = {"item_id": item_id, "other_id": other_id, "kind": kind, "value": value,
               "score": score, "note": note, "rater": rater, "created": time.time()}
        with self.engine.begin() as conn:
            res = conn.execute(insert(feedback).values(**row))
            row["id"] = int(res.inserted_primary_key[0])
        return row

    def list_feedback(self, *, rater: str | None = None, kind: str | None = None,
                      item_ids: list[str] | None = None) -> list[dict[str, Any]]:
        """Feedback rows, oldest first (all of them when no filter is given)."""
        q = select(feedback).order_by(feedback.c.id)
        if rater is not None:
            q = q.where(feedback.c.rater == rater)
        if kind is not None:
            q = q.where(feedback.c.kind == kind)
        if item_ids is not None:
            q = q.where(or_(feedback.c.item_id.in_(item_ids), feedback.c.other_id.in_(item_ids)))
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(q)]

    def get_feedback(self, feedback_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(feedback).where(feedback.c.id == feedback_id)).first()
        return _row(r) if r else None

    def delete_feedback(self, feedback_id: int | None = None, *,
                        rater: str | None = None) -> int:
        """Delete one row (``feedback_id``, only when it is ``rater``'s if a rater is given) or
        every row of ``rater``; returns how many rows went."""
        if feedback_id is None and rater is None:
            raise ValueError("delete_feedback needs a feedback id or a rater")
        cond = []
        if feedback_id is not None:
            cond.append(feedback.c.id == feedback_id)
        if rater is not None:
            cond.append(feedback.c.rater == rater)
        with self.engine.begin() as conn:
            return conn.execute(feedback.delete().where(and_(*cond))).rowcount

    def items_by_ids(self, item_ids: list[str]) -> list[dict[str, Any]]:
        query, _ = self._item_query()
        out: list[dict[str, Any]] = []
        with self.engine.connect() as conn:
            for start in range(0, len(item_ids), 500):
                chunk = item_ids[start:start + 500]
                out += [_row(r) for r in conn.execute(query.where(items.c.id.in_(chunk)))]
        return out

    def comparison_stats(self, item_id: str) -> dict[str, int]:
        c = feedback.c
        mine = and_(c.kind == "comparison", or_(c.item_id == item_id, c.other_id == item_id))
        won = or_(and_(c.item_id == item_id, c.value == "a"),
                  and_(c.other_id == item_id, c.value == "b"))
        with self.engine.connect() as conn:
            wins = conn.execute(select(func.count()).select_from(feedback)
                                .where(and_(mine, won))).scalar_one()
            total = conn.execute(select(func.count()).select_from(feedback)
                                 .where(mine)).scalar_one()
        return {"wins": int(wins), "comparisons": int(total)}

    def rating_counts(self) -> tuple[int, int]:
        with self.engine.connect() as conn:
            counts = dict(conn.execute(select(feedback.c.kind, func.count())
                                       .group_by(feedback.c.kind)).all())
        return int(counts.get("stars", 0)), int(counts.get("comparison", 0))

    def feedback_snapshot(self, model: str | None = None) -> dict[str, Any]:
        """All feedback (or that on items of the served model ``model``) with the items it
        names, read in one transaction: what ``aigc feedback export|report`` work from.
        ``last_id`` names the snapshot (feedback ids only grow)."""
        with self.engine.connect() as conn, conn.begin():
            rows = [_row(r) for r in conn.execute(select(feedback).order_by(feedback.c.id))]
            ids = sorted({r["item_id"] for r in rows} | {r["other_id"] for r in rows
                                                          if r["other_id"]})
            found: list[dict[str, Any]] = []
            for start in range(0, len(ids), 500):
                found += [_row(r) for r in conn.execute(
                    select(items).where(items.c.id.in_(ids[start:start + 500])))]
        by_id = {r["id"]: r for r in found}
        if model is not None:
            keep = {i for i, r in by_id.items() if r["model"] == model}
            rows = [r for r in rows if r["item_id"] in keep
                    and (r["other_id"] is None or r["other_id"] in keep)]
            by_id = {i: r for i, r in by_id.items() if i in keep}
        return {"feedback": rows, "items": by_id,
                "last_id": max((r["id"] for r in rows), default=0)}

    def _adopt_old_ratings(self) -> None:
        """Copy stars and comparisons of a studio made before the feedback table into it,
        once (when the feedback table is empty and the old tables are not)."""
        with self.engine.begin() as conn:
            if conn.execute(select(func.count()).select_from(feedback)).scalar_one():
                return
            old_r = conn.execute(select(ratings)).all()
            old_c = conn.execute(select(comparisons)).all()
            rows = [{"item_id": r.item_id, "other_id": None, "kind": "stars",
                     "value": str(r.stars), "score": float(r.stars), "note": None,
                     "rater": "anon:before-feedback", "created": r.created} for r in old_r]
            rows += [{"item_id": c.a, "other_id": c.b, "kind": "comparison", "value": c.winner,
                      "score": None, "note": None, "rater": "anon:before-feedback",
                      "created": c.created} for c in old_c]
            if rows:
                conn.execute(insert(feedback), sorted(rows, key=lambda r: r["created"]))

    def api_key_name(self, sha256: str) -> str | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(api_keys.c.name).where(api_keys.c.sha256 == sha256)).first()
        return r[0] if r else None

    # ----------------------------------------------------------------------- API keys
    def add_api_key(self, name: str, sha256: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(api_keys).values(name=name, sha256=sha256, created=time.time()))

    def api_key_hashes(self) -> list[str]:
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(select(api_keys.c.sha256))]


def _changed_ids(conn, stmt) -> set[str]:
    """Run a guarded ``UPDATE jobs ... WHERE ... AND status = ...``; the ids it changed.

    ``RETURNING`` tells exactly which rows the guard let through, in the same statement
    (SQLite >= 3.35 and PostgreSQL have it; checked when the store opens).
    """
    return {row[0] for row in conn.execute(stmt.returning(jobs.c.id))}


def _record_files(outputs) -> list[str]:
    """The file names that the records of ``outputs`` name (a music piece: MIDI, PNG, WAV)."""
    return [str(n) for o in outputs for n in ((o.record or {}).get("files") or {}).values()]


def record_json(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False)
