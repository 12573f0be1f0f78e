"""The job queue: persistent jobs run by worker threads, off the event loop.

Every generation is a row of the ``jobs`` table (see :mod:`aigc.studio.store`)::

    queued ──claim──► running ──► done | failed
       │                 │
       └──cancel──► cancelled ◄──cancel

Three worker threads run jobs: one for images, one for text and one for music, so that a chat
is not stuck behind a batch of images (nor a batch of images behind a piece of music). Each
worker serves the clients that have queued jobs of its kind in turn (per-client round robin,
:meth:`JobRunner._fair_order`): a client that queued many jobs does not make another client's
job wait behind all of them. The image worker takes the oldest queued job and every other queued job it can
batch with (same model, same :class:`ImageSettings`), up to ``max_batch_images`` images, and
draws them in one call of the backend. Results are committed per job, in one transaction with
its ``done`` status, so a job killed half-way leaves nothing behind and simply runs again after a
restart.

Requests that follow a job (``/v1/...``, streaming chat, ``GET /api/jobs/{id}/events``) register
a :class:`Channel` *before* the job is inserted or read; the worker pushes the start, progress,
text pieces and the final state to every channel of the job through
``loop.call_soon_threadsafe``.

Workers need not live in the API server's process: ``aigc worker`` (:mod:`aigc.studio.worker`)
runs this same runner, for the models it serves, on any machine that reaches the database and
the shared files folder. Every claim holds a lease that a heartbeat thread renews; every live
runner puts jobs whose lease ended back in the queue (see :mod:`aigc.studio.store` for the
fencing that keeps a job's completion exactly-once). On PostgreSQL a listener thread wakes the
loops on ``NOTIFY``; the loops also poll every ``poll_s`` seconds (SQLite: polling only). For
jobs another process runs, the API server's follower thread reads the state of the jobs its
clients follow and pushes the same events (text arrives whole at the end, not piece by piece).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from aigc.records import FORMAT as RECORD_FORMAT
from aigc.records import checkpoint_ref, image_record, runtime
from aigc.studio.backends import (
    ImageBackend,
    ImageSettings,
    ImageSpec,
    JobCancelled,
    MusicBackend,
    MusicSpec,
    TextBackend,
    png_bytes,
    roll_png_bytes,
)
from aigc.studio.store import DEFAULT_LEASE_S, ENDED_CHANNEL, QUEUED_CHANNEL, ItemOut, Store

log = logging.getLogger("aigc.studio")
UNMEASURED_JOB_S = 1.0  # the time a job is assumed to take before one of its kind has finished
FAIR_WINDOW = 256  # the oldest queued jobs of a kind among which the round robin chooses
MAX_TRACKED_CLIENTS = 4096  # beyond this, the clients served longest ago are forgotten
FOLLOW_POLL_S = 0.25  # the follower reads followed jobs' state this often (sooner on NOTIFY)
TERMINAL = ("done", "failed", "cancelled")


class Channel:
    """Events of one job for an asyncio consumer: ``("running", None)`` when a worker claims
    it, ``("progress", float)``, ``("piece", str)``, then exactly one of ``("done", job)``,
    ``("failed", message)``, ``("cancelled", None)``."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()

    def push(self, event: str, value: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (event, value))
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass


# improve / promote: the feedback loop run from the studio (aigc.studio.loop_jobs), one job of
# each kind at a time, on their own threads (minutes of CPU: never in front of a generation)
JOB_KINDS = ("image", "text", "music", "improve", "promote")
GENERATION_KINDS = ("image", "text", "music")  # what ``aigc worker`` runs


def default_worker_name(prefix: str = "") -> str:
    """``[prefix@]HOST:PID``: unique among the live processes of a host."""
    return f"{prefix + '@' if prefix else ''}{socket.gethostname()}:{os.getpid()}"


@dataclass
class Stats:
    """Counters exported on /metrics."""

    completed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(JOB_KINDS, 0))
    failed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(JOB_KINDS, 0))
    job_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(JOB_KINDS, 0.0))
    batches: int = 0
    batched_images: int = 0
    tokens: int = 0
    recovered: int = 0
    ema_image_job_s: float = 0.05

    def mean_job_seconds(self, kind: str) -> float:
        """Mean worker seconds per finished job of ``kind`` in this process (a batch's time is
        shared by its jobs); ``UNMEASURED_JOB_S`` until one has finished."""
        done = self.completed[kind]
        return self.job_seconds[kind] / done if done and self.job_seconds[kind] > 0 else \
            UNMEASURED_JOB_S


def public_error(exc: BaseException) -> str:
    """What a client is told about an exception that failed its job: type and message, except
    for database errors, whose text carries the SQL statement and its parameters (those go to
    the server log only)."""
    if isinstance(exc, SQLAlchemyError):
        return f"a database error ({type(exc).__name__}) stopped the job; details are in the " \
            "server log"
    return f"{type(exc).__name__}: {exc}"[:500]


def storing_failed(exc: BaseException) -> str:
    """The failure message of a job whose output could not be stored (database or disk): no SQL
    and no server paths, the details are in the server log."""
    return f"the result could not be stored ({type(exc).__name__}); details are in the server log"


def _token_of(job: dict[str, Any]) -> dict[str, int] | None:
    """``{id: token}`` of a job claimed with a fencing token, else None (no fencing)."""
    return {job["id"]: job["token"]} if job.get("token") is not None else None


def image_settings(params: dict[str, Any]) -> ImageSettings:
    return ImageSettings(temperature=float(params.get("temperature", 1.0)),
                         steps=params.get("steps"), guidance=params.get("guidance"),
                         sampler=params.get("sampler"))


def image_specs(params: dict[str, Any]) -> list[ImageSpec]:
    """Image i of a job with seed s is drawn with seed s + i."""
    return [ImageSpec(seed=int(params["seed"]) + i, label=params.get("label"),
                      prompt=params.get("prompt")) for i in range(int(params["n"]))]


def _batch_key(job: dict[str, Any]) -> tuple:
    """Jobs with equal keys are drawn in one batch: same model and settings, and either all
    with a class label or all without, all with a prompt or all without (a batch passes labels,
    or prompts, for every image or for none)."""
    return (job["model"], image_settings(job["params"]), job["params"].get("label") is None,
            job["params"].get("prompt") is None)


class JobRunner:
    """Owns the worker threads. ``start()`` in the app's lifespan, ``stop()`` at shutdown."""

    def __init__(self, store: Store, images: dict[str, ImageBackend],
                 texts: dict[str, TextBackend], *, max_batch_images: int = 64,
                 batching: bool = True, batch_wait_s: float = 0.0,
                 versions: dict[str, str] | None = None,
                 musics: dict[str, MusicBackend] | None = None,
                 worker: str | None = None, lease_s: float = DEFAULT_LEASE_S,
                 poll_s: float = 1.0):
        self.store = store
        # The name claims are held under; a restarted process of the same name takes its own
        # jobs back at once (the API server's threads: studio@HOST).
        self.worker = worker or f"studio@{socket.gethostname()}"
        self.lease_s = lease_s
        self.poll_s = poll_s
        self._held: dict[str, int] = {}  # job id -> token, of the jobs this runner runs now
        self._lost: set[str] = set()  # held jobs whose lease this runner lost
        self._follow_wake = threading.Event()
        self._followed: dict[str, tuple[str, float]] = {}  # id -> (status, progress) pushed
        self._ended_here: set[str] = set()  # followed jobs whose end this runner pushed
        self.images = images
        self.texts = texts
        self.musics = musics or {}
        self.max_batch_images = max_batch_images
        self.batching = batching
        self.batch_wait_s = batch_wait_s
        self.versions = versions or {}
        self.stats = Stats()
        self._stop = threading.Event()
        self._wake = {kind: threading.Event() for kind in JOB_KINDS}
        self.registry = None  # aigc.registry.Registry, for improve / promote jobs
        self.registry_watcher = None  # switches served versions (aigc.studio.registry_watch)
        self._threads: list[threading.Thread] = []
        self._channels: dict[str, list[Channel]] = {}  # job id -> its followers
        self._lock = threading.Lock()
        self._clients: dict[str, str] = {}  # queued job id -> the client that queued it
        # kind -> client -> when a job of that kind of that client was last claimed (a count)
        self._served: dict[str, dict[str, int]] = {kind: {} for kind in JOB_KINDS}
        self._claims = 0

    # -------------------------------------------------------------------- lifecycle
    def start(self, kinds: tuple[str, ...] = JOB_KINDS, follow: bool = False) -> None:
        """Start a worker thread for each of ``kinds``, the lease thread (heartbeats of the
        jobs held here; jobs of dead workers back to the queue), the NOTIFY listener on
        PostgreSQL, and with ``follow`` the follower (events of jobs other processes run)."""
        unknown = sorted(set(kinds) - set(JOB_KINDS))
        if unknown:
            raise ValueError(f"kinds must be among {JOB_KINDS}, got {unknown}")
        self._stop.clear()
        self.stats.recovered = self.store.recover(self.worker)
        if self.stats.recovered:
            log.warning("studio: %d job(s) were running when their worker stopped; re-queued",
                        self.stats.recovered)
        from aigc.studio.loop_jobs import run_improve, run_promote

        targets = {"image": self._image_loop, "text": self._text_loop,
                   "music": self._music_loop,
                   "improve": lambda: self._one_at_a_time(
                       "improve", lambda job: run_improve(self, job)),
                   "promote": lambda: self._one_at_a_time(
                       "promote", lambda job: run_promote(self, job)),
                   "lease": self._lease_loop}
        threads = [k for k in JOB_KINDS if k in kinds] + ["lease"]
        if self.store.listen_conninfo() is not None:
            targets["listen"] = self._listen_loop
            threads.append("listen")
        if follow:
            targets["follow"] = self._follow_loop
            threads.append("follow")
        for name in threads:
            t = threading.Thread(target=self._guard(targets[name]), name=f"aigc-{name}-worker",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for ev in self._wake.values():
            ev.set()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()
        with self._lock:
            held = dict(self._held)
        if held:  # still running after the timeout: back to the queue now, not at lease end
            try:
                given = self.store.give_back(held, self.worker)
                log.warning("studio: stopping with %d job(s) unfinished; %d back in the queue",
                            len(held), given)
            except Exception:  # the database is gone too: their leases will end
                log.error("studio: could not give back %d job(s):\n%s", len(held),
                          traceback.format_exc())

    def notify(self, kind: str) -> None:
        self._wake[kind].set()

    def _wait(self, kind: str) -> None:
        """Sleep until a job of ``kind`` is announced (this process, or NOTIFY), at most
        ``poll_s`` seconds: the polling fallback."""
        self._wake[kind].wait(self.poll_s)
        self._wake[kind].clear()

    # ------------------------------------------------------------- leases, listening
    def _claimed(self, queued: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Claim ``queued`` under this runner's name and lease; the jobs won (with tokens)."""
        won = self.store.claim_jobs(queued, self.worker, self.lease_s)
        with self._lock:
            for job in won:
                self._held[job["id"]] = job["token"]
        return won

    def _release(self, jobs: list[dict[str, Any]]) -> None:
        with self._lock:
            for job in jobs:
                self._held.pop(job["id"], None)
                self._lost.discard(job["id"])

    def _lease_loop(self) -> None:
        """Every third of the lease: renew the leases of the jobs held here (a job no longer
        held is marked lost, and its run stops at its next check), and put the jobs of workers
        that stopped renewing theirs back in the queue."""
        while not self._stop.wait(self.lease_s / 3):
            with self._lock:
                held = dict(self._held)
            kept = self.store.heartbeat(held, self.worker, self.lease_s)
            with self._lock:
                self._lost |= {j for j in held if j not in kept and j in self._held}
            requeued, failed = self.store.requeue_expired()
            if requeued or failed:
                log.warning("studio: %d job(s) of stopped workers re-queued, %d failed",
                            requeued, failed)
                for ev in self._wake.values():
                    ev.set()

    def _listen_loop(self) -> None:
        """PostgreSQL: LISTEN for new jobs (wake the loop of their kind) and ended jobs (wake
        the follower); a broken connection is re-opened (the loops keep polling meanwhile)."""
        import psycopg

        try:
            with psycopg.connect(self.store.listen_conninfo(), autocommit=True) as conn:
                conn.execute(f"LISTEN {QUEUED_CHANNEL}")
                conn.execute(f"LISTEN {ENDED_CHANNEL}")
                while not self._stop.is_set():
                    for note in conn.notifies(timeout=1.0):
                        if note.channel == QUEUED_CHANNEL and note.payload in self._wake:
                            self._wake[note.payload].set()
                        elif note.channel == ENDED_CHANNEL:
                            self._follow_wake.set()
        except psycopg.Error as exc:
            log.warning("studio: LISTEN connection lost (%s); polling meanwhile",
                        type(exc).__name__)
            self._stop.wait(2.0)

    def _follow_loop(self) -> None:
        """Push the events of followed jobs that another process runs (read from the
        database; woken by NOTIFY on PostgreSQL, else every ``FOLLOW_POLL_S`` seconds)."""
        while not self._stop.is_set():
            self._follow_wake.wait(FOLLOW_POLL_S)
            self._follow_wake.clear()
            with self._lock:
                ids = [j for j in self._channels if j not in self._held
                       and j not in self._ended_here]
            if not ids:
                continue
            for job_id, (status, progress) in self.store.progress_of(ids).items():
                with self._lock:
                    before = self._followed.get(job_id, ("queued", 0.0))
                    if job_id in self._held or job_id in self._ended_here or \
                            job_id not in self._channels:
                        continue  # run here after all: this runner's own pushes tell it
                    self._followed[job_id] = (status, progress)
                if (status, progress) == before:
                    continue
                if status == "running":
                    if before[0] == "queued":
                        self._push(job_id, "running", None)
                    if progress > before[1]:
                        self._push(job_id, "progress", progress)
                elif status == "done":
                    job = self.store.ended_job(job_id)
                    text = (job or {}).get("result") or {}
                    if job and job["kind"] == "text" and text.get("text"):
                        self._push(job_id, "piece", text["text"])  # the whole text, at once
                    self._push(job_id, "done", job)
                elif status == "failed":
                    self._push(job_id, "failed", (self.store.get_job(job_id) or {}).get(
                        "error") or "failed")
                elif status == "cancelled":
                    self._push(job_id, "cancelled", None)

    def _guard(self, loop_fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            while not self._stop.is_set():
                try:
                    loop_fn()
                except Exception:  # a storage hiccup must not kill the worker
                    log.error("studio worker error:\n%s", traceback.format_exc())
                    self._stop.wait(0.5)
        return run

    # --------------------------------------------------------------------- channels
    def open_channel(self, job_id: str, loop: asyncio.AbstractEventLoop) -> Channel:
        """A new channel for the events of ``job_id`` (a job may have several followers)."""
        ch = Channel(loop)
        with self._lock:
            self._channels.setdefault(job_id, []).append(ch)
        return ch

    def close_channel(self, job_id: str, channel: Channel) -> None:
        with self._lock:
            followers = self._channels.get(job_id, [])
            if channel in followers:
                followers.remove(channel)
            if not followers:
                self._channels.pop(job_id, None)
                self._followed.pop(job_id, None)
                self._ended_here.discard(job_id)

    def _push(self, job_id: str, event: str, value: Any) -> None:
        with self._lock:
            followers = list(self._channels.get(job_id, ()))
            if followers and event in TERMINAL:
                self._ended_here.add(job_id)
        for ch in followers:
            ch.push(event, value)

    # --------------------------------------------------------------------- fairness
    def set_client(self, job_id: str, client: str) -> None:
        """Record which client queues ``job_id`` (call it before the job is inserted). Jobs
        with no client (e.g. re-queued after a restart) count as one client, ``""``."""
        with self._lock:
            self._clients[job_id] = client

    def forget_client(self, job_id: str) -> None:
        """Drop the client of a job that was not queued after all (refused)."""
        with self._lock:
            self._clients.pop(job_id, None)

    def _fair_order(self, queued: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``queued`` (jobs of one kind, oldest first) with, first, the oldest job of the client
        whose last job of that kind was claimed longest ago (a client never served comes
        first): per-client round robin."""
        with self._lock:
            served = self._served[queued[0]["kind"]]
            first = min(queued, key=lambda j: served.get(self._clients.get(j["id"], ""), -1))
        return [first] + [j for j in queued if j is not first]

    def _mark_served(self, jobs: list[dict[str, Any]]) -> None:
        if not jobs:
            return
        with self._lock:
            self._claims += 1
            served = self._served[jobs[0]["kind"]]
            for job in jobs:
                served[self._clients.pop(job["id"], "")] = self._claims
            if len(served) > MAX_TRACKED_CLIENTS:  # forget the half served longest ago
                keep = sorted(served.items(), key=lambda kv: kv[1])[-MAX_TRACKED_CLIENTS // 2:]
                self._served[jobs[0]["kind"]] = dict(keep)

    def cancel(self, job_id: str) -> str | None:
        self.forget_client(job_id)
        before = self.store.cancel(job_id)
        if before in ("queued", "running"):
            self._push(job_id, "cancelled", None)
        return before

    def _is_cancelled(self, job_id: str) -> bool:
        """Cancelled, or no longer this runner's (its lease was lost): stop, write nothing."""
        with self._lock:
            if job_id in self._lost:
                return True
        return self.store.statuses([job_id]).get(job_id, "cancelled") == "cancelled"

    # ----------------------------------------------------------------------- images
    def _image_loop(self) -> None:
        while not self._stop.is_set():
            queued = self.store.queued_jobs("image", limit=FAIR_WINDOW, models=list(self.images))
            if not queued:
                self._wait("image")
                continue
            if self.batching and self.batch_wait_s > 0 and \
                    sum(int(j["params"]["n"]) for j in queued) < self.max_batch_images:
                # Requests of concurrent clients arrive a few ms apart: wait while they keep
                # coming, so that they join this batch instead of the next one.
                self._gather()
                queued = self.store.queued_jobs("image", limit=FAIR_WINDOW,
                                                models=list(self.images)) or queued
            batch = self._pick_batch(self._fair_order(queued))
            claimed = self._claimed(batch)
            self._mark_served(claimed)
            for job in claimed:
                self._push(job["id"], "running", None)
            if claimed:
                try:
                    self._run_image_batch(claimed)
                finally:
                    self._release(claimed)

    def _gather(self) -> None:
        """Wait while new image jobs keep arriving: until none came for ``quiet`` seconds (a
        quarter of ``batch_wait_s``) or ``batch_wait_s`` has passed. No database reads: every
        enqueue sets the wake event."""
        quiet = self.batch_wait_s / 4
        deadline = time.perf_counter() + self.batch_wait_s
        while not self._stop.is_set():
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            self._wake["image"].clear()
            if not self._wake["image"].wait(min(quiet, left)):
                break

    def _pick_batch(self, queued: list[dict[str, Any]]) -> list[dict[str, Any]]:
        first = queued[0]
        if not self.batching:
            return [first]
        batch, n = [first], int(first["params"]["n"])
        key = _batch_key(first)
        for job in queued[1:]:
            size = int(job["params"]["n"])
            if _batch_key(job) == key:
                if n + size > self.max_batch_images:
                    break
                batch.append(job)
                n += size
        return batch

    def _run_image_batch(self, jobs: list[dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        backend = self._backend_for(jobs, self.images)
        if backend is None:
            return
        settings = image_settings(jobs[0]["params"])
        specs: list[ImageSpec] = []
        for job in jobs:
            specs += image_specs(job["params"])

        last = [t0]  # progress is written at most every 0.2 s: a fast batch writes none

        ids = [job["id"] for job in jobs]
        tokens = {job["id"]: job["token"] for job in jobs if "token" in job}

        def progress(fraction: float) -> None:
            now = time.perf_counter()
            if now - last[0] > 0.2 or fraction >= 1:
                last[0] = now
                # one statement a batch
                self.store.set_progress_many(ids, min(fraction, 0.99), tokens)
                for job_id in ids:
                    self._push(job_id, "progress", fraction)
                statuses = self.store.statuses(ids)
                with self._lock:
                    lost = set(self._lost)
                if all(statuses.get(i, "cancelled") == "cancelled" or i in lost for i in ids):
                    raise JobCancelled

        try:
            images = backend.generate(specs, settings, progress)
        except JobCancelled:
            return
        except Exception as exc:  # the model failed: fail these jobs, keep serving
            log.error("image batch failed:\n%s", traceback.format_exc())
            for job in jobs:
                self._fail(job, public_error(exc))
            return
        try:
            self._store_image_batch(jobs, backend, settings, specs, images)
        except Exception as exc:  # e.g. disk full: fail the jobs instead of leaving them running
            log.error("storing an image batch failed:\n%s", traceback.format_exc())
            if len(jobs) == 1:
                self._fail(jobs[0], storing_failed(exc))
                return
            self._store_one_by_one(jobs, backend, settings, specs, images)
        dt = time.perf_counter() - t0
        self.stats.job_seconds["image"] += dt
        self.stats.ema_image_job_s = 0.8 * self.stats.ema_image_job_s + 0.2 * dt / len(jobs)

    def _store_one_by_one(self, jobs: list[dict[str, Any]], backend: ImageBackend,
                          settings: ImageSettings, specs: list[ImageSpec], images) -> None:
        """After a batch's transaction failed (nothing of it was stored), store its jobs one at
        a time, so that a value the database refuses fails only the job that holds it."""
        counted = self.stats.batches, self.stats.batched_images  # the batch is counted once
        start = 0
        for job in jobs:
            n = int(job["params"]["n"])
            try:
                self._store_image_batch([job], backend, settings, specs[start : start + n],
                                        images[start : start + n])
            except Exception as exc:
                log.error("storing image job %s failed:\n%s", job["id"],
                          traceback.format_exc())
                self._fail(job, storing_failed(exc))
            start += n
        self.stats.batches, self.stats.batched_images = counted

    def _store_image_batch(self, jobs: list[dict[str, Any]], backend: ImageBackend,
                           settings: ImageSettings, specs: list[ImageSpec], images) -> None:
        model = backend.name
        options = backend.record_options(settings)
        self.stats.batches += 1
        self.stats.batched_images += len(specs)
        start, done = 0, []
        for job in jobs:
            p = job["params"]
            n = int(p["n"])
            outs = []
            for i in range(n):
                spec = specs[start + i]
                names = backend.class_names
                record = image_record(
                    kind="image", ckpt=backend.ckpt, checkpoint=backend.path, seed=spec.seed,
                    n=1, ema=True, options=options, label=spec.label,
                    class_name=names[spec.label] if spec.label is not None and names else None,
                    prompt=spec.prompt, job_id=job["id"], index=i, model=model,
                    conditioning=backend.conditioning, native_size=backend.image_size,
                    output_size=p.get("size") or backend.image_size,
                    memory_format=backend.memory_format,
                    **backend.prompt_record(spec))
                outs.append(ItemOut(png_bytes(images[start + i], record, p.get("size")), "png",
                                    record, prompt=spec.prompt, seed=spec.seed))
            start += n
            done.append((job, outs, None))
        for job in self.store.finish_jobs(done, model_sha256=backend.sha256):
            self.stats.completed["image"] += 1
            self._push(job["id"], "done", job)

    def _fail(self, job: dict[str, Any], message: str) -> None:
        if not self.store.fail_job(job["id"], message, token=job.get("token")):
            return  # cancelled meanwhile, or no longer this runner's job
        self.stats.failed[job["kind"]] += 1
        self._push(job["id"], "failed", message)

    def _backend_for(self, jobs: list[dict[str, Any]], table: dict[str, Any]) -> Any:
        """The loaded backend of the jobs' model, or None after failing every job."""
        model = jobs[0]["model"]
        backend = table.get(model)
        if backend is None:
            for job in jobs:
                self._fail(job, f"model {model!r} is not loaded on this server")
        return backend

    # ------------------------------------------------------------------------- text
    def _one_at_a_time(self, kind: str, run: Callable[[dict[str, Any]], None]) -> None:
        """The loop of the text and music workers: claim the next queued job (the oldest of
        the client served longest ago), run it."""
        table = {"text": self.texts, "music": self.musics}.get(kind)
        models = None if table is None else list(table)
        while not self._stop.is_set():
            queued = self.store.queued_jobs(kind, limit=FAIR_WINDOW, models=models)
            if not queued:
                self._wait(kind)
                continue
            claimed = self._claimed([self._fair_order(queued)[0]])
            for job in claimed:
                self._mark_served([job])
                self._push(job["id"], "running", None)  # for followers that show the start
                try:
                    run(job)
                finally:
                    self._release([job])

    def _text_loop(self) -> None:
        self._one_at_a_time("text", self._run_text)

    def _run_text(self, job: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        backend = self._backend_for([job], self.texts)
        if backend is None:
            return
        p = job["params"]
        try:
            stream = backend.stream(
                prompt=p.get("prompt"), messages=p.get("messages"),
                max_tokens=int(p["max_tokens"]), temperature=float(p["temperature"]),
                top_p=float(p["top_p"]), seed=int(p["seed"]), stop=p.get("stop"))
            text, last = "", time.perf_counter()
            for piece in stream:
                text += piece
                self._push(job["id"], "piece", piece)
                now = time.perf_counter()
                if now - last > 0.25:
                    last = now
                    if self._is_cancelled(job["id"]):
                        return
                    fraction = stream.completion_tokens / p["max_tokens"]
                    self.store.set_progress_many([job["id"]], fraction,
                                                 _token_of(job))
                    self._push(job["id"], "progress", fraction)
        except Exception as exc:
            log.error("text job failed:\n%s", traceback.format_exc())
            self._fail(job, public_error(exc))
            return
        usage = {"prompt_tokens": stream.prompt_tokens,
                 "completion_tokens": stream.completion_tokens,
                 "total_tokens": stream.prompt_tokens + stream.completion_tokens}
        prompt = p.get("prompt")
        if prompt is None:
            prompt = "\n".join(f"{m['role']}: {m['content']}" for m in p["messages"])
        path = getattr(backend, "path", None)
        described = backend.describe()
        record = {"format": RECORD_FORMAT, "kind": "text", "job_id": job["id"],
                  "model": job["model"], "checkpoint": checkpoint_ref(path) if path else None,
                  "model_sha256": described.get("sha256"), "family": described.get("family"),
                  "description": described.get("description"), "prompt": prompt,
                  "messages": p.get("messages"), "seed": p["seed"],
                  "max_tokens": p["max_tokens"], "temperature": p["temperature"],
                  "top_p": p["top_p"], "stop": p.get("stop"), "usage": usage,
                  "finish_reason": stream.finish_reason, **runtime()}
        result = {"text": text, "usage": usage, "finish_reason": stream.finish_reason}
        out = ItemOut(text.encode("utf-8"), "txt", record, prompt=prompt, seed=int(p["seed"]),
                      text=text)
        sha = str(backend.describe().get("sha256", ""))
        try:
            finished_jobs = self.store.finish_jobs([(job, [out], result)], model_sha256=sha)
        except Exception as exc:  # e.g. a value the database refuses: fail, never stay running
            log.error("storing a text job failed:\n%s", traceback.format_exc())
            self._fail(job, storing_failed(exc))
            return
        for finished in finished_jobs:
            self.stats.completed["text"] += 1
            self.stats.tokens += usage["total_tokens"]
            self._push(job["id"], "done", finished)
        self.stats.job_seconds["text"] += time.perf_counter() - t0

    # ------------------------------------------------------------------------ music
    def _music_loop(self) -> None:
        self._one_at_a_time("music", self._run_music)

    def _run_music(self, job: dict[str, Any]) -> None:
        """Compose the job's ``n`` pieces (piece i with seed + i); each is one item whose file
        is the WAV, with the MIDI file and the piano-roll PNG stored beside it (content
        addressed) and named in its record."""
        t0 = time.perf_counter()
        backend = self._backend_for([job], self.musics)
        if backend is None:
            return
        p = job["params"]
        n = int(p["n"])
        outs: list[ItemOut] = []
        try:
            for i in range(n):
                spec = MusicSpec(style=p["style"], key=p["key"], meter=p["meter"],
                                 bars=int(p["bars"]), seed=int(p["seed"]) + i,
                                 temperature=float(p["temperature"]), tempo=float(p["tempo"]))
                piece = backend.compose(spec)
                record = {
                    "kind": "music", "job_id": job["id"], "index": i, "model": backend.name,
                    "model_sha256": backend.sha256, "family": backend.family,
                    "step": backend.ckpt.step, "data": backend.ckpt.meta.get("data"),
                    "seed": spec.seed, "style": spec.style, "key": spec.key,
                    "meter": spec.meter, "bars": spec.bars, "temperature": spec.temperature,
                    "tempo": spec.tempo, "synth": "built-in", "sample_rate": backend.sample_rate,
                    "ema": True, **piece.facts, "versions": self.versions,
                }
                png = roll_png_bytes(piece.roll, record)  # the picture carries its provenance
                record["files"] = {"mid": self.store.put_file(piece.midi, "mid"),
                                   "png": self.store.put_file(png, "png"),
                                   "wav": f"{hashlib.sha256(piece.wav).hexdigest()}.wav"}
                outs.append(ItemOut(piece.wav, "wav", record, seed=spec.seed))
                self.store.set_progress_many([job["id"]], (i + 1) / n * 0.99,
                                             _token_of(job))
                self._push(job["id"], "progress", (i + 1) / n)
                if self._is_cancelled(job["id"]):
                    return
        except Exception as exc:  # the model failed: fail this job, keep serving
            log.error("music job failed:\n%s", traceback.format_exc())
            self._fail(job, public_error(exc))
            return
        try:
            finished_jobs = self.store.finish_jobs([(job, outs, None)],
                                                   model_sha256=backend.sha256)
        except Exception as exc:  # e.g. disk full: fail the job instead of leaving it running
            log.error("storing a music job failed:\n%s", traceback.format_exc())
            self._fail(job, storing_failed(exc))
            return
        for finished in finished_jobs:
            self.stats.completed["music"] += 1
            self._push(job["id"], "done", finished)
        self.stats.job_seconds["music"] += time.perf_counter() - t0
