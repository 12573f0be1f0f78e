"""Webhook delivery against a local HTTP server: the HMAC-SHA256 signature verifies, a failing
receiver is retried with exponential backoff, and alerts raised while it is down stay in the
outbox (also across a restart) and go out once it is back. The secret is never logged."""

import http.server
import json
import logging
import threading

import pytest
from monitor_fixtures import TextScorer, free_port, stream

from aigc.apps.sentiment.alerts import (
    SIGNATURE_HEADER,
    WebhookSender,
    sender_from_config,
    sign,
    verify_signature,
)
from aigc.apps.sentiment.monitor import Monitor, MonitorConfig

SECRET = b"s3cret-for-tests"


class Receiver:
    """A webhook receiver on a free loopback port that answers ``statuses`` in turn (then
    200) and keeps every request."""

    def __init__(self, statuses=(), port=None):
        self.statuses, self.requests = list(statuses), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((dict(self.headers), body))
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port or free_port()),
                                                      Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def _monitor_with_alert(tmp_path, name="m.db"):
    m = Monitor(TextScorer(), MonitorConfig(volume_bucket_seconds=3600), tmp_path / name)
    alerts = m.process_events(stream(700, seed=0, shift_at=500)).alerts
    assert len(alerts) == 1
    return m


def test_signature_round_trip():
    body = b'{"a": 1}'
    header = sign(SECRET, body)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    assert verify_signature(SECRET, body, header)
    assert not verify_signature(SECRET, body + b" ", header)
    assert not verify_signature(b"other", body, header)
    assert not verify_signature(SECRET, body, None)


def test_signed_post_retried_with_backoff(tmp_path, caplog):
    m = _monitor_with_alert(tmp_path)
    clock = Clock()
    with Receiver(statuses=[500, 503]) as rx:
        sender = WebhookSender(rx.url, SECRET, timeout_s=5, backoff_s=2, clock=clock)
        assert "s3cret" not in repr(sender)
        with caplog.at_level(logging.DEBUG):
            assert sender.deliver_due(m.state) == (0, 1)
            assert m.state.pending_alerts(clock.t + 1.9) == []  # next try: 2 * 2**0 s later
            clock.t += 2
            assert sender.deliver_due(m.state) == (0, 1)
            assert m.state.pending_alerts(clock.t + 3.9) == []  # then 2 * 2**1 s
            clock.t += 4
            assert sender.deliver_due(m.state) == (1, 0)
            assert sender.deliver_due(m.state) == (0, 0)  # delivered once
        assert "s3cret" not in caplog.text and "HTTP 500" in caplog.text
    assert len(rx.requests) == 3
    headers, body = rx.requests[-1]
    assert verify_signature(SECRET, body, headers[SIGNATURE_HEADER])
    payload = json.loads(body)
    assert payload["entity"] == "$ACME" and payload["kind"] == "sentiment"
    assert headers["X-Aigc-Alert-Id"] == payload["alert_id"]
    [stored] = m.state.alerts()
    assert stored["attempts"] == 3 and stored["delivered_at"] == clock.t


def test_outbox_survives_a_down_webhook_and_a_restart(tmp_path):
    m = _monitor_with_alert(tmp_path)
    port = free_port()  # nothing listens here yet
    clock = Clock()
    sender = WebhookSender(f"http://127.0.0.1:{port}/hook", SECRET, timeout_s=2, clock=clock)
    assert sender.deliver_due(m.state) == (0, 1)
    [alert] = m.state.alerts()
    assert alert["delivered_at"] is None and alert["last_error"].startswith("unreachable")
    m.close()
    again = Monitor(TextScorer(), MonitorConfig(volume_bucket_seconds=3600), tmp_path / "m.db")
    assert again.status()["outbox"] == 1
    clock.t += 3600
    with Receiver(port=port) as rx:
        assert sender.deliver_due(again.state) == (1, 0)
    assert again.status()["outbox"] == 0
    assert verify_signature(SECRET, rx.requests[0][1], rx.requests[0][0][SIGNATURE_HEADER])


def test_sender_config_needs_the_secret_in_the_environment():
    cfg = MonitorConfig(webhook_url="http://127.0.0.1:9/hook", webhook_secret_env="HOOK_KEY")
    with pytest.raises(ValueError, match="HOOK_KEY"):
        sender_from_config(cfg, env={})
    assert sender_from_config(cfg, env={"HOOK_KEY": "x"}).url == cfg.webhook_url
    assert sender_from_config(MonitorConfig(), env={}) is None
    with pytest.raises(ValueError, match="http:// or https://"):
        WebhookSender("ftp://x", SECRET)
