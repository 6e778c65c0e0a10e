"""Tests of the data layer: captions (paper Sec. 3.2), augmentations and datasets."""

from __future__ import annotations

import colorsys
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from idm_vton.data.augment import (
    AugmentConfig,
    AugmentParams,
    ColorJitterFactors,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    augment_person,
    augment_sample,
    color_jitter,
    sample_augment_params,
)
from idm_vton.data.captions import (
    GarmentCategory,
    describe_vitonhd,
    load_dresscode_captions,
    load_vitonhd_tags,
)
from idm_vton.data.datasets import (
    DressCodeDataset,
    VitonHDDataset,
    clip_preprocess,
    collate,
    load_rgb,
)
from idm_vton.enums import parse_dataset_category
from idm_vton.errors import DatasetError, IdmVtonError, UsageError

from .helpers.datasets import DC_IDS, FILE_H, FILE_W, make_dresscode, make_vitonhd

H, W = 32, 24  # dataset output size used by the synthetic datasets
SIZE = (H, W)
CLIP = 16


# ------------------------------------------------------------------------------------------
# Synthetic data on disk
# ------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------
# Captions
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_tags(shared_dir) -> dict[str, str]:
    return load_vitonhd_tags(shared_dir / "examples" / "vitonhd_test_tagged.json")


@pytest.mark.parametrize(
    ("file_name", "expected"),
    [
        # Hand-read from the JSON: the item tag comes first in the file but last in V.
        ("00067_00.jpg", "Short Sleeve Round Neck T-shirts "),
        ("00096_00.jpg", "Sleeveless V Neck Vest "),
        ("04469_00.jpg", "Short Sleeve V Neck T-shirts "),
        # sleeveLength and neckLine are null: only the item contributes.
        ("03524_00.jpg", "Trumpet Skirt "),
        # null sleeveLength / null neckLine.
        ("06567_00.jpg", "V Neck Y-Shirts "),
        ("05205_00.jpg", "Sleeveless Blouse "),
    ],
)
def test_real_vitonhd_tags_match_spec(real_tags, file_name, expected):
    assert real_tags[file_name] == expected


def test_real_vitonhd_tags_cover_file_and_missing_garment(real_tags):
    assert len(real_tags) == 1874
    # 09166_00.jpg is one of the example garments and has no entry: it is a "shirts".
    assert "09166_00.jpg" not in real_tags
    assert describe_vitonhd(None) == "shirts"
    assert all(v == "" or v.endswith(" ") for v in real_tags.values())


def test_describe_vitonhd_takes_first_non_null_tag_in_fixed_order():
    entry = {
        "tag_info": [
            {"tag_name": "item", "tag_category": None},
            {"tag_name": "item", "tag_category": "Blouse"},
            {"tag_name": "item", "tag_category": "Vest"},
            {"tag_name": "colors", "tag_category": "Navy"},
            {"tag_name": "neckLine", "tag_category": "V Neck"},
            {"tag_name": "sleeveLength", "tag_category": "Long Sleeve"},
        ]
    }
    assert describe_vitonhd(entry) == "Long Sleeve V Neck Blouse "
    assert describe_vitonhd({"tag_info": [{"tag_name": "item", "tag_category": None}]}) == ""


def test_dresscode_captions_keyed_with_and_without_extension(tmp_path):
    path = tmp_path / "dc_caption.txt"
    path.write_text("013563_1.jpg  short sleeve   t-shirt\n\n013564_1 jeans\nlonely_name\n")
    captions = load_dresscode_captions(path)
    assert captions["013563_1.jpg"] == "short sleeve t-shirt"
    assert captions["013563_1"] == "short sleeve t-shirt"
    assert captions["013564_1"] == "jeans"
    assert "lonely_name" not in captions


def test_category_parsing_explains_a_bad_value_in_one_line():
    assert GarmentCategory.parse("lower_body") is GarmentCategory.LOWER_BODY
    assert GarmentCategory.parse(GarmentCategory.DRESSES) is GarmentCategory.DRESSES
    for bad in ("shoes", "Upper_Body", "upper body", 3):  # values are exact, not normalised
        with pytest.raises(UsageError) as info:
            GarmentCategory.parse(bad)
        assert str(info.value) == (
            f"unknown garment category {bad!r}; expected one of: upper_body, lower_body, dresses"
        )
        assert isinstance(info.value, IdmVtonError)
    # The caller names the setting and the error class; DressCode also takes "all" (= every
    # category, None) and names its own setting.
    with pytest.raises(DatasetError, match=r"^unknown category of row 3 'hat'; expected one of: "):
        GarmentCategory.parse("hat", "category of row 3", DatasetError)
    assert parse_dataset_category("all") is None and parse_dataset_category(None) is None
    assert parse_dataset_category("dresses") is GarmentCategory.DRESSES
    with pytest.raises(UsageError, match=r"^unknown DressCode category 'All'; expected one of: "):
        parse_dataset_category("All")


# ------------------------------------------------------------------------------------------
# Colour jitter
# ------------------------------------------------------------------------------------------


def _random_image(seed: int, shape=(3, 6, 7), low=0.0, high=1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(shape, generator=generator)


def test_colour_ops_follow_torchvision_formulas():
    image = _random_image(0)
    gray = 0.2989 * image[0] + 0.587 * image[1] + 0.114 * image[2]
    torch.testing.assert_close(adjust_brightness(image, 1.4), (1.4 * image).clamp(0, 1))
    expected = (1.3 * image + (1 - 1.3) * gray.mean()).clamp(0, 1)
    torch.testing.assert_close(adjust_contrast(image, 1.3), expected)
    expected = (0.4 * image + 0.6 * gray).clamp(0, 1)
    torch.testing.assert_close(adjust_saturation(image, 0.4), expected)


def test_adjust_hue_matches_colorsys():
    image = _random_image(1)
    image[:, 0, 0] = 0.25  # a grey pixel has no hue to shift
    shifted = adjust_hue(image, -0.35)
    for y in range(image.shape[1]):
        for x in range(image.shape[2]):
            h, s, v = colorsys.rgb_to_hsv(*image[:, y, x].tolist())
            expected = colorsys.hsv_to_rgb((h - 0.35) % 1.0, s, v)
            assert shifted[:, y, x].tolist() == pytest.approx(expected, abs=1e-5)
    torch.testing.assert_close(shifted[:, 0, 0], torch.full((3,), 0.25))


def test_colour_jitter_keeps_dark_pixels():
    dark = _random_image(2, shape=(3, 16, 16), high=0.2)
    up = ColorJitterFactors(brightness=1.5, contrast=1.3, saturation=1.0, hue=0.0)
    ours = color_jitter(dark, up)
    assert ours.std() > 0.5 * dark.std()
    assert ours.min() >= 0 and ours.max() <= 1
    # The official bug: the same operations on the [-1, 1] tensor clamp every dark pixel to 0.
    buggy = color_jitter(dark * 2 - 1, up)
    assert buggy.std() == 0
    assert torch.all(buggy == 0)


def test_same_jitter_draw_on_person_and_garment():
    image = _random_image(3, shape=(3, H, W))
    mask = torch.zeros(1, H, W)
    pose = torch.zeros(3, H, W)
    config = AugmentConfig(flip_p=1.0, color_p=1.0, scale_p=0.0, shift_p=0.0)
    out = augment_sample(image, mask, pose, image.clone(), torch.Generator().manual_seed(7), config)
    assert out.params.color is not None and out.params.flip
    torch.testing.assert_close(out.person, out.garment, rtol=0, atol=0)
    assert not torch.allclose(out.person, image.flip(-1), atol=1e-3)  # something was jittered


# ------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------


def _square_sample(h=48, w=40, top=12, left=6, side=12):
    """Grey person with a red square, mask on the square, pose with a blue square."""
    person = torch.full((3, h, w), 0.3)
    person[:, top : top + side, left : left + side] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    mask = torch.zeros(1, h, w)
    mask[:, top : top + side, left : left + side] = 1.0
    pose = torch.zeros(3, h, w)
    pose[2, top : top + side, left : left + side] = 1.0
    return person, mask, pose


def _centroid(region: torch.Tensor) -> tuple[float, float]:
    ys, xs = torch.nonzero(region, as_tuple=True)
    return ys.float().mean().item(), xs.float().mean().item()


@pytest.mark.parametrize("seed", range(6))
def test_flip_and_affine_keep_person_mask_pose_aligned(seed):
    h, w = 48, 40
    person, mask, pose = _square_sample(h, w)
    config = AugmentConfig(flip_p=1.0, color_p=0.0, scale_p=1.0, shift_p=1.0, max_shift=0.15)
    params = sample_augment_params(torch.Generator().manual_seed(seed), config)
    assert params.flip and params.scale != 1.0 and params.shift != (0.0, 0.0)
    out_person, out_mask, out_pose = augment_person(person, mask, pose, params, config)

    red = (out_person[0] > 0.65) & (out_person[1] < 0.35)
    blue = out_pose[2] > 0.5
    region = out_mask[0] > 0.5
    assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
    # The three squares coincide ...
    for other in (red, blue):
        iou = (region & other).sum() / (region | other).sum()
        assert iou > 0.8
    # ... and sit where the drawn flip + scale + shift puts the original square.
    cy, cx = (12 + 5.5), (6 + 5.5)
    cx = (w - 1) - cx  # flip
    centre_y, centre_x = (h - 1) / 2, (w - 1) / 2
    expected_y = params.scale * (cy - centre_y) + centre_y + params.shift[1] * h
    expected_x = params.scale * (cx - centre_x) + centre_x + params.shift[0] * w
    got_y, got_x = _centroid(region)
    assert got_y == pytest.approx(expected_y, abs=1.0)
    assert got_x == pytest.approx(expected_x, abs=1.0)


def test_affine_fills_and_leaves_garment_alone():
    person, mask, pose = _square_sample()
    garment = _random_image(4, shape=(3, 48, 40))
    config = AugmentConfig(flip_p=0.0, color_p=0.0, scale_p=1.0, shift_p=1.0)
    out = augment_sample(person, mask, pose, garment, torch.Generator().manual_seed(0), config)
    assert out.params.moves
    torch.testing.assert_close(out.garment, garment, rtol=0, atol=0)
    # Shift away from one border: the uncovered strip shows the documented fills.
    params = AugmentParams(scale=1.0, shift=(0.2, 0.0))
    p, m, q = augment_person(person, torch.ones_like(mask), pose + 0.5, params, config)
    assert torch.allclose(p[:, :, :7], torch.tensor(config.person_fill))
    assert torch.all(m[:, :, :7] == config.mask_fill) and torch.all(m[:, :, 9:] == 1)
    assert torch.allclose(q[:, :, :7], torch.tensor(config.pose_fill))


def test_sample_augment_params_is_reproducible_and_in_range():
    config = AugmentConfig()
    first = [sample_augment_params(torch.Generator().manual_seed(s), config) for s in range(400)]
    again = [sample_augment_params(torch.Generator().manual_seed(s), config) for s in range(400)]
    assert first == again
    flips = sum(p.flip for p in first) / len(first)
    jitters = [p.color for p in first if p.color is not None]
    assert 0.4 < flips < 0.6 and 0.4 < len(jitters) / len(first) < 0.6
    assert all(0.5 <= c.brightness <= 1.5 and 0.7 <= c.contrast <= 1.3 for c in jitters)
    assert all(0.5 <= c.saturation <= 1.5 and -0.5 <= c.hue <= 0.5 for c in jitters)
    scales = [p.scale for p in first if p.scale != 1.0]
    assert scales and all(0.8 <= s <= 1.2 for s in scales)
    assert all(abs(v) <= 0.2 for p in first for v in p.shift)


def test_augment_config_validates():
    with pytest.raises(ValueError, match="hue"):
        AugmentConfig(hue=0.7)
    with pytest.raises(ValueError, match="flip_p"):
        AugmentConfig(flip_p=1.5)


# ------------------------------------------------------------------------------------------
# CLIP preprocessing and image loading
# ------------------------------------------------------------------------------------------


def test_clip_preprocess_matches_transformers_reference():
    # Reference values from transformers' CLIPImageProcessor (PIL backend, default settings)
    # on this deterministic 39x23 image (landscape; the resized width 379 leaves an odd crop margin).
    y, x, c = np.meshgrid(np.arange(23), np.arange(39), np.arange(3), indexing="ij")
    image = Image.fromarray(((x * 7 + y * 13 + c * 50) % 256).astype(np.uint8))
    out = clip_preprocess(image)
    assert out.shape == (3, 224, 224)
    sums = out.double().sum(dim=(1, 2)).tolist()
    assert sums == pytest.approx(
        [5806.3104780670255, 11469.957966322545, 17240.861574843642], abs=1e-2
    )
    assert out[0, 0, 0].item() == pytest.approx(-1.0623412132263184, abs=1e-5)
    assert out[1, 100, 57].item() == pytest.approx(-1.587011694908142, abs=1e-5)
    assert out[2, 223, 223].item() == pytest.approx(-0.21463386714458466, abs=1e-5)
    assert out[0, 111, 5].item() == pytest.approx(1.0982259511947632, abs=1e-5)


def test_load_rgb_honours_exif_orientation(tmp_path):
    image = Image.new("RGB", (30, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 20))  # blue band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be rotated 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    loaded = load_rgb(tmp_path / "rotated.jpg")
    assert loaded.mode == "RGB" and loaded.size == (20, 30)
    top = np.asarray(loaded)[2, 10]
    assert top[2] > 200 and top[0] < 60  # the left band is now on top


# ------------------------------------------------------------------------------------------
# VITON-HD dataset
# ------------------------------------------------------------------------------------------


def test_vitonhd_paired_and_unpaired(tmp_path):
    names = make_vitonhd(tmp_path)
    paired = VitonHDDataset(tmp_path, "test", "paired", size=SIZE, clip_size=CLIP)
    unpaired = VitonHDDataset(tmp_path, "test", "unpaired", size=SIZE, clip_size=CLIP)
    assert len(paired) == len(unpaired) == 3
    item = paired[0]
    assert item["name"] == "00000_00" and item["garment_name"] == "00000_00"
    assert unpaired[0]["garment_name"] == "00001_00" and unpaired[2]["garment_name"] == "00000_00"
    assert item["caption"] == "model is wearing Short Sleeve T-shirts "
    assert item["garment_caption"] == "a photo of Short Sleeve T-shirts "
    assert unpaired[0]["caption"] == "model is wearing Blouse "
    assert unpaired[1]["caption"] == "model is wearing shirts"  # garment 2 has no tags
    assert item["category"] == "upper_body"

    assert item["person"].shape == (3, H, W) and item["garment"].shape == (3, H, W)
    assert item["pose"].shape == (3, H, W) and item["mask"].shape == (1, H, W)
    assert item["garment_clip"].shape == (3, CLIP, CLIP)
    for key in ("person", "garment", "pose"):
        assert item[key].dtype == torch.float32
        assert 0 <= item[key].min() and item[key].max() <= 1
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
    # The garment really is the other file: garment i is the solid colour (200 - 30 i, ...).
    red = [unpaired[i]["garment"][0].mean().item() * 255 for i in range(3)]
    assert red == pytest.approx([170, 140, 200], abs=4)
    # The mask marks the white square of the person photo (scaled from 40x30 to 32x24).
    white = item["person"].min(dim=0).values > 0.9
    assert ((white & (item["mask"][0] > 0)).sum() / white.sum()) > 0.9
    assert names[0] == "00000_00.jpg"


def test_vitonhd_tags_json_at_root(tmp_path):
    make_vitonhd(tmp_path, tags_at_root=True)
    dataset = VitonHDDataset(tmp_path, "train", "paired", size=SIZE, clip_size=CLIP)
    assert dataset[1]["caption"] == "model is wearing Blouse "


def test_vitonhd_real_images_and_tags(tmp_path, shared_dir):
    examples = shared_dir / "examples"
    phase = tmp_path / "test"
    for folder in ("image", "cloth", "agnostic-mask", "image-densepose"):
        (phase / folder).mkdir(parents=True)
    people = ["00034_00.jpg", "00035_00.jpg"]
    garments = ["09166_00.jpg", "04469_00.jpg"]  # 09166 (640x640) has no tag entry
    for person, garment in zip(people, garments, strict=True):
        shutil.copy(examples / "person" / person, phase / "image" / person)
        shutil.copy(examples / "garment" / garment, phase / "cloth" / garment)
        mask = Image.new("L", (768, 1024), 0)
        mask.paste(255, (200, 250, 550, 700))
        mask.save(phase / "agnostic-mask" / person.replace(".jpg", "_mask.png"))
        Image.new("RGB", (768, 1024), (0, 0, 0)).save(phase / "image-densepose" / person)
    shutil.copy(examples / "vitonhd_test_tagged.json", phase / "vitonhd_test_tagged.json")
    pairs = "".join(f"{p} {g}\n" for p, g in zip(people, garments, strict=True))
    (tmp_path / "test_pairs.txt").write_text(pairs)

    dataset = VitonHDDataset(tmp_path, "test", "unpaired", size=(64, 48), clip_size=CLIP)
    assert dataset[0]["caption"] == "model is wearing shirts"
    assert dataset[1]["caption"] == "model is wearing Short Sleeve V Neck T-shirts "
    assert dataset[1]["garment_caption"] == "a photo of Short Sleeve V Neck T-shirts "
    assert dataset[0]["garment"].shape == (3, 64, 48)


def test_missing_file_error_names_file_and_row(tmp_path):
    make_vitonhd(tmp_path)
    (tmp_path / "test" / "image-densepose" / "00001_00.jpg").unlink()
    dataset = VitonHDDataset(tmp_path, "test", "paired", size=SIZE, clip_size=CLIP)
    with pytest.raises(DatasetError) as info:
        dataset[1]
    message = str(info.value)
    assert "00001_00.jpg" in message and "image-densepose" in message
    assert "row 1" in message and "test_pairs.txt line 2" in message
    assert info.value.row == 1 and info.value.path.name == "00001_00.jpg"
    assert isinstance(info.value, ValueError)


def test_truncated_image_error_and_skip_bad_samples(tmp_path, caplog):
    make_vitonhd(tmp_path)
    person = tmp_path / "test" / "image" / "00001_00.jpg"
    person.write_bytes(person.read_bytes()[:200])  # truncated JPEG
    dataset = VitonHDDataset(tmp_path, "test", "paired", size=SIZE, clip_size=CLIP)
    with pytest.raises(DatasetError, match=r"row 1 .*person file .*00001_00\.jpg"):
        dataset[1]

    skipping = VitonHDDataset(
        tmp_path, "test", "paired", size=SIZE, clip_size=CLIP, skip_bad_samples=True
    )
    with caplog.at_level(logging.WARNING, logger="idm_vton.data.datasets"):
        item = skipping[1]
    assert item["name"] == "00002_00"  # the next good row
    assert "00001_00.jpg" in caplog.text
    assert skipping[0]["name"] == "00000_00"


def test_skip_bad_samples_gives_up_when_nothing_loads(tmp_path):
    make_vitonhd(tmp_path, n=2)
    shutil.rmtree(tmp_path / "test" / "cloth")
    dataset = VitonHDDataset(tmp_path, "test", size=SIZE, clip_size=CLIP, skip_bad_samples=True)
    with pytest.raises(DatasetError, match="no loadable sample"):
        dataset[0]


def test_malformed_pairs_line_and_mismatched_mask(tmp_path):
    make_vitonhd(tmp_path)
    (tmp_path / "train_pairs.txt").write_text("00000_00.jpg 00000_00.jpg\n00001_00.jpg\n")
    with pytest.raises(DatasetError, match=r"train_pairs\.txt line 2"):
        VitonHDDataset(tmp_path, "train", size=SIZE)
    Image.new("L", (FILE_W * 2, FILE_H), 255).save(
        tmp_path / "test" / "agnostic-mask" / "00002_00_mask.png"
    )
    dataset = VitonHDDataset(tmp_path, "test", size=SIZE, clip_size=CLIP)
    with pytest.raises(DatasetError, match=r"row 2 .*mask file .*does not match"):
        dataset[2]
    with pytest.raises(ValueError, match="pairing"):
        VitonHDDataset(tmp_path, "test", "both")


def test_augmented_dataset_is_deterministic_per_seed_and_epoch(tmp_path):
    make_vitonhd(tmp_path)

    def load(seed, epoch=0):
        dataset = VitonHDDataset(
            tmp_path, "train", size=SIZE, augment=True, seed=seed, clip_size=CLIP
        )
        dataset.set_epoch(epoch)
        return [dataset[i] for i in range(len(dataset))]

    def stack(items):
        keys = ("person", "garment", "mask", "pose", "garment_clip")
        return torch.cat([item[k].flatten() for item in items for k in keys])

    first, again = load(seed=3), load(seed=3)
    torch.testing.assert_close(stack(first), stack(again), rtol=0, atol=0)
    # Each item's draw depends on (seed, epoch, index) only, not on the loading order (workers).
    backwards = VitonHDDataset(tmp_path, "train", size=SIZE, augment=True, seed=3, clip_size=CLIP)
    reordered = [backwards[i] for i in reversed(range(len(backwards)))][::-1]
    torch.testing.assert_close(stack(first), stack(reordered), rtol=0, atol=0)
    plain = VitonHDDataset(tmp_path, "train", size=SIZE, clip_size=CLIP)
    plain_items = [plain[i] for i in range(len(plain))]
    variants = [stack(load(seed=s)) for s in (4, 5)] + [stack(load(seed=3, epoch=1))]
    assert all(not torch.equal(stack(first), v) for v in variants)
    assert not torch.equal(stack(first), stack(plain_items))
    for item in first:
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        assert 0 <= item["person"].min() and item["person"].max() <= 1


def test_dataset_applies_flip_to_garment_clip_view(tmp_path):
    make_vitonhd(tmp_path)
    garment = np.zeros((FILE_H, FILE_W, 3), dtype=np.uint8)
    garment[:, :10] = (255, 0, 0)  # red band on the left, the rest black
    Image.fromarray(garment).save(tmp_path / "train" / "cloth" / "00000_00.jpg", quality=95)
    config = AugmentConfig(flip_p=1.0, color_p=0.0, scale_p=0.0, shift_p=0.0)
    flipped = VitonHDDataset(
        tmp_path, "train", size=SIZE, augment=True, augment_config=config, seed=0, clip_size=CLIP
    )[0]
    plain = VitonHDDataset(tmp_path, "train", size=SIZE, clip_size=CLIP)[0]
    torch.testing.assert_close(flipped["garment"], plain["garment"].flip(-1))
    torch.testing.assert_close(flipped["person"], plain["person"].flip(-1))
    # The CLIP view shows the red band on the right now.
    red = flipped["garment_clip"][0]
    assert red[:, -3:].mean() > red[:, :3].mean() + 1.0
    assert (flipped["garment_clip"] - plain["garment_clip"].flip(-1)).abs().max() < 0.1


def test_collate_batches_tensors_and_lists_strings(tmp_path):
    make_vitonhd(tmp_path)
    dataset = VitonHDDataset(tmp_path, "test", "unpaired", size=SIZE, clip_size=CLIP)
    batch = collate([dataset[0], dataset[1]])
    assert batch["person"].shape == (2, 3, H, W) and batch["mask"].shape == (2, 1, H, W)
    assert batch["garment_clip"].shape == (2, 3, CLIP, CLIP)
    assert batch["name"] == ["00000_00", "00001_00"]
    assert batch["caption"][0] == "model is wearing Blouse "


# ------------------------------------------------------------------------------------------
# DressCode dataset
# ------------------------------------------------------------------------------------------


def test_dresscode_all_concatenates_categories(tmp_path):
    make_dresscode(tmp_path)
    full = DressCodeDataset(tmp_path, "all", "test", "paired", size=SIZE, clip_size=CLIP)
    parts = [
        DressCodeDataset(tmp_path, cat, "test", "paired", size=SIZE, clip_size=CLIP)
        for cat in ("upper_body", "lower_body", "dresses")
    ]
    assert len(full) == sum(len(p) for p in parts) == 5
    got = [(full[i]["name"], full[i]["category"]) for i in range(len(full))]
    expected = [(f"{k}_0", cat) for cat, ids in DC_IDS.items() for k in ids]
    assert got == expected
    assert [p[0]["name"] for p in parts] == ["000001_0", "010001_0", "020001_0"]


def test_dresscode_pairing_and_captions(tmp_path):
    make_dresscode(tmp_path)
    paired = DressCodeDataset(tmp_path, "dresses", "test", "paired", size=SIZE, clip_size=CLIP)
    unpaired = DressCodeDataset(tmp_path, "dresses", "test", "unpaired", size=SIZE, clip_size=CLIP)
    assert [paired[i]["garment_name"] for i in range(2)] == ["020001_1", "020002_1"]
    assert [unpaired[i]["garment_name"] for i in range(2)] == ["020002_1", "020001_1"]
    assert paired[0]["caption"] == "model is wearing long sleeve dresses caption"
    assert paired[0]["garment_caption"] == "a photo of long sleeve dresses caption"
    assert paired[1]["caption"] == "model is wearing dresses"  # no caption: category name
    item = paired[0]
    assert item["person"].shape == (3, H, W) and item["mask"].shape == (1, H, W)
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert item["category"] == "dresses"
    with pytest.raises(ValueError, match="unpaired"):
        DressCodeDataset(tmp_path, "dresses", "train", "unpaired")
    with pytest.raises(ValueError, match="garment category"):
        DressCodeDataset(tmp_path, "shoes")


def test_dresscode_mask_folder_and_missing_mask(tmp_path):
    make_dresscode(tmp_path)
    folder = tmp_path / "lower_body"
    (folder / "agnostic_masks").rename(folder / "masks")
    dataset = DressCodeDataset(tmp_path, "lower_body", "train", size=SIZE, clip_size=CLIP)
    assert dataset[0]["mask"].sum() > 0
    custom = DressCodeDataset(
        tmp_path, "lower_body", "train", size=SIZE, clip_size=CLIP, mask_dir="masks"
    )
    assert torch.equal(custom[0]["mask"], dataset[0]["mask"])
    (folder / "masks" / "010001_0.png").unlink()
    with pytest.raises(DatasetError, match=r"row 0 .*train_pairs\.txt line 1.*mask file"):
        dataset[0]
