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

from ...errors import NoPersonFoundError

#: Number of DensePose fine-segmentation part labels (I = 1..24; 0 is background).
N_PART_LABELS = 24

# OpenCV's COLORMAP_PARULA (OpenCV 4.x, ``applyColorMap`` on 0..255), 256 RGB triples in hex.
_PARULA_RGB_HEX = (
    "352a87332c8a322e8d302f8f2f31922d33952c35982a379b28389e273aa0253ca3243ea6223fa92141ac1f43af1d45b1"
    "1c47b41a48b7194aba174cbd164ebf1450c21251c51153c80f55cb0e57ce0c58d00b5ad3095cd6085ed90660dc0461df"
    "0363e10464e10465e00566e00567df0668df066adf076bde076cde086ddd086edd096fdc0970dc0a71dc0b72db0b73db"
    "0c74da0c75da0d76da0d77d90e78d90e7ad80f7bd80f7cd8107dd7107ed7117fd61180d61281d61382d51383d51484d4"
    "1485d41386d31387d31388d3128ad2128bd2118cd1118dd1108ed0108fd00f90d00f91cf0f92cf0e93ce0e94ce0d95cd"
    "0d96cd0c97cc0c98cc0c9acc0b9bcb0b9ccb0a9dca0a9eca099fc909a0c908a1c808a2c808a3c807a4c707a5c706a6c6"
    "07a7c608a8c40aa8c30ba9c20da9c10eaabf10abbe12abbd13acbb15acba16adb918adb819aeb61bafb51dafb41eb0b3"
    "20b0b121b1b023b1af24b2ae26b3ac28b3ab29b4aa2bb4a92cb5a72eb5a62fb6a531b6a433b7a234b8a136b8a037b99f"
    "39b99d3cb99c3fb99b42ba9945ba9848ba974aba954dba9450bb9353bb9156bb9058bb8e5bbb8d5ebc8c61bc8a64bc89"
    "67bc8869bc866cbc856fbd8472bd8275bd8178bd807abd7e7dbe7d80be7c83be7a86be7988be788bbf768ebf7591bf74"
    "93bf7296bf7298bf719abe709cbe6f9fbe6ea1be6da3be6ca5be6ba7bd6aaabd69acbd68aebd68b0bd67b3bd66b5bd65"
    "b7bc64b9bc63bbbc62bebc61c0bc60c2bc5fc4bb5ec7bb5ec9bb5dcbbb5ccdbb5bd0bb5ad2bb59d4ba58d6ba57d8ba56"
    "daba55dbbb54dcbc53ddbc51debd50dfbe4fe0be4ee2bf4ce3bf4be4c04ae5c149e6c147e7c246e8c345e9c343eac442"
    "ebc541ecc540eec63eefc63df0c73cf1c83bf2c839f3c938f4ca37f5ca36f6cb34f7cb33f9cc32facd31fbcd2ffcce2e"
    "fccf2dfcd12cfcd22bfcd32afcd529fbd628fbd827fbd926fbdb25fbdc24fbdd23fbdf22fbe021fbe220fbe31ffbe41e"
    "fae61dfae71cfae91bfaea1afaeb19faed18faee17faf016faf115faf314f9f413f9f512f9f711f9f810f9fa0ff9fb0e"
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
