"""The README's first shell block runs as written on a clone, and CI installs the same way."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import numpy as np
from PIL import Image

from .conftest import EXAMPLES, REPO


def first_shell_block() -> list[str]:
    """The commands of the README's first ```bash block, continuation lines joined, split on &&."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    joined = re.sub(r"\\\n\s*", " ", block).strip()
    return [part.strip() for part in joined.split("&&")]


def test_ci_installs_exactly_as_the_readme_says():
    *install, _ = first_shell_block()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    ci_installs = [line.strip() for line in ci if line.strip().startswith("pip install")]
    assert [" ".join(c.split()) for c in ci_installs] == [
        " ".join(i.replace("pip install", "pip install --quiet", 1).split()) for i in install
    ]
    assert "python -m pytest -q" in (REPO / "README.md").read_text()
    assert any(line.strip().startswith("python -m pytest -q") for line in ci)


def test_readme_and_docs_name_nothing_outside_the_clone():
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        assert "../shared" not in path.read_text(), path


def test_readme_first_command_writes_an_image(tmp_path):
    *_, command = first_shell_block()
    argv = shlex.split(command)
    assert argv[:2] == ["idm-vton", "tryon"]
    out = argv.index("--out") + 1
    argv[out] = str(tmp_path / argv[out])
    # Every input the command names lies in the repository.
    for flag in ("--person", "--garment", "--mask", "--pose"):
        assert (REPO / argv[argv.index(flag) + 1]).is_file(), flag
    run = subprocess.run(
        [sys.executable, "-m", "idm_vton", *argv[1:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    result = np.asarray(Image.open(argv[out]))
    photo = np.asarray(Image.open(EXAMPLES / "person.jpg").convert("RGB"))
    mask = np.asarray(Image.open(EXAMPLES / "mask.png").convert("L")) >= 128
    assert result.shape == photo.shape
    assert np.array_equal(result[~mask], photo[~mask])  # the photo outside the mask is kept
    assert (result[mask] != photo[mask]).mean() > 0.5
