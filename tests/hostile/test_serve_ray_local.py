"""``idm-vton serve --ray`` on this machine: nothing listens on the network without consent, and
nothing it started outlives it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ..conftest import REPO
from ..serve_support import free_socket

pytest.importorskip("ray")


def free_port() -> int:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    return port


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(entry.name) != os.getpid():
            found.append((int(entry.name), cmdline[:200]))
    return found


def listening_ports() -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket of this machine."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address, port = fields[1].split(":")
            found.add((address, int(port, 16)))
    return found


def serve_ray(tmp_path: Path, *argv: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "idm_vton", "serve", "--ray", "--model", "tiny"]
    command += ["--no-ui", *argv]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_without_consent_no_local_ray_instance_is_started(tmp_path):
    before = listening_ports()
    process = serve_ray(tmp_path, "--port", str(free_port()))
    _, stderr = process.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert process.returncode == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("idm-vton serve: error: --ray needs a cluster")
    assert "--ray-local" in lines[0]
    assert processes_mentioning(str(tmp_path)) == []
    assert listening_ports() - before == set()  # it opened nothing that is still listening


@pytest.fixture
def short_tmp():
    """A short temp folder: Ray's socket paths under it must fit in 107 bytes."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_local_ray_server_listens_on_loopback_and_leaves_no_process(short_tmp):
    tmp_path = short_tmp
    port = free_port()
    process = serve_ray(tmp_path, "--ray-local", "--port", str(port), "--max-batch", "1")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, process.communicate()[1][-3000:]
            try:
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the Ray server did not become ready"
            time.sleep(0.5)
        assert processes_mentioning(str(tmp_path)), "Ray's processes use its temp folder"
        # the HTTP endpoint listens on the loopback interface only
        ours = {address for address, p in listening_ports() if p == port}
        assert ours == {"0100007F"}, ours
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
            pytest.fail("the Ray server did not stop after SIGTERM")
    assert process.returncode == 0, stderr[-3000:]
    # every process it started is gone (Ray's own ones take a moment to exit)
    deadline = time.monotonic() + 60
    while (left := processes_mentioning(str(tmp_path))) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == [], left
    assert not [p for a, p in listening_ports() if p == port]
