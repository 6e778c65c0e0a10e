"""ASGI middlewares: the request body limit and the API key.

Both run before any route or the Gradio app sees the request, so every path is covered the same
way: ``/v1`` and the UI's own endpoints (uploads, queue, files).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

__all__ = ["ApiKeyMiddleware", "BodyLimitMiddleware", "SESSION_COOKIE", "session_token"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Cookie the login page sets for the web UI (holds a token derived from the key, not the key).
SESSION_COOKIE = "idm_vton_session"
#: Paths open without a key: liveness/readiness probes, the login page, the API documentation.
PUBLIC_PATHS = ("/healthz", "/readyz", "/login", "/docs", "/docs/oauth2-redirect", "/openapi.json")


async def _respond(
    send: Send, status: int, body: bytes = b"", content_type: bytes | None = None, headers=()
) -> None:
    """One whole HTTP response (with ``Content-Type`` and ``Content-Length`` for a body)."""
    headers = list(headers)
    if content_type is not None:
        headers[:0] = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Send, status: int, payload: dict, headers=()) -> None:
    await _respond(send, status, json.dumps(payload).encode(), b"application/json", headers)


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, counting bytes as they arrive.

    A declared ``Content-Length`` over the limit is refused before anything is read; a body that
    grows past the limit (chunked, or lying about its length) is cut off there: the application
    sees the end of the input and the client gets 413 instead of whatever it answers.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

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
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            incoming = await receive()
            if incoming["type"] == "http.request":
                received += len(incoming.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return incoming

        async def guarded_send(outgoing: Message) -> None:
            nonlocal started
            if exceeded:
                # Replace whatever the application answers to a truncated body.
                if outgoing["type"] == "http.response.start" and not started:
                    started = True
                    await _send_json(send, 413, {"error": message})
                return
            if outgoing["type"] == "http.response.start":
                started = True
            await send(outgoing)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await _send_json(send, 413, {"error": message})


def session_token(api_key: str) -> str:
    """The UI session cookie's value for ``api_key`` (an HMAC: the cookie never holds the key)."""
    return hmac.new(api_key.encode(), b"idm-vton web ui session", hashlib.sha256).hexdigest()


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
    cookie set by ``POST /login`` (browsers). A browser asking for a page without either is sent
    to ``/login``; anything else gets 401 ``{"error": ...}``.
    """

    def __init__(self, app: ASGIApp, api_key: str, max_login_bytes: int = 4096) -> None:
        self.app = app
        self.api_key = api_key
        self.token = session_token(api_key)
        self.max_login_bytes = max_login_bytes

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, credential = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and hmac.compare_digest(
                    credential.strip().encode(), self.api_key.encode()
                ):
                    return True
            elif name == b"cookie":
                for part in value.decode("latin-1").split(";"):
                    key, _, cookie = part.strip().partition("=")
                    if key == SESSION_COOKIE and hmac.compare_digest(
                        cookie.encode(), self.token.encode()
                    ):
                        return True
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == "/login" and scope["type"] == "http":
            await self._login(scope, receive, send)
            return
        if path in PUBLIC_PATHS or self._authorized(scope):
            await self.app(scope, receive, send)
            return
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

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") != "POST":
            await self._page(send, 200, "")
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
        if not hmac.compare_digest(key.encode(), self.api_key.encode()):
            await self._page(send, 401, '<p class="error">Wrong key.</p>')
            return
        cookie = f"{SESSION_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
        await _respond(send, 303, headers=[(b"location", b"/"), (b"set-cookie", cookie.encode())])

    @staticmethod
    async def _page(send: Send, status: int, error: str) -> None:
        body = _LOGIN_PAGE.format(error=error).encode()
        await _respond(send, status, body, b"text/html; charset=utf-8")
