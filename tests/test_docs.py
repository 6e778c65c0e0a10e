"""Every code block of the README and docs/ that can run offline runs, as written.

A block that cannot (it needs the model weights, a dataset, a GPU, network, a server, or it
installs packages) says so on the line before it, ``<!-- not run: REASON -->``, with one of the
reasons below; every other bash and python block runs here, in an empty folder where ``src/``
points at the clone's (the examples' paths), with the installed ``idm-vton`` on the PATH.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import REPO

REASONS = (
    "installs packages",
    "needs the model weights",
    "needs the preprocessing weights",
    "needs a dataset",
    "needs network",
    "needs several processes or GPUs",
    "needs several machines",
    "needs a running server",
    "starts a server",
    "a benchmark",
    "a fragment",
)
_BLOCK = re.compile(
    r"(<!-- not run: (?P<reason>[^>]*) -->\n)?```(?P<lang>bash|python)\n(?P<code>.*?)```", re.S
)


def doc_blocks() -> list[tuple[str, str, str, str | None]]:
    """(where, language, code, reason not run or None) of every bash/python block."""
    blocks = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for match in _BLOCK.finditer(text):
            line = text[: match.start("lang")].count("\n") + 1
            where = f"{path.relative_to(REPO)}:{line}"
            code = textwrap.dedent(match["code"])  # a block inside a list item is indented
            blocks.append((where, match["lang"], code, match["reason"]))
    return blocks


BLOCKS = doc_blocks()
RUNNABLE = [b for b in BLOCKS if b[3] is None]


def test_every_block_that_is_not_run_says_why():
    assert len(BLOCKS) > 20
    for where, _, _, reason in BLOCKS:
        if reason is not None:
            assert reason.startswith(REASONS), f"{where}: unknown reason {reason!r}"
    assert len(RUNNABLE) >= 3


@pytest.mark.parametrize("where,lang,code", [b[:3] for b in RUNNABLE], ids=[b[0] for b in RUNNABLE])
def test_the_block_runs(where, lang, code, tmp_path):
    (tmp_path / "src").symlink_to(REPO / "src")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_HUB_OFFLINE"] = "1"  # a block that reaches for the hub fails here, not on the network
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    argv = (
        ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
    )
    run = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"{where}:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
