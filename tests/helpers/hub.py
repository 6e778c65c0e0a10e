"""A loopback HTTP server standing in for the Hugging Face hub, and pointing huggingface_hub at it.

It answers what ``hf_hub_download`` asks (HEAD then GET on ``{prefix}{file}``, where the prefix is
``/spaces/{repo}/resolve/{revision}/`` for a Space or ``/{repo}/resolve/{revision}/`` for a model)
like a plain, non-xet file server: ``X-Repo-Commit``, ``ETag`` and ``Content-Length`` headers,
404 + ``X-Error-Code: EntryNotFound`` for unknown files.
"""

from __future__ import annotations

import hashlib
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from huggingface_hub import constants


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def _answer(self, send_body: bool) -> None:
        hub: FakeHub = self.server.hub  # type: ignore[attr-defined]
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if not path.startswith(hub.prefix):  # e.g. huggingface_hub's /api/agent-harnesses lookup
            hub.other_requests.append((self.command, path))
            data = None
        else:
            hub.requests.append((self.command, path[len(hub.prefix) :]))
            data = hub.files.get(path[len(hub.prefix) :])
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Repo-Commit", hub.commit)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", hub.commit)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if send_body:
            self.wfile.write(data)


class FakeHub:
    """The served files (``{path under prefix: bytes}``) and the requests seen for them."""

    def __init__(self, prefix: str, commit: str) -> None:
        self.prefix, self.commit = prefix, commit
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []  # (method, file) of requests under the prefix
        self.other_requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
        self._server.daemon_threads = True
        self._server.hub = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def gets(self) -> list[str]:
        return [name for method, name in self.requests if method == "GET"]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        from huggingface_hub.utils._http import close_session

        close_session()  # drop pooled keep-alive connections to the closed server


def point_hub_at(hub: FakeHub, monkeypatch, tmp_path: Path) -> None:
    """huggingface_hub's import-time constants (endpoint, cache under ``tmp_path/hf/hub``,
    online) pointed at ``hub`` for one test."""
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        hub.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "hf" / "agents.json"))
