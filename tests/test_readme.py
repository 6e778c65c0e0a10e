"""The README's first shell block runs as written on a clone, and CI installs the same way."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import numpy as np
from PIL import Image

from .conftest import EXAMPLES, REPO


def shell_block(index: int) -> list[str]:
    """The commands of the README's ``index``-th ```bash block, continuation lines joined, split
    on &&."""
    text = (REPO / "README.md").read_text()
    block = re.findall(r"```bash\n(.*?)```", text, re.S)[index]
    joined = re.sub(r"\\\n\s*", " ", block).strip()
    return [part.strip() for part in joined.split("&&")]


def first_shell_block() -> list[str]:
    """The README's first command: it installs, then runs the main job."""
    return shell_block(0)


def test_the_first_command_installs_lightly_and_the_second_runs_the_tests():
    *install, run = first_shell_block()
    assert all(part.startswith("pip install") for part in install)
    assert not any("[test]" in part or "[serve]" in part for part in install)  # light
    assert run.startswith("idm-vton tryon")
    *test_install, test = shell_block(1)
    assert test == "python -m pytest -q"
    assert test_install == ['pip install -c constraints.txt ".[test]"']


def test_ci_installs_exactly_as_the_readme_says():
    *install, _ = first_shell_block()
    *test_install, test = shell_block(1)
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    ci_installs = [line.strip() for line in ci if line.strip().startswith("pip install")]
    assert [" ".join(c.split()) for c in ci_installs] == [
        " ".join(i.replace("pip install", "pip install --quiet", 1).split())
        for i in [*install, *test_install]
    ]
    assert any(line.strip().startswith(test) for line in ci)


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
    person, mask_file = (REPO / argv[argv.index(flag) + 1] for flag in ("--person", "--mask"))
    assert person.parent == mask_file.parent == EXAMPLES  # the examples that ship in the package
    photo = np.asarray(Image.open(person).convert("RGB"))
    mask = np.asarray(Image.open(mask_file).convert("L")) >= 128
    assert result.shape == photo.shape
    assert np.array_equal(result[~mask], photo[~mask])  # the photo outside the mask is kept
    assert (result[mask] != photo[mask]).mean() > 0.5
