"""ASGI middlewares: the request body limit and read timeout, and the API key with its sign-in.

Both run before any route or the Gradio app sees the request, so every path is covered the same
way: ``/v1`` and the UI's own endpoints (uploads, queue, files). The threat model they serve is
in docs/serving.md (*Security*).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

__all__ = [
    "ApiKeyMiddleware",
    "BodyLimitMiddleware",
    "LoginThrottle",
    "SESSION_COOKIE",
    "Sessions",
    "send_json",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Cookie the login page sets for the web UI: a random session id (never the key).
SESSION_COOKIE = "idm_vton_session"
#: Paths open without a key: liveness/readiness probes, the login page, the API documentation.
PUBLIC_PATHS = (
    "/healthz",
    "/readyz",
    "/login",
    "/logout",
    "/docs",
    "/docs/oauth2-redirect",
    "/openapi.json",
)
#: Bytes per second a request body must keep arriving at, after the read timeout's allowance.
MIN_BODY_RATE = 50_000


async def _respond(
    send: Send, status: int, body: bytes = b"", content_type: bytes | None = None, headers=()
) -> None:
    """One whole HTTP response (with ``Content-Type`` and ``Content-Length`` for a body)."""
    headers = list(headers)
    if content_type is not None:
        headers[:0] = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, payload: dict, headers=()) -> None:
    """One JSON response."""
    await _respond(send, status, json.dumps(payload).encode(), b"application/json", headers)


_send_json = send_json


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, counting bytes as they arrive, and
    bodies that arrive too slowly with 408.

    A declared ``Content-Length`` over the limit is refused before anything is read; a body that
    grows past the limit (chunked, or lying about its length) is cut off there: the application
    sees the end of the input and the client gets 413 instead of whatever it answers. With
    ``read_timeout_s``, the body must be complete ``read_timeout_s + bytes / MIN_BODY_RATE``
    seconds after the application first asks for it (a slow client holds no connection for
    long); the answer is then 408 and the connection is closed.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body over the limit of {self.max_bytes} bytes"
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_json(send, 400, {"error": "bad Content-Length header"})
                    return
                if declared > self.max_bytes:
                    await _send_json(send, 413, {"error": message})
                    return
        received = 0
        refused: tuple[int, str] | None = None  # (status, message) replacing the app's answer
        started = False
        complete = False
        began: float | None = None

        async def next_message() -> Message:
            if self.read_timeout_s is None or complete:
                return await receive()
            nonlocal began
            if began is None:
                began = time.monotonic()
            allowed = began + self.read_timeout_s + received / MIN_BODY_RATE - time.monotonic()
            return await asyncio.wait_for(receive(), max(allowed, 0.001))

        async def limited_receive() -> Message:
            nonlocal received, refused, complete
            if refused:
                return {"type": "http.disconnect"}
            try:
                incoming = await next_message()
            except asyncio.TimeoutError:
                refused = (408, "the request body arrived too slowly")
                return {"type": "http.disconnect"}
            if incoming["type"] == "http.request":
                received += len(incoming.get("body", b""))
                if received > self.max_bytes:
                    refused = (413, message)
                    return {"type": "http.disconnect"}
                complete = not incoming.get("more_body", False)
            return incoming

        async def refuse() -> None:
            status, text = refused
            await _send_json(send, status, {"error": text}, headers=[(b"connection", b"close")])

        async def guarded_send(outgoing: Message) -> None:
            nonlocal started
            if refused:
                # Replace whatever the application answers to a truncated body.
                if outgoing["type"] == "http.response.start" and not started:
                    started = True
                    await refuse()
                return
            if outgoing["type"] == "http.response.start":
                started = True
            await send(outgoing)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not refused:
                raise
        if refused and not started:
            await refuse()


class Sessions:
    """Web UI sessions: random ids that expire ``ttl_s`` after sign-in (at most ``limit`` at a
    time, the oldest dropped first); a sign-out ends one at once."""

    def __init__(self, ttl_s: float = 12 * 3600.0, limit: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.limit = limit
        self._expiry: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def new(self) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._expiry[token] = time.monotonic() + self.ttl_s
            while len(self._expiry) > self.limit:
                self._expiry.popitem(last=False)
        return token

    def valid(self, token: str) -> bool:
        with self._lock:
            expiry = self._expiry.get(token)
            if expiry is None:
                return False
            if time.monotonic() >= expiry:
                del self._expiry[token]
                return False
            return True

    def end(self, token: str) -> None:
        with self._lock:
            self._expiry.pop(token, None)


class LoginThrottle:
    """Failed key checks per client address (sign-ins and wrong bearer keys).

    ``free`` failures are allowed; after that each attempt waits ``2 ** (failures - free)``
    seconds (at most ``max_wait_s``) after the last failure, and is refused (429) before the key
    is even compared. A success clears the address. At most ``limit`` addresses are tracked.
    """

    def __init__(self, free: int = 5, max_wait_s: float = 300.0, limit: int = 10_000) -> None:
        self.free = free
        self.max_wait_s = max_wait_s
        self.limit = limit
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._lock = threading.Lock()

    def wait(self, client: str) -> float:
        """Seconds ``client`` must wait before its next attempt (0: go ahead)."""
        with self._lock:
            count, last = self._failures.get(client, (0, 0.0))
        if count < self.free:
            return 0.0
        delay = min(2.0 ** (count - self.free), self.max_wait_s)
        return max(0.0, last + delay - time.monotonic())

    def failed(self, client: str) -> None:
        with self._lock:
            count, _ = self._failures.pop(client, (0, 0.0))
            self._failures[client] = (count + 1, time.monotonic())
            while len(self._failures) > self.limit:
                self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _https(scope: Scope) -> bool:
    """The request came over HTTPS, directly or through a proxy that says so."""
    if scope.get("scheme") in ("https", "wss"):
        return True
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-proto":
            return value.decode("latin-1").split(",")[0].strip().lower() == "https"
    return False


_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>idm-vton: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:24rem;margin:4rem auto;padding:0 1rem}}
input,button{{font-size:1rem;padding:.5rem;width:100%;box-sizing:border-box;margin:.25rem 0}}
.error{{color:#b00020}}</style></head>
<body><h1>idm-vton</h1><p>This server needs its API key.</p>{error}
<form method="post" action="/login"><label for="key">API key</label>
<input id="key" name="key" type="password" autocomplete="current-password" autofocus>
<button type="submit">Sign in</button></form></body></html>
"""


class ApiKeyMiddleware:
    """Every path except :data:`PUBLIC_PATHS` needs the key.

    Accepted: ``Authorization: Bearer KEY`` (API clients, ``gradio_client``) or the session
    cookie set by ``POST /login`` (browsers; ``/logout`` ends the session). A browser asking for
    a page without either is sent to ``/login``; anything else gets 401 ``{"error": ...}``.
    Wrong keys, at the login form or as a bearer token, are throttled per client address
    (:class:`LoginThrottle`, 429 with ``Retry-After``).
    """

    def __init__(
        self,
        app: ASGIApp,
        api_key: str,
        max_login_bytes: int = 4096,
        session_ttl_s: float = 12 * 3600.0,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.max_login_bytes = max_login_bytes
        self.sessions = Sessions(session_ttl_s)
        self.throttle = throttle or LoginThrottle()

    def _key_matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self.api_key.encode())

    def _credentials(self, scope: Scope) -> tuple[str | None, str | None]:
        """(bearer token, session cookie) of the request, when present."""
        bearer = cookie = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, credential = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    bearer = credential.strip()
            elif name == b"cookie":
                for part in value.decode("latin-1").split(";"):
                    key, _, token = part.strip().partition("=")
                    if key == SESSION_COOKIE and cookie is None:
                        cookie = token
        return bearer, cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == "/login" and scope["type"] == "http":
            await self._login(scope, receive, send)
            return
        if path == "/logout" and scope["type"] == "http":
            await self._logout(scope, send)
            return
        if path in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        bearer, cookie = self._credentials(scope)
        if cookie is not None and self.sessions.valid(cookie):
            await self.app(scope, receive, send)
            return
        if bearer is not None:
            client = _client(scope)
            wait = self.throttle.wait(client)
            if wait > 0:
                await self._too_many(scope, send, wait)
                return
            if self._key_matches(bearer):
                self.throttle.succeeded(client)
                await self.app(scope, receive, send)
                return
            self.throttle.failed(client)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        accept = dict(scope.get("headers", ())).get(b"accept", b"")
        if scope.get("method") == "GET" and b"text/html" in accept:
            await _respond(send, 303, headers=[(b"location", b"/login")])
            return
        await _send_json(
            send,
            401,
            {"error": "missing or wrong API key (send 'Authorization: Bearer <key>')"},
            headers=[(b"www-authenticate", b"Bearer")],
        )

    async def _too_many(self, scope: Scope, send: Send, wait: float) -> None:
        seconds = max(1, int(wait + 0.999))
        message = f"too many wrong keys from your address; try again in {seconds} s"
        headers = [(b"retry-after", str(seconds).encode())]
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        elif scope.get("path") == "/login":
            await self._page(send, 429, f'<p class="error">{message}.</p>', headers)
        else:
            await _send_json(send, 429, {"error": message}, headers=headers)

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") != "POST":
            await self._page(send, 200, "")
            return
        client = _client(scope)
        wait = self.throttle.wait(client)
        if wait > 0:
            await self._too_many(scope, send, wait)
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            if len(body) > self.max_login_bytes:
                await _send_json(send, 413, {"error": "login form too large"})
                return
            if not message.get("more_body"):
                break
        key = parse_qs(body.decode("utf-8", "replace")).get("key", [""])[0]
        if not self._key_matches(key):
            self.throttle.failed(client)
            await self._page(send, 401, '<p class="error">Wrong key.</p>')
            return
        self.throttle.succeeded(client)
        token = self.sessions.new()
        cookie = (
            f"{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; "
            f"Max-Age={int(self.sessions.ttl_s)}"
        )
        if _https(scope):
            cookie += "; Secure"
        await _respond(send, 303, headers=[(b"location", b"/"), (b"set-cookie", cookie.encode())])

    async def _logout(self, scope: Scope, send: Send) -> None:
        _, cookie = self._credentials(scope)
        if cookie is not None:
            self.sessions.end(cookie)
        expired = f"{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        if _https(scope):
            expired += "; Secure"
        headers = [(b"location", b"/login"), (b"set-cookie", expired.encode())]
        await _respond(send, 303, headers=headers)

    @staticmethod
    async def _page(send: Send, status: int, error: str, headers=()) -> None:
        body = _LOGIN_PAGE.format(error=error).encode()
        await _respond(send, status, body, b"text/html; charset=utf-8", headers)
