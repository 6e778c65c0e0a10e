"""Without a hub, the first real commands fail fast: one stderr line, within seconds.

The hub is a loopback address that refuses connections, or one that accepts them and never
answers; the Hugging Face cache is empty. Each command runs as a user runs it (a fresh process
with ``HF_ENDPOINT`` / ``HF_HOME`` set), and must report the missing weights in one line that
names what was missing, why (the hub cannot be reached) and ``HF_HUB_OFFLINE``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from idm_vton.loaders import hub as hub_module

from .conftest import EXAMPLES

# Seconds a command may take from start to its error line: its imports on a loaded 2-core
# machine plus the one hub check (5 s against a silent hub). huggingface_hub's own retries took
# over 40 s here.
LIMIT_S = 25


@pytest.fixture(scope="module")
def refusing_hub():
    """An address whose connections are refused: a bound port nobody listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture(scope="module")
def silent_hub():
    """An address that accepts connections (the kernel's backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


COMMANDS = {
    "tryon": ["tryon", "--person", "PERSON", "--garment", "GARMENT", "--out", "OUT/out.png"],
    "mask": ["mask", "--person", "PERSON", "--out", "OUT/mask.png"],
    "download": ["download"],
}


def run_offline(
    argv: list[str], endpoint: str, tmp_path, **extra: str
) -> tuple[int, list[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "IDM_VTON_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
    env.update(extra)
    replace = {
        "PERSON": str(EXAMPLES / "person.jpg"),
        "GARMENT": str(EXAMPLES / "garment.jpg"),
        "OUT/out.png": str(tmp_path / "out.png"),
        "OUT/mask.png": str(tmp_path / "mask.png"),
    }
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "idm_vton", *(replace.get(a, a) for a in argv)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    return run.returncode, run.stderr.splitlines(), time.monotonic() - start


@pytest.mark.parametrize("kind", ["refusing", "silent"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_hub_and_an_empty_cache_is_one_fast_line(command, kind, request, tmp_path):
    endpoint = request.getfixturevalue(f"{kind}_hub")
    # The silent hub is given 2 s (huggingface_hub's HF_HUB_ETAG_TIMEOUT), not the default 5 s.
    extra = {"HF_HUB_ETAG_TIMEOUT": "2"} if kind == "silent" else {}
    code, err, seconds = run_offline(COMMANDS[command], endpoint, tmp_path, **extra)
    assert code == 2 and len(err) == 1, err
    line = err[0]
    assert line.startswith(f"idm-vton {command}: error:"), line
    assert f"{endpoint} cannot be reached" in line, line
    reason = "connection refused" if kind == "refusing" else "no answer within 2 s"
    assert reason in line.lower(), line
    assert "HF_HUB_OFFLINE=1" in line and "not in the Hugging Face cache" in line, line
    assert seconds < LIMIT_S, f"{command} took {seconds:.1f} s to fail"
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "mask.png").exists()


def test_the_hub_is_checked_once_per_process(silent_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", silent_hub)
    hub_module.forget_hub_probes()
    try:
        start = time.monotonic()
        first = hub_module.hub_unreachable_reason(timeout=1.0)
        assert first == f"{silent_hub} cannot be reached: no answer within 1 s"
        assert time.monotonic() - start >= 1.0
        start = time.monotonic()
        assert hub_module.hub_unreachable_reason(timeout=1.0) == first
        assert time.monotonic() - start < 0.5  # remembered, not asked again
    finally:
        hub_module.forget_hub_probes()


def test_a_hub_that_answers_with_an_error_status_is_reachable(monkeypatch):
    from huggingface_hub import constants

    from .helpers.hub import FakeHub

    hub = FakeHub("/nothing/", "0" * 40)  # answers 404 to everything here
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    hub_module.forget_hub_probes()
    try:
        assert hub_module.hub_unreachable_reason(timeout=5.0) is None
        assert hub_module.cache_only_reason() is None
        assert hub_module.cache_only_reason(local_files_only=True) == "local_files_only was asked"
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        assert hub_module.cache_only_reason() == "HF_HUB_OFFLINE is set"
    finally:
        hub.close()
        hub_module.forget_hub_probes()
