"""``aigc studio --no-workers`` with a separate worker, on SQLite (no PostgreSQL needed): the
server runs no generation job itself; a worker that shares only the database and the files
folder runs them, and the server's clients still get their results (its follower thread)."""

from __future__ import annotations

import threading
import time

from fastapi.testclient import TestClient
from studio_fixtures import make_settings, wait_job

from aigc.studio.app import create_app


def test_server_without_workers_and_a_worker_beside_it(tmp_path):
    from aigc.studio.worker import Worker

    with TestClient(create_app(make_settings(tmp_path, workers=False,
                                                      wait_timeout_s=20))) as client:
        waiting = client.post("/api/jobs", json={"kind": "image", "n": 2, "seed": 5}).json()
        time.sleep(1.5)  # longer than a worker's poll: nobody in the server takes it
        assert client.get(f"/api/jobs/{waiting['id']}").json()["status"] == "queued"

        worker = Worker(make_settings(tmp_path, worker_name="side", poll_s=0.1,
                                      files_dir=tmp_path / "data" / "files"))
        assert worker.models()["image"] == ["tiny-vae"]
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,))
        thread.start()
        try:
            job = wait_job(client, waiting["id"])
            assert job["status"] == "done" and len(job["items"]) == 2
            # (which worker ran a job is not shown to API clients: worker names name hosts)
            assert client.app.state.studio.store.get_job(job["id"])["worker"] == "side"
            item = client.get(f"/api/items/{job['items'][0]}").json()
            assert client.get(item["url"]).status_code == 200  # the worker's file, served
            # A request that waits for its job gets it from the worker through the follower.
            r = client.post("/v1/completions", json={"model": "ngram-char-6",
                                                     "prompt": "User: hi", "max_tokens": 5})
            assert r.status_code == 200 and r.json()["choices"][0]["text"], r.text
            assert client.app.state.studio.runner.stats.completed["text"] == 0  # not run here
        finally:
            stop.set()
            thread.join(30)


def test_a_worker_that_fails_to_start_closes_the_database(tmp_path, monkeypatch):
    import pytest

    from aigc.studio.worker import Worker

    worker = Worker(make_settings(tmp_path, worker_name="side", poll_s=0.1))
    calls = []

    def start(kinds):
        raise RuntimeError("cannot start the heartbeat")

    monkeypatch.setattr(worker.runner, "start", start)
    monkeypatch.setattr(worker.runner, "stop", lambda: calls.append("stop"))
    real_close = worker.studio.store.close
    monkeypatch.setattr(worker.studio.store, "close", lambda: (calls.append("close"),
                                                             real_close()))
    with pytest.raises(RuntimeError, match="heartbeat"):
        worker.run(threading.Event())
    assert calls == ["stop", "close"]
