"""The contract every hostile-input case checks, for every command.

A user mistake, careless or hostile, ends in exit code 2, exactly one line on stderr that names
the problem (``idm-vton <command>: error: ...``), no traceback, and nothing left on disk: no output
file, no temporary file, no half-written folder. Valid-but-odd inputs must give the right result
instead (those cases assert the result).

``cli`` runs the command in this process (fast); ``cli_subprocess`` runs ``python -m idm_vton`` in a
child process, optionally under an address-space limit (``resource.RLIMIT_AS``), so a regression
that allocates without bound fails with MemoryError or a kill instead of swapping the machine.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from idm_vton.commands.main import main

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def files_under(*folders: Path) -> dict[Path, str]:
    """Every file and folder below ``folders`` (hidden ones included) with what it holds: a
    regular file's SHA-256, a link's target, ``"folder"``, and for any other kind of file (a
    named pipe, a device) its kind and inode, never read. Two snapshots differ when anything
    was added, removed, replaced or rewritten in place, for before/after checks."""
    found: dict[Path, str] = {}
    for folder in folders:
        if folder.exists():
            for path in folder.rglob("*"):
                info = path.lstat()
                if stat.S_ISLNK(info.st_mode):
                    found[path] = f"link to {os.readlink(path)}"
                elif stat.S_ISDIR(info.st_mode):
                    found[path] = "folder"
                elif stat.S_ISREG(info.st_mode):
                    found[path] = hashlib.sha256(path.read_bytes()).hexdigest()
                else:
                    found[path] = f"special {stat.S_IFMT(info.st_mode):o} inode {info.st_ino}"
    return found


def assert_user_error(result: Result, command: str, *fragments: str) -> str:
    """Exit 2, one line ``idm-vton <command>: error: ...`` containing ``fragments``, no traceback."""
    lines = result.error_lines
    assert result.code == 2, f"exit {result.code}, stderr: {result.stderr!r}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {result.stderr!r}"
    line = lines[0]
    assert line.startswith(f"idm-vton {command}: error: "), line
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment.lower() in line.lower(), f"{fragment!r} not in {line!r}"
    return line


@pytest.fixture
def cli(capsys):
    """Run ``idm-vton`` in this process: ``cli("tryon", "--person", ...)`` -> :class:`Result`."""

    def run(*argv: str | os.PathLike) -> Result:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return run


def cli_subprocess(
    *argv: str | os.PathLike,
    memory_limit_bytes: int | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    cwd: Path | None = None,
) -> Result:
    """Run ``python -m idm_vton`` in a child process, under ``RLIMIT_AS`` when a limit is given."""

    def limit() -> None:
        if memory_limit_bytes is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))

    run = subprocess.run(
        [sys.executable, "-m", "idm_vton", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
        env={**os.environ, **(env or {})},
        cwd=cwd or REPO,
    )
    return Result(run.returncode, run.stdout, run.stderr)
