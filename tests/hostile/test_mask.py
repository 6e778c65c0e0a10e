"""Hostile and careless inputs to ``idm-vton mask``: the photo, and an --out that would replace it.

The preprocessing models are small random-weight files in the demo's layout
(``tests/helpers/preprocess_models.py``), given to every case, so a refusal is the input check's
and not a missing model's.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from idm_vton.preprocess.preprocessor import Preprocessor

from ..conftest import EXAMPLES
from ..helpers.images import huge_png_header
from ..helpers.preprocess_models import make_preprocess_models
from .conftest import assert_user_error, files_under


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return make_preprocess_models(tmp_path_factory.mktemp("ckpt"))


def mask(cli, models_dir, person, out):
    return cli("mask", "--person", person, "--out", out, "--preprocess-models", models_dir)


def nan_tiff(folder):
    values = np.full((120, 90), 0.25, np.float32)
    values[60, 45] = np.nan
    Image.fromarray(values, mode="F").save(folder / "photo.tiff", format="TIFF")
    return folder / "photo.tiff"


def bomb(folder):
    (folder / "photo.png").write_bytes(huge_png_header(80_000, 80_000))
    return folder / "photo.png"


def strip(folder):
    Image.new("RGB", (60, 1200), (200, 180, 160)).save(folder / "photo.png")
    return folder / "photo.png"


def empty_file(folder):
    (folder / "photo.jpg").write_bytes(b"")
    return folder / "photo.jpg"


@pytest.mark.parametrize(
    "make, fragments",
    [
        (nan_tiff, ("--person", "photo.tiff", "non-finite")),
        (bomb, ("--person", "photo.png", "decompression bomb")),
        (strip, ("--person", "photo.png", "aspect")),
        (empty_file, ("--person", "photo.jpg", "not a readable image")),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_bad_photos_are_refused(cli, models_dir, tmp_path, make, fragments):
    person = make(tmp_path)
    result = mask(cli, models_dir, person, tmp_path / "out" / "mask.png")
    assert_user_error(result, "mask", *fragments)
    assert not files_under(tmp_path / "out")


def test_out_or_its_preview_over_the_photo_is_refused(cli, models_dir, tmp_path):
    photo = tmp_path / "me.png"
    Image.open(EXAMPLES / "person.jpg").save(photo)
    before = photo.read_bytes()
    (tmp_path / "alias.png").symlink_to(photo)
    for out in (photo, tmp_path / "alias.png"):
        result = mask(cli, models_dir, photo, out)
        assert_user_error(result, "mask", "--out", "--person")
        assert photo.read_bytes() == before
    # --out me.png also writes its preview me.preview.png: a photo of that name is refused too.
    previewed = tmp_path / "me.preview.png"
    previewed.write_bytes(before)
    result = mask(cli, models_dir, previewed, tmp_path / "me.png")
    assert_user_error(result, "mask", "preview", "--person")
    assert previewed.read_bytes() == before and photo.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alias.png", "me.png", "me.preview.png"]


def test_a_cut_out_photo_is_masked_on_white(cli, models_dir, tmp_path):
    rgba = np.asarray(Image.open(EXAMPLES / "person.jpg").convert("RGBA")).copy()
    rgba[:, :128, 3] = 0  # the left quarter cut away
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "cutout.png")
    on_white = rgba[..., :3].copy()
    on_white[:, :128] = 255
    result = mask(cli, models_dir, tmp_path / "cutout.png", tmp_path / "mask.png")
    assert result.code == 0, result.stderr
    expected = Preprocessor(models_dir).mask(Image.fromarray(on_white), "upper_body", "hd")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "mask.png")) >= 128, expected)
