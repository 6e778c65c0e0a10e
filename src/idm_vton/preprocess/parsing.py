"""Human parsing with the SCHP ATR and LIP networks exported to ONNX (the official demo's).

The official IDM-VTON demo parses the person photo twice: the ATR network (18 labels, 512 x 512
input) gives the label map, and the LIP network (20 labels, 473 x 473 input) only contributes the
neck: ATR calls the whole head skin "face" (11), LIP separates the face (13), so an ATR-face pixel
that LIP does not call face becomes label 18 = neck. The mask builder needs the neck to keep it
out of the try-on area.

Both networks see the photo through the same affine warp (the whole image, aspect preserved,
centred in the square input), are normalised with ImageNet statistics in BGR order, and their
fused logits (second ONNX output, 1/4 resolution) are upsampled with ``align_corners=True`` and
warped back into the photo's pixels before the argmax. The ATR result then gets the demo's
upper-clothes hole filling. Everything here reproduces the official ``parsing_api.py`` and
``utils/transforms.py`` behaviour; the pure steps are module functions so they can be tested on
synthetic arrays.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from idm_vton.errors import PreprocessModelError
from idm_vton.loaders.weights import check_weight_file

__all__ = [
    "ATR_LABELS",
    "LIP_LABELS",
    "NECK_LABEL",
    "ATR_INPUT_SIZE",
    "LIP_INPUT_SIZE",
    "HumanParser",
    "person_center_scale",
    "input_affine",
    "prepare_input",
    "logits_to_photo",
    "fill_upper_clothes_holes",
    "merge_neck",
]

ATR_LABELS = (
    "background",
    "hat",
    "hair",
    "sunglasses",
    "upper_clothes",
    "skirt",
    "pants",
    "dress",
    "belt",
    "left_shoe",
    "right_shoe",
    "face",
    "left_leg",
    "right_leg",
    "left_arm",
    "right_arm",
    "bag",
    "scarf",
)
LIP_LABELS = (
    "background",
    "hat",
    "hair",
    "glove",
    "sunglasses",
    "upper_clothes",
    "dress",
    "coat",
    "socks",
    "pants",
    "jumpsuits",
    "scarf",
    "skirt",
    "face",
    "left_arm",
    "right_arm",
    "left_leg",
    "right_leg",
    "left_shoe",
    "right_shoe",
)
NECK_LABEL = 18
"""Extra label appended to the ATR set: ATR face pixels that LIP does not call face."""

ATR_FACE = ATR_LABELS.index("face")
ATR_UPPER_CLOTHES = ATR_LABELS.index("upper_clothes")
ATR_ARMS = (ATR_LABELS.index("left_arm"), ATR_LABELS.index("right_arm"))
LIP_FACE = LIP_LABELS.index("face")

ATR_INPUT_SIZE = (512, 512)
LIP_INPUT_SIZE = (473, 473)
"""Network input sizes as (height, width), as the official demo runs them."""

# ImageNet statistics in BGR order: the SCHP networks were trained on OpenCV-loaded images.
_MEAN_BGR = np.array([0.406, 0.456, 0.485], dtype=np.float32)
_STD_BGR = np.array([0.225, 0.224, 0.229], dtype=np.float32)

# Holes inside upper clothes + arms whose contour area exceeds this (photo pixels) keep their
# label (a real garment opening or another part); smaller ones are parser noise and become
# upper clothes. The demo parses at 384 x 512, where the constant was tuned.
HOLE_AREA_KEEP = 2000

ATR_FILENAME = "parsing_atr.onnx"
LIP_FILENAME = "parsing_lip.onnx"
WEIGHTS_SOURCE = (
    "the IDM-VTON Hugging Face repo yisol/IDM-VTON, folder humanparsing/ "
    "(https://huggingface.co/yisol/IDM-VTON/tree/main/humanparsing)"
)
# Real exports are ~250 MB; a few KB keeps tiny test graphs valid while catching stubs.
_MIN_ONNX_BYTES = 1024


def person_center_scale(width: int, height: int, input_size: Sequence[int]) -> tuple:
    """Centre and scale of the whole-image box, widened to the network's aspect ratio.

    The official dataset uses the box ``(0, 0, width - 1, height - 1)``, so the centre is
    ``((width - 1) / 2, (height - 1) / 2)`` and the scale is the box grown to the input's
    aspect ratio (for square inputs: the longer side minus one, on both axes).

    Returns:
        ``(center, scale)``, two float32 arrays of shape (2,).
    """
    box_w, box_h = float(width - 1), float(height - 1)
    aspect = input_size[1] / input_size[0]
    center = np.array([box_w * 0.5, box_h * 0.5], dtype=np.float32)
    if box_w > aspect * box_h:
        box_h = box_w / aspect
    elif box_w < aspect * box_h:
        box_w = box_h * aspect
    return center, np.array([box_w, box_h], dtype=np.float32)


def input_affine(
    center: np.ndarray, scale: np.ndarray, input_size: Sequence[int], inverse: bool = False
) -> np.ndarray:
    """2 x 3 affine from photo to network input pixels (or back with ``inverse=True``).

    An isotropic scaling by ``(input_w - 1) / scale[0]`` that maps ``center`` to the input's
    centre ``((input_w - 1) / 2, (input_h - 1) / 2)``. It is built from three point pairs with
    ``cv2.getAffineTransform`` in float32, as the official code does, so the matrix is
    bit-identical to theirs.
    """
    out_h, out_w = input_size
    half_src = float(scale[0]) * 0.5
    half_dst = (out_w - 1) * 0.5
    dst_center = np.array([(out_w - 1) * 0.5, (out_h - 1) * 0.5], dtype=np.float32)
    src = np.zeros((3, 2), dtype=np.float32)
    dst = np.zeros((3, 2), dtype=np.float32)
    src[0] = center
    src[1] = center + np.array([0.0, -half_src], dtype=np.float32)
    dst[0] = dst_center
    dst[1] = dst_center + np.array([0.0, -half_dst], dtype=np.float32)
    # Third point: the second one rotated by 90 degrees about the first, fixing the similarity.
    for pts in (src, dst):
        d = pts[0] - pts[1]
        pts[2] = pts[1] + np.array([-d[1], d[0]], dtype=np.float32)
    if inverse:
        return cv2.getAffineTransform(dst, src)
    return cv2.getAffineTransform(src, dst)


def prepare_input(image_bgr: np.ndarray, input_size: Sequence[int]) -> tuple:
    """Warp a BGR uint8 photo into the network input and normalise it.

    Returns:
        ``(tensor, center, scale)``: a (1, 3, H, W) float32 array for the ONNX session, plus the
        centre and scale needed to warp the logits back.
    """
    height, width = image_bgr.shape[:2]
    center, scale = person_center_scale(width, height, input_size)
    trans = input_affine(center, scale, input_size)
    warped = cv2.warpAffine(
        image_bgr,
        trans,
        (int(input_size[1]), int(input_size[0])),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    x = (warped.astype(np.float32) / np.float32(255.0) - _MEAN_BGR) / _STD_BGR
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), center, scale


def logits_to_photo(
    logits: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    width: int,
    height: int,
    input_size: Sequence[int],
) -> np.ndarray:
    """Upsample (C, h, w) network logits to the input size and warp them into the photo.

    Bilinear upsampling with ``align_corners=True`` (the SCHP convention), then the inverse of
    :func:`input_affine` per channel with bilinear interpolation and zeros outside.

    Returns:
        (height, width, C) float32 logits in the photo's pixels.
    """
    up = F.interpolate(
        torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))[None],
        size=tuple(int(s) for s in input_size),
        mode="bilinear",
        align_corners=True,
    )[0].numpy()
    trans = input_affine(center, scale, input_size, inverse=True)
    channels = [
        cv2.warpAffine(
            up[c],
            trans,
            (int(width), int(height)),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        for c in range(up.shape[0])
    ]
    return np.stack(channels, axis=2)


def fill_upper_clothes_holes(labels: np.ndarray, keep_area: float = HOLE_AREA_KEEP) -> np.ndarray:
    """The demo's ATR clean-up: small holes inside upper clothes + arms become upper clothes.

    The union of upper clothes and arms is closed by flood-filling the background from the
    (zero-padded) border; enclosed pixels that are neither clothes nor arm are holes. Hole
    contours with area above ``keep_area`` keep their labels, as do the arms; everything else in
    the closed region becomes upper clothes (4).

    Two details are kept for parity with the official code: the hole image reaches
    ``cv2.findContours`` as int32 (OpenCV's label-image mode, which also traces the zero
    regions), and the keep mask adds the arm mask in uint8 arithmetic (wrapping 255 + 1 to 0).

    Args:
        labels: (H, W) integer ATR label map.
        keep_area: contour-area threshold in pixels.

    Returns:
        (H, W) int64 label map.
    """
    padded = np.pad(labels.astype(np.int64), 1, mode="constant", constant_values=0)
    arms = np.isin(padded, ATR_ARMS).astype(np.uint8)
    region = np.where((padded == ATR_UPPER_CLOTHES) | (arms > 0), 255, 0).astype(np.uint8)

    # Flood the outside from the corner (background thanks to the padding); what the flood does
    # not reach and the region does not cover is enclosed.
    outside = region.copy()
    cv2.floodFill(
        outside, np.zeros((region.shape[0] + 2, region.shape[1] + 2), np.uint8), (0, 0), 255
    )
    closed = (region | cv2.bitwise_not(outside)) == 255

    holes = np.where(closed & (padded != ATR_UPPER_CLOTHES), 255, 0).astype(np.int32)
    holes -= arms.astype(np.int32) * 255
    contours, _ = cv2.findContours(holes, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_TC89_L1)
    keep = np.zeros(padded.shape, dtype=np.uint8)
    for i, contour in enumerate(contours):
        if abs(cv2.contourArea(contour, True)) > keep_area:
            cv2.drawContours(keep, contours, i, color=255, thickness=-1)
    keep = keep + arms  # uint8, wraps like the reference

    filled = np.where(closed, ATR_UPPER_CLOTHES, padded)
    return np.where(keep > 0, padded, filled)[1:-1, 1:-1]


def merge_neck(atr_labels: np.ndarray, lip_labels: np.ndarray) -> np.ndarray:
    """Label 18 (neck) where ATR says face (11) and LIP does not say face (13).

    Returns:
        (H, W) uint8 label map with labels 0-18.
    """
    if atr_labels.shape != lip_labels.shape:
        raise ValueError(
            f"ATR and LIP label maps must have the same shape, got {atr_labels.shape} "
            f"and {lip_labels.shape}"
        )
    neck = (atr_labels == ATR_FACE) & (lip_labels != LIP_FACE)
    return np.where(neck, NECK_LABEL, atr_labels).astype(np.uint8)


def _to_bgr(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        rgb = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                "expected an RGB image as a PIL image or an (H, W, 3) uint8 array, got an array "
                f"of shape {image.shape} and dtype {image.dtype}"
            )
        rgb = image
    else:
        raise ValueError(f"expected a PIL image or an (H, W, 3) uint8 array, got {type(image)}")
    return np.ascontiguousarray(rgb[:, :, ::-1])


class _SchpSession:
    """One SCHP ONNX network: load, validate its signature, return fused logits."""

    def __init__(
        self,
        path: Path,
        name: str,
        input_size: tuple[int, int],
        num_labels: int,
        providers: Sequence[str],
    ) -> None:
        import onnxruntime as ort

        self.name = name
        self.input_size = input_size
        self.num_labels = num_labels
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=list(providers)
            )
        except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
            raise PreprocessModelError(
                f"{name} file {path} is not a valid ONNX model (truncated or corrupt download?): "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
                f"download {path.name} again from {WEIGHTS_SOURCE}"
            ) from exc

        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].type != "tensor(float)":
            got = [(i.name, i.shape, i.type) for i in inputs]
            raise PreprocessModelError(
                f"{name} model {path} has inputs {got}; expected one NCHW float tensor "
                f"('input.1', 1 x 3 x {input_size[0]} x {input_size[1]})"
            )
        fixed_hw = inputs[0].shape[2:]
        if all(isinstance(d, int) for d in fixed_hw) and tuple(fixed_hw) != input_size:
            raise PreprocessModelError(
                f"{name} model {path} takes {fixed_hw[0]} x {fixed_hw[1]} input but the "
                f"{name} runs at {input_size[0]} x {input_size[1]}; are {ATR_FILENAME} and "
                f"{LIP_FILENAME} swapped?"
            )
        if len(self.session.get_outputs()) < 2:
            raise PreprocessModelError(
                f"{name} model {path} has {len(self.session.get_outputs())} output(s); the SCHP "
                "export has three (parsing, fusion, edge) and the fused logits are the second"
            )
        self.input_name = inputs[0].name

    def logits(self, image_bgr: np.ndarray) -> np.ndarray:
        """(H, W, num_labels) logits in the photo's pixels."""
        x, center, scale = prepare_input(image_bgr, self.input_size)
        fusion = self.session.run(None, {self.input_name: x})[1]
        if fusion.ndim != 4 or fusion.shape[1] != self.num_labels:
            raise PreprocessModelError(
                f"{self.name} model returned logits of shape {tuple(fusion.shape)}; expected "
                f"(1, {self.num_labels}, h, w). Are {ATR_FILENAME} and {LIP_FILENAME} swapped?"
            )
        height, width = image_bgr.shape[:2]
        return logits_to_photo(fusion[0], center, scale, width, height, self.input_size)


class HumanParser:
    """SCHP ATR + LIP human parser, as in the IDM-VTON demo.

    Args:
        model_dir: folder holding ``parsing_atr.onnx`` and ``parsing_lip.onnx`` (the demo's
            ``ckpt/humanparsing/``). Optional when both explicit paths are given.
        atr_path: explicit path of the ATR export (overrides ``model_dir``).
        lip_path: explicit path of the LIP export (overrides ``model_dir``).
        providers: onnxruntime execution providers, default CPU only (as the demo).

    Calling the parser on a photo returns an (H, W) uint8 map in the photo's pixels with ATR
    labels 0-17 (:data:`ATR_LABELS`) and 18 = neck. The demo calls it on the 384 x 512 resize of
    the person photo; the hole-area constant assumes that scale.

    Raises:
        PreprocessModelError: a file is missing, a placeholder, truncated, not ONNX, or not an
            SCHP export of the expected kind.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        atr_path: str | os.PathLike[str] | None = None,
        lip_path: str | os.PathLike[str] | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        if model_dir is None and (atr_path is None or lip_path is None):
            raise ValueError("give model_dir or both atr_path and lip_path")
        if atr_path is None:
            atr_path = Path(model_dir) / ATR_FILENAME
        if lip_path is None:
            lip_path = Path(model_dir) / LIP_FILENAME
        providers = list(providers) if providers is not None else ["CPUExecutionProvider"]
        atr_path = check_weight_file(
            atr_path, "SCHP ATR human parser", WEIGHTS_SOURCE, min_bytes=_MIN_ONNX_BYTES, fmt="onnx"
        )
        lip_path = check_weight_file(
            lip_path, "SCHP LIP human parser", WEIGHTS_SOURCE, min_bytes=_MIN_ONNX_BYTES, fmt="onnx"
        )
        self.atr = _SchpSession(atr_path, "ATR parser", ATR_INPUT_SIZE, len(ATR_LABELS), providers)
        self.lip = _SchpSession(lip_path, "LIP parser", LIP_INPUT_SIZE, len(LIP_LABELS), providers)

    def __call__(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """Parse an RGB photo (PIL image or (H, W, 3) uint8 array) into an (H, W) uint8 map."""
        image_bgr = _to_bgr(image)
        atr = fill_upper_clothes_holes(np.argmax(self.atr.logits(image_bgr), axis=2))
        lip = np.argmax(self.lip.logits(image_bgr), axis=2)
        return merge_neck(atr, lip)
