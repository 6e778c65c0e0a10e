"""The web UI's files: one private folder per server, and the only files the UI's API may read.

Gradio keeps uploads and results on disk and takes file *paths* from its clients (a ``FileData``
``{"path": ...}`` in a request). Its own check that such a path was uploaded is skipped when the
UI is mounted in another app rather than launched, so this module is the boundary, whatever
Gradio's state says:

- :class:`UiFiles` owns a private folder (``idm-vton-serve-*`` in the system temp folder, mode
  0700) where Gradio stores this server's uploads and the UI its results. It is swept while the
  server runs (files older than ``ttl_s`` go, then the oldest until the folder is under
  ``max_bytes``) and removed when the server stops.
- A path from a client is accepted only if it names a regular file (no symlink, FIFO, device or
  folder; opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked again on the open file) inside that
  folder, or one of the repository's example images: :meth:`UiFiles.read`.
- :class:`GradioFileGuard` (ASGI) applies the same rule to every request to the UI's API before
  Gradio sees it: any object with a ``path`` or ``url`` key anywhere in the JSON body must name
  an accepted file, so Gradio never opens, copies or fetches anything else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from .security import ASGIApp, Message, Receive, Scope, Send, send_json

__all__ = ["GradioFileGuard", "UiFiles"]

logger = logging.getLogger("idm_vton.serving")

#: Largest JSON body a UI API request may have (its files are uploaded separately).
MAX_JSON_BYTES = 1 << 20
#: Path prefixes of the HTTP API and the login page: not the UI's, not checked here.
_NOT_UI = ("/v1/", "/login", "/logout")


class UiFiles:
    """This server's private folder for the web UI's files (see the module docs).

    Args:
        max_bytes: most bytes kept in the folder; the oldest files go first past it.
        ttl_s: files older than this go at the next sweep.
        examples: files outside the folder a client may name (the example images).
    """

    def __init__(
        self, max_bytes: int = 1 << 30, ttl_s: float = 3600.0, examples: Iterable[Path] = ()
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="idm-vton-serve-")).resolve()
        self.gradio = self.root / "gradio"  # Gradio's upload and cache folder
        self.results = self.gradio / "results"  # the UI's own outputs (served from there)
        self.results.mkdir(parents=True)
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.examples = {Path(os.path.realpath(p)) for p in examples}
        self._lock = threading.Lock()
        self._count = 0
        self._stop = threading.Event()
        self.environment = lambda: None  # puts back what the server set in the environment
        threading.Thread(target=self._sweep_often, name="idm-vton-ui-files", daemon=True).start()

    def _sweep_often(self, every_s: float = 60.0) -> None:
        while not self._stop.wait(every_s):
            try:
                self.sweep()
            except OSError as err:  # the folder is gone (the server is stopping)
                logger.debug("sweeping the UI's files: %s", err)

    # ------------------------------------------------------------------ the rule
    def accepted(self, path: object) -> Path | None:
        """``path`` if a client may name it (see the module docs), else None. Never opens it."""
        if not isinstance(path, str) or not path or "\0" in path or not os.path.isabs(path):
            return None
        if os.path.normpath(path) != path:
            return None  # "..", "//" or "/./" in it
        try:
            info = os.lstat(path)
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(info.st_mode):
            return None  # a symlink, FIFO, device, socket or folder
        real = Path(os.path.realpath(path))
        if str(real) != path:
            return None  # a symlink on the way
        if real in self.examples or real.is_relative_to(self.gradio):
            return real
        return None

    def read(self, path: object, what: str, max_bytes: int) -> bytes:
        """The bytes of a file a client named for ``what`` (raises :class:`Refusal`: 400 for a
        path that is not accepted, 413 over ``max_bytes``)."""
        from .requests import Refusal, check_size

        accepted = self.accepted(path)
        if accepted is None:
            raise Refusal(400, f"{what}: not a file uploaded to this server")
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(accepted, flags)
        except OSError:
            raise Refusal(400, f"{what}: not a file uploaded to this server") from None
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise Refusal(400, f"{what}: not a file uploaded to this server")
            check_size(what, info.st_size, max_bytes)
            return file.read(max_bytes + 1)

    # ------------------------------------------------------------------ results
    def write(self, data: bytes, name: str) -> str:
        """Store one result file (PNG bytes) under a fresh name; returns its path."""
        with self._lock:
            self._count += 1
            count = self._count
        folder = self.results / f"{count:08d}"
        folder.mkdir()
        path = folder / name
        path.write_bytes(data)
        return str(path)

    # ------------------------------------------------------------------ bounds
    def sweep(self, incoming: int = 0) -> int:
        """Delete files past ``ttl_s``, then the oldest until the folder (plus ``incoming``
        bytes about to arrive) fits ``max_bytes``; returns the bytes kept."""
        now = time.time()
        files = []
        for folder, _, names in os.walk(self.gradio):
            for name in names:
                path = os.path.join(folder, name)
                try:
                    info = os.lstat(path)
                except OSError:
                    continue
                files.append((info.st_mtime, info.st_size, path))
        files.sort()
        total = sum(size for _, size, _ in files) + incoming
        for mtime, size, path in files:
            if now - mtime <= self.ttl_s and total <= self.max_bytes:
                break
            try:
                os.unlink(path)
                total -= size
            except OSError:
                pass
        self._remove_empty_folders()
        return total - incoming

    def _remove_empty_folders(self) -> None:
        for folder, dirs, names in os.walk(self.gradio, topdown=False):
            path = Path(folder)
            if not dirs and not names and path not in (self.gradio, self.results):
                try:
                    path.rmdir()
                except OSError:
                    pass

    def close(self) -> None:
        """Remove the folder and everything in it."""
        self._stop.set()
        shutil.rmtree(self.root, ignore_errors=True)


class GradioFileGuard:
    """Refuse (400) any request to the UI's API that names a file :class:`UiFiles` does not
    accept, before Gradio reads it; keep the folder within its size on every upload."""

    def __init__(self, app: ASGIApp, files: UiFiles, max_upload_bytes: int) -> None:
        self.app = app
        self.files = files
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(_NOT_UI) or path in ("/healthz", "/readyz"):
            await self.app(scope, receive, send)
            return
        if path.endswith("/upload"):
            # Room for what arrives (Gradio stores it itself, within its max_file_size).
            declared = _content_length(scope) or self.max_upload_bytes
            kept = await asyncio.to_thread(self.files.sweep, declared)
            if kept + declared > self.files.max_bytes:
                await send_json(send, 507, {"error": "the server's upload space is full"})
                return
            await self.app(scope, receive, send)
            return
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        body, complete = await _read_body(receive, MAX_JSON_BYTES)
        if not complete:
            await send_json(send, 413, {"error": "request body too large"})
            return
        problem = self._problem(body)
        if problem:
            await send_json(send, 400, {"error": problem})
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _problem(self, body: bytes) -> str | None:
        """Why ``body`` is refused, or None."""
        if not body.strip():
            return None
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return "the request body is not JSON"
        try:
            for value in _file_references(data):
                if self.files.accepted(value) is None:
                    return "a file in the request was not uploaded to this server"
        except RecursionError:
            return "the request body is nested too deeply"
        return None


def _file_references(data) -> Iterable[object]:
    """Every ``path`` and ``url`` value of every object in ``data``, as paths to check (a URL
    of this server's file route counts as its path; any other URL is refused)."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            for key in ("path", "url"):
                if key in value and not (key == "url" and value[key] is None):
                    yield _as_path(value[key]) if key == "url" else value[key]
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def _as_path(url: object) -> object:
    """The file a URL of Gradio's file route names (``.../gradio_api/file=/x/y.png``), else the
    URL itself (which is then refused)."""
    from urllib.parse import unquote

    if isinstance(url, str) and "/gradio_api/file=" in url:
        return unquote(url.split("/gradio_api/file=", 1)[1].split("?", 1)[0])
    return url


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The whole request body, or (what was read, False) past ``limit`` bytes."""
    chunks, total = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), True
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            return b"", False
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks), True
