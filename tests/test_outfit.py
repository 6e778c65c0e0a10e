"""Whole outfits in one call (``run_outfit``, ``idm-vton tryon --garment A --garment B``) and the
official demo's auto-crop (``auto_crop``, ``--auto-crop``), on the tiny model.

The preprocessing models are small random-weight files in the real formats, so the automatic
masks are arbitrary but real: computed by the same code from whatever image each pass sees.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from idm_vton.annotation import GarmentAnnotator, GarmentTags
from idm_vton.annotation.tags import AttributeTag
from idm_vton.commands.main import main
from idm_vton.data.tags import load_label_sets
from idm_vton.enums import GarmentCategory
from idm_vton.errors import ImageInputError, UsageError
from idm_vton.pipelines.garment_cache import GarmentCache
from idm_vton.pipelines.image_processor import centred_region
from idm_vton.pipelines.loading import tiny_pipeline
from idm_vton.pipelines.outfit import OutfitGarment, plan_outfit, run_outfit
from idm_vton.preprocess.preprocessor import Preprocessor

from .conftest import EXAMPLES, example_person
from .helpers.pipeline_inputs import H, W, random_photo
from .helpers.preprocess_models import make_preprocess_models

UPPER, LOWER, DRESS = (c.value for c in GarmentCategory)


def one_line(text: str) -> str:
    assert text.strip() and "\n" not in text.strip(), text
    return text.strip()


def trousers_photo() -> Image.Image:
    """A drawn pair of trousers on white (an in-shop lower-body garment photo made here)."""
    image = Image.new("RGB", (120, 160), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((30, 10, 90, 40), fill=(40, 50, 120))
    draw.polygon([(30, 40), (58, 40), (52, 150), (28, 150)], fill=(40, 50, 120))
    draw.polygon([(62, 40), (90, 40), (92, 150), (68, 150)], fill=(40, 50, 120))
    return image


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("outfit")
    example_person().crop((40, 30, 390, 430)).save(root / "person.png")  # 350 x 400, not 3:4
    trousers_photo().save(root / "trousers.png")
    Image.open(EXAMPLES / "garment.jpg").convert("RGB").save(root / "top.png")
    return {
        "root": root,
        "models": make_preprocess_models(root / "ckpt"),
        **{name: root / f"{name}.png" for name in ("person", "trousers", "top")},
    }


def tryon(files, out, *extra):
    return main(
        [
            "tryon", "--model", "tiny", "--steps", "2", "--height", "64", "--width", "48",
            "--device", "cpu", "--seed", "7", "--preprocess-models", str(files["models"]),
            "--out", str(out), *extra,
        ]
    )  # fmt: skip


# ------------------------------------------------------------------------------ the plan
def test_passes_run_lower_body_first_and_keep_the_given_indices():
    assert plan_outfit([UPPER, LOWER]) == [1, 0]
    assert plan_outfit([LOWER, UPPER]) == [0, 1]
    assert plan_outfit([DRESS]) == [0]
    assert plan_outfit([UPPER]) == [0]


@pytest.mark.parametrize(
    ("categories", "words"),
    [
        ([UPPER, UPPER], "2 upper-body garments in one outfit (a.png, b.png)"),
        ([LOWER, UPPER, LOWER], "2 lower-body garments in one outfit (a.png, c.png)"),
        ([DRESS, LOWER], "a dress is worn alone, got it with a lower-body garment"),
        ([UPPER, DRESS], "a dress is worn alone, got it with a upper-body garment (b.png, a.png)"),
        ([], "an outfit needs at least one garment"),
    ],
)
def test_combinations_that_are_no_outfit_are_refused_in_one_line(categories, words):
    with pytest.raises(UsageError) as err:
        plan_outfit(categories, ["a.png", "b.png", "c.png"][: len(categories)])
    assert words in one_line(str(err.value))


def test_items_have_the_category_of_their_mask_region():
    vitonhd, dresscode = load_label_sets("vitonhd"), load_label_sets("dresscode")
    expected = {
        "T-shirts": UPPER, "Cardigan": UPPER, "Tank Top": UPPER, "Vest Suit": UPPER,
        "Trumpet Skirt": LOWER, "Wrap Dress": DRESS, "Jump Suit": DRESS, "Halter Neck Dress": DRESS,
    }  # fmt: skip
    for item, category in expected.items():
        assert vitonhd.category_of(item) == dresscode.category_of(item) == category, item
    assert sum(vitonhd.category_of(i) == DRESS for i in vitonhd.labels["item"]) == 7
    for name in ("upper_body", "lower_body", "dresses"):  # DressCode's items: their category
        assert dresscode.category_of(name) == name


# ------------------------------------------------------------------------------ the library
@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def _boxes(image: Image.Image, category) -> tuple[Image.Image, Image.Image]:
    """A mask per category read from the image itself (its bright pixels in the category's band;
    the bands overlap at the waist, as real masks do), and a pose."""
    w, h = image.size
    gray = np.asarray(image.convert("L"))
    band = {UPPER: (0, 2 * h // 3), LOWER: (h // 3, h), DRESS: (h // 4, h)}[category]
    mask = np.zeros((h, w), bool)
    mask[band[0] : band[1]] = gray[band[0] : band[1]] > 100
    mask[band[0] + 2, w // 3] = True  # never empty
    return Image.fromarray(mask.astype(np.uint8) * 255), random_photo(9, image.size)


@pytest.mark.parametrize("garment_seed", [None, 11])
def test_outfit_equals_its_passes_chained_by_hand_and_keeps_what_no_mask_covers(pipe, garment_seed):
    photo, top, trousers = random_photo(0, (60, 72)), random_photo(1), random_photo(2)
    kwargs = dict(num_inference_steps=2, height=H, width=W)
    outfit = run_outfit(
        pipe,
        photo,
        [OutfitGarment(top, UPPER, "top"), OutfitGarment(trousers, LOWER, "trousers")],
        _boxes,
        seed=3,
        garment_seed=garment_seed,
        **kwargs,
    )
    assert [p.garment.category for p in outfit.passes] == [LOWER, UPPER]
    assert [p.description for p in outfit.passes] == ["trousers", "top"]
    # By hand: trousers on the photo, then the top on that result, each with a fresh seed 3
    # (and the garment's noise from a fresh garment_seed, when one is given).
    current = photo
    for garment, category, text in ((trousers, LOWER, "trousers"), (top, UPPER, "top")):
        mask, pose = _boxes(current, category)
        if garment_seed is not None:
            kwargs["garment_generator"] = torch.Generator().manual_seed(garment_seed)
        current = pipe(
            current,
            garment,
            mask,
            pose,
            text,
            generator=torch.Generator().manual_seed(3),
            **kwargs,
        ).images[0]
    assert np.array_equal(np.asarray(outfit.image), np.asarray(current))
    # Each pass's mask was computed from the image that pass saw, not from the photo.
    assert not np.array_equal(outfit.passes[1].changed, np.asarray(_boxes(photo, UPPER)[0]) > 0)
    union = outfit.changed
    assert 0 < union.mean() < 1
    before, after = np.asarray(photo), np.asarray(outfit.image)
    assert np.array_equal(after[~union], before[~union])
    assert (after[union] != before[union]).any(axis=-1).mean() > 0.5


def test_a_garment_rendered_before_comes_from_the_cache(pipe):
    photo, top, trousers = random_photo(0, (60, 72)), random_photo(1), random_photo(2)
    garments = [OutfitGarment(top, UPPER, "top"), OutfitGarment(trousers, LOWER, "trousers")]
    kwargs = dict(num_inference_steps=2, height=H, width=W, seed=5)
    cold = run_outfit(pipe, photo, garments, _boxes, **kwargs)
    cache = GarmentCache(max_bytes=1 << 30)
    run_outfit(pipe, random_photo(4, (60, 72)), garments[:1], _boxes, garment_cache=cache, **kwargs)
    assert (cache.hits, cache.misses, len(cache)) == (0, 1, 1)
    warm = run_outfit(pipe, photo, garments, _boxes, garment_cache=cache, **kwargs)
    assert (cache.hits, cache.misses, len(cache)) == (1, 2, 2)  # the top: a hit; trousers: new
    assert np.array_equal(np.asarray(warm.image), np.asarray(cold.image))


class _ItemReader(GarmentAnnotator):
    """An annotator that reads the item of a garment from its photo's top-left pixel (red:
    "Trumpet Skirt", else "T-shirts"): the real interface, a rule simple enough to know."""

    kind = "pixel"

    def describe_batch(self, images):
        tags = []
        for image in images:
            red = np.asarray(Image.fromarray(np.asarray(image)).convert("RGB"))[0, 0, 0] > 128
            item = "Trumpet Skirt" if red else "T-shirts"
            tags.append(
                GarmentTags(
                    {
                        "sleeveLength": AttributeTag("Short Sleeve", 0.9),
                        "neckLine": AttributeTag("Round Neck", 0.1),  # under min_score: left out
                        "item": AttributeTag(item, 0.8),
                    }
                )
            )
        return tags


def test_categories_not_given_are_read_by_the_annotator(pipe):
    skirt = Image.new("RGB", (W, H), (220, 10, 10))
    shirt = Image.new("RGB", (W, H), (10, 10, 220))
    reader = _ItemReader(load_label_sets("vitonhd"))
    garments = [OutfitGarment(shirt, None, None, "shirt"), OutfitGarment(skirt, None, "")]
    result = run_outfit(
        pipe,
        random_photo(0, (60, 72)),
        garments,
        _boxes,
        seed=1,
        garment_annotator=reader,
        num_inference_steps=1,
        height=H,
        width=W,
    )
    assert [(p.index, p.garment.category) for p in result.passes] == [(1, LOWER), (0, UPPER)]
    # The shirt's V is the reading's (neckline under the score left out); the skirt's was given.
    assert [p.description for p in result.passes] == ["", "Short Sleeve T-shirts"]
    with pytest.raises(UsageError) as err:  # two skirts read: refused, naming them
        run_outfit(pipe, skirt, [OutfitGarment(skirt), OutfitGarment(skirt)], _boxes, seed=1,
                   garment_annotator=reader)  # fmt: skip
    assert "2 lower-body garments in one outfit (garment 1, garment 2)" in one_line(str(err.value))
    with pytest.raises(UsageError, match="no annotator is there to read it"):
        run_outfit(pipe, skirt, [OutfitGarment(skirt)], _boxes, seed=1)


def test_run_outfit_refuses_what_it_sets_itself(pipe):
    garments = [OutfitGarment(random_photo(1), UPPER), OutfitGarment(random_photo(2), LOWER)]
    with pytest.raises(TypeError, match="generator, mask_image"):
        run_outfit(pipe, random_photo(0), garments, _boxes, seed=1, generator=1, mask_image=2)
    with pytest.raises(UsageError, match="paste-back cannot be turned off"):
        run_outfit(pipe, random_photo(0), garments, _boxes, seed=1, paste_back=False)


# ------------------------------------------------------------------------------ auto-crop
def test_the_demo_crop_box_is_the_largest_centred_3x4_box():
    def box(*args):
        region = centred_region(*args)
        return region.left, region.top, region.right, region.bottom

    assert box((200, 100), 1024, 768) == (62, 0, 137, 100)  # wide: full height, 75 wide
    assert box((90, 300), 1024, 768) == (0, 90, 90, 210)  # tall: full width, 120 high
    assert box((768, 1024), 1024, 768) == (0, 0, 768, 1024)  # 3:4: the whole photo
    assert box((101, 100), 64, 48) == (13, 0, 88, 100)


def test_auto_crop_renders_the_centred_box_and_pastes_all_of_it_back(pipe):
    photo = random_photo(0, (150, 100))  # wide: the box is 75 x 100 at x = 37
    mask = np.zeros((100, 150), np.uint8)
    mask[30:70, 50:100] = 255  # reaches past the box on the right: cut there
    args = dict(num_inference_steps=1, height=H, width=W, output_type="np")
    images = pipe(photo, random_photo(1), Image.fromarray(mask), random_photo(2, (150, 100)), "",
                  auto_crop=True, **args).images  # fmt: skip
    out, before = (np.asarray(images[0]) * 255).round().astype(np.uint8), np.asarray(photo)
    assert out.shape == before.shape
    box = np.zeros((100, 150), bool)
    box[:, 37:112] = True
    assert np.array_equal(out[~box], before[~box])
    assert (out[box] != before[box]).any(axis=-1).mean() > 0.9  # the whole box is the render
    # The default pastes inside the mask only: outside it, even in the box, the photo stays.
    default = pipe(photo, random_photo(1), Image.fromarray(mask), random_photo(2, (150, 100)), "",
                   **args).images[0]  # fmt: skip
    default = (default * 255).round().astype(np.uint8)
    assert np.array_equal(default[mask == 0], before[mask == 0])
    # A mask wholly outside the box: nothing to render there, said in one line.
    outside = np.zeros((100, 150), np.uint8)
    outside[40:60, 120:140] = 255
    with pytest.raises(ImageInputError) as err:
        pipe(photo, random_photo(1), Image.fromarray(outside), random_photo(2, (150, 100)), "",
             auto_crop=True, **args)  # fmt: skip
    assert "auto-crop box 37,0 to 112,100" in one_line(str(err.value))


def test_auto_crop_command_computes_the_mask_on_the_crop_as_the_demo(files, tmp_path):
    out = tmp_path / "crop.png"
    assert tryon(files, out, "--person", str(files["person"]), "--garment", str(files["top"]),
                 "--auto-crop") == 0  # fmt: skip
    photo = Image.open(files["person"]).convert("RGB")
    result, before = np.asarray(Image.open(out)), np.asarray(photo)
    assert result.shape == before.shape
    region = centred_region(photo.size, 64, 48)
    left, top, right, bottom = region.left, region.top, region.right, region.bottom
    assert (left, top, right, bottom) == (25, 0, 325, 400)
    inside = np.zeros(before.shape[:2], bool)
    inside[top:bottom, left:right] = True
    assert np.array_equal(result[~inside], before[~inside])
    # The same render as the library given the mask and pose of the crop, placed in the photo.
    pre = Preprocessor(files["models"])
    mask, pose = pre.tryon_inputs(photo, UPPER, box=(left, top, right, bottom))
    crop_mask, crop_pose = pre.tryon_inputs(photo.crop((left, top, right, bottom)), UPPER)
    assert np.array_equal(np.asarray(mask)[top:bottom, left:right], np.asarray(crop_mask))
    assert not np.asarray(mask)[~inside].any()

    expected = tiny_pipeline()(photo, Image.open(files["top"]), mask, pose, "", auto_crop=True,
        num_inference_steps=2, height=64, width=48, generator=torch.Generator().manual_seed(7),
    ).images[0]  # fmt: skip
    assert np.array_equal(result, np.asarray(expected))


# ------------------------------------------------------------------------------ the command
def test_outfit_command_equals_two_commands_chained_through_png(files, tmp_path, capsys):
    person, top, trousers = (str(files[n]) for n in ("person", "top", "trousers"))
    outfit = tmp_path / "outfit.png"
    assert tryon(files, outfit, "--person", person, "--garment", top, "--garment", trousers,
                 "--category", UPPER, "--category", LOWER, "--description", "t-shirts",
                 "--description", "jeans") == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert f"pass 1/2: lower_body (--garment {trousers})" in printed
    assert f"pass 2/2: upper_body (--garment {top})" in printed
    step = tmp_path / "step.png"
    assert tryon(files, step, "--person", person, "--garment", trousers, "--category", LOWER,
                 "--description", "jeans") == 0  # fmt: skip
    by_hand = tmp_path / "by_hand.png"
    assert tryon(files, by_hand, "--person", str(step), "--garment", top, "--category", UPPER,
                 "--description", "t-shirts") == 0  # fmt: skip
    result = np.asarray(Image.open(outfit))
    assert np.array_equal(result, np.asarray(Image.open(by_hand)))
    # Outside the union of the two passes' masks (each from the image it saw), the photo.
    pre = Preprocessor(files["models"])
    photo = Image.open(person).convert("RGB")
    lower = pre.mask(photo, LOWER)
    upper = pre.mask(Image.open(step).convert("RGB"), UPPER)
    assert not np.array_equal(upper, pre.mask(photo, UPPER))  # the second mask saw the trousers
    union, before = lower | upper, np.asarray(photo)
    assert 0 < union.mean() < 1
    assert np.array_equal(result[~union], before[~union])
    assert (result[lower & ~upper] != before[lower & ~upper]).any(axis=-1).mean() > 0.5


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--category", UPPER, "--category", UPPER], "2 upper-body garments in one outfit"),
        (["--category", DRESS, "--category", LOWER], "a dress is worn alone"),
        (["--category", UPPER], "--category: got 1 for 2 --garment"),
        ([], "--category: give one per --garment"),
        (["--category", UPPER, "--category", LOWER, "--mask", "MASK"], "--mask: an outfit"),
        (["--category", UPPER, "--category", LOWER, "--no-paste-back"], "--no-paste-back"),
        (["--category", UPPER, "--category", LOWER, "--description", "x"], "--description: got 1"),
        (["--category", UPPER, "--category", LOWER, "--annotator", "probe"], "--annotator only"),
    ],
)
def test_outfit_mistakes_are_one_line_before_any_model(files, tmp_path, capsys, extra, words):
    extra = [str(files["person"]) if x == "MASK" else x for x in extra]
    out = tmp_path / "out.png"
    code = tryon(files, out, "--person", str(files["person"]), "--garment", str(files["top"]),
                 "--garment", str(files["trousers"]), *extra)  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2 and words in one_line(captured.err)
    assert "note:" not in captured.out  # refused before the model was loaded
    assert not out.exists()


def test_outfit_categories_read_from_the_photos(files, tmp_path, capsys):
    """--description auto without --category: the tiny model's probe reads each garment; the
    printed category is its item label's, and the outfit runs in that category's order (or is
    refused, saying the categories were read)."""
    person, top, trousers = (str(files[n]) for n in ("person", "top", "trousers"))
    assert main(["describe", "--model", "tiny", "--json", "--garment", top, "--garment",
                 trousers]) == 0  # fmt: skip
    listed = json.loads(capsys.readouterr().out)
    items = [entry["tags"]["item"]["label"] for entry in listed]
    categories = [load_label_sets("vitonhd").category_of(item).value for item in items]
    assert [entry["category"] for entry in listed] == categories
    out = tmp_path / "read.png"
    code = tryon(files, out, "--person", person, "--garment", top, "--garment", trousers,
                 "--description", "auto", "--min-score", "0")  # fmt: skip
    captured = capsys.readouterr()
    for path, item, category in zip((top, trousers), items, categories, strict=True):
        assert (
            f"category of --garment {path} read from the garment photo (probe): {category} "
            f'(item "{item}"'
        ) in captured.out
    if len(set(categories)) == 2 and DRESS not in categories:
        assert code == 0 and out.exists()
    else:
        assert code == 2 and "(categories read from the photos: give --category)" in captured.err
