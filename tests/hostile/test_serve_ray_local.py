"""``idm-vton serve --ray`` without a cluster starts a local Ray instance: every socket any of its
processes opens is on the loopback interface, and none of them outlives the server."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ..conftest import REPO
from ..serve_support import free_port, wait_until_ready

pytest.importorskip("ray")


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            line = command_line(int(entry.name))
            if text in line:
                found.append((int(entry.name), line[:200]))
    return found


def descendants(root: int) -> set[int]:
    """``root`` and every live process below it."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (name) state ppid ...": the name may hold spaces and parentheses
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in found]
        found.update(children)
        frontier.extend(children)
    return found


def decode_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net writes it: hex, in 32-bit words of the host's byte order."""
    raw = bytes.fromhex(text)
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw)


def is_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def internet_sockets() -> dict[str, tuple[str, str, int, bool]]:
    """Every TCP and UDP socket of this machine: inode -> (table, local address, port,
    listening)."""
    found = {}
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path("/proc/net", table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, port = fields[1].split(":")
            listening = table.startswith("tcp") and fields[3] == "0A"
            found[fields[9]] = (table, address, int(port, 16), listening)
    return found


def sockets_of(pids: set[int]) -> list[tuple[int, str, str, int, bool, str]]:
    """(pid, table, address, port, listening, command) of every TCP/UDP socket ``pids`` hold."""
    table = internet_sockets()
    held = []
    for pid in pids:
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{descriptor}")
            except OSError:
                continue
            inode = target[len("socket:[") : -1] if target.startswith("socket:[") else None
            if inode in table:
                kind, address, port, listening = table[inode]
                held.append((pid, kind, address, port, listening, command_line(pid)))
    return held


def listening_ports() -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket of this machine."""
    return {(a, p) for _, a, p, listening in internet_sockets().values() if listening}


@pytest.fixture
def short_tmp():
    """A short temp folder: Ray's socket paths under it must fit in 107 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_local_ray_server_opens_sockets_on_loopback_only_and_leaves_no_process(short_tmp):
    port = free_port()
    env = {**os.environ, "RAY_TMPDIR": str(short_tmp), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # the server must see to it itself
    command = [sys.executable, "-m", "idm_vton", "serve", "--ray", "--model", "tiny", "--no-ui"]
    command += ["--port", str(port), "--max-batch", "1"]
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(process, url)
        assert processes_mentioning(str(short_tmp)), "Ray's processes use its temp folder"
        ours = descendants(process.pid) | {pid for pid, _ in processes_mentioning(str(short_tmp))}
        held = sockets_of(ours)
        # Ray's GCS, raylet, agents and workers, and Serve's HTTP endpoint, are all there
        commands = " ".join(command for *_, command in held)
        for name in ("gcs_server", "raylet", "DashboardAgent", "RuntimeEnvAgent"):
            assert name in commands, (name, held)
        assert (port, True) in {(p, listening) for _, _, _, p, listening, _ in held}
        outside = [s for s in held if not is_loopback(decode_address(s[2]))]
        assert outside == [], "\n".join(map(repr, outside + [()] + held))
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
    while (left := processes_mentioning(str(short_tmp))) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == [], left
    assert not [p for a, p in listening_ports() if p == port]
