"""The PostgreSQL tier: the studio's queue, workers and hostile inputs on a real PostgreSQL.

A throwaway cluster (tests/pg_cluster.py) is started once per session; every test gets a fresh
database. The tests that need it are skipped, with the reason, where PostgreSQL's binaries or
the driver are missing; set ``AIGC_REQUIRE_POSTGRES=1`` (as ``.ci/run`` does) to make that a
failure instead. The store-level tests of claims, leases and fencing also run on SQLite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from pg_cluster import Cluster, missing_reason
from studio_fixtures import (
    CORPUS,
    api_error,
    free_port,
    make_models,
    make_settings,
    start_server_process,
    wait_job,
)

from aigc.studio.store import MAX_ATTEMPTS, ItemOut, Store

SRC = Path(__file__).resolve().parents[1] / "src"
_MISSING = missing_reason()
if _MISSING and os.environ.get("AIGC_REQUIRE_POSTGRES") == "1":
    raise RuntimeError(f"AIGC_REQUIRE_POSTGRES=1 but {_MISSING}")


@pytest.fixture(scope="session")
def cluster():
    if _MISSING:
        pytest.skip(_MISSING)
    c = Cluster().start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def pg_url(cluster):
    return cluster.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """Both databases: SQLite in WAL mode (always) and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'studio.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(db_url, tmp_path):
    s = Store(tmp_path / "data", db_url)
    yield s
    s.close()


@pytest.fixture
def pg_store(pg_url, tmp_path):
    s = Store(tmp_path / "data", pg_url)
    yield s
    s.close()


def _text_out(job_id: str, text: str = "hi") -> list[ItemOut]:
    return [ItemOut(text.encode(), "txt", {"job_id": job_id}, prompt="p", text=text)]


# ------------------------------------------------------------------------------ queue, claims


def test_queueing_and_ending_a_job_notify(pg_store):
    """A new job is announced with NOTIFY (payload: its kind), an ended one with its id."""
    import psycopg

    with psycopg.connect(pg_store.listen_conninfo(), autocommit=True) as listener:
        listener.execute("LISTEN aigc_jobs")
        listener.execute("LISTEN aigc_job_ended")
        job = pg_store.add_job("text", "m", {"prompt": "x"}, 0.1)
        pg_store.cancel(job["id"])
        notes = [(n.channel, n.payload) for n in listener.notifies(timeout=2, stop_after=2)]
    assert notes == [("aigc_jobs", "text"), ("aigc_job_ended", job["id"])]


def test_queue_and_claim(store):
    """A claim holds a job with a lease under the worker's name; a second claim of the same
    job wins nothing; a worker sees only the jobs of its models."""
    job = store.add_job("text", "m", {"prompt": "x"}, 0.1)
    assert [j["id"] for j in store.queued_jobs("text", 10, models=["m"])] == [job["id"]]
    assert store.queued_jobs("text", 10, models=["other"]) == []
    won = store.claim_jobs([job], "w1", lease_s=30)
    assert [(j["id"], j["token"], j["worker"]) for j in won] == [(job["id"], 1, "w1")]
    assert store.claim_jobs([job], "w2", lease_s=30) == []
    row = store.get_job(job["id"])
    assert row["status"] == "running" and row["worker"] == "w1"
    assert row["lease_until"] > time.time() + 20


def test_two_workers_never_claim_the_same_job(db_url, tmp_path):
    """Four claimers on their own connections race for 120 jobs: each job is claimed and
    finished exactly once."""
    n_jobs, n_workers = 120, 4
    first = Store(tmp_path / "d", db_url)
    ids = {first.add_job("image", "m", {"n": 1}, 0.0)["id"] for _ in range(n_jobs)}
    claimed: dict[str, list[str]] = {f"w{i}": [] for i in range(n_workers)}
    barrier = threading.Barrier(n_workers)

    def work(name: str) -> None:
        s = Store(tmp_path / "d", db_url)
        barrier.wait()
        while True:
            queued = s.queued_jobs("image", 8)
            if not queued:
                break
            for job in s.claim_jobs(queued, name, lease_s=30):
                claimed[name].append(job["id"])
                assert s.finish_jobs([(job, [], None)])
        s.close()

    threads = [threading.Thread(target=work, args=(name,)) for name in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    every = [j for got in claimed.values() for j in got]
    assert sorted(every) == sorted(ids)  # all of them, none twice
    assert sum(len(got) > 0 for got in claimed.values()) >= 2, claimed  # a real race
    assert first.job_counts()["done"] == n_jobs
    assert {first.get_job(j)["attempts"] for j in ids} == {1}
    first.close()


def test_a_late_worker_cannot_overwrite_the_job_another_finished(store):
    """Worker A stalls past its lease; the job returns to the queue and B claims it. A's
    heartbeat, progress, failure and completion are all refused (fencing token); B's result
    is the one stored, once."""
    job = store.add_job("text", "m", {"prompt": "x"}, 0.1)
    (a,) = store.claim_jobs([job], "A", lease_s=0.05)
    time.sleep(0.1)
    assert store.requeue_expired() == (1, 0)
    (b,) = store.claim_jobs([store.get_job(job["id"])], "B", lease_s=30)
    assert (a["token"], b["token"]) == (1, 2)
    assert store.heartbeat({a["id"]: a["token"]}, "A") == set()  # A learns it lost the job
    store.set_progress_many([a["id"]], 0.7, {a["id"]: a["token"]})
    assert store.get_job(job["id"])["progress"] == 0.0
    assert store.fail_job(a["id"], "zombie", token=a["token"]) is False
    assert store.finish_jobs([(a, _text_out(a["id"], "from A"), {"text": "from A"})]) == []
    assert store.get_job(job["id"])["status"] == "running"
    done = store.finish_jobs([(b, _text_out(b["id"], "from B"), {"text": "from B"})])
    assert [d["attempts"] for d in done] == [2]
    got = store.get_job(job["id"])
    assert got["status"] == "done" and got["result"] == {"text": "from B"}
    assert [i["text"] for i in store.list_items()] == ["from B"]
    assert store.finish_jobs([(a, _text_out(a["id"], "from A"), {"text": "from A"})]) == []
    assert store.count_items() == 1


def test_attempts_are_bounded_when_workers_keep_dying(store):
    job = store.add_job("image", "m", {"n": 1}, 0.0)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert store.claim_jobs([store.get_job(job["id"])], f"w{attempt}", lease_s=0.01)
        time.sleep(0.03)
        assert store.requeue_expired() == ((1, 0) if attempt < MAX_ATTEMPTS else (0, 1))
    got = store.get_job(job["id"])
    assert got["status"] == "failed" and got["attempts"] == MAX_ATTEMPTS
    assert "never finished" in got["error"] and "SQL" not in got["error"]


def test_restart_takes_back_only_its_own_jobs(store):
    """A restarted process takes back at once the jobs its own name left running; jobs that
    another live worker holds (lease not expired) stay with it."""
    mine, theirs = (store.add_job("text", "m", {}, 0.0) for _ in range(2))
    store.claim_jobs([mine], "studio@host", 30)
    store.claim_jobs([theirs], "worker-2", 30)
    assert store.recover("studio@host") == 1
    assert store.get_job(mine["id"])["status"] == "queued"
    assert store.get_job(theirs["id"])["status"] == "running"


def test_processes_opening_a_new_database_together(db_url, tmp_path):
    """A server and its workers started at the same moment on an empty database: each
    creates the tables or finds them, none fails."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def open_store() -> None:
        barrier.wait()
        try:
            Store(tmp_path / "d", db_url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def test_a_stopping_worker_gives_its_jobs_back_at_once(store):
    job = store.add_job("text", "m", {}, 0.0)
    (held,) = store.claim_jobs([job], "A", 30)
    assert store.give_back({held["id"]: held["token"]}, "B") == 0  # not B's to give
    assert store.give_back({held["id"]: held["token"] + 1}, "A") == 0  # a stale token
    assert store.give_back({held["id"]: held["token"]}, "A") == 1
    assert store.get_job(job["id"])["status"] == "queued"


# --------------------------------------------------------------------------- hostile inputs


def _run_until_idle(store: Store, runner, timeout: float = 30) -> None:
    runner.start(kinds=("image", "text"))
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            counts = store.job_counts()
            if counts["queued"] + counts["running"] == 0:
                return
            time.sleep(0.05)
        raise AssertionError(f"jobs still outstanding: {store.job_counts()}")
    finally:
        runner.stop()


def test_nul_prompt_fails_only_its_own_job_of_a_batch(pg_store, tmp_path):
    """Jobs put in the queue directly (the API refuses a NUL with 400): PostgreSQL cannot
    store a NUL in text, so the batch of three is stored one by one and only the job with the
    NUL fails, cleanly, without SQL in its error."""
    store = pg_store
    from aigc.studio.backends import find_checkpoints, load_image_backends
    from aigc.studio.jobs import JobRunner

    images, _ = load_image_backends(find_checkpoints(make_models(tmp_path)))
    ids = [store.add_job("image", "tiny-vae", {"n": 2, "seed": seed, "temperature": 1.0,
                                               "prompt": prompt}, 0.0)["id"]
           for seed, prompt in ((10, "a cat"), (20, "a\x00dog"), (30, "a cow"))]
    runner = JobRunner(store, images, {}, worker="w")
    _run_until_idle(store, runner)
    assert runner.stats.batches == 1 and runner.stats.batched_images == 6
    jobs = [store.get_job(i) for i in ids]
    assert [j["status"] for j in jobs] == ["done", "failed", "done"], jobs
    assert "could not be stored" in jobs[1]["error"]
    for leak in ("INSERT", "SQL", "NUL", "0x00", "psycopg"):
        assert leak not in jobs[1]["error"], jobs[1]["error"]
    assert store.count_items() == 4


def test_text_job_whose_result_cannot_be_stored_ends_failed(pg_store):
    store = pg_store
    from aigc.studio.backends import NGramTextBackend
    from aigc.studio.jobs import JobRunner

    text = NGramTextBackend(CORPUS, "corpus", order=4)
    params = {"max_tokens": 8, "temperature": 1.0, "top_p": 1.0, "seed": 1, "stop": None,
              "messages": None}
    bad = store.add_job("text", text.name, {**params, "prompt": "User: \x00hi"}, 0.1)
    good = store.add_job("text", text.name, {**params, "prompt": "User: hi"}, 0.1)
    runner = JobRunner(store, {}, {text.name: text}, worker="w")
    _run_until_idle(store, runner)
    got = store.get_job(bad["id"])
    assert got["status"] == "failed" and "could not be stored" in got["error"]
    assert "SQL" not in got["error"] and "INSERT" not in got["error"]
    assert got["attempts"] == 1  # failed at once, not retried
    assert store.get_job(good["id"])["status"] == "done"
    assert store.outstanding() == (0, 0.0)
    assert list(store.files_dir.glob("*.txt")) == [
        store.files_dir / store.list_items()[0]["file"]]  # no orphan file of the failed job


def test_api_on_postgres_refuses_nul_and_serves_the_others(pg_url, tmp_path):
    from fastapi.testclient import TestClient

    from aigc.studio.app import create_app

    with TestClient(create_app(make_settings(tmp_path, db_url=pg_url))) as client:
        err = api_error(client.post("/api/jobs", json={"kind": "text", "prompt": "a\x00b"}), 400)
        assert err["param"] == "prompt"
        ids = [client.post("/api/jobs", json={"kind": "image", "n": 2, "seed": s}).json()["id"]
               for s in (1, 2, 3)]
        ids.append(client.post("/api/jobs", json={"kind": "text", "prompt": "User: hi",
                                                  "max_tokens": 8}).json()["id"])
        assert [wait_job(client, i)["status"] for i in ids] == ["done"] * 4
        r = client.post("/v1/completions", json={"model": "ngram-char-6", "prompt": "User: hi",
                                                 "max_tokens": 5})
        assert r.status_code == 200 and r.json()["choices"][0]["text"]


# ------------------------------------------------------------------- processes, SIGKILL


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


def _common(tmp: Path, pg_url: str) -> list[str]:
    return ["--data", str(tmp / "data"), "--db", pg_url, "--models", str(tmp / "models"),
            "--text-corpus", str(tmp / "corpus.txt"), "--no-starters", "--log-level", "warning"]


def _server(tmp: Path, pg_url: str, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "aigc.cli", "studio", "--port", str(port), "--no-workers",
           *_common(tmp, pg_url)]
    return start_server_process(cmd, cwd=tmp, env=_env(), port=port,
                                log=tmp / f"server-{time.time_ns()}.log")


def _worker(tmp: Path, pg_url: str, name: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "aigc.cli", "worker", "--name", name, "--lease-s", "3",
           "--poll-s", "0.5", "--no-batching", "--files", str(tmp / "data" / "files"),
           *_common(tmp, pg_url)]
    return subprocess.Popen(cmd, cwd=tmp, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=open(tmp / f"worker-{name}.log", "w"))  # noqa: SIM115


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _setup(tmp: Path) -> None:
    make_models(tmp)
    (tmp / "corpus.txt").write_text(CORPUS, encoding="utf-8")


def _queue_images(base: str, n_jobs: int) -> list[str]:
    # Large upscaled PNGs make each job take a noticeable time (one job at a time per worker).
    return [httpx.post(f"{base}/api/jobs", json={"kind": "image", "n": 16, "size": 256,
                                                 "seed": 1000 * i}).json()["id"]
            for i in range(n_jobs)]


def _wait_for(store: Store, pred, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}: {store.job_counts()}")


def _check_exactly_once(store: Store, ids: list[str]) -> list[dict]:
    from sqlalchemy import select

    from aigc.studio.store import items

    jobs = [store.get_job(i) for i in ids]
    assert [j["status"] for j in jobs] == ["done"] * len(ids), [j["status"] for j in jobs]
    with store.engine.connect() as conn:
        rows = conn.execute(select(items.c.job_id, items.c.index, items.c.file)).all()
    assert len(rows) == 16 * len(ids) == len({(r.job_id, r.index) for r in rows})
    assert all((store.files_dir / r.file).is_file() for r in rows)
    return jobs


def test_sigkill_of_a_worker_mid_job_another_finishes_it_once(pg_url, tmp_path):
    """Two worker processes (no API server: jobs are queued straight into the database);
    ``kill -9`` of one while it runs a job: its lease ends, the other worker takes the job
    and finishes it; every job is stored exactly once."""
    _setup(tmp_path)
    store = Store(tmp_path / "data", pg_url)
    workers = {name: _worker(tmp_path, pg_url, name) for name in ("w1", "w2")}
    try:
        params = {"n": 16, "temperature": 1.0, "label": None, "prompt": None, "steps": None,
                  "guidance": None, "sampler": None, "size": 256}
        ids = [store.add_job("image", "tiny-vae", {**params, "seed": 1000 * i}, 0.1)["id"]
               for i in range(8)]
        # Whichever worker is seen running a job is killed (under load one worker may start
        # late and the other take every job; the test is about the job of the killed one).
        running = _wait_for(store, lambda: [j for j in store.list_jobs("running")
                                            if j["worker"] in workers], 90, "a worker to run a job")
        victim, killed = running[0]["id"], running[0]["worker"]
        survivor = next(name for name in workers if name != killed)
        os.kill(workers[killed].pid, signal.SIGKILL)
        workers[killed].wait(10)
        _wait_for(store, lambda: store.job_counts()["done"] == len(ids), 120, "all jobs done")
        jobs = _check_exactly_once(store, ids)
        by_id = {j["id"]: j for j in jobs}
        assert by_id[victim]["attempts"] == 2 and by_id[victim]["worker"] == survivor
        assert sum(j["attempts"] for j in jobs) == len(ids) + 1  # only the victim ran twice
        assert {j["worker"] for j in jobs} <= {"w1", "w2"}
    finally:
        for proc in workers.values():
            _stop(proc)
        store.close()


def test_sigkill_of_the_server_jobs_continue_and_restart_serves(pg_url, tmp_path):
    _setup(tmp_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = _server(tmp_path, pg_url, port)
    worker = _worker(tmp_path, pg_url, "w1")
    store = Store(tmp_path / "data", pg_url)
    try:
        ids = _queue_images(base, 8)
        _wait_for(store, lambda: store.job_counts()["running"] >= 1, 90, "a running job")
        os.kill(server.pid, signal.SIGKILL)
        server.wait(10)
        done_at_kill = store.job_counts()["done"]
        # The worker goes on without the server.
        _wait_for(store, lambda: store.job_counts()["done"] > done_at_kill, 60,
                  "a job done while the server is down")
        server = _server(tmp_path, pg_url, port)
        _wait_for(store, lambda: store.job_counts()["done"] == len(ids), 120, "all jobs done")
        _check_exactly_once(store, ids)
        assert all(j["attempts"] == 1 for j in store.list_jobs())
        # After the restart, requests that wait for their job get it from the worker.
        r = httpx.post(f"{base}/v1/completions", json={"model": "ngram-char-6",
                                                       "prompt": "User: hi", "max_tokens": 5},
                       timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["text"], r.text
        with httpx.stream("GET", f"{base}/api/jobs/{ids[0]}/events", timeout=30) as events:
            body = "".join(events.iter_text())
        assert '"status": "done"' in body
        # A streamed chat gets the worker's text (in one piece: it ran in another process).
        with httpx.stream("POST", f"{base}/v1/chat/completions", timeout=60, json={
                "model": "ngram-char-6", "stream": True, "max_tokens": 6,
                "messages": [{"role": "user", "content": "hello"}]}) as chat:
            lines = [x[6:] for x in chat.iter_lines() if x.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        import json

        text = "".join(json.loads(x)["choices"][0]["delta"].get("content") or ""
                       for x in lines[:-1] if json.loads(x).get("choices"))
        assert text, lines
    finally:
        _stop(worker)
        _stop(server)
        store.close()


# ------------------------------------------------------------------------------- the CLI


def test_db_url_of_the_help_works_and_a_dead_database_is_one_line(cluster, tmp_path, capsys):
    """The form ``postgresql+psycopg://user@host/aigc`` that ``--db``'s help shows opens a
    real database (here with the port); an unreachable one is one line on stderr, exit 2."""
    import psycopg

    from aigc.cli import main

    with psycopg.connect(f"host=127.0.0.1 port={cluster.port} user=aigc dbname=postgres",
                         autocommit=True) as conn:
        conn.execute("CREATE DATABASE aigc")
    url = f"postgresql+psycopg://aigc@127.0.0.1:{cluster.port}/aigc"
    assert main(["studio", "--data", str(tmp_path), "--db", url, "--create-key", "ci"]) == 0
    assert "API key 'ci'" in capsys.readouterr().out
    dead = f"postgresql+psycopg://aigc@127.0.0.1:{free_port()}/aigc"
    assert main(["studio", "--data", str(tmp_path), "--db", dead, "--create-key", "ci"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aigc: error: could not open the studio database") and \
        "\n" not in err and "Traceback" not in err, err


def test_a_database_of_an_older_version_gets_the_new_columns(tmp_path):
    """A studio database made before workers (no ``worker``/``lease_until`` columns) is
    upgraded when opened, and its jobs can be claimed with a lease."""
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE jobs (id VARCHAR(32) PRIMARY KEY, kind VARCHAR(16) NOT NULL, "
                     "model VARCHAR(200) NOT NULL, params JSON NOT NULL, status VARCHAR(16) "
                     "NOT NULL, progress FLOAT NOT NULL, cost FLOAT NOT NULL, attempts INTEGER "
                     "NOT NULL, error TEXT, result JSON, retry_of VARCHAR(32), created FLOAT "
                     "NOT NULL, started FLOAT, finished FLOAT)")
        conn.execute("INSERT INTO jobs VALUES ('a', 'text', 'm', '{}', 'queued', 0, 0, 0, NULL, "
                     "NULL, NULL, 1.0, NULL, NULL)")
    store = Store(tmp_path / "data", f"sqlite:///{path}")
    (job,) = store.claim_jobs(store.queued_jobs("text", 5), "w", lease_s=30)
    assert job["token"] == 1 and store.get_job("a")["worker"] == "w"
    store.close()


@pytest.mark.parametrize("flags, message", [
    (["--kinds", "image,video"], "--kinds must be"),
    (["--lease-s", "1"], "--lease-s must be in 3..3600"),
    (["--poll-s", "0"], "--poll-s must be in 0.05..60"),
    (["--name", ""], "--name must be"),
])
def test_worker_refuses_bad_flags(tmp_path, capsys, flags, message):
    from aigc.cli import main

    assert main(["worker", "--data", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
