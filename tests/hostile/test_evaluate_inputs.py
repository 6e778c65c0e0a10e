"""Hostile and careless inputs to ``idm-vton evaluate``: images and sizes.

SSIM needs no weight files, so ``--metrics ssim`` reaches the image reading with nothing else
set up. ``evaluate --resolution 30000x30000`` under a memory limit is in ``test_memory_bounds``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ..helpers.images import huge_png_header
from .conftest import assert_user_error, files_under

SIZE = (40, 48)  # (W, H) of every image here


@pytest.fixture
def folders(tmp_path):
    """Two predictions and their ground truth, all readable."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    rng = np.random.default_rng(0)
    for stem in ("00001_00", "00002_00"):
        for folder in (pred, gt):
            pixels = rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{stem}.png")
    return pred, gt


def evaluate(cli, folders, *extra: str):
    pred, gt = folders
    return cli("evaluate", pred, gt, "--metrics", "ssim", "--no-progress", *extra)


def nan_tiff(path):
    values = np.full(SIZE[::-1], 0.5, np.float32)
    values[5, 5] = np.nan
    Image.fromarray(values, mode="F").save(path, format="TIFF")  # read by content, not name
    return path


def bomb(path):
    path.write_bytes(huge_png_header(70_000, 70_000))
    return path


def strip(path):
    Image.new("RGB", (2000, 100)).save(path)
    return path


def text(path):
    path.write_text("<html>not an image</html>")
    return path


@pytest.mark.parametrize(
    "make, fragments",
    [
        (bomb, ("00002_00.png", "limit", "decompression bomb")),
        (nan_tiff, ("00002_00.png", "non-finite")),
        (strip, ("00002_00.png", "aspect")),
        (text, ("00002_00.png", "not a readable image")),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_bad_prediction_images_are_refused(cli, folders, make, fragments):
    pred, _ = folders
    (pred / "00002_00.png").unlink()
    make(pred / "00002_00.png")
    result = evaluate(cli, folders, "--json", pred.parent / "out" / "scores.json")
    assert_user_error(result, "evaluate", *fragments)
    assert not files_under(pred.parent / "out")


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (("--resolution", "0x0"), ("resolution", "0x0")),
        (("--resolution=-48x40",), ("resolution", "-48x40")),
        (("--resolution", "48x5000"), ("resolution", "4096")),
        (("--resolution", "48"), ("resolution", "HEIGHTxWIDTH")),
        (("--resolution", "4096x4096", "--batch-size", "64"), ("batch", "--batch-size")),
        (("--batch-size", "0"), ("batch_size",)),
    ],
    ids=" ".join,
)
def test_bad_sizes_are_refused(cli, folders, extra, fragments):
    result = evaluate(cli, folders, *extra)
    assert_user_error(result, "evaluate", *fragments)


def test_sixteen_bit_ground_truth_is_scaled_like_its_eight_bit_copy(cli, folders, tmp_path):
    """A 16-bit PNG and its 8-bit copy are the same picture: SSIM against each is the same."""
    pred, gt = folders

    def score() -> float:
        result = evaluate(cli, folders, "--resolution", "48x40", "--json", tmp_path / "s.json")
        assert result.code == 0, result.stderr
        return json.loads((tmp_path / "s.json").read_text())["metrics"]["ssim"]

    eight_bit = score()
    for path in gt.glob("*.png"):
        gray = np.asarray(Image.open(path).convert("L"))
        Image.fromarray(gray).save(path)
    eight_bit_gray = score()
    for path in gt.glob("*.png"):
        deep = np.asarray(Image.open(path)).astype(np.uint16) * 257
        Image.fromarray(deep).save(path)
        assert Image.open(path).mode == "I;16"
    assert score() == pytest.approx(eight_bit_gray, abs=1e-6)
    assert eight_bit != pytest.approx(eight_bit_gray, abs=1e-3)  # the test can tell them apart
