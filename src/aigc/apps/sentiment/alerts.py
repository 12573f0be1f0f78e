"""Alert delivery: a signed JSON POST to a webhook, from an outbox that outlives a down receiver.

Every alert the monitor raises is stored in its SQLite state with ``delivered_at`` unset: that is
the outbox. :meth:`WebhookSender.deliver_due` posts each due alert once; a 2xx answer marks it
delivered, anything else (a refused connection, a timeout, a 500) leaves it in the outbox with
its next attempt ``backoff_s * 2**attempts`` seconds later (capped at ``max_backoff_s``). The
monitor calls it after every batch and while idle, so alerts queued while the receiver was down
go out once it is back, also after a restart. Delivery is at least once: a receiver dedupes on
``alert_id``.

The request:

    POST <url>
    Content-Type: application/json
    X-Aigc-Signature: sha256=<hex HMAC-SHA256 of the raw body with the shared secret>
    X-Aigc-Alert-Id: <alert_id>

    {"alert_id": ..., "entity": ..., "kind": "sentiment"|"volume", "direction": "up"|"down",
     "texts": [...], ...}

A receiver checks the signature with :func:`verify_signature` (constant-time compare). The secret
comes from an environment variable (``AIGC_MONITOR_WEBHOOK_SECRET`` by default); it is never
logged, printed or stored.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

from aigc.apps.sentiment.state import MonitorState

log = logging.getLogger("aigc.monitor")
SIGNATURE_HEADER = "X-Aigc-Signature"


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """True when ``header`` is the signature of ``body`` under ``secret``."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


class WebhookSender:
    """Posts due alerts from the outbox (see the module docstring).

    Args:
        url: an http:// or https:// URL.
        secret: the shared HMAC secret (bytes; never logged, not in ``repr``).
        timeout_s: per request.
        backoff_s, max_backoff_s: the retry schedule, ``backoff_s * 2**attempts`` capped.
    """

    def __init__(self, url: str, secret: bytes, timeout_s: float = 5.0, backoff_s: float = 1.0,
                 max_backoff_s: float = 600.0, clock: Callable[[], float] = time.time):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"webhook url must be an http:// or https:// URL, got {url!r}")
        if not secret:
            raise ValueError("the webhook secret is empty; set it in the environment variable "
                             "the config names (webhook_secret_env)")
        self.url, self._secret = url, bytes(secret)
        self.timeout_s, self.backoff_s, self.max_backoff_s = timeout_s, backoff_s, max_backoff_s
        self.clock = clock

    def __repr__(self) -> str:
        return f"WebhookSender(url={self.url!r}, secret=<hidden>)"

    def post(self, body: bytes, alert_id: str) -> None:
        """One POST; raises OSError (urllib's errors are OSErrors) unless the answer is 2xx."""
        req = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", SIGNATURE_HEADER: sign(self._secret, body),
            "X-Aigc-Alert-Id": alert_id, "User-Agent": "aigc-monitor"})
        with _OPENER.open(req, timeout=self.timeout_s) as resp:
            if not 200 <= resp.status < 300:
                raise OSError(f"HTTP {resp.status}")

    def deliver_due(self, state: MonitorState) -> tuple[int, int]:
        """Post every alert due now; returns (delivered, failed). Stops at the first refused
        connection (the receiver is down: the rest wait for their next attempt too)."""
        delivered = failed = 0
        pending = state.pending_alerts(self.clock())
        for n, (row_id, payload, attempts) in enumerate(pending):
            body = payload.encode()
            try:
                alert_id = _alert_id(payload)
                self.post(body, alert_id)
            except (OSError, ValueError) as exc:
                error = _describe(exc)
                delay = min(self.backoff_s * 2 ** attempts, self.max_backoff_s)
                state.mark_failed(row_id, error, self.clock() + delay)
                failed += 1
                log.warning("webhook: alert %s not delivered (%s); next try in %.0f s",
                            row_id, error, delay)
                if isinstance(exc, urllib.error.URLError) and not isinstance(
                        exc, urllib.error.HTTPError):
                    for later_id, _, later_attempts in pending[n + 1:]:
                        state.mark_failed(later_id, error, self.clock() + min(
                            self.backoff_s * 2 ** later_attempts, self.max_backoff_s))
                        failed += 1
                    break
                continue
            state.mark_delivered(row_id, self.clock())
            delivered += 1
        return delivered, failed


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is an answer that failed, not one to follow: urllib would re-send a POST as a GET
    without its body, whose 200 would mark an alert delivered that the receiver never saw."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError(code)


_OPENER = urllib.request.build_opener(_NoRedirect)


def _alert_id(payload: str) -> str:
    import json

    return str(json.loads(payload)["alert_id"])


def _describe(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def sender_from_config(config, env: dict[str, str] | None = None,
                       clock: Callable[[], float] = time.time) -> WebhookSender | None:
    """The sender a :class:`~aigc.apps.sentiment.monitor.MonitorConfig` asks for (None without a
    ``webhook_url``); the secret is read from the environment variable it names."""
    import os

    if not config.webhook_url:
        return None
    env = os.environ if env is None else env
    secret = env.get(config.webhook_secret_env, "")
    if not secret:
        raise ValueError(f"webhook_url is set but the environment variable "
                         f"{config.webhook_secret_env} (the HMAC secret) is empty or unset")
    return WebhookSender(config.webhook_url, secret.encode(), config.webhook_timeout_s,
                         config.webhook_backoff_s, config.webhook_max_backoff_s, clock)
