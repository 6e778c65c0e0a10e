"""Box and region operators of a two-stage detector, in plain PyTorch (no torchvision).

These reproduce the semantics detectron2 relies on (which in turn come from torchvision's
C++ kernels), so that a detectron2 checkpoint gives the same detections here:

- :func:`roi_align`: RoIAlign (Mask R-CNN, He et al. 2017), both the legacy ``aligned=False``
  variant used by detectron2's ``"ROIAlign"`` pooler type and the half-pixel corrected
  ``aligned=True`` variant (``"ROIAlignV2"``);
- :func:`nms` / :func:`batched_nms`: greedy non-maximum suppression, IoU strictly greater
  than the threshold suppresses, result sorted by decreasing score;
- :func:`apply_deltas` / :func:`get_deltas`: the R-CNN box parameterisation with
  detectron2's ``Box2BoxTransform`` weights and scale clamp;
- :func:`grid_anchors`: detectron2's ``DefaultAnchorGenerator`` (anchors centred on
  ``offset * stride`` grid points);
- :func:`assign_boxes_to_levels`: FPN level assignment (FPN paper eq. 1).

torchvision is not a dependency: no torchvision build matches the torch this project is tested
with (``torch==2.13.0``). This re-implementation stays while that holds (docs/design.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

#: detectron2's default clamp on predicted log-scale deltas: boxes grow at most 1000/16 times.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)

# Upper bound on elements gathered at once in roi_align (limits peak memory on big inputs).
_ROI_ALIGN_CHUNK_ELEMENTS = 16_000_000


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas of ``(N, 4)`` XYXY boxes (no +1: continuous coordinates)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def pairwise_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """IoU matrix ``(N, M)`` of XYXY boxes, computed as ``inter / (area_a + area_b - inter)``."""
    top_left = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (box_area(boxes_a)[:, None] + box_area(boxes_b)[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS: indices of the kept boxes, highest score first.

    A box is dropped when its IoU with an already kept, higher-scoring box is *strictly*
    greater than ``iou_threshold`` (torchvision semantics; equal IoU keeps both).
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order].float()
    overlaps = (pairwise_iou(sorted_boxes, sorted_boxes) > iou_threshold).cpu().numpy()
    removed = np.zeros(len(order), dtype=bool)
    kept: list[int] = []
    for i in range(len(order)):
        if removed[i]:
            continue
        kept.append(i)
        removed |= overlaps[i]
    return order[torch.as_tensor(kept, dtype=torch.int64, device=order.device)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS run independently within each group (class or FPN level).

    Returns indices into the inputs sorted by decreasing score, as torchvision's
    ``batched_nms`` (which detectron2 calls for both RPN and detection NMS).
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    keep_mask = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    for group in torch.unique(groups):
        members = torch.nonzero(groups == group).flatten()
        keep_mask[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    kept = torch.nonzero(keep_mask).flatten()
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


def apply_deltas(
    deltas: torch.Tensor,
    boxes: torch.Tensor,
    weights: Sequence[float],
    scale_clamp: float = DEFAULT_SCALE_CLAMP,
) -> torch.Tensor:
    """Decode ``(N, 4k)`` deltas ``(dx, dy, dw, dh)`` against ``(N, 4)`` XYXY boxes.

    The R-CNN parameterisation (Girshick 2015): the centre moves by ``dx * width`` and the
    width scales by ``exp(dw)``, with the deltas first divided by ``weights`` and ``dw, dh``
    clamped to ``scale_clamp``. Returns ``(N, 4k)`` XYXY boxes.
    """
    deltas = deltas.float()
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=scale_clamp)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=scale_clamp)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    decoded = torch.stack(
        (
            pred_ctr_x - 0.5 * pred_w,
            pred_ctr_y - 0.5 * pred_h,
            pred_ctr_x + 0.5 * pred_w,
            pred_ctr_y + 0.5 * pred_h,
        ),
        dim=-1,
    )
    return decoded.reshape(deltas.shape)


def get_deltas(
    src_boxes: torch.Tensor, target_boxes: torch.Tensor, weights: Sequence[float]
) -> torch.Tensor:
    """Inverse of :func:`apply_deltas` (without clamping): deltas taking src to target."""
    src_w = src_boxes[:, 2] - src_boxes[:, 0]
    src_h = src_boxes[:, 3] - src_boxes[:, 1]
    src_cx = src_boxes[:, 0] + 0.5 * src_w
    src_cy = src_boxes[:, 1] + 0.5 * src_h
    tgt_w = target_boxes[:, 2] - target_boxes[:, 0]
    tgt_h = target_boxes[:, 3] - target_boxes[:, 1]
    tgt_cx = target_boxes[:, 0] + 0.5 * tgt_w
    tgt_cy = target_boxes[:, 1] + 0.5 * tgt_h
    wx, wy, ww, wh = weights
    return torch.stack(
        (
            wx * (tgt_cx - src_cx) / src_w,
            wy * (tgt_cy - src_cy) / src_h,
            ww * torch.log(tgt_w / src_w),
            wh * torch.log(tgt_h / src_h),
        ),
        dim=1,
    )


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Clamp XYXY boxes to ``[0, width] x [0, height]`` (returns a new tensor)."""
    return torch.stack(
        (
            boxes[:, 0].clamp(min=0, max=width),
            boxes[:, 1].clamp(min=0, max=height),
            boxes[:, 2].clamp(min=0, max=width),
            boxes[:, 3].clamp(min=0, max=height),
        ),
        dim=-1,
    )


def nonempty(boxes: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Mask of boxes whose both sides are strictly longer than ``threshold``."""
    return ((boxes[:, 2] - boxes[:, 0]) > threshold) & ((boxes[:, 3] - boxes[:, 1]) > threshold)


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """Anchors centred on (0, 0), size-major then aspect ratio (``h / w``), XYXY ``(A, 4)``."""
    anchors = []
    for size in sizes:
        area = float(size) ** 2.0
        for aspect_ratio in aspect_ratios:
            w = math.sqrt(area / aspect_ratio)
            h = aspect_ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors, dtype=torch.float32)


def grid_anchors(
    grid_size: tuple[int, int], stride: int, base_anchors: torch.Tensor, offset: float = 0.0
) -> torch.Tensor:
    """All anchors of one feature map, ``(H * W * A, 4)``: location-major, anchor-minor.

    Location ``(i, j)`` is centred at ``((j + offset) * stride, (i + offset) * stride)``
    in input-image pixels, as detectron2's ``DefaultAnchorGenerator``.
    """
    height, width = grid_size
    shifts_x = torch.arange(offset * stride, width * stride, step=stride, dtype=torch.float32)
    shifts_y = torch.arange(offset * stride, height * stride, step=stride, dtype=torch.float32)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    base = base_anchors.to(shifts.device)
    return (shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)


def assign_boxes_to_levels(
    boxes: torch.Tensor,
    min_level: int,
    max_level: int,
    canonical_box_size: float = 224.0,
    canonical_level: int = 4,
) -> torch.Tensor:
    """FPN level of each box, as an offset from ``min_level`` (FPN paper, eq. 1).

    ``level = floor(canonical_level + log2(sqrt(area) / canonical_box_size + 1e-8))``,
    clamped to ``[min_level, max_level]``.
    """
    box_sizes = torch.sqrt(box_area(boxes))
    levels = torch.floor(canonical_level + torch.log2(box_sizes / canonical_box_size + 1e-8))
    levels = torch.clamp(levels, min=min_level, max=max_level)
    return levels.to(torch.int64) - min_level


def _axis_sampling(
    start: torch.Tensor, bin_size: torch.Tensor, pooled: int, grid: int, length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear taps along one axis for every sample point of every box.

    Returns ``(low_index, high_index, low_weight, high_weight)``, each ``(R, pooled * grid)``;
    the weights are zero for samples outside ``[-1, length]`` (those contribute 0).
    """
    bins = torch.arange(pooled, dtype=start.dtype, device=start.device)
    taps = torch.arange(grid, dtype=start.dtype, device=start.device) + 0.5
    coords = (
        start[:, None, None]
        + bins[None, :, None] * bin_size[:, None, None]
        + taps[None, None, :] * bin_size[:, None, None] / grid
    ).reshape(len(start), pooled * grid)
    inside = ((coords >= -1.0) & (coords <= length)).to(coords.dtype)
    coords = coords.clamp(min=0)
    low = coords.floor().to(torch.int64)
    at_end = low >= length - 1
    low = torch.where(at_end, torch.full_like(low, length - 1), low)
    high = torch.where(at_end, low, low + 1)
    coords = torch.where(at_end, low.to(coords.dtype), coords)
    frac = coords - low.to(coords.dtype)
    return low, high, (1.0 - frac) * inside, frac * inside


def roi_align(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """RoIAlign of ``(R, 5)`` rois ``(batch_index, x1, y1, x2, y2)`` -> ``(R, C, ph, pw)``.

    Each output bin averages ``sampling_ratio**2`` bilinear samples placed at the centres of
    a regular sub-grid of the bin (``sampling_ratio <= 0``: ``ceil(roi_size / pooled)``
    samples per box). Box corners are multiplied by ``spatial_scale``; with ``aligned=True``
    they are also shifted by -0.5 so pixel ``i`` covers ``[i, i + 1)`` (RoIAlignV2). With
    ``aligned=False`` (legacy) rois are made at least one feature pixel wide and high.
    Samples with a coordinate below -1 or above the map size contribute zero; samples in
    ``[-1, 0]`` read the border.
    """
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    pooled_h, pooled_w = output_size
    num_rois = rois.shape[0]
    channels, height, width = features.shape[1:]
    out = features.new_zeros((num_rois, channels, pooled_h, pooled_w))
    if num_rois == 0:
        return out
    rois = rois.to(features.dtype)
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x1
    roi_h = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    bin_w = roi_w / pooled_w
    bin_h = roi_h / pooled_h
    if sampling_ratio > 0:
        grid_h = torch.full((num_rois,), sampling_ratio, dtype=torch.int64)
        grid_w = grid_h.clone()
    else:
        grid_h = torch.ceil(roi_h / pooled_h).to(torch.int64).cpu()
        grid_w = torch.ceil(roi_w / pooled_w).to(torch.int64).cpu()
    batch_index = rois[:, 0].round().to(torch.int64).cpu()
    flat_features = features.reshape(features.shape[0], channels, height * width)

    # Boxes sharing an image and a sampling grid are processed together, in chunks.
    keys = torch.stack((batch_index, grid_h, grid_w), dim=1)
    for key in torch.unique(keys, dim=0).tolist():
        image_index, gh, gw = key
        members = torch.nonzero((keys == torch.tensor(key)).all(dim=1)).flatten()
        samples = max(gh, 1) * pooled_h * max(gw, 1) * pooled_w
        chunk = max(1, _ROI_ALIGN_CHUNK_ELEMENTS // max(1, channels * samples))
        for begin in range(0, len(members), chunk):
            idx = members[begin : begin + chunk].to(features.device)
            out[idx] = _roi_align_group(
                flat_features[image_index],
                (height, width),
                (x1[idx], y1[idx], bin_w[idx], bin_h[idx]),
                (pooled_h, pooled_w),
                (gh, gw),
            )
    return out


def _roi_align_group(
    flat_features: torch.Tensor,
    map_size: tuple[int, int],
    geometry: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    pooled: tuple[int, int],
    grid: tuple[int, int],
) -> torch.Tensor:
    """RoIAlign for boxes of one image with one sampling grid; ``(R, C, ph, pw)``."""
    height, width = map_size
    x1, y1, bin_w, bin_h = geometry
    pooled_h, pooled_w = pooled
    grid_h, grid_w = grid
    channels = flat_features.shape[0]
    num_rois = len(x1)
    if grid_h <= 0 or grid_w <= 0:  # empty sampling grid: torchvision divides by count=1
        return flat_features.new_zeros((num_rois, channels, pooled_h, pooled_w))
    y_low, y_high, wy_low, wy_high = _axis_sampling(y1, bin_h, pooled_h, grid_h, height)
    x_low, x_high, wx_low, wx_high = _axis_sampling(x1, bin_w, pooled_w, grid_w, width)
    total = None
    for y_idx, wy in ((y_low, wy_low), (y_high, wy_high)):
        for x_idx, wx in ((x_low, wx_low), (x_high, wx_high)):
            flat_index = y_idx[:, :, None] * width + x_idx[:, None, :]  # (R, Sy, Sx)
            values = flat_features[:, flat_index.reshape(-1)].reshape(
                channels, num_rois, flat_index.shape[1], flat_index.shape[2]
            )
            term = values * (wy[:, :, None] * wx[:, None, :])[None]
            total = term if total is None else total + term
    total = total.reshape(channels, num_rois, pooled_h, grid_h, pooled_w, grid_w)
    pooled_values = total.sum(dim=(3, 5)) / float(grid_h * grid_w)
    return pooled_values.permute(1, 0, 2, 3)
