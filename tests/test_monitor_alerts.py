"""Webhook delivery against a local HTTP server: the HMAC-SHA256 signature verifies, a failing
receiver is retried with exponential backoff, and alerts raised while it is down stay in the
outbox (also across a restart) and go out once it is back. The secret is never logged."""

import json
import logging

import pytest
from monitor_fixtures import Receiver, TextScorer, free_port, stream

from aigc.apps.sentiment.alerts import (
    SIGNATURE_HEADER,
    WebhookSender,
    sender_from_config,
    sign,
    verify_signature,
)
from aigc.apps.sentiment.monitor import Monitor, MonitorConfig

SECRET = b"s3cret-for-tests"


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def _monitor_with_alert(tmp_path, sender, name="m.db"):
    m = Monitor(TextScorer(), MonitorConfig(volume_bucket_seconds=3600), tmp_path / name,
                sender=sender)
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
    clock = Clock()
    with Receiver(statuses=[500, 503]) as rx:
        sender = WebhookSender(rx.url, SECRET, timeout_s=5, backoff_s=2, clock=clock)
        m = _monitor_with_alert(tmp_path, sender)
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
    port = free_port()  # nothing listens here yet
    clock = Clock()
    sender = WebhookSender(f"http://127.0.0.1:{port}/hook", SECRET, timeout_s=2, clock=clock)
    m = _monitor_with_alert(tmp_path, sender)
    assert sender.deliver_due(m.state) == (0, 1)
    [alert] = m.state.alerts()
    assert alert["delivered_at"] is None and alert["last_error"].startswith("unreachable")
    m.close()
    again = Monitor(TextScorer(), MonitorConfig(volume_bucket_seconds=3600), tmp_path / "m.db",
                    sender=sender)
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


def test_alerts_raised_without_a_webhook_are_never_sent(tmp_path):
    m = _monitor_with_alert(tmp_path, sender=None)
    [alert] = m.state.alerts()
    assert alert["last_error"] == "no webhook configured" and m.status()["outbox"] == 0
    with Receiver() as rx:  # a webhook configured later does not get the past
        assert WebhookSender(rx.url, SECRET).deliver_due(m.state) == (0, 0)
    assert rx.requests == []


def test_a_redirect_is_not_taken_as_delivered(tmp_path):
    """urllib follows a 302 for a POST with a GET and no body: a receiver that redirects (say
    http -> https) never saw the alert, so it must stay in the outbox, not be marked delivered
    (and the signed body is not re-sent to wherever the Location points)."""
    import http.server
    import threading

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(("POST", self.path))
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self):
            seen.append(("GET", self.path))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        sender = WebhookSender(url, SECRET, timeout_s=5, backoff_s=2, clock=Clock())
        m = _monitor_with_alert(tmp_path, sender)
        assert sender.deliver_due(m.state) == (0, 1)
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [("POST", "/hook")]
    [stored] = m.state.alerts()
    assert stored["delivered_at"] is None and stored["last_error"] == "HTTP 302"
