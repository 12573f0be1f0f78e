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
* a claim writes who holds the job (``worker``), until when (``lease_until``, renewed by the
  holder's heartbeats) and counts the attempt; the attempt number is the job's **fencing
  token**: every later write of the holder (progress, done, failed) carries
  ``WHERE attempts = token``, so a worker that lost its job (it stalled past its lease, the job
  went back to the queue and another worker claimed it) can no longer write anything to it;
* a job whose lease expired (its worker died) goes back to ``queued``
  (:meth:`Store.requeue_expired`, run by every live worker), and at start-up
  :meth:`Store.recover` takes back at once the jobs that this worker's own name (a restarted
  server) left ``running``. Nothing an interrupted attempt wrote was committed, so the job
  simply runs again — at most ``MAX_ATTEMPTS`` times in all: a job that keeps being interrupted
  is failed instead.

On PostgreSQL claims lock the rows they take with ``FOR UPDATE SKIP LOCKED`` (concurrent
workers skip each other's rows instead of queueing behind them) and every new job, and every
job that ends, is announced with ``NOTIFY`` (:data:`QUEUED_CHANNEL`, :data:`ENDED_CHANNEL`).

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
    extract,
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
DEFAULT_LEASE_S = 30.0  # a claim is held this long; heartbeats renew it every third of it
QUEUED_CHANNEL = "aigc_jobs"  # NOTIFY payload: the kind of a job just queued (PostgreSQL)
ENDED_CHANNEL = "aigc_job_ended"  # NOTIFY payload: the id of a job that just ended
SCHEMA_LOCK_ID = 0x61696763  # "aigc": the advisory lock held while the tables are created
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
    Column("worker", String(200)),  # who holds (or last held) the job
    Column("lease_until", Float, index=True),  # a running job's claim ends then unless renewed
)
# Columns added after the first release: added to an older database when it is opened.
_ADDED_JOB_COLUMNS = {"worker": "VARCHAR(200)", "lease_until": "FLOAT"}

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
# The keys that may change what everyone is served (approve into the assistant's knowledge base,
# promote / roll back / improve models): a table of its own, so an older database gains it by
# ``create_all`` with no migration, and every older key stays an ordinary one.
admin_keys = Table(
    "admin_keys", metadata,
    Column("sha256", String(64), primary_key=True),
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

    def __init__(self, data_dir: str | Path, url: str | None = None,
                 files_dir: str | Path | None = None):
        """``data_dir`` holds the SQLite database (when ``url`` is None) and, unless
        ``files_dir`` is given, the generated files (``DATA/files``). Workers on other machines
        point ``files_dir`` at the shared folder the API server serves its files from."""
        from aigc.errors import AigcError

        self.data_dir = Path(data_dir)
        self.files_dir = Path(files_dir) if files_dir is not None else self.data_dir / "files"
        if url is None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.url = url or f"sqlite:///{(self.data_dir / 'studio.db').resolve()}"
        self.engine = self._make_engine(self.url)
        if not self.engine.dialect.update_returning:
            raise AigcError(f"the studio's database must support UPDATE ... RETURNING (SQLite "
                            f">= 3.35, PostgreSQL); {self.engine.dialect.name} here does not")
        self.postgres = self.engine.dialect.name == "postgresql"
        try:
            self._create_tables()
            self._adopt_old_ratings()
        except SQLAlchemyError as exc:
            self.engine.dispose()
            shown = self.engine.url.render_as_string(hide_password=True)
            first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300]
            raise AigcError(f"could not open the studio database {shown}: "
                            f"{type(exc).__name__}: {first}") from None

    def _create_tables(self, tries: int = 3) -> None:
        """Create missing tables and columns. Processes that start together on a new database
        (a server and its workers) take turns: on PostgreSQL behind an advisory lock; SQLite
        runs each CREATE on its own, so one that lost the race (the table exists now) simply
        looks again."""
        for attempt in range(tries):
            try:
                with self.engine.begin() as conn:
                    if self.postgres:
                        conn.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK_ID)))
                    metadata.create_all(conn)
                    self._add_missing_columns(conn)
                return
            except SQLAlchemyError:
                if attempt == tries - 1:
                    raise
                time.sleep(0.1)

    @staticmethod
    def _add_missing_columns(conn) -> None:
        """``ALTER TABLE jobs ADD COLUMN`` for the columns a database made by an older version
        lacks (``create_all`` creates missing tables only)."""
        from sqlalchemy import inspect, text

        have = {c["name"] for c in inspect(conn).get_columns("jobs")}
        for name, sql_type in _ADDED_JOB_COLUMNS.items():  # names and types: constants
            if name not in have:
                conn.execute(text(f"ALTER TABLE jobs ADD COLUMN {name} {sql_type}"))

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
        try:
            return create_engine(url, pool_pre_ping=True)
        except ModuleNotFoundError as exc:  # e.g. psycopg for postgresql+psycopg://
            from aigc.errors import AigcError

            raise AigcError(f"the database URL needs the Python package {exc.name!r}, which is "
                            "not installed (for PostgreSQL: pip install 'aigc[postgres]')") \
                from None

    def listen_conninfo(self) -> str | None:
        """A libpq connection string for a LISTEN connection (PostgreSQL), else None."""
        if not self.postgres:
            return None
        return self.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False)

    def _db_now(self):
        """The database's clock in Unix seconds, as SQL: leases are stamped and compared with
        it, so that the clocks of the workers' machines need not agree."""
        if self.postgres:
            return extract("epoch", func.now())
        return (func.julianday("now") - 2440587.5) * 86400.0  # SQLite: ms precision

    def _notify(self, conn, channel: str, payload: str) -> None:
        """``NOTIFY channel, payload`` in ``conn``'s transaction (sent at its commit)."""
        if self.postgres:
            conn.execute(select(func.pg_notify(channel, payload)))

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
            self._notify(conn, QUEUED_CHANNEL, kind)
        return {**row, "error": None, "result": None, "started": None, "finished": None,
                "worker": None, "lease_until": None, "items": []}

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

    def queued_jobs(self, kind: str, limit: int,
                    models: list[str] | None = None) -> list[dict[str, Any]]:
        """The oldest ``limit`` queued jobs of ``kind`` (of the ``models`` given, else of any)."""
        q = (select(jobs).where(and_(jobs.c.kind == kind, jobs.c.status == "queued"))
             .order_by(jobs.c.created, jobs.c.id).limit(limit))
        if models is not None:
            q = q.where(jobs.c.model.in_(models))
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
        won = self._claim(job_ids, None, None)
        return [j for j in dict.fromkeys(job_ids) if j in won]  # each id once

    def claim_jobs(self, queued: list[dict[str, Any]], worker: str,
                   lease_s: float = DEFAULT_LEASE_S) -> list[dict[str, Any]]:
        """Claim the jobs ``queued`` for ``worker`` with a lease of ``lease_s`` seconds; returns
        those won, in order, updated: ``status`` running, ``attempts``, and ``token`` (the
        attempt number, which fences every later write of this holder)."""
        won = self._claim([j["id"] for j in queued], worker, lease_s)
        out = []
        for job in queued:
            if job["id"] in won and all(job["id"] != o["id"] for o in out):
                attempts, started = won[job["id"]]
                out.append({**job, "status": "running", "progress": 0.0, "attempts": attempts,
                            "token": attempts, "started": started, "worker": worker})
        return out

    def _claim(self, job_ids: list[str], worker: str | None,
               lease_s: float | None) -> dict[str, tuple[int, float]]:
        """queued -> running for those of ``job_ids`` still queued and not locked by another
        claim; ``{id: (attempts, started)}`` of the jobs won."""
        if not job_ids:
            return {}
        now = time.time()
        # PostgreSQL: lock the rows to take, skipping rows another claim holds (SQLite, which
        # has one writer at a time, renders no FOR UPDATE). The outer guard re-checks status.
        free = (select(jobs.c.id).where(and_(jobs.c.id.in_(job_ids), jobs.c.status == "queued"))
                .with_for_update(skip_locked=True))
        stmt = (update(jobs).where(and_(jobs.c.id.in_(free.scalar_subquery()),
                                        jobs.c.status == "queued"))
                .values(status="running", started=now, attempts=jobs.c.attempts + 1,
                        progress=0.0, worker=worker,
                        lease_until=None if lease_s is None else self._db_now() + lease_s)
                .returning(jobs.c.id, jobs.c.attempts))
        with self.engine.begin() as conn:
            return {r[0]: (int(r[1]), now) for r in conn.execute(stmt)}

    def heartbeat(self, held: dict[str, int], worker: str,
                  lease_s: float = DEFAULT_LEASE_S) -> set[str]:
        """Renew the leases of the jobs ``held`` (``{id: token}``) by ``worker``; returns the
        ids it still holds (a job missing from the answer was cancelled, or its lease expired
        and it went back to the queue: its holder must stop and write nothing)."""
        if not held:
            return set()
        until = self._db_now() + lease_s
        with self.engine.begin() as conn:
            return {r[0] for r in conn.execute(
                update(jobs).where(and_(jobs.c.id.in_(list(held)), jobs.c.status == "running",
                                        jobs.c.worker == worker, _fenced(held)))
                .values(lease_until=until).returning(jobs.c.id))}

    def give_back(self, held: dict[str, int], worker: str) -> int:
        """A stopping worker's unfinished jobs (``{id: token}``) back to the queue at once
        (or failed after ``MAX_ATTEMPTS`` attempts); returns how many went back."""
        if not held:
            return 0
        requeued, _ = self._take_back(
            and_(jobs.c.id.in_(list(held)), jobs.c.worker == worker, _fenced(held)),
            "its worker was stopped")
        return requeued

    def requeue_expired(self) -> tuple[int, int]:
        """Running jobs whose lease ended (their worker died or stalled) go back to the queue,
        or are failed after ``MAX_ATTEMPTS`` attempts; returns (re-queued, failed)."""
        return self._take_back(self._expired(), "its worker stopped renewing its lease")

    def _expired(self):
        return and_(jobs.c.lease_until.is_not(None), jobs.c.lease_until < self._db_now())

    def set_progress(self, job_id: str, progress: float) -> None:
        self.set_progress_many([job_id], progress)

    def set_progress_many(self, job_ids: list[str], progress: float,
                          tokens: dict[str, int] | None = None) -> None:
        """The progress of several running jobs (a batch), in one statement; with ``tokens``
        (``{id: token}``) only of the jobs still held with those tokens."""
        guard = and_(jobs.c.id.in_(job_ids), jobs.c.status == "running")
        if tokens:
            guard = and_(guard, _fenced(tokens))
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(guard).values(progress=float(progress)))

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
            # A job claimed with a token is finished only while its holder still holds it.
            plain = [job for job, _, result, _ in named if result is None]
            won = set()
            if plain:
                won |= _changed_ids(conn, update(jobs).where(
                    and_(jobs.c.id.in_([j["id"] for j in plain]), jobs.c.status == "running",
                         _fenced(_tokens(plain))))
                    .values(**done_values, result=None))
            for job, _, result, _ in named:
                if result is not None:
                    won |= _changed_ids(conn, update(jobs).where(
                        and_(jobs.c.id == job["id"], jobs.c.status == "running",
                             _fenced(_tokens([job]))))
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
                                 "attempts": job["token"] if "token" in job
                                 else job.get("attempts", 0) + 1})
            if rows:
                conn.execute(insert(items), rows)
            for job_id in sorted(won):
                self._notify(conn, ENDED_CHANNEL, job_id)
        return won

    def fail_job(self, job_id: str, error: str, status: str = "failed",
                 token: int | None = None) -> bool:
        """running -> failed (only while held with ``token``, when one is given); False when
        the job was no longer running (or no longer this holder's)."""
        guard = and_(jobs.c.id == job_id, jobs.c.status == "running")
        if token is not None:
            guard = and_(guard, jobs.c.attempts == token)
        with self.engine.begin() as conn:
            changed = conn.execute(update(jobs).where(guard).values(
                status=status, error=error[:2000], finished=time.time())).rowcount
            if changed:
                self._notify(conn, ENDED_CHANNEL, job_id)
        return bool(changed)

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
                self._notify(conn, ENDED_CHANNEL, job_id)
            return r[0]

    def recover(self, worker: str | None = None) -> int:
        """At start-up: the jobs that a killed process of the name ``worker`` left ``running``
        (and those claimed without a name or lease, by an older version), and every job whose
        lease expired, go back to ``queued``; returns how many. A job already claimed
        ``MAX_ATTEMPTS`` times is failed instead, so that a job that stops its worker (or
        cannot be stored) is not retried forever. Jobs that other live workers hold are not
        touched."""
        mine = jobs.c.worker.is_(None) if worker is None else \
            or_(jobs.c.worker.is_(None), jobs.c.worker == worker)
        requeued, _ = self._take_back(or_(mine, self._expired()), "the server or worker running it "
                                      "stopped")
        return requeued

    def _take_back(self, which, why: str) -> tuple[int, int]:
        """Running jobs matching ``which``: back to the queue, or failed after
        ``MAX_ATTEMPTS`` attempts; (re-queued, failed)."""
        now = time.time()
        message = (f"the job was started {MAX_ATTEMPTS} times and never finished ({why}, each "
                   "time); it is not retried again")
        running = and_(jobs.c.status == "running", which)
        with self.engine.begin() as conn:
            given_up = _changed_ids(conn, update(jobs).where(
                and_(running, jobs.c.attempts >= MAX_ATTEMPTS))
                .values(status="failed", finished=now, error=message, lease_until=None))
            back = conn.execute(update(jobs).where(running).values(
                status="queued", progress=0.0, lease_until=None)
                .returning(jobs.c.kind)).all()
            for job_id in sorted(given_up):
                self._notify(conn, ENDED_CHANNEL, job_id)
            for kind in sorted({r[0] for r in back}):
                self._notify(conn, QUEUED_CHANNEL, kind)
        if given_up:
            log.warning("studio: %d job(s) failed after %d attempts", len(given_up),
                        MAX_ATTEMPTS)
        return len(back), len(given_up)

    def ended_job(self, job_id: str) -> dict[str, Any] | None:
        """A job with its items' ids and file names (``files``), as a worker's "done" event
        carries it; None when it does not exist."""
        job = self.get_job(job_id)
        if job is not None:
            with self.engine.connect() as conn:
                job["files"] = [r[0] for r in conn.execute(
                    select(items.c.file).where(items.c.job_id == job_id)
                    .order_by(items.c.index))]
        return job

    def progress_of(self, job_ids: list[str]) -> dict[str, tuple[str, float]]:
        """``{id: (status, progress)}`` of the jobs that exist among ``job_ids``."""
        with self.engine.connect() as conn:
            return {r[0]: (r[1], float(r[2])) for r in conn.execute(
                select(jobs.c.id, jobs.c.status, jobs.c.progress)
                .where(jobs.c.id.in_(job_ids)))}

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
    def add_api_key(self, name: str, sha256: str, *, admin: bool = False) -> None:
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(insert(api_keys).values(name=name, sha256=sha256, created=now))
            if admin:
                conn.execute(insert(admin_keys).values(sha256=sha256, created=now))

    def admin_key_hashes(self) -> list[str]:
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(select(admin_keys.c.sha256))]

    def api_key_hashes(self) -> list[str]:
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(select(api_keys.c.sha256))]


def _changed_ids(conn, stmt) -> set[str]:
    """Run a guarded ``UPDATE jobs ... WHERE ... AND status = ...``; the ids it changed.

    ``RETURNING`` tells exactly which rows the guard let through, in the same statement
    (SQLite >= 3.35 and PostgreSQL have it; checked when the store opens).
    """
    return {row[0] for row in conn.execute(stmt.returning(jobs.c.id))}


def _tokens(held: list[dict[str, Any]]) -> dict[str, int]:
    """``{id: token}`` of the jobs among ``held`` that were claimed with a token."""
    return {j["id"]: int(j["token"]) for j in held if j.get("token") is not None}


def _fenced(tokens: dict[str, int]):
    """A guard that lets a write through only for the jobs that still carry the attempt
    number they were claimed with (jobs not in ``tokens`` are not fenced)."""
    if not tokens:
        return jobs.c.id.is_not(None)  # always true
    checks = [and_(jobs.c.id == job_id, jobs.c.attempts == token)
              for job_id, token in tokens.items()]
    return or_(jobs.c.id.not_in(list(tokens)), *checks)


def _record_files(outputs) -> list[str]:
    """The file names that the records of ``outputs`` name (a music piece: MIDI, PNG, WAV)."""
    return [str(n) for o in outputs for n in ((o.record or {}).get("files") or {}).values()]


def record_json(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False)
