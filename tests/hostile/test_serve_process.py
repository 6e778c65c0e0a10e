"""``idm-vton serve`` as a process: a bounded shutdown with a long request open, slow clients
timed out, temporary files gone after a run and after exit, and start-up failures in one line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from ..conftest import REPO
from ..serve_support import (
    example_files,
    free_port,
    multipart,
    running_server,
    wait_until_ready,
)

pytest.importorskip("fastapi")


class ServeProcess:
    """``python -m idm_vton serve --model tiny ...`` in a child process with its own TMPDIR."""

    def __init__(self, tmp: Path, *argv: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "idm_vton", "serve", "--model", "tiny"]
        command += ["--port", str(self.port), *argv]
        environment = {**os.environ, "TMPDIR": str(tmp), **(env or {})}
        environment.pop("GRADIO_TEMP_DIR", None)
        self.process = subprocess.Popen(
            command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 180) -> None:
        wait_until_ready(self.process, self.url, timeout)

    def stop(self, timeout: float = 120) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
            pytest.fail(f"the server did not stop {timeout} s after SIGTERM: {err[-2000:]}")
        return self.process.returncode, err


def test_sigterm_with_a_long_request_open_stops_within_the_grace_period(tmp_path):
    server = ServeProcess(tmp_path / "t", "--no-ui", "--shutdown-grace", "1", "--max-batch", "1")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=300) as client:
            long_job = client.post(
                "/v1/jobs", **multipart(example_files(), steps=100, num_images=4, seed=1)
            ).json()
            while client.get(f"/v1/jobs/{long_job['id']}").json()["step"] < 1:
                time.sleep(0.05)
            answer = {}

            def synchronous() -> None:  # queued behind the long job
                files = multipart(example_files(), steps=100, num_images=4, seed=2)
                answer["response"] = httpx.post(server.url + "/v1/tryon", timeout=300, **files)

            thread = threading.Thread(target=synchronous)
            thread.start()
            while client.get("/v1/info").json()["queued"] < 1:
                time.sleep(0.05)
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            code, stderr = server.stop(timeout=120)
            elapsed = time.monotonic() - started
            thread.join(30)
    finally:
        server.stop()
    assert code == 0 and "Traceback" not in stderr, stderr
    assert elapsed < 20, f"stopped {elapsed:.1f} s after SIGTERM (grace 1 s)"
    response = answer["response"]
    assert response.status_code == 503, response.text
    assert response.json() == {"error": "the server is shutting down"}


def test_ui_files_are_removed_during_the_run_and_at_exit(tmp_path):
    tmp = tmp_path / "t"
    server = ServeProcess(tmp, "--shutdown-grace", "1")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as client:
            text = b"not an image " * 10_000
            stored = client.post(
                "/gradio_api/upload", files={"files": ("shirt.png", text, "image/png")}
            ).json()[0]
            assert Path(stored).is_file() and Path(stored).is_relative_to(tmp)
            # refused as soon as it is checked, and deleted
            event = client.post("/gradio_api/call/check_garment", json={"data": [
                {"path": stored, "meta": {"_type": "gradio.FileData"}}
            ]}).json()["event_id"]  # fmt: skip
            stream = client.get(f"/gradio_api/call/check_garment/{event}").text
            assert "garment: not a readable image" in stream, stream
            assert not Path(stored).exists()
        names = served_names(tmp)
        assert len(names) == 1 and names[0].startswith("idm-vton-serve-"), names
    finally:
        code, stderr = server.stop()
    assert code == 0, stderr
    assert served_names(tmp) == [], f"left behind: {list(tmp.rglob('*'))[:10]}"


def served_names(tmp: Path) -> list[str]:
    """What is in the temp folder, less torch's compile cache (torch's, made on import)."""
    return sorted(p.name for p in tmp.iterdir() if not p.name.startswith("torchinductor"))


def test_a_model_that_cannot_load_stops_the_server_in_one_line(tmp_path):
    server = ServeProcess(tmp_path / "t", "--no-ui")
    server.process.kill()
    server.process.communicate()
    result = subprocess.run(
        [sys.executable, "-m", "idm_vton", "serve", "--model", str(tmp_path / "no-such-model"),
         "--port", str(free_port()), "--no-ui"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(lines) <= 2, result.stderr
    assert lines[-1].startswith("idm-vton serve: error: the model did not load: "), lines


def test_a_missing_serve_extra_names_the_install_command():
    code = (
        "import sys\n"
        "sys.modules['uvicorn'] = None\n"
        "from idm_vton.commands.main import main\n"
        "sys.exit(main(['serve', '--model', 'tiny', '--no-ui']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert lines == [
        "idm-vton serve: error: the server needs the serve extra (missing: uvicorn): "
        'pip install ".[serve]" in the idm-vton clone (with -c constraints.txt)'
    ]


# ---------------------------------------------------------------------------- slow clients
def slow_connection(port: int, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(head)
    return sock


def test_slow_clients_are_timed_out_and_the_server_keeps_answering():
    with running_server(read_timeout_s=1.0) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        heads = [slow_connection(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n") for _ in range(10)]
        bodies = [
            slow_connection(
                port,
                b"POST /v1/tryon HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                b"boundary=b\r\nContent-Length: 900000\r\n\r\n--b\r\n",
            )
            for _ in range(10)
        ]
        closed: dict[int, bytes] = {}
        deadline = time.monotonic() + 60
        while len(closed) < len(heads) + len(bodies):
            assert time.monotonic() < deadline, f"{20 - len(closed)} slow connections still open"
            for n, sock in enumerate(heads + bodies):
                if n in closed:
                    continue
                try:
                    sock.sendall(b"X-a: b\r\n" if n < len(heads) else b"x")  # a trickle
                    sock.settimeout(0.05)
                    data = sock.recv(4096)
                    if data == b"" or b"408" in data.split(b"\r\n")[0]:
                        closed[n] = data
                except (TimeoutError, BlockingIOError):
                    pass
                except OSError:
                    closed[n] = b""
            assert httpx.get(url + "/healthz", timeout=10).status_code == 200
            time.sleep(0.2)
        # the body that came too slowly was told so, when the connection could still say it
        answered = [data for n, data in closed.items() if n >= len(heads) and data]
        assert all(b"408" in data for data in answered), answered
        for sock in heads + bodies:
            sock.close()
