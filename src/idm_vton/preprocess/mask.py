"""Automatic inpaint ("agnostic") mask from human parsing and pose keypoints (the official demo's
``utils_mask.py``; docs/preprocessing.md).

IDM-VTON re-generates the garment region of the person photo and keeps everything else. The
region is derived from an ATR human-parsing label map (plus LIP's neck label) and OpenPose body
keypoints, following the official ``gradio_demo/utils_mask.py::get_mask_location``:

1. the clothing labels of the garment category are dilated (a 21 x 21 square);
2. for upper-body garments and dresses each arm is drawn as a thick polyline
   shoulder -> elbow -> wrist (the wrist pushed 1.2x further from the elbow so sleeves reach past
   it) with a disc on the shoulder; the parsed arm pixels outside that line are hands and are kept;
   the neck and the dilated arm lines join the garment region;
3. face, hat, sunglasses, shoes and bag (plus the clothing of the other body half) are always kept;
4. the result has its holes filled and only its largest region survives (rasterised with
   OpenCV 4's polygon fill, which the reference ran on, whatever OpenCV is installed).

Everything here is a pure function of arrays; the parser and pose models live elsewhere.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ..enums import GarmentCategory
from ..errors import NoPersonFoundError

__all__ = ["GarmentCategory", "agnostic_mask"]


BACKGROUND = 0
HAT = 1
HAIR = 2
SUNGLASSES = 3
UPPER_CLOTHES = 4
SKIRT = 5
PANTS = 6
DRESS = 7
BELT = 8
LEFT_SHOE = 9
RIGHT_SHOE = 10
HEAD = 11
LEFT_LEG = 12
RIGHT_LEG = 13
LEFT_ARM = 14
RIGHT_ARM = 15
BAG = 16
SCARF = 17
NECK = 18
NUM_LABELS = 19

# OpenPose (COCO-18) body keypoint indices used for the arms.
RIGHT_SHOULDER, RIGHT_ELBOW, RIGHT_WRIST = 2, 3, 4
LEFT_SHOULDER, LEFT_ELBOW, LEFT_WRIST = 5, 6, 7
NUM_KEYPOINTS = 18

#: Labels protected from the mask: the face (never part of the garment region).
HEAD_LABELS = (HAT, SUNGLASSES, HEAD)
#: Labels kept whatever the category.
ALWAYS_KEPT_LABELS = (LEFT_SHOE, RIGHT_SHOE, HAT, SUNGLASSES, BAG)
#: Clothing (and skin) labels whose area is re-generated, per category.
GARMENT_LABELS = {
    GarmentCategory.UPPER_BODY: (UPPER_CLOTHES, DRESS),
    GarmentCategory.LOWER_BODY: (PANTS, LEFT_LEG, RIGHT_LEG, SKIRT),
    GarmentCategory.DRESSES: (DRESS, UPPER_CLOTHES, SKIRT, PANTS),
}
#: Labels additionally kept per category (the clothing of the other body half).
CATEGORY_KEPT_LABELS = {
    GarmentCategory.UPPER_BODY: (SKIRT, PANTS),
    GarmentCategory.LOWER_BODY: (UPPER_CLOTHES, LEFT_ARM, RIGHT_ARM),
    GarmentCategory.DRESSES: (),
}
#: Categories whose mask follows the arms.
ARM_CATEGORIES = (GarmentCategory.UPPER_BODY, GarmentCategory.DRESSES)

#: Arm line width in pixels per REFERENCE_HEIGHT pixels of image height.
ARM_WIDTH_AT_REFERENCE = {"hd": 60, "dc": 45}
REFERENCE_HEIGHT = 512
#: The wrist is moved this many times its distance from the elbow, so the sleeve covers it.
WRIST_EXTENSION = 1.2
#: A keypoint with both coordinates at or below this many pixels counts as not detected.
MISSING_KEYPOINT_THRESHOLD = 1.0

# Dilations, all with a 5 x 5 square, in repeated passes as in the reference; they are in
# pixels and do not scale with the image size (the reference does not scale them either).
DILATION_KERNEL = np.ones((5, 5), np.uint8)
GARMENT_DILATION_PASSES = 5
NECK_DILATION_PASSES = 1
ARM_DILATION_PASSES = 4

# OpenCV's fixed-point precision for polygon edges (XY_SHIFT in imgproc/drawing.cpp).
_FIXED_SHIFT = 16

# (shoulder, elbow, wrist, arm label, draw from the shoulder?) per arm. The reference draws
# the right arm from the shoulder and the left one from the wrist; PIL rasterises a wide
# polyline differently in the two directions (up to ~200 px on the reference cases), so it is kept.
_ARMS = (
    (RIGHT_SHOULDER, RIGHT_ELBOW, RIGHT_WRIST, RIGHT_ARM, True),
    (LEFT_SHOULDER, LEFT_ELBOW, LEFT_WRIST, LEFT_ARM, False),
)


def agnostic_mask(
    parse: np.ndarray,
    keypoints: np.ndarray,
    category: GarmentCategory | str,
    model_type: str = "hd",
) -> np.ndarray:
    """Return the region of a person photo to re-generate for a try-on (docs/preprocessing.md).

    Reproduces the official IDM-VTON ``get_mask_location`` (``gradio_demo/utils_mask.py``).

    Args:
        parse: (H, W) integer label map, ATR labels 0-17 plus 18 = neck (see the module
            constants). Any size works: the function runs at the label map's own resolution.
        keypoints: (18, 2) OpenPose body keypoints as (x, y) in ``parse``'s pixels;
            ``[0, 0]`` marks a point that was not detected.
        category: ``"upper_body"``, ``"lower_body"`` or ``"dresses"`` (or a
            :class:`GarmentCategory`).
        model_type: ``"hd"`` (VITON-HD model, arm lines 60 px wide per 512 px of image height)
            or ``"dc"`` (DressCode model, 45 px per 512).

    Returns:
        (H, W) bool array, True where the image is re-generated.

    Sizes: the reference resizes the label map (nearest) to its ``width`` x ``height`` arguments,
    384 x 512 by default, and scales the keypoints and the arm width by ``height / 512``. Here the
    label map is used as given and the keypoints are already in its pixels, so the result equals
    the reference called with ``width=W, height=H``: the arm width is ``int(60 * H / 512)``
    (``45`` for ``dc``) while the dilations stay the reference's fixed pixel sizes. As in the
    reference the outermost pixel ring is never masked.

    Missing keypoints: a missing wrist makes that arm's parsed region stand in for the drawn line,
    as in the reference. A missing shoulder or elbow (with the wrist found) is handled the same way
    here; the reference would draw the arm to the image corner at (0, 0) instead.

    Raises:
        ValueError: on an unknown category or model type, a label map that is not 2-D integer
            labels in 0-18 or holds no person at all, or keypoints that are not a finite (18, 2)
            array.
    """
    labels = _check_parse(parse)
    points = _check_keypoints(keypoints)
    category = _check_category(category)
    arm_width = _arm_line_width(model_type, labels.shape[0])

    kept = np.isin(labels, ALWAYS_KEPT_LABELS + CATEGORY_KEPT_LABELS[category])
    # Pixels that may be re-generated: everything not explicitly kept (background included).
    changeable = ~kept
    head = np.isin(labels, HEAD_LABELS)
    garment = _dilate(np.isin(labels, GARMENT_LABELS[category]), GARMENT_DILATION_PASSES)

    if category in ARM_CATEGORIES:
        arms = np.zeros_like(garment)
        for shoulder, elbow, wrist, arm_label, from_shoulder in _ARMS:
            parsed_arm = labels == arm_label
            arm = _arm_region(
                labels.shape,
                points[[shoulder, elbow, wrist]],
                parsed_arm,
                arm_width,
                from_shoulder,
            )
            # Parsed arm pixels beyond the drawn sleeve are the hand: keep them.
            kept |= parsed_arm & ~arm
            arms |= arm
        # (The dilated neck may reach into the face; the face is kept below anyway.)
        neck = _dilate(labels == NECK, NECK_DILATION_PASSES)
        garment |= neck | _dilate(arms, ARM_DILATION_PASSES)

    kept |= head
    keep = (changeable & ~garment) | kept
    return _largest_region(_fill_holes(~keep))


def _check_parse(parse: np.ndarray) -> np.ndarray:
    labels = np.asarray(parse)
    if labels.ndim != 2 or labels.size == 0:
        raise ValueError(f"parse must be a non-empty (H, W) label map, got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
        raise ValueError(f"parse must hold integer labels, got dtype {labels.dtype}")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ValueError("parse must hold integer labels, got non-integral values")
    low, high = labels.min(), labels.max()
    if low < 0 or high >= NUM_LABELS:
        raise ValueError(
            f"parse labels must lie in 0..{NUM_LABELS - 1} (ATR + neck), got {low}..{high}"
        )
    if high == BACKGROUND:
        raise NoPersonFoundError("no person found in the photo (the parse is all background)")
    return labels.astype(np.uint8)


def _check_keypoints(keypoints: np.ndarray) -> np.ndarray:
    points = np.asarray(keypoints, dtype=np.float64)
    if points.shape != (NUM_KEYPOINTS, 2):
        raise ValueError(
            f"keypoints must be an ({NUM_KEYPOINTS}, 2) array of OpenPose (x, y) points, "
            f"got shape {points.shape}"
        )
    if not np.all(np.isfinite(points)):
        raise ValueError("keypoints must be finite; mark a missing point as [0, 0]")
    return points


def _check_category(category: GarmentCategory | str) -> GarmentCategory:
    try:
        return GarmentCategory(category)
    except ValueError:
        choices = ", ".join(repr(c.value) for c in GarmentCategory)
        raise ValueError(f"category must be one of {choices}, got {category!r}") from None


def _arm_line_width(model_type: str, height: int) -> int:
    if model_type not in ARM_WIDTH_AT_REFERENCE:
        choices = ", ".join(repr(m) for m in ARM_WIDTH_AT_REFERENCE)
        raise ValueError(f"model_type must be one of {choices}, got {model_type!r}")
    return int(ARM_WIDTH_AT_REFERENCE[model_type] / REFERENCE_HEIGHT * height)


def _is_missing(point: np.ndarray) -> bool:
    return bool(np.all(point <= MISSING_KEYPOINT_THRESHOLD))


def _arm_region(
    shape: tuple[int, int],
    arm_points: np.ndarray,
    parsed_arm: np.ndarray,
    width: int,
    from_shoulder: bool,
) -> np.ndarray:
    """Sleeve area of one arm: a ``width``-thick polyline shoulder-elbow-(extended) wrist.

    Falls back to the parsed arm region when a point of the chain is missing.
    """
    shoulder, elbow, wrist = arm_points
    if any(_is_missing(p) for p in (shoulder, elbow, wrist)):
        return parsed_arm.copy()
    wrist = elbow + WRIST_EXTENSION * (wrist - elbow)
    chain = np.stack([shoulder, elbow, wrist] if from_shoulder else [wrist, elbow, shoulder])
    # The reference truncates the vertices to integers (towards zero) before drawing.
    vertices = [tuple(v) for v in np.trunc(chain).astype(np.int64).tolist()]

    height, width_px = shape
    canvas = Image.new("L", (width_px, height))
    draw = ImageDraw.Draw(canvas)
    draw.line(vertices, fill=255, width=width, joint="curve")
    # Round the shoulder end: a ring as thick as its radius, i.e. a disc on the shoulder.
    half = width // 2
    x, y = shoulder
    draw.arc([x - half, y - half, x + half, y + half], 0, 360, fill=255, width=half)
    return np.asarray(canvas) > 0


def _dilate(region: np.ndarray, passes: int) -> np.ndarray:
    # Outside the image counts as empty, so regions at the border do not grow inwards from it.
    return cv2.dilate(region.astype(np.uint8), DILATION_KERNEL, iterations=passes) > 0


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Clear the outermost pixel ring, then fill the enclosed background (4-connected)."""
    framed = np.zeros_like(mask)
    framed[1:-1, 1:-1] = mask[1:-1, 1:-1]
    return ndimage.binary_fill_holes(framed)


def _largest_region(mask: np.ndarray) -> np.ndarray:
    """Keep the region whose outer contour encloses the largest area, filled.

    Contours are traced as the reference does (``RETR_CCOMP``, Teh-Chin L1 approximation) and
    the winner is rasterised from its approximated polygon, so edges match the reference.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_TC89_L1)
    if not contours:
        return np.zeros(mask.shape, bool)
    areas = [abs(cv2.contourArea(c, oriented=True)) for c in contours]
    return _fill_polygon(mask.shape, contours[int(np.argmax(areas))].reshape(-1, 2))


def _fill_polygon(shape: tuple[int, int], vertices: np.ndarray) -> np.ndarray:
    """Rasterise a closed polygon with integer vertices the way OpenCV 4's ``fillPoly`` does.

    The reference ran on OpenCV 4, whose scanline fill takes, on each row, the pixels from
    ``round(x_left)`` to ``round(x_right)`` of every pair of edge crossings (even-odd), plus the
    8-connected outline. OpenCV 5 changed the rounding to ``ceil``/``floor``, which moves pixels
    on slanted edges, so the fill is done here to stay identical whatever OpenCV is installed.
    Crossings use OpenCV's 16.16 fixed point: an edge starts at its upper vertex, steps by the
    truncated slope per row and covers rows ``y_top <= y < y_bottom``.
    """
    height, width = shape
    out = np.zeros(shape, np.uint8)
    cv2.polylines(out, [vertices.astype(np.int32)], isClosed=True, color=1)

    vertices = vertices.astype(np.int64)
    start, end = np.roll(vertices, 1, axis=0), vertices
    slanted = start[:, 1] != end[:, 1]
    start, end = start[slanted], end[slanted]
    if len(start) == 0:
        return out.astype(bool)
    downward = (start[:, 1] < end[:, 1])[:, None]
    top, bottom = np.where(downward, start, end), np.where(downward, end, start)
    run, rise = (end[:, 0] - start[:, 0]) << _FIXED_SHIFT, end[:, 1] - start[:, 1]
    step = np.sign(run) * np.sign(rise) * (np.abs(run) // np.abs(rise))  # C division

    rows_per_edge = bottom[:, 1] - top[:, 1]
    edge = np.repeat(np.arange(len(top)), rows_per_edge)
    offset = np.arange(edge.size) - np.repeat(
        np.cumsum(rows_per_edge) - rows_per_edge, rows_per_edge
    )
    rows = top[edge, 1] + offset
    xs = (top[edge, 0] << _FIXED_SHIFT) + offset * step[edge]

    order = np.lexsort((xs, rows))
    rows, xs = rows[order], xs[order]
    first_of_row = np.r_[0, np.flatnonzero(np.diff(rows)) + 1]
    rank = np.arange(rows.size) - np.repeat(first_of_row, np.diff(np.r_[first_of_row, rows.size]))
    left = np.flatnonzero(rank % 2 == 0)
    half = 1 << (_FIXED_SHIFT - 1)
    span_rows = rows[left]
    x_from = np.clip((xs[left] + half) >> _FIXED_SHIFT, 0, width)
    x_to = np.clip(((xs[left + 1] + half) >> _FIXED_SHIFT) + 1, 0, width)
    valid = (span_rows >= 0) & (span_rows < height) & (x_to > x_from)
    # Mark span starts and ends, then a running sum along each row paints the spans.
    edges = np.zeros((height, width + 1), np.int32)
    np.add.at(edges, (span_rows[valid], x_from[valid]), 1)
    np.add.at(edges, (span_rows[valid], x_to[valid]), -1)
    out |= (np.cumsum(edges, axis=1)[:, :width] > 0).astype(np.uint8)
    return out.astype(bool)
