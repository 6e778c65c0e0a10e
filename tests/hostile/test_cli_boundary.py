"""The command boundary: argparse mistakes, Ctrl-C at any point of start-up, and the permissions of
what the commands write (the user's umask, not 0600/0700)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ..conftest import EXAMPLES
from ..helpers.datasets import make_vitonhd
from .conftest import assert_user_error, cli_subprocess

H, W = 64, 48
TRYON = [
    "tryon", "--model", "tiny", "--person", EXAMPLES / "person.jpg",
    "--garment", EXAMPLES / "garment.jpg", "--mask", EXAMPLES / "mask.png",
    "--pose", EXAMPLES / "densepose.png", "--height", str(H), "--width", str(W), "--steps", "1",
    "--device", "cpu",
]  # fmt: skip


# ------------------------------------------------------------------------------- argparse
@pytest.mark.parametrize(
    "argv, command, fragment",
    [
        pytest.param(["tryon", "--model", "tiny"], "tryon", "required: --person", id="missing"),
        pytest.param([*TRYON, "--out", "o.png", "--persn", "x"], "tryon", "--persn", id="unknown"),
        pytest.param(
            [*TRYON, "--out", "o.png", "--steps", "three"], "tryon", "'three'", id="bad-int"
        ),  # fmt: skip
        pytest.param(
            [*TRYON, "--out", "o.png", "--scheduler", "nope"], "tryon", "'nope'", id="bad-choice"
        ),  # fmt: skip
        pytest.param(["train", "--model", "tiny"], "train", "--output", id="train-missing"),
        pytest.param(["evaluate", "preds"], "evaluate", "gt_dir", id="positional-missing"),
        pytest.param(["convert"], "convert", "src", id="convert-bare"),
    ],
)
def test_an_argparse_mistake_is_one_line(cli, argv, command, fragment):
    result = cli(*argv)
    line = assert_user_error(result, command, fragment)
    assert line.endswith(f"(see idm-vton {command} --help)")
    assert result.stdout == ""


@pytest.mark.parametrize(
    "argv, fragment",
    [
        pytest.param([], "command", id="no-command"),
        pytest.param(["frobnicate"], "frobnicate", id="unknown-command"),
        pytest.param(["--frob", "x"], "x", id="unknown-global-flag"),
    ],
)
def test_a_top_level_mistake_is_one_line(cli, argv, fragment):
    result = cli(*argv)
    assert result.code == 2
    [line] = result.error_lines
    assert line.startswith("idm-vton: error: ") and fragment in line
    assert line.endswith("(see idm-vton --help)")


def test_help_still_prints_the_usage(cli):
    result = cli("tryon", "--help")
    assert result.code == 0 and "--person" in result.stdout and result.stderr == ""


# ------------------------------------------------------------------------------- Ctrl-C
# Installed as sitecustomize in the child: Ctrl-C arrives while the module named in
# $IDM_VTON_TEST_INTERRUPT_AT is being imported.
_INTERRUPT_HOOK = """
import os, sys

class InterruptImport:
    target = os.environ.get("IDM_VTON_TEST_INTERRUPT_AT")

    def find_spec(self, name, path=None, target=None):
        if name == self.target:
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, InterruptImport())
"""


@pytest.mark.parametrize(
    "module, argv",
    [
        pytest.param("idm_vton.commands.main", ["tryon", "--help"], id="start-up"),
        pytest.param("idm_vton.commands.infer_dataset", ["tryon", "--help"], id="parser-build"),
        pytest.param("diffusers", [*TRYON, "--out", "o.png"], id="library-set-up"),
        pytest.param("safetensors", [*TRYON, "--out", "o.png"], id="inside-the-command"),
    ],
)
def test_ctrl_c_during_imports_is_one_line_and_exit_130(tmp_path, module, argv):
    (tmp_path / "sitecustomize.py").write_text(_INTERRUPT_HOOK)
    env = {
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        "IDM_VTON_TEST_INTERRUPT_AT": module,
    }
    result = cli_subprocess(*argv, env=env, cwd=tmp_path)
    assert result.code == 130, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert len(result.error_lines) == 1, result.stderr
    assert result.error_lines[0].startswith("idm-vton") and "interrupted" in result.error_lines[0]
    assert not (tmp_path / "o.png").exists()


# ------------------------------------------------------------------------------- umask
@pytest.fixture
def umask():
    previous = os.umask(0o022)

    def set_umask(mask: int) -> None:
        os.umask(mask)

    yield set_umask
    os.umask(previous)


def modes(root: Path) -> dict[str, set[int]]:
    """The permission bits of the files and the folders at and below ``root``."""
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    found: dict[str, set[int]] = {"files": set(), "folders": set()}
    for path in paths:
        kind = "folders" if path.is_dir() else "files"
        found[kind].add(stat.S_IMODE(path.stat().st_mode))
    return found


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=["022", "077"])
def test_tryon_and_convert_outputs_follow_the_umask(cli, umask, tmp_path, mask):
    from idm_vton.pipelines.loading import tiny_pipeline

    tiny_pipeline().save_pretrained(tmp_path / "model")
    umask(mask)
    assert cli(*TRYON, "--out", tmp_path / "o.png").code == 0
    assert cli("convert", tmp_path / "model", tmp_path / "converted", "--dtype", "fp32").code == 0
    os.umask(0o022)
    assert modes(tmp_path / "o.png") == {"files": {0o666 & ~mask}, "folders": set()}
    assert modes(tmp_path / "converted") == {"files": {0o666 & ~mask}, "folders": {0o777 & ~mask}}


def test_infer_dataset_and_train_outputs_follow_the_umask(cli, umask, tmp_path):
    make_vitonhd(tmp_path / "data", n=2)
    umask(0o027)
    infer = cli("infer-dataset", "--model", "tiny", "--data", tmp_path / "data", "--dataset",
                "vitonhd", "--out", tmp_path / "results", "--height", str(H), "--width", str(W),
                "--steps", "1", "--device", "cpu", "--num-workers", "0", "--no-progress")  # fmt: skip
    assert infer.code == 0, infer.stderr
    train = cli("train", "--model", "tiny", "--data", tmp_path / "data", "--output",
                tmp_path / "runs", "--resolution", str(H), str(W), "--report-to", "none",
                "--max-steps", "1")  # fmt: skip
    assert train.code == 0, train.stderr
    os.umask(0o022)
    assert modes(tmp_path / "results") == {"files": {0o640}, "folders": {0o750}}
    assert len(list((tmp_path / "results").glob("*.png"))) == 2
    assert modes(tmp_path / "runs") == {"files": {0o640}, "folders": {0o750}}
    assert (tmp_path / "runs" / "checkpoint-1" / "unet" / "config.json").is_file()


def test_user_errors_use_the_common_format_in_the_train_module_entry_point(capsys):
    from idm_vton.commands.train import main

    assert main(["--model", "tiny", "--data", "x"]) == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert line.startswith("idm_vton.train: error: ") and "--output" in line
    assert line.endswith("(see idm_vton.train --help)")
