"""Security of the studio: API keys, loopback-only binding, Host and Origin checks.

* **Binding**: the server binds 127.0.0.1 by default and refuses a non-loopback address unless
  at least one API key exists (:func:`check_bind`).
* **API keys**: ``aigc studio --create-key NAME`` prints a fresh random key once; only its
  SHA-256 is stored. Keys are 256-bit random tokens, so an unsalted hash is as strong as the
  key itself (the scheme of GitHub/Stripe tokens). Presented keys are hashed and compared
  against every stored hash with :func:`hmac.compare_digest` (constant time, no early exit).
  When keys exist, every ``/api`` and ``/v1`` route requires ``Authorization: Bearer KEY``,
  and so do the read-only pages ``/files``, ``/metrics``, ``/docs`` and ``/openapi.json``,
  which also accept the key from the ``aigc_key`` cookie: a browser cannot send a header with
  ``<img src>``, so a response to a request whose Bearer key is valid sets that cookie
  (HttpOnly, SameSite=Strict). State-changing routes never accept the cookie.
* **Host** (DNS rebinding): on a loopback bind only ``Host: localhost`` or a loopback address
  (127.0.0.0/8, ``[::1]``) is served, so a page on ``evil.example`` that resolves to 127.0.0.1
  gets 403.
* **Framing** (clickjacking): every response carries ``X-Frame-Options: DENY`` and
  ``Content-Security-Policy: frame-ancestors 'none'``.
* **Body size**: request bodies over 1 MiB are refused (413): by their ``Content-Length``
  before they are read, and, when sent chunked (no length), by counting the bytes as they
  arrive — reading stops at the first byte over the limit.
* **Origin** (cross-site requests): a state-changing request (POST/PUT/PATCH/DELETE) that
  carries an ``Origin`` other than the server's own, or ``Sec-Fetch-Site: cross-site``, is
  refused, so a random web page cannot queue jobs. Clients that send no Origin (curl, the
  OpenAI client) are unaffected.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from aigc.errors import AigcError

KEY_PREFIX = "aigc-"
KEY_COOKIE = "aigc_key"
FRAME_HEADERS = [(b"x-frame-options", b"DENY"),
                 (b"content-security-policy", b"frame-ancestors 'none'")]
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
MAX_BODY_BYTES = 1 << 20  # the largest valid request (64 chat messages of 8000 chars) is ~0.5 MB


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_matches(presented: str, stored_hashes: list[str]) -> bool:
    """True when ``presented`` hashes to one of ``stored_hashes``; every hash is compared."""
    digest = hash_key(presented)
    found = False
    for h in stored_hashes:
        found |= hmac.compare_digest(digest, h)
    return found


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_NAMES or _is_loopback_ip(host)


def _is_loopback_ip(host: str) -> bool:
    """True for an address literal in 127.0.0.0/8 or ``::1`` (``[::1]`` too). A Host header
    that is an address literal cannot come from a rebound DNS name."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def presented_key(headers: dict[str, str]) -> str | None:
    """The key of ``Authorization: Bearer KEY`` (lower-case header names), or None."""
    auth = headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


def cookie_key(cookie_header: str | None) -> str | None:
    """The value of the ``aigc_key`` cookie in a ``Cookie`` header, or None."""
    for part in (cookie_header or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == KEY_COOKIE and value:
            return value
    return None


def check_bind(host: str, n_keys: int) -> None:
    if not is_loopback(host) and n_keys == 0:
        raise AigcError(
            f"refusing to bind {host}: a non-loopback address needs API keys; create one with "
            "`aigc studio --create-key NAME` (or bind 127.0.0.1)")


def _cookie_safe(key: str) -> bool:
    """A key that can travel in a cookie as is (ours are URL-safe base64)."""
    return bool(key) and all(c.isalnum() or c in "-_." for c in key)


def error_json(status: int, message: str, type_: str, code: str | None = None,
               param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param,
                                   "code": code}}, status_code=status, headers=headers)


async def _too_large(scope: Scope, receive: Receive, send: Send) -> None:
    await error_json(413, f"request body over {MAX_BODY_BYTES} bytes", "invalid_request_error",
                     "body_too_large")(scope, receive, send)


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):  # [::1]:8000
        return host_header[: host_header.find("]") + 1]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class SecurityMiddleware:
    """Host and Origin checks, before any route runs, framing headers on every response, and
    the key cookie (pure ASGI, so streaming is untouched)."""

    def __init__(self, app: ASGIApp, allowed_hosts: set[str] | None,
                 allowed_origins: set[str] | None = None):
        self.app = app
        self.allowed_hosts = allowed_hosts  # None: any Host (non-loopback bind, keys required)
        self.allowed_origins = allowed_origins or set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        send = self._decorate(scope, headers, send)
        host = headers.get("host", "")
        name = _host_name(host)
        if self.allowed_hosts is not None and name not in self.allowed_hosts and \
                not _is_loopback_ip(name):
            await error_json(403, f"Host {host!r} is not served here (allowed: "
                             f"{', '.join(sorted(self.allowed_hosts))})", "permission_error",
                             "bad_host")(scope, receive, send)
            return
        if scope["method"] in UNSAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None and not self._same_origin(origin, host):
                await error_json(403, f"cross-origin request from {origin!r} refused",
                                 "permission_error", "bad_origin")(scope, receive, send)
                return
            if origin is None and headers.get("sec-fetch-site") == "cross-site":
                await error_json(403, "cross-site request refused", "permission_error",
                                 "bad_origin")(scope, receive, send)
                return
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit() or int(length) > MAX_BODY_BYTES:
                await _too_large(scope, receive, send)
                return
            await self.app(scope, receive, send)  # the server stops at Content-Length bytes
            return
        # No Content-Length (``Transfer-Encoding: chunked``, or no body at all): count the bytes
        # as they stream in, before any route runs, and answer 413 at the first byte over the
        # limit; the body read so far (at most MAX_BODY_BYTES) is then replayed to the app.
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > MAX_BODY_BYTES:
                await _too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay_receive():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for http.disconnect, as usual

        await self.app(scope, replay_receive, send)

    @staticmethod
    def _decorate(scope: Scope, headers: dict[str, str], send: Send) -> Send:
        """``send`` that adds the framing headers to every response and, when the request's
        Bearer key is a valid one that the ``aigc_key`` cookie does not hold yet, sets it."""
        key = presented_key(headers)
        if key is not None and cookie_key(headers.get("cookie")) != key:
            studio = getattr(scope["app"].state, "studio", None) if "app" in scope else None
            hashes = studio.key_hashes if studio is not None else []
            if not (hashes and _cookie_safe(key) and key_matches(key, hashes)):
                key = None
        else:
            key = None

        async def decorated(message):
            if message["type"] == "http.response.start":
                extra = list(FRAME_HEADERS)
                if key is not None:
                    extra.append((b"set-cookie", f"{KEY_COOKIE}={key}; Path=/; HttpOnly; "
                                  "SameSite=Strict".encode("latin-1")))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return decorated

    def _same_origin(self, origin: str, host: str) -> bool:
        if origin in self.allowed_origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc == host and bool(host)
