"""Every command that writes, pointed at an output it cannot write: a folder where a file goes
(or a file where a folder goes), a path under a regular file, a folder it may not write in, a disk
that fills up during the write. Each ends in one line naming the path, exit code 2, and nothing
left on disk; the checks that need no work are made before any work starts."""

from __future__ import annotations

import errno
import os
import resource
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ..conftest import EXAMPLES
from ..helpers.datasets import make_vitonhd
from .conftest import assert_user_error, files_under

H, W = 64, 48
TRYON_INPUTS = [
    "--person", EXAMPLES / "person.jpg", "--garment", EXAMPLES / "garment.jpg",
    "--mask", EXAMPLES / "mask.png", "--pose", EXAMPLES / "densepose.png",
]  # fmt: skip


def tiny(inputs: dict) -> list:
    """The tiny model, from a folder (``--model tiny`` writes a temporary tokenizer file, which
    a disk filled up to the last byte would refuse before the command reaches its output)."""
    return ["--model", inputs["model"], "--height", str(H), "--width", str(W), "--steps", "1",
            "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """What the commands read: the tiny model as a folder, a small dataset, random-weight
    preprocessing models, two folders of images to evaluate. Kept apart from each test's
    ``tmp_path``, which holds only what the command writes."""
    from idm_vton.pipelines.loading import tiny_pipeline

    from ..helpers.preprocess_models import make_preprocess_models

    root = tmp_path_factory.mktemp("inputs")
    tiny_pipeline().save_pretrained(root / "model")
    make_vitonhd(root / "vitonhd", n=2)
    models = make_preprocess_models(root / "ckpt")
    rng = np.random.default_rng(0)
    for folder in ("pred", "gt"):
        (root / folder).mkdir()
        for i in range(2):
            pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / f"{i}.png")
    return {"root": root, "model": root / "model", "vitonhd": root / "vitonhd", "models": models}


@dataclass(frozen=True)
class Command:
    """How a command is told where to write: ``argv(inputs, out)``; ``kind`` file or folder."""

    name: str
    kind: str
    suffix: str
    argv: object

    def __call__(self, inputs: dict, out: Path) -> list:
        return [self.name, *self.argv(inputs, out)]


COMMANDS = [
    Command("tryon", "file", ".png", lambda i, out: [*TRYON_INPUTS, *tiny(i), "--out", out]),
    Command(
        "mask",
        "file",
        ".png",
        lambda i, out: [
            "--person",
            EXAMPLES / "person.jpg",
            "--out",
            out,
            "--preprocess-models",
            i["models"],
        ],  # fmt: skip
    ),
    Command(
        "preprocess",
        "folder",
        "",
        lambda i, out: [
            "--input",
            EXAMPLES / "person.jpg",
            "--output",
            out,
            "--preprocess-models",
            i["models"],
        ],  # fmt: skip
    ),
    Command(
        "infer-dataset",
        "folder",
        "",
        lambda i, out: [
            *tiny(i),
            "--data",
            i["vitonhd"],
            "--dataset",
            "vitonhd",
            "--out",
            out,
            "--num-workers",
            "0",
            "--no-progress",
        ],  # fmt: skip
    ),
    Command(
        "train",
        "folder",
        "",
        lambda i, out: [
            "--model",
            i["model"],
            "--data",
            i["vitonhd"],
            "--output",
            out,
            "--resolution",
            str(H),
            str(W),
            "--report-to",
            "none",
            "--max-steps",
            "1",
        ],  # fmt: skip
    ),
    Command("convert", "folder", "", lambda i, out: [i["model"], out, "--dtype", "fp32"]),
    Command(
        "customize",
        "file",
        ".safetensors",
        lambda i, out: [*TRYON_INPUTS, *tiny(i), "--description", "shirt", "--out", out],
    ),
    Command(
        "evaluate",
        "file",
        ".json",
        lambda i, out: [
            i["root"] / "pred",
            i["root"] / "gt",
            "--metrics",
            "ssim",
            "--resolution",
            f"{H}x{W}",
            "--device",
            "cpu",
            "--json",
            out,
        ],  # fmt: skip
    ),
    Command(
        "download",
        "folder",
        "",
        lambda i, out: [
            "--model",
            i["model"],
            "--skip-preprocess",
            "--skip-annotator",
            "--convert",
            out,
            "--dtype",
            "fp32",
        ],  # fmt: skip
    ),
]
BY_NAME = {c.name: c for c in COMMANDS}
CHEAP = [pytest.param(c, id=c.name) for c in COMMANDS]


def expect_nothing_written(cli, tmp_path: Path, argv: list, *fragments: str) -> str:
    before = files_under(tmp_path)
    result = cli(*argv)
    line = assert_user_error(result, argv[0], *fragments)
    assert files_under(tmp_path) == before
    return line


@pytest.mark.parametrize("command", CHEAP)
def test_out_is_the_wrong_kind_of_thing(cli, inputs, tmp_path, command):
    out = tmp_path / f"out{command.suffix}"
    if command.kind == "file":
        out.mkdir()  # a folder where the file should go
        fragment = "is a folder"
    else:
        out.write_text("a file where the folder should go\n")
        fragment = "not a folder"
    expect_nothing_written(cli, tmp_path, command(inputs, out), str(out), fragment)


@pytest.mark.parametrize("command", CHEAP)
def test_out_is_under_a_regular_file(cli, inputs, tmp_path, command):
    afile = tmp_path / "afile"
    afile.write_text("x\n")
    out = afile / "sub" / f"out{command.suffix}"
    expect_nothing_written(cli, tmp_path, command(inputs, out), str(afile), "not a folder")


@pytest.mark.parametrize("command", CHEAP)
def test_out_is_in_a_folder_that_cannot_be_written(cli, inputs, tmp_path, command):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):  # root: permissions do not stop writes; /proc does
            if not Path("/proc/self").is_dir():
                pytest.skip("needs a folder this user cannot write in")
            locked = Path("/proc/self")
        out = locked / "new" / f"out{command.suffix}"
        expect_nothing_written(cli, tmp_path, command(inputs, out), str(locked), "cannot write")
    finally:
        (tmp_path / "locked").chmod(0o755)


@pytest.fixture
def small_disk():
    """Files can grow to ``limit`` bytes (``RLIMIT_FSIZE``; Python ignores SIGXFSZ, so a write
    past it fails with EFBIG, as a full disk fails with ENOSPC)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def limit(size: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))

    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


# Where each command's writes fail: 0 = its first write; a size = after its first small files
# (a manifest, a config), when the large ones come.
DISK_LIMITS = {"infer-dataset": 4096, "train": 8192, "preprocess": 0}


@pytest.mark.parametrize("command", CHEAP)
def test_the_disk_fills_up_while_writing(cli, inputs, tmp_path, small_disk, command):
    out = tmp_path / "results" / f"out{command.suffix}"
    argv = command(inputs, out)
    before = files_under(tmp_path)
    small_disk(DISK_LIMITS.get(command.name, 0))
    result = cli(*argv)
    small_disk(resource.RLIM_INFINITY)
    assert_user_error(result, command.name, str(out), "file too large")
    assert files_under(tmp_path) == before


def test_disk_full_is_reported_as_such_naming_the_output(cli, inputs, tmp_path, monkeypatch):
    original = Image.Image.save

    def save_on_a_full_disk(self, fp, *args, **kwargs):
        original(self, fp, *args, **kwargs)  # the bytes that fit ...
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # ... then the disk is full

    monkeypatch.setattr(Image.Image, "save", save_on_a_full_disk)
    out = tmp_path / "me.png"
    line = expect_nothing_written(
        cli, tmp_path, BY_NAME["tryon"](inputs, out), "disk full", str(out)
    )
    assert ".tmp" not in line  # the output's name, not the temporary file's


def test_an_existing_output_file_is_replaced_whole(cli, inputs, tmp_path):
    out = tmp_path / "me.png"
    out.write_bytes(b"an older result")
    assert cli(*BY_NAME["tryon"](inputs, out)).code == 0
    with Image.open(out) as image:
        assert image.size == Image.open(EXAMPLES / "person.jpg").size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["me.png"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_special_file_is_never_replaced(cli, inputs, tmp_path):
    # A named pipe stands for any non-regular file (as root, ``--json /dev/null`` used to replace
    # the device with a regular file); one made here keeps a regression harmless.
    fifo = tmp_path / "scores.json"
    os.mkfifo(fifo)
    line = expect_nothing_written(cli, tmp_path, BY_NAME["evaluate"](inputs, fifo), str(fifo))
    assert "not a regular file" in line
    assert fifo.is_fifo()


def test_evaluate_reports_its_errors_in_the_common_format(cli, inputs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("evaluate", empty, inputs["root"] / "gt", "--metrics", "ssim", "--device", "cpu")
    assert_user_error(result, "evaluate", str(empty))
