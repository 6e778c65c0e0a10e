"""Automatic mask / DensePose from a photo: Preprocessor, `idm-vton mask|preprocess`, `tryon --mask auto`.

The three models are small random-weight files in the real formats and the demo's ckpt/ layout.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from idm_vton.commands.main import main
from idm_vton.loaders.hub import MODEL_FILES
from idm_vton.loaders.weights import PreprocessModelError
from idm_vton.preprocess.preprocessor import Preprocessor, dataset_paths, mask_preview

from .conftest import EXAMPLES, example_person, example_person_3x4
from .helpers.preprocess_models import make_constant_schp, make_preprocess_models


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return make_preprocess_models(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def photo_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    example_person_3x4().save(root / "person_3x4.jpg", quality=95)
    odd = example_person().crop((40, 30, 390, 430))  # 350 x 400, not 3:4
    odd.save(root / "odd.jpg", quality=95)
    return [root / "person_3x4.jpg", root / "odd.jpg"]


def test_preprocessor_outputs_match_the_photo(models_dir, photo_paths):
    pre = Preprocessor(models_dir)
    for path in photo_paths:
        photo = Image.open(path).convert("RGB")
        result = pre.analyse(photo, "upper_body", "hd")
        assert result.mask.shape == (photo.height, photo.width) and result.mask.dtype == bool
        assert 0 < result.mask.mean() < 1
        assert result.parse.shape == (photo.height, photo.width) and result.parse.max() <= 18
        assert result.keypoints.shape == (18, 2)
        assert result.densepose.size == photo.size
        # the models run at 512 high with the photo's aspect (the demo's 384 x 512 for 3:4)
        w, h = Preprocessor.work_size(photo)
        assert h == 512 and abs(w / h - photo.width / photo.height) < 0.01
    assert Preprocessor.work_size(Image.new("RGB", (768, 1024))) == (384, 512)


def test_mask_equals_the_mask_function_on_the_work_size(models_dir, photo_paths):
    from idm_vton.preprocess.mask import agnostic_mask

    pre = Preprocessor(models_dir)
    photo = Image.open(photo_paths[0]).convert("RGB")
    parse, keypoints = pre.parse_and_pose(photo)
    small = agnostic_mask(parse, keypoints, "dresses", "dc")
    full = pre.mask(photo, "dresses", "dc")
    expected = np.asarray(
        Image.fromarray(small.astype(np.uint8) * 255).resize(photo.size, Image.Resampling.NEAREST)
    )
    assert np.array_equal(full, expected >= 128)


def test_missing_models_are_explained(tmp_path, models_dir):
    with pytest.raises(PreprocessModelError, match="not found"):
        Preprocessor(tmp_path / "nothing")
    (tmp_path / "ckpt" / "humanparsing").mkdir(parents=True)
    (tmp_path / "ckpt" / "humanparsing" / "parsing_atr.onnx").write_text("put the model here\n")
    pre = Preprocessor(tmp_path / "ckpt")
    with pytest.raises(PreprocessModelError):
        pre.parser  # noqa: B018


def test_mask_command_writes_mask_and_preview(models_dir, photo_paths, tmp_path, capsys):
    out = tmp_path / "mask.png"
    code = main(
        [
            "mask",
            "--person",
            str(photo_paths[1]),
            "--out",
            str(out),
            "--preprocess-models",
            str(models_dir),
        ]
    )
    assert code == 0
    mask = np.asarray(Image.open(out)) >= 128
    photo = Image.open(photo_paths[1]).convert("RGB")
    assert mask.shape == (photo.height, photo.width)
    preview = np.asarray(Image.open(tmp_path / "mask.preview.png"))
    assert np.array_equal(preview, np.asarray(mask_preview(photo, mask)))
    assert (preview[mask][:, 0].astype(int) >= np.asarray(photo)[mask][:, 0]).all()  # tinted red
    assert np.array_equal(preview[~mask], np.asarray(photo)[~mask])


def test_preprocess_command_writes_the_vitonhd_layout_and_resumes(
    models_dir, photo_paths, tmp_path, capsys
):
    from idm_vton.preprocess.openpose import load_openpose_json

    args = [
        "preprocess",
        "--input",
        *map(str, photo_paths),
        "--output",
        str(tmp_path / "ds"),
        "--preprocess-models",
        str(models_dir),
    ]
    assert main(args) == 0
    pre = Preprocessor(models_dir)
    for path in photo_paths:
        files = dataset_paths(tmp_path / "ds", path.stem)
        assert all(p.is_file() for p in files.values()), files
        # Each file holds what the preprocessor finds for the photo (the command's defaults:
        # upper body, VITON-HD mask), at the photo's size.
        photo = Image.open(path).convert("RGB")
        expected = pre.analyse(photo, "upper_body", "hd")
        assert np.array_equal(np.asarray(Image.open(files["mask"])) >= 128, expected.mask)
        assert np.array_equal(np.asarray(Image.open(files["parse"])), expected.parse)
        np.testing.assert_allclose(load_openpose_json(files["keypoints"]), expected.keypoints)
        densepose = np.asarray(Image.open(files["densepose"]).convert("RGB")).astype(int)
        assert densepose.shape == (photo.height, photo.width, 3)
        assert np.abs(densepose - np.asarray(expected.densepose)).mean() < 3  # JPEG
        assert Image.open(files["image"]).size == photo.size
    assert not [p for p in (tmp_path / "ds").rglob("*") if p.name.startswith(".")]  # no temp files
    capsys.readouterr()
    assert main(args) == 0
    assert "0 photos written, 2 already done" in capsys.readouterr().out


def _tryon(person, out, *extra, garment=EXAMPLES / "garment.jpg"):
    return main(
        [
            "tryon", "--model", "tiny", "--person", str(person), "--garment", str(garment),
            "--out", str(out), "--steps", "1", "--height", "64", "--width", "48",
            "--device", "cpu", *extra,
        ]
    )  # fmt: skip


def test_tryon_with_auto_mask_and_pose(models_dir, photo_paths, tmp_path):
    out = tmp_path / "out.png"
    code = _tryon(
        photo_paths[1], out, "--mask", "auto", "--pose", "auto", "--description", "t-shirts",
        "--preprocess-models", str(models_dir), garment=photo_paths[0],
    )  # fmt: skip
    assert code == 0
    photo = np.asarray(Image.open(photo_paths[1]).convert("RGB"))
    mask = Preprocessor(models_dir).mask(Image.fromarray(photo))
    result = np.asarray(Image.open(out))
    assert np.array_equal(result[~mask], photo[~mask])


def test_tryon_auto_without_models_is_one_line(photo_paths, tmp_path, capsys):
    code = _tryon(
        photo_paths[1], tmp_path / "o.png", "--mask", "auto", "--pose", str(photo_paths[0]),
        "--description", "t-shirts", "--preprocess-models", str(tmp_path / "none"),
        garment=photo_paths[0],
    )  # fmt: skip
    assert code == 2
    assert "preprocessing models folder not found" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


# --- two photos in: auto mask and pose by default ------------------------------------------


def test_two_photos_are_enough(models_dir, photo_paths, tmp_path, monkeypatch):
    """No --mask, --pose or --description: the mask and pose come from the preprocessing models."""
    monkeypatch.setenv("IDM_VTON_PREPROCESS_MODELS", str(models_dir))
    person = photo_paths[1]
    assert _tryon(person, tmp_path / "out.png") == 0
    photo = Image.open(person).convert("RGB")
    mask = Preprocessor(models_dir).mask(photo)  # upper_body, the default category
    assert 0 < mask.mean() < 1
    result, pixels = np.asarray(Image.open(tmp_path / "out.png")), np.asarray(photo)
    assert np.array_equal(result[~mask], pixels[~mask])
    assert (result[mask] != pixels[mask]).mean() > 0.5
    # --category picks another mask, and the render follows it.
    assert _tryon(person, tmp_path / "lower.png", "--category", "lower_body") == 0
    lower = Preprocessor(models_dir).mask(photo, "lower_body")
    assert not np.array_equal(lower, mask)
    result = np.asarray(Image.open(tmp_path / "lower.png"))
    assert np.array_equal(result[~lower], pixels[~lower])


def test_a_given_mask_and_pose_win(models_dir, photo_paths, tmp_path, monkeypatch):
    person = photo_paths[1]
    photo = np.asarray(Image.open(person).convert("RGB"))
    given = np.zeros(photo.shape[:2], np.uint8)
    given[300:380, 20:120] = 255  # a box the automatic mask would not produce
    Image.fromarray(given).save(tmp_path / "mask.png")
    # Both given: no preprocessing model is needed at all (this folder does not exist).
    monkeypatch.setenv("IDM_VTON_PREPROCESS_MODELS", str(tmp_path / "no-models"))
    pose = str(EXAMPLES / "densepose.png")
    assert (
        _tryon(person, tmp_path / "a.png", "--mask", str(tmp_path / "mask.png"), "--pose", pose)
        == 0
    )
    result = np.asarray(Image.open(tmp_path / "a.png"))
    assert np.array_equal(result[given == 0], photo[given == 0])
    # Only the mask given: the pose is automatic, the mask is still the user's.
    monkeypatch.setenv("IDM_VTON_PREPROCESS_MODELS", str(models_dir))
    assert _tryon(person, tmp_path / "b.png", "--mask", str(tmp_path / "mask.png")) == 0
    result = np.asarray(Image.open(tmp_path / "b.png"))
    assert np.array_equal(result[given == 0], photo[given == 0])


def test_no_person_found_suggests_a_mask(models_dir, photo_paths, tmp_path, capsys):
    from idm_vton.preprocess.parsing import ATR_INPUT_SIZE, LIP_INPUT_SIZE

    empty = tmp_path / "ckpt"
    (empty / "humanparsing").mkdir(parents=True)
    for name in ("openpose", "densepose"):
        (empty / MODEL_FILES[name]).parent.mkdir(parents=True, exist_ok=True)
        (empty / MODEL_FILES[name]).write_bytes((models_dir / MODEL_FILES[name]).read_bytes())
    # Parsers that see background everywhere, whatever the photo.
    for name, size, labels in (
        ("parsing_atr", ATR_INPUT_SIZE, 18),
        ("parsing_lip", LIP_INPUT_SIZE, 20),
    ):
        logits = np.zeros((labels, size[0] // 4, size[1] // 4), np.float32)
        logits[0] = 5.0
        make_constant_schp(empty / MODEL_FILES[name], size, logits)
    out = tmp_path / "out.png"
    code = _tryon(photo_paths[1], out, "--preprocess-models", str(empty))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "no person found" in err[0] and "--mask" in err[0]
    assert not out.exists()


def test_description_is_optional_and_used(models_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("IDM_VTON_PREPROCESS_MODELS", str(models_dir))
    person = EXAMPLES / "person.jpg"
    base = ["--mask", str(EXAMPLES / "mask.png"), "--pose", str(EXAMPLES / "densepose.png")]
    assert _tryon(person, tmp_path / "none.png", *base) == 0
    assert _tryon(person, tmp_path / "empty.png", *base, "--description", "") == 0
    assert _tryon(person, tmp_path / "text.png", *base, "--description", "striped t-shirt") == 0
    none, empty, text = (
        np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("none", "empty", "text")
    )
    assert np.array_equal(none, empty)  # no description = the demo's empty one
    assert not np.array_equal(none, text)  # the text reaches the model
