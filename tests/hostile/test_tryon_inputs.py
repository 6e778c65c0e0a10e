"""Hostile and careless inputs to ``idm-vton tryon``: images, masks, sizes and numbers.

Refusals follow the contract of ``conftest.py`` (exit 2, one line naming the problem, nothing left
on disk). Valid-but-odd inputs must give the right image: with paste-back every pixel outside the
mask is the photo's own, so "the right image" is checked as "exactly the pixels the mask should
cover may change, and they do".
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from idm_vton.errors import NonFiniteOutputError, UsageError
from idm_vton.images import load_image
from idm_vton.pipelines.loading import tiny_pipeline

from ..conftest import EXAMPLES
from ..helpers.images import huge_png_header
from .conftest import assert_user_error, files_under

PERSON, GARMENT = EXAMPLES / "person.jpg", EXAMPLES / "garment.jpg"
MASK, POSE = EXAMPLES / "mask.png", EXAMPLES / "densepose.png"
SIZE = (512, 512)  # the example photo's (W, H)
FAST = ("--model", "tiny", "--height", "64", "--width", "48", "--steps", "1", "--device", "cpu")


def strokes() -> np.ndarray:
    """Two painted strokes on the example photo: the area a user marks to re-generate."""
    marked = np.zeros(SIZE[::-1], bool)
    marked[200:330, 150:360] = True
    marked[120:150, 230:280] = True
    return marked


def tryon(cli, tmp_path, *extra: str, **inputs):
    """``idm-vton tryon`` on the examples, with ``inputs`` (person=..., mask=...) replaced."""
    files = {"person": PERSON, "garment": GARMENT, "mask": MASK, "pose": POSE, **inputs}
    out = inputs.pop("out", tmp_path / "out" / "result.png")
    argv = ["tryon", *FAST, "--out", out]
    for flag in ("person", "garment", "mask", "pose"):
        argv += [f"--{flag}", files[flag]]
    return cli(*argv, *extra), out


def float_tiff(path, values: np.ndarray):
    Image.fromarray(values.astype(np.float32), mode="F").save(path, format="TIFF")
    return path


def assert_changed_exactly_inside(out_path, marked: np.ndarray, photo=PERSON):
    """Pixels outside ``marked`` are the photo's, bit for bit; most inside it were re-rendered."""
    out = np.asarray(Image.open(out_path).convert("RGB"))
    original = np.asarray(load_image(photo, "person"))
    changed = (out != original).any(axis=-1)
    assert not changed[~marked].any(), f"{changed[~marked].mean():.1%} changed outside the mask"
    assert changed[marked].mean() > 0.5


# ------------------------------------------------------------------ refused: one line, no output


def nan_photo(tmp_path):
    values = np.full((64, 48), 0.5)
    values[3, 4] = np.nan
    return float_tiff(tmp_path / "nan.tiff", values)


def inf_photo(tmp_path):
    values = np.full((64, 48), 0.5)
    values[10, 10] = np.inf
    return float_tiff(tmp_path / "inf.tiff", values)


def nan_mask(tmp_path):
    values = np.where(strokes(), 1.0, 0.0)
    values[250, 250] = np.nan
    return float_tiff(tmp_path / "nan_mask.tiff", values)


def negative_photo(tmp_path):
    return float_tiff(tmp_path / "neg.tiff", np.linspace(-3, 1, 64 * 48).reshape(64, 48))


def text_file(tmp_path):
    (tmp_path / "photo.jpg").write_text("not an image at all")
    return tmp_path / "photo.jpg"


def truncated_png(tmp_path):
    data = (EXAMPLES / "densepose.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    return tmp_path / "cut.png"


def bomb(tmp_path):
    (tmp_path / "bomb.png").write_bytes(huge_png_header(60_000, 60_000))
    return tmp_path / "bomb.png"


def sliver(tmp_path):
    Image.new("RGB", (10, 400), (90, 90, 90)).save(tmp_path / "sliver.png")
    return tmp_path / "sliver.png"


def transparent_nothing_painted(tmp_path):
    Image.new("RGBA", SIZE, (255, 255, 255, 0)).save(tmp_path / "blank.png")
    return tmp_path / "blank.png"


@pytest.mark.parametrize(
    "flag, make, fragments",
    [
        ("person", nan_photo, ("nan.tiff", "non-finite")),
        ("person", inf_photo, ("inf.tiff", "non-finite")),
        ("mask", nan_mask, ("nan_mask.tiff", "non-finite")),
        ("pose", nan_photo, ("nan.tiff", "non-finite")),
        ("person", negative_photo, ("neg.tiff", "[0, 1] or [0, 255]")),
        ("person", text_file, ("photo.jpg", "not a readable image")),
        ("garment", truncated_png, ("cut.png", "not a readable image")),
        ("person", bomb, ("bomb.png", "limit", "decompression bomb")),
        ("garment", sliver, ("sliver.png", "aspect")),
        ("mask", transparent_nothing_painted, ("blank.png", "empty")),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_bad_images_are_refused(cli, tmp_path, flag, make, fragments):
    path = make(tmp_path)
    result, out = tryon(cli, tmp_path, **{flag: path})
    assert_user_error(result, "tryon", *fragments)
    assert not files_under(tmp_path / "out")


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (("--width", "0"), ("width", "got 0")),
        (("--height", "-64"), ("height", "got -64")),
        (("--width", "50"), ("width", "multiple of 8")),
        (("--height", "100000"), ("height", "4096")),
        (("--strength", "0.01"), ("strength", "0.01", "no denoising step")),
        (("--strength", "nan"), ("strength",)),
        (("--vae-tiling", "--vae-tile-size", "0"), ("--vae-tile-size", "got 0")),
        (("--vae-tiling", "--vae-tile-size", "12"), ("--vae-tile-size", "got 12")),
        (("--vae-tiling", "--vae-tile-size", "8"), ("--vae-tile-size", "at least 16")),
    ],
    ids=" ".join,
)
def test_bad_numbers_are_refused(cli, tmp_path, extra, fragments):
    result, out = tryon(cli, tmp_path, *extra)
    assert_user_error(result, "tryon", *fragments)
    assert not files_under(tmp_path / "out")


def test_out_over_an_input_is_refused_and_the_input_kept(cli, tmp_path):
    photo = tmp_path / "me.png"
    Image.open(PERSON).save(photo)
    before = photo.read_bytes()
    (tmp_path / "link.png").symlink_to(photo)
    (tmp_path / "sub").mkdir()
    for out, flag in [
        (photo, "--person"),
        (tmp_path / "sub" / ".." / "me.png", "--person"),
        (tmp_path / "link.png", "--person"),
    ]:
        result, _ = tryon(cli, tmp_path, person=photo, out=out)
        assert_user_error(result, "tryon", "--out", flag)
        assert photo.read_bytes() == before
    mask = tmp_path / "mask.png"
    Image.open(MASK).save(mask)
    result, _ = tryon(cli, tmp_path, mask=mask, out=mask)
    assert_user_error(result, "tryon", "--out", "--mask")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.png", "mask.png", "me.png", "sub"]


# ------------------------------------------------------------------ valid but odd: the right image


def white_strokes_on_transparent(marked, folder):
    layer = np.zeros((*marked.shape, 4), np.uint8)  # transparent black, as paint layers are
    layer[marked] = (255, 255, 255, 255)
    Image.fromarray(layer, mode="RGBA").save(folder / "strokes.png")
    return folder / "strokes.png"


def black_paint_on_la(marked, folder):  # painted in black: not inverted
    layer = np.zeros((*marked.shape, 2), np.uint8)
    layer[..., 0] = 255  # white where nothing is painted, but fully transparent there
    layer[marked] = (0, 255)  # black opaque paint
    Image.fromarray(layer, mode="LA").save(folder / "la.png")
    return folder / "la.png"


def paint_from_half_opacity(marked, folder):
    layer = np.zeros((*marked.shape, 4), np.uint8)
    layer[marked] = (200, 0, 0, 128)  # red at 50 % opacity: painted
    faint = np.zeros_like(marked)
    faint[20:60, 20:60] = True
    layer[faint] = (255, 255, 255, 127)  # just under half: not painted
    Image.fromarray(layer, mode="RGBA").save(folder / "half.png")
    return folder / "half.png"


def opaque_rgba_by_luminance(marked, folder):
    layer = np.zeros((*marked.shape, 4), np.uint8)
    layer[..., 3] = 255
    layer[marked, :3] = 255
    Image.fromarray(layer, mode="RGBA").save(folder / "opaque.png")
    return folder / "opaque.png"


def float_tiff_in_0_1(marked, folder):
    return float_tiff(folder / "mask.tiff", np.where(marked, 1.0, 0.0))


def float_tiff_in_0_255(marked, folder):
    return float_tiff(folder / "mask.tiff", np.where(marked, 255.0, 0.0))


@pytest.mark.parametrize(
    "make",
    [
        white_strokes_on_transparent,
        black_paint_on_la,
        paint_from_half_opacity,
        opaque_rgba_by_luminance,
        float_tiff_in_0_1,
        float_tiff_in_0_255,
    ],
    ids=lambda make: make.__name__,
)
def test_a_mask_regenerates_exactly_what_it_marks(cli, tmp_path, make):
    """Paint layers count their painted part (from half opacity, whatever the paint's colour),
    opaque masks their luminance, float TIFFs either range."""
    marked = strokes()
    result, out = tryon(cli, tmp_path, mask=make(marked, tmp_path))
    assert result.code == 0, result.stderr
    assert_changed_exactly_inside(out, marked)


def test_sixteen_bit_photo_is_scaled_not_clipped(cli, tmp_path):
    gray = np.asarray(Image.open(PERSON).convert("L")).astype(np.uint16) * 257
    Image.fromarray(gray).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    result, out = tryon(cli, tmp_path, person=tmp_path / "deep.png")
    assert result.code == 0, result.stderr
    marked = np.asarray(Image.open(MASK)) >= 128
    kept = np.asarray(Image.open(out))[~marked]
    expected = np.asarray(Image.open(PERSON).convert("L"))[~marked]
    assert np.array_equal(kept, np.repeat(expected[:, None], 3, axis=1))


def test_transparent_photo_is_composited_on_white(cli, tmp_path):
    rgba = np.asarray(Image.open(PERSON).convert("RGBA")).copy()
    rgba[:100, :, 3] = 0  # the top band transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "cutout.png")
    result, out = tryon(cli, tmp_path, person=tmp_path / "cutout.png")
    assert result.code == 0, result.stderr
    assert (np.asarray(Image.open(out))[:100] == 255).all()


# ------------------------------------------------------------------ non-finite results: what is wrong


def call(pipe, **kwargs):
    settings = dict(garment_description="", num_inference_steps=1, height=64, width=48)
    return pipe(
        person_image=str(PERSON),
        garment_image=str(GARMENT),
        mask_image=str(MASK),
        pose_image=str(POSE),
        generator=torch.Generator().manual_seed(0),
        **{**settings, **kwargs},
    )


def test_non_finite_result_in_fp32_names_the_cause_not_the_dtype():
    pipe = tiny_pipeline()
    with pytest.raises(NonFiniteOutputError) as caught:
        call(pipe, guidance_scale=1e38)
    message = str(caught.value)
    assert "guidance" in message and "bf16 or fp32" not in message
    with torch.no_grad():
        next(pipe.unet.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteOutputError) as caught:
        call(pipe)
    message = str(caught.value)
    assert "weights" in message and "TryonNet" in message and "bf16 or fp32" not in message


def test_non_finite_result_in_fp16_suggests_another_dtype():
    pipe = tiny_pipeline().to(dtype=torch.float16)
    with pytest.raises(NonFiniteOutputError, match="fp16.*--dtype bf16 or fp32"):
        call(pipe, guidance_scale=1e38)


def test_zero_width_is_not_the_default_in_the_library():
    with pytest.raises(UsageError, match="width"):
        call(tiny_pipeline(), width=0)


# ------------------------------------------------------------------ the same size rule elsewhere


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (("customize", "--width", "0"), ("--width", "got 0")),
        (("customize", "--height", "4104"), ("--height", "4096")),
        (("train", "--resolution", "5000", "768"), ("--resolution", "4096")),
    ],
    ids=" ".join,
)
def test_work_sizes_of_the_other_rendering_commands(cli, tmp_path, argv, fragments):
    command, *flags = argv
    if command == "customize":
        files = ["--person", PERSON, "--garment", GARMENT, "--mask", MASK, "--pose", POSE]
        out = tmp_path / "out" / "d.safetensors"
        extra = [*files, "--description", "shirt", "--out", out, "--device", "cpu"]
    else:
        extra = ["--data", tmp_path / "data", "--dataset", "vitonhd", "--output", tmp_path / "out"]
    result = cli(command, "--model", "tiny", *flags, *extra)
    assert_user_error(result, command, *fragments)
    assert not files_under(tmp_path / "out")


def test_zero_size_is_not_the_default_in_customize():
    from idm_vton.training.customize import customize

    with pytest.raises(UsageError, match="width"):
        customize(tiny_pipeline(), str(PERSON), str(GARMENT), str(MASK), str(POSE), "", width=0)
