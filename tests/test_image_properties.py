"""Property-based tests (hypothesis) of the input-image boundary and the work-region arithmetic.

- Any image (random size and aspect ratio, any of the modes files come in, random pixel bytes:
  NaN and inf included for float images), any byte string and any array either loads as the
  documented image or raises the package's own error; nothing else escapes.
- The work region around any mask in any photo holds the mask, has the requested aspect (to the
  pixel), lies inside the photo whenever it fits, and is no larger than it must be.
- The crop and the paste-back stay within the image-size limit for any region, and paste-back
  keeps every pixel outside the mask.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from PIL import Image

import idm_vton.pipelines.image_processor as images
from idm_vton.errors import IdmVtonError
from idm_vton.images import MAX_ASPECT, binary_mask, load_image, load_mask
from idm_vton.pipelines.image_processor import Region, crop_resize, mask_region, paste_back

# Hypothesis keeps a cache of constants; keep it out of the repository.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "idm-vton-hypothesis")
FAST = settings(
    max_examples=100,
    deadline=None,
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I", "I;16", "F"]
# Bytes per pixel of each mode's raw data ("1" is packed: handled apart).
BYTES = {"L": 1, "LA": 2, "P": 1, "RGB": 3, "RGBA": 4, "CMYK": 4, "I": 4, "I;16": 2, "F": 4}


def sizes(limit: int = 48):
    """(width, height) pairs, elongated ones included (past MAX_ASPECT too)."""
    return st.tuples(st.integers(1, limit), st.integers(1, limit))


@st.composite
def mode_images(draw) -> Image.Image:
    """An image of a random mode and size: random bytes, or values in a typical range."""
    mode = draw(st.sampled_from(MODES))
    width, height = draw(sizes())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    style = draw(st.sampled_from(["bytes", "typical"]))
    if mode == "1":
        return Image.frombytes("1", (width, height), rng.bytes(((width + 7) // 8) * height))
    if style == "typical" and mode == "F":
        return Image.fromarray(rng.random((height, width), dtype=np.float32), mode="F")
    if style == "typical" and mode == "I":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.int32), mode="I")
    image = Image.frombytes(mode, (width, height), rng.bytes(BYTES[mode] * width * height))
    if mode == "P" and draw(st.booleans()):
        image.info["transparency"] = int(rng.integers(0, 256))
    return image


def encoded(image: Image.Image) -> bytes:
    """The image as a file: PNG where the format holds the mode, else TIFF."""
    buffer = io.BytesIO()
    png = image.mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")
    image.save(buffer, format="PNG" if png else "TIFF")
    return buffer.getvalue()


def within_limits(size: tuple[int, int]) -> bool:
    return max(size) <= MAX_ASPECT * min(size)


def check_loaders(source, size: tuple[int, int] | None) -> None:
    """Every loader returns its documented image or raises IdmVtonError, nothing else."""
    for load, mode in ((load_image, "RGB"), (lambda s, w: load_image(s, w, "L"), "L")):
        try:
            out = load(source, "image")
        except IdmVtonError:
            continue
        assert out.mode == mode and (size is None or out.size == size)
    try:
        mask = load_mask(source, "mask")
    except IdmVtonError:
        return
    assert mask.mode == "L" and (size is None or mask.size == size)
    try:
        marked = binary_mask(source, mask.size)
    except IdmVtonError:
        return
    assert marked.dtype == bool and marked.shape == mask.size[::-1] and marked.any()


@FAST
@given(image=mode_images())
def test_any_image_of_any_mode_loads_or_is_refused(image, tmp_path):
    path = tmp_path / "image"
    path.write_bytes(encoded(image))
    size = image.size if within_limits(image.size) else None
    check_loaders(path, size)
    check_loaders(image, size)
    if not within_limits(image.size):
        with pytest.raises(IdmVtonError, match="aspect"):
            load_image(path, "image")


@FAST
@given(
    size=sizes(),
    seed=st.integers(0, 2**32 - 1),
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    encode=st.booleans(),
)
def test_non_finite_float_images_are_refused(size, seed, bad, encode, tmp_path):
    assume(within_limits(size))
    rng = np.random.default_rng(seed)
    values = rng.random(size[::-1], dtype=np.float32)
    values.flat[rng.integers(0, values.size)] = bad
    source = Image.fromarray(values, mode="F")
    if encode:
        source.save(tmp_path / "float.tiff", format="TIFF")
        source = tmp_path / "float.tiff"
    for load in (load_image, load_mask):
        with pytest.raises(IdmVtonError, match="non-finite"):
            load(source, "image")


@FAST
@given(data=st.binary(max_size=2048), prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"II*\0"]))
def test_any_byte_string_loads_or_is_refused(data, prefix, tmp_path):
    path = tmp_path / "upload.png"
    path.write_bytes(prefix + data)
    check_loaders(path, None)


@FAST
@given(image=mode_images(), cut=st.floats(0, 1), flips=st.lists(st.integers(0, 10**6), max_size=8))
def test_damaged_image_files_load_or_are_refused(image, cut, flips, tmp_path):
    data = bytearray(encoded(image))
    for position in flips:
        data[position % len(data)] ^= 0xFF
    path = tmp_path / "damaged"
    path.write_bytes(bytes(data[: max(1, int(len(data) * cut))]))
    check_loaders(path, None)


@FAST
@given(
    shape=st.lists(st.integers(0, 20), min_size=1, max_size=4),
    dtype=st.sampled_from(["uint8", "bool", "float32", "float64", "int16", "uint16"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_array_loads_or_is_refused(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    array = rng.normal(0.5, 2.0, shape)
    array[rng.random(shape) < 0.05] = np.nan
    check_loaders(np.nan_to_num(array).astype(dtype) if dtype != "float64" else array, None)


@FAST
@given(size=sizes(), seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(["RGBA", "LA"]))
def test_a_mask_with_transparency_is_its_painted_part(size, seed, mode):
    assume(within_limits(size))
    rng = np.random.default_rng(seed)
    width, height = size
    alpha = rng.integers(0, 256, (height, width), dtype=np.uint8)
    color = rng.integers(0, 256, (height, width, 3 if mode == "RGBA" else 1), dtype=np.uint8)
    layer = Image.fromarray(np.dstack([color, alpha]), mode=mode)
    loaded = np.asarray(load_mask(layer))
    if alpha.min() < 255:  # a paint layer: the painted part, whatever the colour
        assert np.array_equal(loaded >= 128, alpha >= 128)
    else:  # opaque: the luminance
        assert np.array_equal(loaded, np.asarray(layer.convert("L")))


# ------------------------------------------------------------------ the work region


@st.composite
def photo_and_mask(draw):
    """A photo size within the aspect limit and a non-empty rectangular mask (plus a few stray
    marked pixels) inside it."""
    width = draw(st.integers(1, 1500))
    height = draw(st.integers(max(1, -(-width // MAX_ASPECT)), min(1500, width * MAX_ASPECT)))
    left = draw(st.integers(0, width - 1))
    top = draw(st.integers(0, height - 1))
    right = draw(st.integers(left + 1, width))
    bottom = draw(st.integers(top + 1, height))
    mask = np.zeros((height, width), bool)
    mask[top:bottom, left:right] = True
    for x, y in draw(st.lists(st.tuples(st.integers(0, width - 1), st.integers(0, height - 1)))):
        mask[y, x] = True
    return mask


work_sides = st.integers(2, 512).map(lambda n: 8 * n)


@FAST
@given(mask=photo_and_mask(), height=work_sides, width=work_sides, margin=st.floats(0, 0.5))
def test_region_holds_the_mask_with_the_work_aspect(mask, height, width, margin):
    h, w = mask.shape
    target = width / height
    region = mask_region(mask, height, width, margin)
    rw, rh = region.size
    ys, xs = np.nonzero(mask)
    assert region.left <= xs.min() and region.right > xs.max()
    assert region.top <= ys.min() and region.bottom > ys.max()
    if abs(w / h - target) <= 0.01 * target:  # the photo has the work aspect: used whole
        assert region == Region(0, 0, w, h)
        return
    assert abs(rw - rh * target) <= 0.5 * (1 + target) + 1e-9  # to the pixel
    for start, length, limit in ((region.left, rw, w), (region.top, rh, h)):
        if length <= limit:  # fits: inside the photo
            assert 0 <= start and start + length <= limit
        else:  # larger: covers the photo along this side
            assert start <= 0 and start + length >= limit
    # No larger than the mask's box with its margin, or the largest work-aspect box in the photo.
    needed_h = (1 + 2 * margin) * max(np.ptp(ys) + 1, (np.ptp(xs) + 1) / target)
    assert rh <= max(needed_h, min(h, w / target)) + 1


@FAST
@given(
    photo_size=sizes(64),
    region=st.tuples(
        st.integers(-5000, 60) | st.integers(-8, 8),
        st.integers(-5000, 60) | st.integers(-8, 8),
        st.integers(1, 8000),
        st.integers(1, 8000),
    ),
    out_size=sizes(32),
    budget=st.sampled_from([200, 5_000, 10**9]),
)
def test_crop_resize_is_bounded_and_keeps_a_flat_photo_flat(
    photo_size, region, out_size, budget, monkeypatch
):
    """With the canvas budget (MAX_PIXELS) small, any region is built from a reduced photo; the
    result has the work size and, for a one-colour photo, is that colour."""
    monkeypatch.setattr(images, "MAX_PIXELS", budget)
    left, top, rw, rh = region
    left, top = min(left, photo_size[0] - 1), min(top, photo_size[1] - 1)
    rw, rh = max(rw, 1 - left), max(rh, 1 - top)  # overlaps the photo, as a mask's region does
    region = Region(left, top, left + rw, top + rh)
    photo = Image.new("RGB", photo_size, (10, 200, 77))
    seen = []
    real = images.crop_region
    monkeypatch.setattr(images, "crop_region", lambda i, r: seen.append(r) or real(i, r))
    out = crop_resize(photo, region, out_size)
    assert out.size == out_size
    assert (np.asarray(out) == (10, 200, 77)).all()
    inside = region.left >= 0 and region.top >= 0
    inside = inside and region.right <= photo_size[0] and region.bottom <= photo_size[1]
    for canvas in seen:  # the padded canvas: the (reduced) region, give or take a pixel a side
        width, height = canvas.size
        assert inside or width * height <= budget + 2 * (width + height) + 4


@FAST
@given(mask=photo_and_mask(), seed=st.integers(0, 2**32 - 1), work=st.sampled_from([(64, 48)]))
def test_paste_back_keeps_every_pixel_outside_the_mask(mask, seed, work):
    h, w = mask.shape
    assume(h * w <= 300_000)
    rng = np.random.default_rng(seed)
    photo = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    region = mask_region(mask, *work)
    render = Image.fromarray(rng.integers(0, 256, (work[0], work[1], 3), dtype=np.uint8))
    out = np.asarray(paste_back(photo, render, region, mask))
    assert out.shape == (h, w, 3)
    assert np.array_equal(out[~mask], np.asarray(photo)[~mask])
    # Inside, the render stretched over the region, as resizing the whole render would give.
    if region.size[0] * region.size[1] <= 4_000_000:
        whole = np.asarray(render.resize(region.size, Image.Resampling.LANCZOS)).astype(int)
        y0, y1 = max(region.top, 0), min(region.bottom, h)
        x0, x1 = max(region.left, 0), min(region.right, w)
        expected = whole[y0 - region.top : y1 - region.top, x0 - region.left : x1 - region.left]
        keep = mask[y0:y1, x0:x1]
        assert np.abs(out[y0:y1, x0:x1][keep] - expected[keep]).max() <= 1
