"""``GET /api/jobs/{id}/events``: a job's live progress as server-sent events, over real HTTP
(uvicorn) so that events are seen as they arrive, and through the TestClient for the edges."""

from __future__ import annotations

import json
import threading
import time

import httpx
from fastapi.testclient import TestClient
from studio_fixtures import live_server, make_settings, wait_job

from aigc.studio.app import create_app

ORDER = ["queued", "running", "done"]


def _data(lines) -> list[dict]:
    return [json.loads(ln[6:]) for ln in lines if ln.startswith("data: ")]


class _Follower(threading.Thread):
    """Reads the event stream of one job in the background, keeping each event as it comes."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.events, self.content_type = url, [], None

    def run(self) -> None:
        with httpx.stream("GET", self.url, timeout=30) as r:
            self.content_type = r.headers["content-type"]
            for line in r.iter_lines():
                if line.startswith("data: "):
                    self.events.append(json.loads(line[6:]))

    def wait_for(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.time() + timeout
        while len(self.events) < n:
            assert time.time() < deadline, f"only {len(self.events)} events: {self.events}"
            time.sleep(0.01)


def test_events_arrive_in_order_and_end_with_the_terminal_state(tmp_path):
    app = create_app(make_settings(tmp_path))
    with live_server(None, app=app) as base:
        runner = app.state.studio.runner
        runner.stop()  # hold the job queued until the follower is listening
        job = httpx.post(base + "/api/jobs", json={"kind": "image", "n": 3, "seed": 4}).json()
        follower = _Follower(f"{base}/api/jobs/{job['id']}/events")
        follower.start()
        follower.wait_for(1)
        assert follower.events[0]["status"] == "queued"  # the state when the stream opened
        runner.start()
        follower.join(20)
        assert not follower.is_alive(), "the stream did not end after the terminal state"
        assert follower.content_type.startswith("text/event-stream")
        events = follower.events
        statuses = [e["status"] for e in events]
        assert statuses[0] == "queued" and statuses[-1] == "done" and "running" in statuses
        assert [ORDER.index(s) for s in statuses] == sorted(ORDER.index(s) for s in statuses)
        progress = [e["progress"] for e in events]
        assert progress == sorted(progress) and progress[-1] == 1.0
        done = httpx.get(f"{base}/api/jobs/{job['id']}").json()
        assert events[-1]["items"] == done["items"] and len(done["items"]) == 3
        assert runner._channels == {}  # the follower's channel is closed with the stream

        # A cancelled job: the stream ends with "cancelled".
        runner.stop()
        job = httpx.post(base + "/api/jobs", json={"kind": "image", "n": 1}).json()
        follower = _Follower(f"{base}/api/jobs/{job['id']}/events")
        follower.start()
        follower.wait_for(1)
        assert httpx.post(f"{base}/api/jobs/{job['id']}/cancel").status_code == 200
        follower.join(10)
        assert [e["status"] for e in follower.events] == ["queued", "cancelled"]


def test_events_of_finished_unknown_and_keyed_jobs(tmp_path):
    from aigc.studio.auth import hash_key, new_api_key
    from aigc.studio.store import Store

    settings = make_settings(tmp_path)
    with TestClient(create_app(settings)) as client:
        job = client.post("/api/jobs", json={"kind": "text", "prompt": "User: hi",
                                             "max_tokens": 8, "seed": 2}).json()
        done = wait_job(client, job["id"])
        r = client.get(f"/api/jobs/{job['id']}/events")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _data(r.text.splitlines())
        assert events == [{"id": job["id"], "status": "done", "progress": 1.0, "error": None,
                           "items": done["items"]}]
        r = client.get("/api/jobs/nope/events")
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
        schema = client.get("/openapi.json").json()
        op = schema["paths"]["/api/jobs/{job_id}/events"]["get"]
        assert "text/event-stream" in op["responses"]["200"]["content"]
        assert "JobEvent" in schema["components"]["schemas"]
    key = new_api_key()
    Store(settings.data_dir).add_api_key("ci", hash_key(key))
    with TestClient(create_app(settings)) as client:
        r = client.get(f"/api/jobs/{job['id']}/events")
        assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
        r = client.get(f"/api/jobs/{job['id']}/events", headers={"Authorization": f"Bearer {key}"})
        assert _data(r.text.splitlines())[-1]["status"] == "done"
        r = client.get(f"/api/jobs/{job['id']}/events", headers={"Host": "evil.example"})
        assert r.status_code == 403
