"""The monitor in the studio: POST /api/monitor/events (bad events by index, duplicates once,
alerts with their texts), the dashboard's routes (entities, series, alerts, status), the one
error shape, the API key, and the Monitor tab's script served from /static."""

import json

from fastapi.testclient import TestClient
from monitor_fixtures import Receiver, worded_stream
from studio_fixtures import make_settings

from aigc.studio.app import create_app


def _client(tmp_path, **kw):
    settings = make_settings(tmp_path, models_dir=None, ngram=False, **kw)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # the studio's monitor reads DATA_DIR/monitor.yaml: short volume buckets for the test
    (settings.data_dir / "monitor.yaml").write_text(
        "volume_bucket_seconds: 20\nvolume_warmup: 10\nscorer: vader\n", encoding="utf-8")
    return settings, TestClient(create_app(settings))


def _error(r, status, code):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code
    return err


def test_events_alerts_and_dashboard_routes(tmp_path):
    events = worded_stream(900, seed=3, flip_at=600)
    settings, client = _client(tmp_path)
    with client:
        alerts = []
        for i in range(0, 900, 300):
            r = client.post("/api/monitor/events", json={"events": events[i:i + 300]})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["accepted"] == 300 and body["bad"] == []
            alerts += body["alerts"]
        flips = [a for a in alerts if (a["entity"], a["kind"]) == ("$ACME", "sentiment")]
        assert [a["direction"] for a in flips] == ["down"]
        assert 600 <= flips[0]["event_seq"] < 660
        assert flips[0]["texts"] and all("$ACME" in t["text"] for t in flips[0]["texts"])

        r = client.post("/api/monitor/events", json={"events": [
            events[0], {"id": "x1"}, "not an object", {"id": "x2", "text": "$ACME good"}]})
        body = r.json()
        assert (body["accepted"], body["duplicates"]) == (1, 1)
        assert body["bad"] == [{"index": 1, "reason": "missing text"},
                               {"index": 2, "reason": "an event must be a JSON object, got str"}]

        ents = client.get("/api/monitor/entities").json()["entities"]
        assert [e["entity"] for e in ents] == ["$ACME", "$OTHER"] and ents[0]["events"] == 601
        s = client.get("/api/monitor/series", params={"entity": "$ACME"}).json()
        assert len(s["points"]) == 601 and s["points"][0]["seq"] == 2
        assert s["points"][-1]["sentiment"] < 0 < s["points"][300]["sentiment"]  # flip at 600
        assert any(a["alert_id"] == flips[0]["alert_id"] for a in s["alerts"])
        got = client.get("/api/monitor/alerts", params={"entity": "$ACME"}).json()["alerts"]
        assert flips[0]["alert_id"] in {a["alert_id"] for a in got}
        assert all(a["delivered_at"] is None for a in got)  # no webhook configured
        status = client.get("/api/monitor/status").json()
        assert status["events"] == 901 and status["duplicates"] == 1 and status["bad"] == 2
        assert status["webhook"] is False and status["bad_lines"][0]["line"] == 2
        assert status["outbox"] == 0  # no webhook: stored for the dashboard only

        _error(client.get("/api/monitor/series", params={"entity": "$NOPE"}), 404,
               "entity_not_found")
        _error(client.post("/api/monitor/events", json={"events": []}), 422, "validation_error")
        _error(client.post("/api/monitor/events", json={"events": [{}] * 1001}), 422,
               "validation_error")
        _error(client.post("/api/monitor/events", json={"evnts": []}), 422, "validation_error")
        big = {"events": [{"id": "big", "text": "x" * (2 * 1024 * 1024)}]}
        assert client.post("/api/monitor/events", content=json.dumps(big),
                           headers={"Content-Type": "application/json"}).status_code == 413
        page = client.get("/")
        assert "/static/monitor.js" in page.text
        assert "api/monitor/series" in client.get("/static/monitor.js").text
    # state is in DATA_DIR/monitor.db and comes back with the next studio
    with TestClient(create_app(settings)) as again:
        assert again.get("/api/monitor/status").json()["events"] == 901


def test_monitor_routes_need_the_key_when_keys_exist(tmp_path):
    from aigc.studio.auth import hash_key, new_api_key
    from aigc.studio.store import Store

    settings, _ = _client(tmp_path)
    key = new_api_key()
    Store(settings.data_dir).add_api_key("ci", hash_key(key))
    with TestClient(create_app(settings)) as client:
        _error(client.get("/api/monitor/status"), 401, "missing_api_key")
        _error(client.post("/api/monitor/events", json={"events": [{"id": 1, "text": "a"}]}),
               401, "missing_api_key")
        ok = client.get("/api/monitor/status", headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200 and ok.json()["events"] == 0


def test_studio_delivers_signed_alerts_to_the_configured_webhook(tmp_path, monkeypatch):
    from aigc.apps.sentiment.alerts import SIGNATURE_HEADER, verify_signature

    monkeypatch.setenv("HOOK_SECRET", "studio-secret")
    with Receiver() as rx:
        settings, client = _client(tmp_path)
        (settings.data_dir / "monitor.yaml").write_text(
            f"scorer: vader\nwebhook_url: {rx.url}\nwebhook_secret_env: HOOK_SECRET\n",
            encoding="utf-8")
        with client:
            r = client.post("/api/monitor/events",
                            json={"events": worded_stream(900, seed=3, flip_at=600)})
            raised = r.json()["alerts"]
            assert raised
            status = client.get("/api/monitor/status").json()
            assert status["webhook"] is True and status["outbox"] == 0
    ids = [json.loads(body)["alert_id"] for _, body in rx.requests]
    assert ids == [a["alert_id"] for a in raised]
    for headers, body in rx.requests:
        assert verify_signature(b"studio-secret", body, headers[SIGNATURE_HEADER])
