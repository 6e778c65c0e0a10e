"""Every code block of the README and docs/ that can run offline runs, as written.

A block that cannot (it needs the model weights, a dataset, a GPU, network, or it installs
packages) says so on the line before it, ``<!-- not run: REASON -->``, with one of the reasons
below; every other bash and python block runs here, in an empty folder where ``src/`` points at
the clone's (the examples' paths), with the installed ``idm-vton`` on the PATH. A block marked
``<!-- run against: idm-vton serve --model tiny -->`` (the serving docs' client examples) runs
against such a server, started here on a free loopback port that replaces the docs' 7860.
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
    r"(<!-- (?P<mark>not run|run against): (?P<reason>[^>]*) -->\n)?"
    r"```(?P<lang>bash|python)\n(?P<code>.*?)```",
    re.S,
)
SERVER = "idm-vton serve --model tiny"


def doc_blocks() -> list[tuple[str, str, str, str | None, bool]]:
    """(where, language, code, reason not run or None, runs against a server) of every
    bash/python block."""
    blocks = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for match in _BLOCK.finditer(text):
            line = text[: match.start("lang")].count("\n") + 1
            where = f"{path.relative_to(REPO)}:{line}"
            code = textwrap.dedent(match["code"])  # a block inside a list item is indented
            reason = match["reason"] if match["mark"] == "not run" else None
            server = match["mark"] == "run against"
            assert not server or match["reason"] == SERVER, f"{where}: {match['reason']!r}"
            blocks.append((where, match["lang"], code, reason, server))
    return blocks


BLOCKS = doc_blocks()
RUNNABLE = [b for b in BLOCKS if b[3] is None and not b[4]]
AGAINST_A_SERVER = [b for b in BLOCKS if b[4]]


def test_every_block_that_is_not_run_says_why():
    assert len(BLOCKS) > 20
    for where, _, _, reason, _ in BLOCKS:
        if reason is not None:
            assert reason.startswith(REASONS), f"{where}: unknown reason {reason!r}"
    assert len(RUNNABLE) >= 3 and len(AGAINST_A_SERVER) >= 3


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_HUB_OFFLINE"] = "1"  # a block that reaches for the hub fails here, not on the network
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_block(where: str, lang: str, code: str, folder: Path) -> None:
    if not (folder / "src").exists():
        (folder / "src").symlink_to(REPO / "src")
    bash = ["bash", "-euo", "pipefail", "-c", code]
    argv = bash if lang == "bash" else [sys.executable, "-c", code]
    run = subprocess.run(
        argv, cwd=folder, env=_environment(), capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, f"{where}:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"


@pytest.mark.parametrize("where,lang,code", [b[:3] for b in RUNNABLE], ids=[b[0] for b in RUNNABLE])
def test_the_block_runs(where, lang, code, tmp_path):
    run_block(where, lang, code, tmp_path)


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    """``idm-vton serve --model tiny`` (the API) on a free loopback port, until the module ends."""
    from .serve_support import free_port, wait_until_ready

    port = free_port()
    argv = [sys.executable, "-m", "idm_vton", *SERVER.split()[1:], "--device", "cpu"]
    argv += ["--no-ui", "--port", str(port)]
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "w") as stream:
        server = subprocess.Popen(argv, env=_environment(), stdout=stream, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(server, f"http://127.0.0.1:{port}", log=log)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.mark.parametrize(
    "where,lang,code", [b[:3] for b in AGAINST_A_SERVER], ids=[b[0] for b in AGAINST_A_SERVER]
)
def test_the_client_example_runs_against_a_tiny_server(where, lang, code, tiny_server, tmp_path):
    from PIL import Image

    run_block(where, lang, code.replace("127.0.0.1:7860", f"127.0.0.1:{tiny_server}"), tmp_path)
    with Image.open(tmp_path / "out.png") as image:  # a real image, not a saved JSON error
        assert image.format == "PNG" and image.size[0] > 0
