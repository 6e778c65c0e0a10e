"""``idm-vton infer-dataset`` as a careless or hostile user runs it: two runs into one folder, a run
that fails on its first row, an empty pairs file."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from idm_vton.evaluation.infer_dataset import is_finished_image

from ..helpers.datasets import vitonhd_fixture
from .conftest import REPO, assert_user_error, files_under

H, W = 64, 48


vitonhd = vitonhd_fixture(n=2)


def infer_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "infer-dataset", "--model", "tiny", "--data", str(data), "--dataset", "vitonhd",
        "--out", str(out), "--height", str(H), "--width", str(W), "--steps", "1",
        "--device", "cpu", "--num-workers", "0", "--no-progress", *extra,
    ]  # fmt: skip


# The first run: renders normally, but once its first image is half written (the temporary file
# is on disk, not yet renamed) it says so on stdout and waits for the test's go-ahead file.
_PAUSED_RUN = """
import sys, time
from pathlib import Path
from PIL import Image

go = Path(sys.argv[1])
original = Image.Image.save

def save_then_wait(self, fp, *args, **kwargs):
    original(self, fp, *args, **kwargs)
    Image.Image.save = original
    print("IN FLIGHT", fp, flush=True)
    deadline = time.monotonic() + 300
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)

Image.Image.save = save_then_wait
from idm_vton.commands.main import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_second_run_into_the_same_folder_is_refused_and_the_first_completes(
    cli, vitonhd, tmp_path
):
    out, go = tmp_path / "out", tmp_path / "go"
    first = subprocess.Popen(
        [sys.executable, "-c", _PAUSED_RUN, str(go), *infer_args(vitonhd, out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        line = "note"  # the tiny model's note comes first
        while line and not line.startswith("IN FLIGHT"):
            line = first.stdout.readline()
        assert line, "the first run ended before writing an image"
        in_flight = Path(line.split(maxsplit=2)[2].strip())
        assert in_flight.is_file()
        result = cli(*infer_args(vitonhd, out))
        assert_user_error(result, "infer-dataset", str(out), "another run")
        assert in_flight.is_file()  # the second run did not touch the first's temporary file
    finally:
        go.touch()
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    names = ["00000_00_00000_00.png", "00001_00_00001_00.png"]
    assert all(is_finished_image(out / name, (H, W)) for name in names)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["count"] == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", *names])


def test_the_folder_is_free_again_after_a_run(cli, vitonhd, tmp_path):
    out = tmp_path / "out"
    assert cli(*infer_args(vitonhd, out)).code == 0
    again = cli(*infer_args(vitonhd, out))
    assert again.code == 0, again.stderr
    assert "2/2 images" in again.stdout and "(2 were already done)" in again.stdout


def test_a_run_failing_on_its_first_row_leaves_nothing(cli, vitonhd, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(vitonhd, data)
    (data / "test" / "image" / "00000_00.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    before = files_under(tmp_path)
    result = cli(*infer_args(data, tmp_path / "out"))
    assert_user_error(result, "infer-dataset", "00000_00.jpg", "row 0")
    assert files_under(tmp_path) == before  # no manifest.json, no out/ folder


def test_a_failure_on_the_first_row_keeps_an_earlier_run_s_manifest(cli, vitonhd, tmp_path):
    import shutil

    data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(vitonhd, data)
    assert cli(*infer_args(data, out)).code == 0
    (out / "00000_00_00000_00.png").unlink()  # one image to redo
    (data / "test" / "image" / "00000_00.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    result = cli(*infer_args(data, out))
    assert_user_error(result, "infer-dataset", "00000_00.jpg")
    manifest = json.loads((out / "manifest.json").read_text())  # kept, and still true
    assert manifest["count"] == 1 and manifest["total"] == 2 and manifest["complete"] is False
    assert sorted(p.name for p in out.iterdir()) == ["00001_00_00001_00.png", "manifest.json"]


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["empty", "blank-lines"])
def test_an_empty_pairs_file_is_an_error(cli, vitonhd, tmp_path, content):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(vitonhd, data)
    (data / "test_pairs.txt").write_text(content)
    before = files_under(tmp_path)
    result = cli(*infer_args(data, tmp_path / "out"))
    assert_user_error(result, "infer-dataset", str(data / "test_pairs.txt"), "no pairs")
    assert files_under(tmp_path) == before


def test_a_stale_lock_file_of_a_killed_run_does_not_block(cli, vitonhd, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from idm_vton.files import lock_folder\n"
         "with lock_folder(sys.argv[1], '--out'):\n    print('locked', flush=True); time.sleep(600)",
         str(out)],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert_user_error(cli(*infer_args(vitonhd, out)), "infer-dataset", "another run")
    finally:
        holder.kill()
        holder.wait(timeout=30)
    time.sleep(0.1)
    result = cli(*infer_args(vitonhd, out))
    assert result.code == 0, result.stderr
