"""Tests for the automatic inpaint mask (docs/preprocessing.md): reference cases plus synthetic bodies."""

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from idm_vton.preprocess import mask as mask_module
from idm_vton.preprocess.mask import GarmentCategory, agnostic_mask

from .conftest import GOLDEN_MASK

IOU_THRESHOLD = 0.995

# Synthetic body at 384 x 512, arms hanging with vertical forearms at x = 60 and x = 324.
RIGHT_FOREARM_X = 60
FOREARM_ROW = 260  # between elbow (y 210) and wrist (y 300), away from other labels
# (row, col): parsed arm pixel past the extended wrist (y 318) yet inside the dilated sleeve.
HAND_POINT = (322, 60)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _body(scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A front-facing person label map (ATR + neck) and its OpenPose keypoints."""
    height, width = round(512 * scale), round(384 * scale)
    parse = np.zeros((height, width), np.uint8)

    def s(*values):
        return [round(v * scale) for v in values]

    def rect(label, x0, y0, x1, y1):
        x0, y0, x1, y1 = s(x0, y0, x1, y1)
        parse[y0:y1, x0:x1] = label

    def polyline(label, points, thickness):
        pts = np.array([s(*p) for p in points], np.int32)
        cv2.polylines(parse, [pts], False, int(label), thickness=round(thickness * scale))

    cv2.circle(parse, tuple(s(192, 45)), round(32 * scale), 2, -1)  # hair
    cv2.circle(parse, tuple(s(192, 70)), round(28 * scale), 11, -1)  # face
    rect(18, 180, 95, 204, 118)  # neck
    rect(4, 130, 115, 254, 262)  # upper clothes
    rect(6, 140, 255, 244, 440)  # pants
    rect(12, 140, 440, 190, 478)  # left leg (image left)
    rect(13, 194, 440, 244, 478)  # right leg
    rect(9, 140, 478, 190, 495)  # shoes
    rect(10, 194, 478, 244, 495)
    # Arms: person's right (15) on the image left, left (14) on the image right; they reach
    # below the wrist so the parsed arm has a hand past the drawn sleeve.
    polyline(15, [(130, 125), (60, 210), (60, 340)], 24)
    polyline(14, [(254, 125), (324, 210), (324, 340)], 24)

    keypoints = np.zeros((18, 2))
    points = {
        0: (192, 70),
        1: (192, 110),
        2: (130, 125),
        3: (60, 210),
        4: (60, 300),
        5: (254, 125),
        6: (324, 210),
        7: (324, 300),
        8: (165, 260),
        9: (165, 360),
        10: (165, 470),
        11: (219, 260),
        12: (219, 360),
        13: (219, 470),
        14: (182, 62),
        15: (202, 62),
        16: (170, 68),
        17: (214, 68),
    }
    for index, (x, y) in points.items():
        keypoints[index] = (x * scale, y * scale)
    return parse, keypoints


def _first_run_length(row: np.ndarray) -> int:
    """Length of the first run of True values in a 1-D bool array."""
    start = int(np.argmax(row))
    assert row[start], "row holds no masked pixel"
    rest = row[start:]
    return int(np.argmin(rest)) if not rest.all() else rest.size


# --- reference cases ---------------------------------------------------------------------------


def test_reference_cases():
    folder = GOLDEN_MASK
    cases = json.loads((folder / "cases.json").read_text())["cases"]
    assert {c["category"] for c in cases} == {"upper_body", "lower_body", "dresses"}
    ious = {}
    for case in cases:
        parse = np.array(Image.open(folder / "parse" / f"{case['name']}.png"))
        expected = np.array(Image.open(folder / "mask" / f"{case['name']}.png")) > 127
        result = agnostic_mask(
            parse, np.array(case["keypoints"]), case["category"], case["model_type"]
        )
        assert result.shape == expected.shape and result.dtype == bool
        ious[case["name"]] = _iou(result, expected)
    failing = {name: round(iou, 5) for name, iou in ious.items() if iou < IOU_THRESHOLD}
    assert not failing, f"IoU below {IOU_THRESHOLD}: {failing}"
    # The masks are pixel-exact except where cases.json rounds a keypoint to 3 decimals across
    # an integer (case 020 by 80 pixels), so on average the agreement is much tighter.
    assert np.mean(list(ious.values())) >= 0.9995


# --- categories --------------------------------------------------------------------------------


def _core(parse: np.ndarray, labels: tuple[int, ...], margin: int = 6) -> np.ndarray:
    """Pixels of ``labels`` at least ``margin`` px inside their region.

    The reference fills the final mask from a simplified (Teh-Chin) contour, which may take or
    give a few pixels where regions meet, so region checks look at the inside of the labels.
    """
    region = np.isin(parse, labels).astype(np.uint8)
    core = cv2.erode(region, np.ones((2 * margin + 1,) * 2, np.uint8)) > 0
    assert core.any()
    return core


def test_upper_body_covers_torso_and_arms_only():
    parse, keypoints = _body()
    result = agnostic_mask(parse, keypoints, "upper_body")
    assert result[_core(parse, (4,))].all()  # upper clothes
    assert result[FOREARM_ROW, RIGHT_FOREARM_X] and result[FOREARM_ROW, 324]  # sleeves
    assert not result[_core(parse, (6,))].any()  # pants kept
    for kept in (11, 9, 10, 12, 13):  # face, shoes, legs
        assert not result[_core(parse, (kept,), margin=2)].any(), kept


def test_lower_body_covers_pants_and_legs_only():
    parse, keypoints = _body()
    result = agnostic_mask(parse, keypoints, "lower_body")
    assert result[_core(parse, (6, 12, 13))].all()
    assert not result[FOREARM_ROW, RIGHT_FOREARM_X]
    for kept in (4, 14, 15, 11, 9, 10):
        assert not result[_core(parse, (kept,), margin=4)].any(), kept


def test_dresses_cover_upper_and_lower_clothes():
    parse, keypoints = _body()
    result = agnostic_mask(parse, keypoints, "dresses")
    assert result[_core(parse, (4, 6))].all()
    assert result[FOREARM_ROW, RIGHT_FOREARM_X]
    for kept in (11, 9, 10):
        assert not result[_core(parse, (kept,), margin=4)].any(), kept
    upper = agnostic_mask(parse, keypoints, "upper_body")
    assert result.sum() > upper.sum()


def test_neck_is_masked_with_upper_garments_only():
    parse, keypoints = _body()
    neck_above_collar = (slice(96, 104), slice(184, 200))  # beyond the shirt's dilation
    assert (parse[neck_above_collar] == 18).all()
    assert agnostic_mask(parse, keypoints, "upper_body")[neck_above_collar].all()
    assert agnostic_mask(parse, keypoints, "dresses")[neck_above_collar].all()
    assert not agnostic_mask(parse, keypoints, "lower_body")[neck_above_collar].any()


def test_face_next_to_the_collar_is_kept():
    parse, keypoints = _body()
    parse[95:115, 170:214] = 11  # chin resting on the collar, inside the shirt's dilation
    result = agnostic_mask(parse, keypoints, "upper_body")
    assert not result[_core(parse, (11,), margin=2)].any()
    assert result[_core(parse, (4,))].all()


def test_enum_and_string_categories_agree():
    parse, keypoints = _body()
    for category in GarmentCategory:
        np.testing.assert_array_equal(
            agnostic_mask(parse, keypoints, category),
            agnostic_mask(parse, keypoints, category.value),
        )


# --- arms, model types and sizes ---------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_arm_band_width_follows_model_type_and_height(scale):
    parse, keypoints = _body(scale)
    row = round(FOREARM_ROW * scale)
    widths = {}
    for model_type, per_512 in (("hd", 60), ("dc", 45)):
        result = agnostic_mask(parse, keypoints, "upper_body", model_type)
        # The drawn line (60 or 45 px per 512 px of height) grows by the 8 px arm dilation.
        widths[model_type] = _first_run_length(result[row])
        expected = int(per_512 * parse.shape[0] / 512) + 2 * 8
        assert abs(widths[model_type] - expected) <= 2, (model_type, widths[model_type], expected)
    assert widths["dc"] < widths["hd"]


def test_dc_mask_is_inside_hd_mask():
    parse, keypoints = _body()
    hd = agnostic_mask(parse, keypoints, "upper_body", "hd")
    dc = agnostic_mask(parse, keypoints, "upper_body", "dc")
    assert dc.sum() < hd.sum()
    assert (dc & ~hd).sum() == 0


def test_hands_past_the_sleeve_are_kept():
    parse, keypoints = _body()
    assert parse[HAND_POINT] == 15
    result = agnostic_mask(parse, keypoints, "upper_body")
    assert not result[HAND_POINT]
    assert result[FOREARM_ROW, RIGHT_FOREARM_X]


def test_missing_wrist_uses_the_parsed_arm():
    parse, keypoints = _body()
    keypoints[4] = 0  # right wrist not detected
    result = agnostic_mask(parse, keypoints, "upper_body")
    # The whole parsed right arm, hand included, is re-generated; no drawn sleeve around it.
    assert result[parse == 15].all()
    assert result[HAND_POINT]
    band = _first_run_length(result[FOREARM_ROW])
    assert band == pytest.approx(24 + 2 * 8, abs=3)
    # The other arm is still drawn as a sleeve and its hand kept.
    assert not result[HAND_POINT[0], 384 - HAND_POINT[1]]


def test_both_wrists_missing_does_not_crash():
    parse, keypoints = _body()
    keypoints[[4, 7]] = 0
    result = agnostic_mask(parse, keypoints, "dresses", "dc")
    assert result[np.isin(parse, (4, 6, 14, 15))].all()


@pytest.mark.parametrize("missing", [2, 3])  # right shoulder, right elbow
def test_missing_shoulder_or_elbow_falls_back_like_a_missing_wrist(missing):
    parse, keypoints = _body()
    without_wrist = keypoints.copy()
    without_wrist[4] = 0
    keypoints[missing] = 0
    result = agnostic_mask(parse, keypoints, "upper_body")
    np.testing.assert_array_equal(result, agnostic_mask(parse, without_wrist, "upper_body"))
    assert not result[:40, :40].any()  # nothing drawn towards the (0, 0) placeholder


def test_arm_extended_past_the_image_edge():
    parse, keypoints = _body()
    keypoints[3] = (20, 210)
    keypoints[4] = (-10, 300)  # extended wrist lands left of the image
    result = agnostic_mask(parse, keypoints, "upper_body")
    assert result[250:300, 1].all()
    assert not result[:, 0].any()


# --- borders, holes, largest region -------------------------------------------------------------


def test_labels_touching_the_borders():
    parse = np.zeros((512, 384), np.uint8)
    parse[:60, 150:234] = 11  # face cut by the top edge
    parse[60:80, 180:204] = 18
    parse[80:, :] = 4  # upper clothes filling the frame to the left, right and bottom edges
    keypoints = np.zeros((18, 2))
    keypoints[[2, 5]] = [(60, 100), (324, 100)]  # shoulders only: arms fall back to the parse
    result = agnostic_mask(parse, keypoints, "upper_body")
    # As in the reference, the outermost pixel ring is never masked ...
    ring = np.ones_like(result)
    ring[1:-1, 1:-1] = False
    assert not result[ring].any()
    # ... but everything inside it that belongs to the garment is.
    assert result[80:-1, 1:-1].all()
    assert not result[:60, 150:234].any()

    lower = np.zeros((512, 384), np.uint8)
    lower[:200, 100:284] = 4
    lower[200:, 100:284] = 6  # pants running off the bottom edge
    result = agnostic_mask(lower, np.zeros((18, 2)), GarmentCategory.LOWER_BODY)
    assert result[200:-1, 100:284].all()
    assert not result[-1].any()


def test_holes_are_filled_and_only_the_largest_region_kept():
    parse, keypoints = _body()
    parse[180:200, 180:200] = 16  # a bag enclosed by the shirt: the hole is filled
    parse[10:30, 10:30] = 4  # a stray shirt fragment far from the body: dropped
    result = agnostic_mask(parse, keypoints, "upper_body")
    assert result[180:200, 180:200].all()
    assert not result[:45, :45].any()


def test_other_image_sizes():
    parse, keypoints = _body()
    small = cv2.resize(parse, (192, 256), interpolation=cv2.INTER_NEAREST)
    result = agnostic_mask(small, keypoints / 2, "upper_body")
    assert result.shape == (256, 192)
    assert result[_core(small, (4,), margin=3)].all()
    assert not result[_core(small, (11,), margin=3)].any()


# --- input validation -------------------------------------------------------------------------


def test_unknown_category_is_rejected():
    parse, keypoints = _body()
    with pytest.raises(ValueError, match="category must be one of .*'upper_body'.*got 'shoes'"):
        agnostic_mask(parse, keypoints, "shoes")
    with pytest.raises(ValueError, match="category"):
        agnostic_mask(parse, keypoints, 3)


def test_unknown_model_type_is_rejected():
    parse, keypoints = _body()
    with pytest.raises(ValueError, match="model_type must be one of 'hd', 'dc', got 'xl'"):
        agnostic_mask(parse, keypoints, "upper_body", "xl")


def test_empty_parse_is_rejected():
    with pytest.raises(ValueError, match="no person"):
        agnostic_mask(np.zeros((512, 384), np.uint8), np.zeros((18, 2)), "upper_body")


@pytest.mark.parametrize("shape", [(17, 2), (18, 3), (36,), (18, 2, 1)])
def test_keypoints_of_wrong_shape_are_rejected(shape):
    parse, _ = _body()
    with pytest.raises(ValueError, match=r"keypoints must be an \(18, 2\) array"):
        agnostic_mask(parse, np.zeros(shape), "upper_body")


def test_non_finite_keypoints_are_rejected():
    parse, keypoints = _body()
    keypoints[3, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        agnostic_mask(parse, keypoints, "upper_body")


@pytest.mark.parametrize(
    "parse",
    [
        np.ones((4, 5, 3), np.uint8),  # an RGB image instead of labels
        np.full((8, 8), 19, np.uint8),  # label outside ATR + neck
        np.full((8, 8), 0.5),  # non-integral labels
    ],
)
def test_invalid_label_maps_are_rejected(parse):
    with pytest.raises(ValueError, match="parse"):
        agnostic_mask(parse, np.zeros((18, 2)), "upper_body")


# What each ATR label (+ 18 neck) does in each category, from the official demo's mask function
# get_mask_location: "garment" labels are re-generated on their own, "kept" labels are protected
# even where the dilated garment reaches them; every other label is re-generated only there.
# Without arm keypoints the parsed arms (14, 15) stand in for the sleeves, so they count as garment
# where the arms are drawn (upper body, dresses); the neck (18) joins those two categories too.
LABEL_ROLES = {
    "upper_body": {"garment": {4, 7, 14, 15, 18}, "kept": {1, 3, 5, 6, 9, 10, 11, 16}},
    "lower_body": {"garment": {5, 6, 12, 13}, "kept": {1, 3, 4, 9, 10, 11, 14, 15, 16}},
    "dresses": {"garment": {4, 5, 6, 7, 14, 15, 18}, "kept": {1, 3, 9, 10, 11, 16}},
}


def _region_masked(result: np.ndarray, rows: slice, cols: slice) -> bool:
    """Whether the region is masked, checking that it is masked all over or not at all."""
    inside = result[rows, cols]
    assert inside.all() or not inside.any(), "region partly masked"
    return bool(inside.all())


@pytest.mark.parametrize("category", list(LABEL_ROLES))
def test_each_label_is_regenerated_kept_or_reached_as_the_spec_says(category):
    no_pose = np.zeros((18, 2))
    garment, kept = set(), set()
    for label in range(1, 19):  # ATR 1-17 and the neck
        # The label alone: re-generated only if it is part of the garment region.
        alone = np.zeros((128, 96), np.uint8)
        alone[24:104, 24:72] = label
        result = agnostic_mask(alone, no_pose, category)
        if _region_masked(result, slice(30, 98), slice(30, 66)):
            garment.add(label)
        else:
            assert not result.any(), label
        # The label beside a garment (and out to the image edge, so it encloses no hole): kept,
        # or re-generated as far as the garment's 10 px dilation reaches.
        beside = np.zeros((128, 96), np.uint8)
        beside[24:104, 16:48] = 6 if category == "lower_body" else 4
        beside[:, 48:] = label
        result = agnostic_mask(beside, no_pose, category)
        if not _region_masked(result, slice(30, 98), slice(49, 55)):
            kept.add(label)
    assert garment == LABEL_ROLES[category]["garment"]
    assert kept == LABEL_ROLES[category]["kept"]


def test_polygon_fill_follows_opencv4():
    # cv2.fillPoly of OpenCV 4.10 on this quadrilateral (the reference's rasteriser); OpenCV 5
    # rounds the slanted edges differently and gives 3 pixels fewer.
    expected = """
        ............
        .###........
        .#######....
        .##########.
        ..#########.
        ..########..
        ..########..
        ...######...
        .....####...
        .......#....
        ............
    """
    expected = np.array([[c == "#" for c in row] for row in expected.split()])
    vertices = np.array([[1, 1], [10, 3], [7, 9], [2, 6]])
    np.testing.assert_array_equal(mask_module._fill_polygon(expected.shape, vertices), expected)


def test_polygon_fill_of_axis_aligned_shapes_matches_opencv():
    # Without slanted edges every OpenCV version agrees, including on an L-shaped notch.
    vertices = np.array([[2, 2], [20, 2], [20, 12], [10, 12], [10, 18], [2, 18]])
    expected = np.zeros((24, 24), np.uint8)
    cv2.fillPoly(expected, [vertices.astype(np.int32)], 1)
    np.testing.assert_array_equal(mask_module._fill_polygon((24, 24), vertices), expected > 0)
