"""``idm-vton convert`` as a careless or hostile user runs it: ``--overwrite`` can only ever replace
the output folder of an earlier conversion, never the source model or anything beside it, and a
conversion killed half way leaves nothing that a later run does not clean up."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO, assert_user_error, files_under


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """The tiny model in the converted layout, written once (a valid ``convert`` source)."""
    from idm_vton.pipelines.loading import tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny") / "model"
    tiny_pipeline().save_pretrained(folder)
    return folder


def snapshot(*folders: Path) -> dict[Path, str]:
    """Every file below ``folders`` with the SHA-256 of its bytes (and every folder)."""
    return files_under(*folders)


@pytest.fixture
def workspace(tmp_path, model_folder) -> Path:
    """``anc/`` holding a copy of the model (``anc/model``) and a file of the user's."""
    import shutil

    anc = tmp_path / "anc"
    shutil.copytree(model_folder, anc / "model")
    (anc / "notes.txt").write_text("the user's own file\n")
    return tmp_path


# DST (relative to the workspace) given for SRC = anc/model, and a fragment of the message.
OVERLAPPING = [
    pytest.param("anc", "contains", id="dst-holds-the-source"),  # the reported data loss
    pytest.param("anc/model", "is the source", id="dst-is-the-source"),
    pytest.param("anc/model/../model/", "is the source", id="dst-is-the-source-spelled-otherwise"),
    pytest.param("anc/model/unet", "inside", id="dst-inside-the-source"),
    pytest.param(".", "contains", id="dst-is-the-working-folder"),
]


@pytest.mark.parametrize("dst, fragment", OVERLAPPING)
def test_overwrite_never_touches_the_source_or_its_neighbours(
    cli, workspace, monkeypatch, dst, fragment
):
    before = snapshot(workspace)
    monkeypatch.chdir(workspace)
    result = cli("convert", "anc/model", dst, "--overwrite", "--dtype", "fp32")
    assert_user_error(result, "convert", fragment)
    assert snapshot(workspace) == before


def test_overwrite_through_a_symlink_to_the_source_folder(cli, workspace):
    link = workspace / "link"
    link.symlink_to(workspace / "anc", target_is_directory=True)
    before = snapshot(workspace / "anc")
    result = cli("convert", workspace / "anc" / "model", link, "--overwrite")
    assert_user_error(result, "convert", str(link))
    assert snapshot(workspace / "anc") == before and link.is_symlink()


def test_source_given_through_a_symlink_is_recognised(cli, workspace):
    (workspace / "alias").symlink_to(workspace / "anc" / "model", target_is_directory=True)
    before = snapshot(workspace / "anc")
    result = cli("convert", workspace / "alias", workspace / "anc", "--overwrite")
    assert_user_error(result, "convert", "contains")
    assert snapshot(workspace / "anc") == before


def test_overwrite_refuses_a_folder_that_is_not_a_converted_model(cli, workspace):
    other = workspace / "photos"
    other.mkdir()
    (other / "me.jpg").write_bytes(b"not really a photo")
    before = snapshot(workspace)
    result = cli("convert", workspace / "anc" / "model", other, "--overwrite")
    assert_user_error(result, "convert", str(other), "model_index.json")
    assert snapshot(workspace) == before


def test_overwrite_refuses_a_regular_file_and_leaves_no_old_copy(cli, workspace):
    afile = workspace / "afile"
    afile.write_text("keep me\n")
    before = snapshot(workspace)
    result = cli("convert", workspace / "anc" / "model", afile, "--overwrite")
    assert_user_error(result, "convert", str(afile), "not a folder")
    assert snapshot(workspace) == before  # in particular no .afile.old


def test_existing_output_without_overwrite_is_refused(cli, workspace):
    (workspace / "out").mkdir()
    (workspace / "out" / "model_index.json").write_text("{}\n")
    before = snapshot(workspace)
    result = cli("convert", workspace / "anc" / "model", workspace / "out")
    assert_user_error(result, "convert", str(workspace / "out"), "already exists", "--overwrite")
    assert snapshot(workspace) == before


def test_a_folder_of_other_files_is_refused_without_advising_overwrite(cli, workspace):
    other = workspace / "photos"
    other.mkdir()
    (other / "me.jpg").write_bytes(b"not really a photo")
    before = snapshot(workspace)
    result = cli("convert", workspace / "anc" / "model", other)
    assert_user_error(result, "convert", str(other), "choose a new output folder")
    assert "pass --overwrite" not in result.stderr  # it would refuse this folder too
    assert snapshot(workspace) == before


def test_overwrite_replaces_an_earlier_conversion_and_keeps_the_users_files(cli, workspace):
    import json

    src, dst = workspace / "anc" / "model", workspace / "out"
    assert cli("convert", src, dst, "--dtype", "fp32").code == 0
    notes = dst / "my-notes.txt"
    notes.write_text("the user's notes beside the converted model\n")
    (dst / "samples").mkdir()
    (dst / "samples" / "out.png").write_bytes(b"a render of the user's")
    kept = snapshot(dst / "samples")
    before = snapshot(workspace / "anc")
    result = cli("convert", src, dst, "--overwrite", "--dtype", "bf16")
    assert result.code == 0, result.stderr
    assert snapshot(workspace / "anc") == before
    # said what goes and what stays, and kept what is not the model's
    assert "replacing in" in result.stdout and "unet" in result.stdout
    assert "keeping in" in result.stdout and "my-notes.txt" in result.stdout
    assert notes.read_text() == "the user's notes beside the converted model\n"
    assert snapshot(dst / "samples") == kept
    config = json.loads((dst / "unet" / "config.json").read_text())
    assert config["_class_name"] == "UNet2DConditionModel"
    from safetensors import safe_open

    with safe_open(str(dst / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}
    assert sorted(p.name for p in workspace.iterdir()) == ["anc", "out"]  # no hidden leftovers


# A process that starts writing DST the way convert does, reports its temporary folder and waits
# (to be killed with SIGKILL, or to stay alive while another conversion runs).
_HOLDER = """
import sys, time
from pathlib import Path
from idm_vton.files import atomic_directory
with atomic_directory(sys.argv[1]) as tmp:
    (tmp / "half-written.bin").write_bytes(b"x" * 1000)
    print(tmp, flush=True)
    time.sleep(600)
"""


def _start_holder(dst: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(dst)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    line = proc.stdout.readline().strip()
    assert line, "the holder process did not start writing"
    return proc, Path(line)


def test_a_killed_conversion_is_cleaned_by_the_next_one_but_a_live_one_is_not(cli, workspace):
    dst = workspace / "out"
    killed, killed_tmp = _start_holder(dst)
    alive, alive_tmp = _start_holder(dst)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert killed_tmp.is_dir() and alive_tmp.is_dir()
        result = cli("convert", workspace / "anc" / "model", dst, "--dtype", "fp32")
        assert result.code == 0, result.stderr
        assert not killed_tmp.exists()  # the dead run's temporary folder is gone
        assert (alive_tmp / "half-written.bin").is_file()  # the live run's is untouched
        assert (dst / "model_index.json").is_file()
    finally:
        alive.kill()
        alive.wait(timeout=30)
    # Once its writer is gone, the next run cleans that one too.
    deadline = time.monotonic() + 10
    while alive.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    result = cli("convert", workspace / "anc" / "model", dst, "--overwrite", "--dtype", "fp32")
    assert result.code == 0, result.stderr
    assert sorted(p.name for p in workspace.iterdir()) == ["anc", "out"]
