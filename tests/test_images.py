"""Input images: every kind of bad or unusual file, the work region, paste-back."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from idm_vton.errors import ImageInputError
from idm_vton.images import MAX_PIXELS, binary_mask, load_image, save_image_atomic
from idm_vton.pipelines.image_processor import Region, crop_region, mask_region, paste_back


def rgb(h=40, w=30, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_unreadable_files_are_refused(tmp_path):
    (tmp_path / "text.jpg").write_text("not an image")
    buffer = io.BytesIO()
    rgb(200, 200).save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    buffer = io.BytesIO()
    rgb(200, 200).save(buffer, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[:300])
    for name in ("text.jpg", "cut.png", "cut.jpg"):
        with pytest.raises(ImageInputError, match="not a readable image"):
            load_image(tmp_path / name, "person image")
    with pytest.raises(ImageInputError, match="file not found"):
        load_image(tmp_path / "missing.png", "person image")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA", "1"])
def test_unusual_modes_become_rgb(tmp_path, mode):
    base = rgb(20, 16)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257)
        assert image.mode == "I;16"
    else:
        image = base.convert(mode)
    suffix = ".jpg" if mode == "CMYK" else ".png"
    image.save(tmp_path / f"x{suffix}")
    out = load_image(tmp_path / f"x{suffix}", "person image")
    assert out.mode == "RGB" and out.size == (16, 20)
    if mode == "I;16":
        # 16-bit values are scaled to 8 bits, not clipped
        gray = np.asarray(base.convert("L")).astype(int)
        assert np.abs(np.asarray(out)[..., 0].astype(int) - gray).max() <= 1


def test_rgba_transparency_is_composited_on_white():
    image = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert np.asarray(load_image(image, "garment")).tolist()[0][0] == [255, 255, 255]


def test_exif_orientation_is_honoured(tmp_path):
    image = Image.new("RGB", (30, 20), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 10, 20))  # red left band
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    image.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=100)
    out = load_image(tmp_path / "rot.jpg", "person image")
    assert out.size == (20, 30)
    top = np.asarray(out)[:5].reshape(-1, 3).mean(axis=0)
    assert top[0] > 200 and top[1] < 60  # the red band is now on top


def test_pixel_limit(tmp_path, monkeypatch):
    import idm_vton.images as images

    rgb(100, 100).save(tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 5000)
    with pytest.raises(ImageInputError, match="decompression bomb"):
        images.load_image(tmp_path / "big.png", "person image")
    assert MAX_PIXELS > 20_000_000


def test_mask_binarised_resized_and_empty_refused():
    mask = Image.fromarray(np.array([[0, 127], [128, 255]], dtype=np.uint8))
    out = binary_mask(mask, (2, 2))
    assert out.tolist() == [[False, False], [True, True]]
    big = binary_mask(mask, (4, 4))  # nearest resize keeps hard edges
    assert big.tolist() == [[False, False, False, False]] * 2 + [[True] * 4] * 2
    with pytest.raises(ImageInputError, match="empty"):
        binary_mask(Image.new("L", (8, 8), 100), (8, 8))


def test_region_of_a_three_by_four_photo_is_the_whole_photo():
    mask = np.zeros((1024, 768), bool)
    mask[300:500, 200:400] = True
    assert mask_region(mask, 1024, 768) == Region(0, 0, 768, 1024)


@pytest.mark.parametrize("shape", [(900, 1600), (1200, 600), (1000, 1000), (333, 517)])
def test_region_has_the_work_aspect_and_holds_the_mask(shape):
    h, w = shape
    mask = np.zeros(shape, bool)
    mask[h // 4 : h // 2, w // 3 : w // 2] = True
    region = mask_region(mask, 1024, 768)
    rw, rh = region.size
    assert abs(rw / rh - 0.75) < 0.01
    ys, xs = np.nonzero(mask)
    assert region.left <= xs.min() and region.right > xs.max()
    assert region.top <= ys.min() and region.bottom > ys.max()
    assert region.left >= 0 and region.top >= 0 and region.right <= w and region.bottom <= h


def test_region_larger_than_the_photo_is_padded():
    mask = np.ones((100, 400), bool)  # a wide mask covering a wide photo
    region = mask_region(mask, 1024, 768, margin=0.0)
    assert region.size[0] >= 400 and region.top < 0
    photo = rgb(100, 400)
    crop = crop_region(photo, region)
    assert crop.size == region.size
    # the photo sits unchanged inside the padded crop
    inner = np.asarray(crop)[-region.top : -region.top + 100, -region.left : -region.left + 400]
    assert np.array_equal(inner, np.asarray(photo))


def test_paste_back_changes_only_masked_pixels():
    photo = rgb(90, 70, seed=1)
    mask = np.zeros((90, 70), bool)
    mask[20:60, 10:50] = True
    mask[0, 0] = True
    region = Region(-5, 10, 55, 90)
    render = Image.new("RGB", (30, 40), (255, 0, 255))
    out = np.asarray(paste_back(photo, render, region, mask))
    original = np.asarray(photo)
    inside_region = np.zeros_like(mask)
    inside_region[10:90, 0:55] = True
    assert np.array_equal(out[~mask], original[~mask])  # bit-identical outside the mask
    assert (out[mask & inside_region] == [255, 0, 255]).all()
    assert np.array_equal(out[0, 0], original[0, 0])  # masked but outside the rendered region


def test_atomic_save(tmp_path):
    path = save_image_atomic(rgb(), tmp_path / "sub" / "out.png")
    assert path.is_file() and Image.open(path).size == (30, 40)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["out.png"]
    with pytest.raises(ImageInputError, match="extension"):
        save_image_atomic(rgb(), tmp_path / "out.xyz")
    assert not (tmp_path / "out.xyz").exists()
