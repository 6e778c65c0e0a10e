"""Tests for the SCHP human-parser adapter with tiny random ONNX graphs in the real signature.

The SCHP exports take one NCHW float input named ``input.1`` (1 x 3 x 512 x 512 for ATR,
1 x 3 x 473 x 473 for LIP) and return three tensors: parsing logits, fused logits (used) and edge
logits, all at a quarter of the input resolution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from idm_vton.errors import PreprocessModelError
from idm_vton.loaders.weights import check_weight_file
from idm_vton.preprocess.parsing import (
    ATR_INPUT_SIZE,
    LIP_INPUT_SIZE,
    NECK_LABEL,
    HumanParser,
    fill_upper_clothes_holes,
    input_affine,
    logits_to_photo,
    merge_neck,
    person_center_scale,
)

from .conftest import EXAMPLES, example_person_3x4
from .helpers.preprocess_models import (
    make_constant_schp,
    make_random_parsers,
    quarter,
)


@pytest.fixture(scope="module")
def random_model_dir(tmp_path_factory) -> Path:
    return make_random_parsers(tmp_path_factory.mktemp("ckpt")) / "humanparsing"


@pytest.fixture(scope="module")
def parser(random_model_dir) -> HumanParser:
    return HumanParser(random_model_dir)


# --- end to end on real photos -------------------------------------------------------------


def test_parse_real_photo_full_size(tmp_path):
    """Planted logits come back at the photo places the SCHP geometry puts them, at full size."""
    ah, aw = quarter(ATR_INPUT_SIZE)
    atr = np.zeros((18, ah, aw), np.float32)
    atr[11, : ah // 2] = 5.0  # face over the top half of the network input
    atr[14, ah // 2 :, : aw // 2] = 5.0  # bottom half: one arm label left of the centre ...
    atr[15, ah // 2 :, aw // 2 :] = 5.0  # ... the other right of it
    lh, lw = quarter(LIP_INPUT_SIZE)
    lip = np.zeros((20, lh, lw), np.float32)
    lip[13, : lh // 2] = 5.0  # LIP agrees on the face, so no neck away from the boundary
    make_constant_schp(tmp_path / "parsing_atr.onnx", ATR_INPUT_SIZE, atr)
    make_constant_schp(tmp_path / "parsing_lip.onnx", LIP_INPUT_SIZE, lip)
    parser = HumanParser(tmp_path)
    photo = example_person_3x4()
    labels = parser(photo)
    assert labels.shape == (photo.height, photo.width) == (1024, 768)
    assert labels.dtype == np.uint8
    # The square input spans the photo's height (rows scale by 2) and is centred on its width,
    # so the input's centre column falls between photo columns 383 and 384.
    assert (labels[:490] == 11).all()
    assert (labels[540:, :384] == 14).all() and (labels[540:, 384:] == 15).all()
    np.testing.assert_array_equal(parser(np.asarray(photo)), labels)  # arrays too


def test_parse_accepts_arrays_and_demo_size(parser):
    photo = example_person_3x4().resize((384, 512))
    from_pil = parser(photo)
    from_array = parser(np.asarray(photo))
    assert from_pil.shape == (512, 384)
    np.testing.assert_array_equal(from_pil, from_array)
    # A different photo gives a different parse: the image really reaches the network.
    other = parser(Image.open(EXAMPLES / "garment.jpg").convert("RGB").resize((384, 512)))
    assert (other != from_pil).mean() > 0.05


def test_parse_rejects_bad_image(parser):
    with pytest.raises(ValueError, match="uint8"):
        parser(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        parser(np.zeros((8, 8), np.uint8))


def test_neck_from_lip_end_to_end(tmp_path):
    """ATR says face in the top half, LIP says face in the top quarter -> neck in between."""
    ah, aw = quarter(ATR_INPUT_SIZE)
    atr = np.zeros((18, ah, aw), np.float32)
    atr[11, : ah // 2] = 5.0  # face over the top half of the network input
    atr[0, ah // 2 :] = 5.0
    lh, lw = quarter(LIP_INPUT_SIZE)
    lip = np.zeros((20, lh, lw), np.float32)
    lip[13, : lh // 4] = 5.0  # face over the top quarter ...
    lip[13, 3 * lh // 4 :] = 5.0  # ... and the bottom quarter, where ATR says background
    lip[0, lh // 4 : 3 * lh // 4] = 5.0
    make_constant_schp(tmp_path / "parsing_atr.onnx", ATR_INPUT_SIZE, atr)
    make_constant_schp(tmp_path / "parsing_lip.onnx", LIP_INPUT_SIZE, lip)
    labels = HumanParser(tmp_path)(Image.new("RGB", (384, 512), (120, 30, 200)))

    # For a 384 x 512 photo the square input spans its height, so rows map ~1:1 (k = 1 / 0.92).
    assert set(np.unique(labels[:100])) == {11}  # face in both parsers
    assert set(np.unique(labels[150:230])) == {NECK_LABEL}  # ATR face, not LIP face
    assert set(np.unique(labels[290:])) == {0}  # LIP face alone never makes a neck


# --- pure steps ------------------------------------------------------------------------------


def test_merge_neck_rule():
    atr = np.array([[11, 11, 4, 4, 0]])
    lip = np.array([[13, 5, 13, 5, 13]])
    np.testing.assert_array_equal(merge_neck(atr, lip), [[11, NECK_LABEL, 4, 4, 0]])
    assert merge_neck(atr, lip).dtype == np.uint8
    with pytest.raises(ValueError, match="same shape"):
        merge_neck(atr, lip[:, :3])


def test_center_scale_and_affine_hand_values():
    center, scale = person_center_scale(384, 512, ATR_INPUT_SIZE)
    np.testing.assert_allclose(center, [191.5, 255.5])
    np.testing.assert_allclose(scale, [511, 511])
    # 511 photo pixels span 511 input pixels: pure translation centring the 384-wide photo.
    np.testing.assert_allclose(
        input_affine(center, scale, ATR_INPUT_SIZE), [[1, 0, 64], [0, 1, 0]], atol=1e-5
    )
    # Landscape photo: width decides the scale.
    center, scale = person_center_scale(601, 301, LIP_INPUT_SIZE)
    np.testing.assert_allclose(scale, [600, 600])
    fwd = input_affine(center, scale, LIP_INPUT_SIZE)
    k = 472 / 600
    np.testing.assert_allclose(fwd, [[k, 0, 236 - k * 300], [0, k, 236 - k * 150]], atol=1e-4)
    inv = input_affine(center, scale, LIP_INPUT_SIZE, inverse=True)
    np.testing.assert_allclose(
        np.vstack([inv, [0, 0, 1]]) @ np.vstack([fwd, [0, 0, 1]]), np.eye(3), atol=1e-5
    )


def test_logits_to_photo_maps_a_ramp_exactly():
    # Channel 0 = column index of the quarter-resolution grid. After align_corners upsampling it
    # is u * (w - 1) / 511 at input column u, and photo column x sits at input column x + 64.
    h, w = quarter(ATR_INPUT_SIZE)
    logits = np.zeros((2, h, w), np.float32)
    logits[0] = np.arange(w, dtype=np.float32)[None, :]
    logits[1] = 7.0
    center, scale = person_center_scale(384, 512, ATR_INPUT_SIZE)
    out = logits_to_photo(logits, center, scale, 384, 512, ATR_INPUT_SIZE)
    assert out.shape == (512, 384, 2)
    xs = np.arange(384)
    np.testing.assert_allclose(out[100, :, 0], (xs + 64) * (w - 1) / 511, atol=2e-3)
    np.testing.assert_allclose(out[:, :, 1], 7.0, atol=1e-5)


def test_hole_filling_small_holes_only():
    labels = np.zeros((200, 160), np.int64)
    labels[20:180, 30:130] = 4  # upper clothes
    labels[20:180, 10:30] = 14  # left arm, part of the closed region
    labels[40:46, 60:66] = 16  # small enclosed hole: parser noise
    labels[80:150, 60:120] = 7  # large enclosed hole (70 x 60 > 2000 px): kept
    labels[20:30, 130:140] = 2  # outside the region: untouched
    out = fill_upper_clothes_holes(labels)
    assert out.shape == labels.shape
    assert (out[40:46, 60:66] == 4).all()
    assert (out[80:150, 60:120] == 7).all()
    assert (out[20:180, 10:30] == 14).all()
    assert (out[20:30, 130:140] == 2).all()
    assert int((out != labels).sum()) == 36  # only the small hole changed
    # A threshold above the big hole's area fills it too.
    assert (fill_upper_clothes_holes(labels, keep_area=10_000)[80:150, 60:120] == 4).all()


# --- weight-file errors ----------------------------------------------------------------------


def test_missing_file_names_path_and_source(tmp_path, random_model_dir):
    with pytest.raises(PreprocessModelError) as err:
        HumanParser(tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "parsing_atr.onnx") in msg
    assert "yisol/IDM-VTON" in msg and "humanparsing/" in msg
    with pytest.raises(ValueError, match="model_dir"):
        HumanParser(atr_path=random_model_dir / "parsing_atr.onnx")


def test_placeholder_from_official_repo_is_explained(tmp_path, random_model_dir):
    (tmp_path / "parsing_atr.onnx").write_bytes(b"put parsing_atr.onnx here")  # 25 bytes
    with pytest.raises(PreprocessModelError, match="25-byte placeholder") as err:
        HumanParser(
            atr_path=tmp_path / "parsing_atr.onnx", lip_path=random_model_dir / "parsing_lip.onnx"
        )
    assert "yisol/IDM-VTON" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_git_lfs_pointer_is_explained(tmp_path):
    pointer = tmp_path / "parsing_lip.onnx"
    pointer.write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 266925015\n"
    )
    with pytest.raises(PreprocessModelError, match="git-lfs pointer"):
        check_weight_file(pointer, "LIP", "somewhere")


def test_truncated_and_invalid_files(tmp_path, random_model_dir):
    good = (random_model_dir / "parsing_atr.onnx").read_bytes()
    tiny = tmp_path / "tiny.onnx"
    tiny.write_bytes(good[:300])
    with pytest.raises(PreprocessModelError, match="truncated"):
        check_weight_file(tiny, "ATR", "somewhere", min_bytes=1024)
    cut = tmp_path / "parsing_atr.onnx"
    cut.write_bytes(good[: len(good) - 700])  # binary, big enough, but cut short
    with pytest.raises(PreprocessModelError, match="not a valid ONNX model"):
        HumanParser(atr_path=cut, lip_path=random_model_dir / "parsing_lip.onnx")
    with pytest.raises(PreprocessModelError, match="not a file"):
        check_weight_file(tmp_path, "ATR", "somewhere")


def test_swapped_models_are_detected(random_model_dir):
    with pytest.raises(PreprocessModelError, match="swapped"):
        HumanParser(
            atr_path=random_model_dir / "parsing_lip.onnx",
            lip_path=random_model_dir / "parsing_atr.onnx",
        )
