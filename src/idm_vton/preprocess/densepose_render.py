"""DensePose results and their fine-segmentation picture, as IDM-VTON's demo draws it.

The demo (``gradio_demo/apply_net.py show ... dp_segm``) draws with DensePose's
``DensePoseResultsFineSegmentationVisualizer`` as vendored by IDM-VTON: part index ``I``
(0 = background, 1..24 = body parts) scaled by ``255 / 24``, truncated to ``uint8``, through
OpenCV's PARULA colour map, fully opaque (``alpha=1``) on the person's pixels.

Two behaviours of that vendored visualizer decide what the picture looks like, and are
reproduced here on purpose (the released TryonNet was trained on pictures made this way):

- it is built with ``inplace=False``, and IDM-VTON's ``MatrixVisualizer`` then does
  ``image_target_bgr = image_bgr; image_target_bgr *= 0``: the grey copy of the photo that
  ``apply_net`` passes in is zeroed, so the background is **black**, not grey;
- that zeroing runs again for every detected instance, so each instance wipes the ones drawn
  before it: only the **last** instance (detections are sorted by decreasing score, so the
  lowest-scoring one above the threshold) remains in the picture.

The visualizer works in BGR and the demo flips the result to RGB (``pose_img[:, :, ::-1]``);
the colour table here is stored in RGB, so the returned RGB picture has the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

#: Number of DensePose fine-segmentation part labels (I = 1..24; 0 is background).
N_PART_LABELS = 24

# OpenCV's COLORMAP_PARULA (OpenCV 4.x, ``applyColorMap`` on 0..255), 256 RGB triples in hex.
_PARULA_RGB_HEX = (
    "352a87332c8a322e8d302f8f2f31922d33952c35982a379b28389e273aa0253ca3243ea6223fa92141ac1f43af1d45b1"
    "1c47b41a48b7194aba174cbd164ebf1450c21251c51153c80f55cb0e57ce0c58d00b5ad3095cd6085ed90660dc0461df"
    "0363e00364e00366e00367e10368e10369e1046ae1046be1056ce1056de2066ee2066fe20770e20771e20872e20973e2"
    "0974e20a75e20b76e20b77e20c78e20c79e20d7ae20e7ae20e7bdd0e7cd80e7dd30f7ece0f7fc90f80c40f80bf1081bb"
    "1082b61083b11084ac1185a71185a21286a01286a21187a41187a61088a81089aa0f8aab0f8aad0e8baf0e8cb10d8db3"
    "0d8db50c8eb70c8fb80b90b90b90ba0a91ba0a92bb0992bc0993bc0894bd0894be0795be0796bf0697c00597c00598c1"
    "0599c10599c1059ac1069ac1069bc1069cc1069cc1069dc1069dc1069ec0069fc0069fc006a0c006a0c006a1bf06a1bf"
    "06a2bf06a3bf07a3bf07a4be07a4be07a5be08a5be08a6bd08a6bd09a7bd09a7bd0aa8bc0aa8bc0ba9bc0ba9bb0baaba"
    "0baab90cabb80cabb70daab60daab50eabb40fabb310acb112acb014acaf16adae17adad19adac1badab1dadaa1fae9a"
    "20ae8a22af7a24af6a2baf672fb06534b06438b06240b1604ab15f55b15d5fb25c69b25b72b25a7cb35984b35890b458"
    "9ab457a3b456adb456b8b456c2b456cbb456d3b456dcb457e5b558ebb45df0b462f6b567fbb66cfcb874fcba7bfcbc83"
    "fcbe8bfcc092fcc29afcc4a1fcc6a9fcc8b0fbcab7fbccbdfbcec3fad1c9fad3cef9d5d4f9d8d9f8dadef8dde3f7dfe8"
    "f7e2edf6e5f1f5e7f6f5eafaf4ecfef4edfef4edfef4edfef4edfef4edfef4edfef4edfef4edfef4edfef4edfef4edfe"
    "f4eefef5eefef5eefef5eefef5eefef5eefef5eefef5eefef5eefef5eefef5eefef5eefef5eefef5eefef5effef6effe"
    "f6effef6effef6effef6effef6effef6effef6effef6effef6effef6effef6effef6effef6effef6effef6effef6effe"
    "f7f0fef7f0fef7f0fef7f0fef7f0fef7f0fef7f0fef7f0fef7f0fef7f0fef7f0fef7f0fef7f0fef7f0fef7f0fef7f0fe"
)


def parula_table() -> np.ndarray:
    """OpenCV's PARULA colour map as a ``(256, 3)`` ``uint8`` table in **RGB** order."""
    table = np.frombuffer(bytes.fromhex(_PARULA_RGB_HEX), dtype=np.uint8).reshape(256, 3)
    return table.copy()


_PARULA_RGB = parula_table()


def apply_parula(values: np.ndarray) -> np.ndarray:
    """Colour a ``uint8`` array through PARULA: ``(...)`` -> ``(..., 3)`` RGB ``uint8``.

    Equals ``cv2.applyColorMap(values, cv2.COLORMAP_PARULA)[..., ::-1]``.
    """
    if values.dtype != np.uint8:
        raise ValueError(f"apply_parula expects a uint8 array, got {values.dtype}")
    return _PARULA_RGB[values]


def part_labels_to_rgb(labels: np.ndarray) -> np.ndarray:
    """Colour a part-index map (0..24) as the fine-segmentation visualizer does, RGB ``uint8``.

    ``I * 255 / 24`` in float32, clipped to [0, 255], truncated to ``uint8``, through PARULA.
    Background (0) is coloured too; callers mask it.
    """
    scaled = np.asarray(labels).astype(np.float32) * np.float32(255.0 / N_PART_LABELS)
    return apply_parula(scaled.clip(0, 255).astype(np.uint8))


class NoPersonFoundError(ValueError):
    """DensePose detected no person (no box above the score threshold) in the image."""


@dataclass
class DensePoseResult:
    """DensePose chart predictions for the people found in one image.

    Instances are in detection order (decreasing score). For instance ``k``,
    ``labels[k]`` is the part index map (``int64``, 0 = background, 1..24 = parts) and
    ``uv[k]`` the ``(2, h, w)`` U, V surface coordinates in [0, 1], both covering the integer
    box ``(x, y, w, h) = int(x0), int(y0), int(x1 - x0), int(y1 - y0)`` of
    ``boxes_xyxy[k]`` (DensePose's ``make_int_box``), with ``w, h`` at least 1.
    """

    image_size: tuple[int, int]
    boxes_xyxy: torch.Tensor
    scores: torch.Tensor
    labels: list[torch.Tensor]
    uv: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.labels)


def int_box_xywh(box_xyxy: torch.Tensor) -> tuple[int, int, int, int]:
    """DensePose's integer box: ``XYXY -> XYWH`` in float, then each value truncated."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy.to(torch.float32))
    xywh = torch.tensor([x0, y0, x1 - x0, y1 - y0], dtype=torch.float32)
    x, y, w, h = (int(v) for v in xywh.long().tolist())
    return x, y, w, h


def render_densepose(image: np.ndarray, results: DensePoseResult) -> np.ndarray:
    """The demo's fine-segmentation picture of ``results`` on ``image``: RGB ``uint8`` (H, W, 3).

    ``image`` (H x W [x C]) only fixes the canvas size: the demo's grey background is zeroed
    by its visualizer (see the module docstring). Each instance clears the canvas and then
    paints its parts, so the last instance is the one left. Raises
    :class:`NoPersonFoundError` (a ``ValueError``) when
    ``results`` is empty.
    """
    height, width = np.asarray(image).shape[:2]
    if len(results) == 0:
        raise NoPersonFoundError("DensePose found no person to draw in the image")
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for box, labels in zip(results.boxes_xyxy, results.labels, strict=True):
        canvas[:] = 0
        x, y, w, h = int_box_xywh(box)
        if w <= 0 or h <= 0:
            continue
        part_index = labels.to(torch.float32).cpu().numpy().astype(np.uint8)
        person = (part_index > 0).astype(np.uint8)
        if part_index.shape != (h, w):
            # The demo resizes with cv2.resize(m, (w, h), INTER_*) where the third positional
            # argument is `dst`, so both maps actually use the default bilinear filter.
            part_index = cv2.resize(part_index, (w, h))
            person = cv2.resize(person, (w, h))
        region = canvas[y : y + h, x : x + w]
        rows, cols = region.shape[:2]
        person = person[:rows, :cols] > 0
        region[person] = part_labels_to_rgb(part_index[:rows, :cols])[person]
    return canvas
