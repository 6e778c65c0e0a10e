"""DensePose R-CNN (R50-FPN, s1x) network and inference in plain PyTorch, without detectron2.

IDM-VTON conditions its TryonNet on a DensePose picture of the person (paper Sec. 3.2). The
official demo makes it with detectron2's DensePose project (config
``densepose_rcnn_R_50_FPN_s1x.yaml``, weights ``model_final_162be9.pkl``), and detectron2 does
not install from PyPI. This module re-implements exactly the inference path that the demo runs:

1. ``DefaultPredictor`` preprocessing: shortest edge resized to 800 (longest at most 1333)
   with PIL bilinear, BGR, minus the Caffe2 pixel mean, zero padding to a multiple of 32;
2. ResNet-50 with frozen batch norm (stride in the 1x1 conv, MSRA weights) + FPN (P2..P5,
   P6 by stride-2 max pooling) -- Lin et al., "Feature Pyramid Networks", 2017;
3. RPN: one size per level (32..512) x aspect ratios (0.5, 1, 2), deltas decoded with unit
   weights, top 1000 per level, per-level NMS at 0.7, 1000 proposals kept;
4. Fast R-CNN box head (RoIAlign 7x7, sampling ratio 2, ``aligned=False`` because the config
   says ``POOLER_TYPE: "ROIAlign"``; FPN level assignment), softmax scores, class-specific
   deltas with weights (10, 10, 5, 5), score threshold 0.8 (``apply_net show``'s
   ``--min_score`` default), NMS 0.5, at most 100 detections;
5. DensePose head (Guler et al., "DensePose", 2018; detectron2's improved baseline): the
   Panoptic-FPN style decoder merging P2..P5 at stride 4, RoIAlign 28x28, eight 3x3 conv +
   ReLU layers, four stride-2 transposed convs (coarse segmentation, 24 parts + background,
   U, V) and a bilinear x2 upscale;
6. results mapped back to the photo (boxes rescaled and clipped) and each instance's
   predictions resampled to its integer box: part = argmax(fine) where argmax(coarse) > 0.

Module sizes (channels, blocks per stage, stacked convs, decoder, pooler resolution of the box
head) are read off the checkpoint's weight shapes, so a scaled-down checkpoint with the real
key names runs too. The decoder is used when the checkpoint has ``roi_heads.decoder.*`` weights
(``model_final_162be9.pkl`` was published after detectron2 made ``DECODER_ON`` the default, so
it should); without them the DensePose head pools P2..P5 by FPN level like the box head.
Thresholds and other settings that weights cannot tell are in :class:`DensePoseRCNNConfig`,
defaulting to the values the demo runs with.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from idm_vton.errors import PreprocessModelError
from idm_vton.preprocess.densepose.render import N_PART_LABELS, DensePoseResult, int_box_xywh
from idm_vton.preprocess.densepose.roi_ops import (
    apply_deltas,
    assign_boxes_to_levels,
    batched_nms,
    cell_anchors,
    clip_boxes,
    grid_anchors,
    nonempty,
    roi_align,
)
from idm_vton.preprocess.densepose.weights import DENSEPOSE_WEIGHTS_SOURCE

__all__ = ["DensePoseRCNN", "DensePoseRCNNConfig", "chart_outputs_to_box"]

logger = logging.getLogger(__name__)

_WHAT = "DensePose R-CNN"
_FPN_LEVELS = (2, 3, 4, 5)  # P2..P5 come from res2..res5; P6 is pooled from P5
_RPN_LEVELS = (2, 3, 4, 5, 6)


@dataclass(frozen=True)
class DensePoseRCNNConfig:
    """Inference settings that the weights do not encode.

    Defaults are detectron2's defaults merged with ``Base-DensePose-RCNN-FPN.yaml``,
    ``densepose_rcnn_R_50_FPN_s1x.yaml`` and ``apply_net.py show``'s ``--min_score 0.8``.
    """

    min_size_test: int = 800
    max_size_test: int = 1333
    pixel_mean_bgr: tuple[float, float, float] = (103.530, 116.280, 123.675)
    pixel_std_bgr: tuple[float, float, float] = (1.0, 1.0, 1.0)
    size_divisibility: int = 32
    anchor_sizes: tuple[tuple[float, ...], ...] = ((32,), (64,), (128,), (256,), (512,))
    anchor_aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_offset: float = 0.0
    rpn_pre_nms_topk: int = 1000
    rpn_post_nms_topk: int = 1000
    rpn_nms_threshold: float = 0.7
    rpn_min_box_size: float = 0.0
    rpn_box_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    box_pooler_sampling_ratio: int = 2
    box_pooler_aligned: bool = False
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    score_threshold: float = 0.8
    nms_threshold: float = 0.5
    detections_per_image: int = 100
    densepose_pooler_resolution: int = 28
    densepose_pooler_sampling_ratio: int = 2
    densepose_pooler_aligned: bool = False
    densepose_up_scale: int = 2
    canonical_box_size: float = 224.0
    canonical_level: int = 4


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters (detectron2's, eps 1e-5)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            # detectron2's autograd branch: the folded affine form (no weight/bias gradients).
            scale = self.weight * (self.running_var + self.eps).rsqrt()
            bias = self.bias - self.running_mean * scale
            return x * scale.view(1, -1, 1, 1).to(x.dtype) + bias.view(1, -1, 1, 1).to(x.dtype)
        # Inference exactly as detectron2: the fused batch-norm op. Its rounding differs from the
        # folded form by ~1e-5 after 53 layers, enough to reorder near-tied detections.
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=False,
            momentum=0.0,
            eps=self.eps,
        )


class ConvFrozenBN(nn.Conv2d):
    """Bias-free conv followed by its ``norm`` (detectron2 ``Conv2d(..., norm=FrozenBN)``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, **kwargs) -> None:
        super().__init__(in_channels, out_channels, kernel_size, bias=False, **kwargs)
        self.norm = FrozenBatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


class ConvReLU(nn.Conv2d):
    """Conv with bias followed by ReLU (detectron2 ``Conv2d(..., activation=F.relu)``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x))


class BasicStem(nn.Module):
    """7x7 stride-2 conv + frozen BN + ReLU, then 3x3 stride-2 max pooling."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvFrozenBN(3, out_channels, 7, stride=2, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """ResNet bottleneck; the stride sits in the first 1x1 conv (MSRA / Caffe2 weights).

    The identity shortcut becomes a 1x1 conv + frozen BN (``shortcut``) where the checkpoint
    has one (detectron2 adds it when the channel count changes).
    """

    def __init__(
        self,
        in_channels: int,
        spec: _StageSpec,
        stride: int,
        projection: bool,
    ) -> None:
        super().__init__()
        out_channels = spec.out_channels
        self.shortcut = (
            ConvFrozenBN(in_channels, out_channels, 1, stride=stride) if projection else None
        )
        self.conv1 = ConvFrozenBN(in_channels, spec.bottleneck, 1, stride=stride)
        self.conv2 = ConvFrozenBN(
            spec.bottleneck, spec.bottleneck, 3, padding=1, groups=spec.groups
        )
        self.conv3 = ConvFrozenBN(spec.bottleneck, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + shortcut)


@dataclass
class _StageSpec:
    blocks: int
    bottleneck: int
    out_channels: int
    groups: int
    projections: tuple[bool, ...]  # per block: has a `shortcut` conv


@dataclass
class _Architecture:
    """Module sizes read off a checkpoint."""

    stem_channels: int
    stages: dict[int, _StageSpec]
    fpn_channels: int
    num_anchors: int
    box_pooler_resolution: int
    box_fc_dims: list[int]
    num_classes: int
    class_agnostic_boxes: bool
    decoder_convs: dict[int, int] | None  # level -> number of 3x3 convs
    decoder_channels: int
    decoder_out_channels: int
    densepose_convs: list[tuple[int, int]]  # (out channels, kernel) per stacked conv
    predictor_kernel: int
    coarse_channels: int
    fine_channels: int


class ResNet(nn.Module):
    """ResNet bottom-up network returning res2..res5 (``backbone.bottom_up.*``)."""

    def __init__(self, arch: _Architecture) -> None:
        super().__init__()
        self.stem = BasicStem(arch.stem_channels)
        in_channels = arch.stem_channels
        for level in _FPN_LEVELS:
            spec = arch.stages[level]
            blocks = []
            for index in range(spec.blocks):
                stride = 2 if (index == 0 and level > 2) else 1
                blocks.append(BottleneckBlock(in_channels, spec, stride, spec.projections[index]))
                in_channels = spec.out_channels
            self.add_module(f"res{level}", nn.Sequential(*blocks))

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        x = self.stem(x)
        outputs = {}
        for level in _FPN_LEVELS:
            x = getattr(self, f"res{level}")(x)
            outputs[level] = x
        return outputs


class FPNBackbone(nn.Module):
    """ResNet + FPN (``backbone.*``): P2..P5 by top-down nearest x2 + lateral 1x1, then 3x3.

    P6 is a 1x1 stride-2 max pool of P5 (detectron2's ``LastLevelMaxPool``).
    """

    def __init__(self, arch: _Architecture) -> None:
        super().__init__()
        self.bottom_up = ResNet(arch)
        for level in _FPN_LEVELS:
            in_channels = arch.stages[level].out_channels
            self.add_module(f"fpn_lateral{level}", nn.Conv2d(in_channels, arch.fpn_channels, 1))
            self.add_module(
                f"fpn_output{level}",
                nn.Conv2d(arch.fpn_channels, arch.fpn_channels, 3, padding=1),
            )

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        bottom_up = self.bottom_up(x)
        top = _FPN_LEVELS[-1]
        prev = getattr(self, f"fpn_lateral{top}")(bottom_up[top])
        outputs = {top: getattr(self, f"fpn_output{top}")(prev)}
        for level in reversed(_FPN_LEVELS[:-1]):
            top_down = F.interpolate(prev, scale_factor=2.0, mode="nearest")
            prev = getattr(self, f"fpn_lateral{level}")(bottom_up[level]) + top_down
            outputs[level] = getattr(self, f"fpn_output{level}")(prev)
        outputs[6] = F.max_pool2d(outputs[top], kernel_size=1, stride=2, padding=0)
        return {level: outputs[level] for level in _RPN_LEVELS}


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then per-anchor objectness logits and box deltas."""

    def __init__(self, channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.objectness_logits = nn.Conv2d(channels, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(channels, num_anchors * 4, 1)

    def forward(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(N, H*W*A)`` and deltas ``(N, H*W*A, 4)``, location-major like anchors."""
        hidden = F.relu(self.conv(feature))
        logits = self.objectness_logits(hidden)
        deltas = self.anchor_deltas(hidden)
        n, a, h, w = logits.shape
        logits = logits.permute(0, 2, 3, 1).flatten(1)
        deltas = deltas.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).flatten(1, -2)
        return logits, deltas


class RPN(nn.Module):
    """Region proposal network (``proposal_generator.*``) at test time."""

    def __init__(self, arch: _Architecture, config: DensePoseRCNNConfig) -> None:
        super().__init__()
        self.config = config
        self.rpn_head = RPNHead(arch.fpn_channels, arch.num_anchors)
        self._cell_anchors = [
            cell_anchors(sizes, config.anchor_aspect_ratios) for sizes in config.anchor_sizes
        ]

    def forward(
        self, features: dict[int, torch.Tensor], image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Proposal boxes ``(P, 4)`` in input-image pixels, sorted by decreasing objectness."""
        config = self.config
        boxes, scores, levels = [], [], []
        for level_index, level in enumerate(_RPN_LEVELS):
            feature = features[level]
            logits, deltas = self.rpn_head(feature)
            anchors = grid_anchors(
                tuple(feature.shape[-2:]),
                2**level,
                self._cell_anchors[level_index],
                config.anchor_offset,
            ).to(feature.device)
            proposals = apply_deltas(deltas[0], anchors, config.rpn_box_weights)
            k = min(config.rpn_pre_nms_topk, logits.shape[1])
            top_scores, top_index = logits[0].topk(k)
            boxes.append(proposals[top_index])
            scores.append(top_scores)
            levels.append(torch.full((k,), level_index, dtype=torch.int64, device=logits.device))
        boxes_all, scores_all, levels_all = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
        valid = torch.isfinite(boxes_all).all(dim=1) & torch.isfinite(scores_all)
        boxes_all, scores_all, levels_all = boxes_all[valid], scores_all[valid], levels_all[valid]
        boxes_all = clip_boxes(boxes_all, *image_size)
        keep = nonempty(boxes_all, config.rpn_min_box_size)
        boxes_all, scores_all, levels_all = boxes_all[keep], scores_all[keep], levels_all[keep]
        keep = batched_nms(boxes_all, scores_all, levels_all, config.rpn_nms_threshold)
        return boxes_all[keep[: config.rpn_post_nms_topk]]


class FastRCNNConvFCHead(nn.Module):
    """Box head ``fc1, fc2, ...`` (each Linear + ReLU) on flattened pooled features."""

    def __init__(self, in_features: int, fc_dims: Sequence[int]) -> None:
        super().__init__()
        self.num_fc = len(fc_dims)
        for index, dim in enumerate(fc_dims):
            self.add_module(f"fc{index + 1}", nn.Linear(in_features, dim))
            in_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, start_dim=1)
        for index in range(self.num_fc):
            x = F.relu(getattr(self, f"fc{index + 1}")(x))
        return x


class FastRCNNOutputLayers(nn.Module):
    """Classifier (``cls_score``, last class = background) and box regressor (``bbox_pred``)."""

    def __init__(self, in_features: int, num_classes: int, class_agnostic: bool) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, 4 * (1 if class_agnostic else num_classes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class Decoder(nn.Module):
    """Merges P2..P5 into one stride-4 map (Panoptic FPN semantic branch; ``decoder.*``).

    Level ``l`` goes through ``n_l`` 3x3 conv + ReLU layers, each followed by a bilinear x2
    upsample unless the level is already at stride 4; the sum goes through a 1x1 predictor.
    """

    def __init__(
        self, in_channels: int, conv_dims: int, out_channels: int, convs: dict[int, int]
    ) -> None:
        super().__init__()
        self.levels = sorted(convs)
        for level in self.levels:
            layers: list[nn.Module] = []
            for index in range(convs[level]):
                layers.append(
                    ConvReLU(in_channels if index == 0 else conv_dims, conv_dims, 3, 1, 1)
                )
                if level != 2:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.add_module(f"p{level}", nn.Sequential(*layers))
        self.predictor = nn.Conv2d(conv_dims, out_channels, 1)

    def forward(self, features: dict[int, torch.Tensor]) -> torch.Tensor:
        merged = None
        for level in self.levels:
            out = getattr(self, f"p{level}")(features[level])
            merged = out if merged is None else merged + out
        return self.predictor(merged)


class DensePoseV1ConvXHead(nn.Module):
    """Stacked ``body_conv_fcn{i}`` convs, each followed by ReLU."""

    def __init__(self, in_channels: int, convs: Sequence[tuple[int, int]]) -> None:
        super().__init__()
        self.n_stacked_convs = len(convs)
        for index, (out_channels, kernel) in enumerate(convs):
            self.add_module(
                f"body_conv_fcn{index + 1}",
                nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2),
            )
            in_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index in range(self.n_stacked_convs):
            x = F.relu(getattr(self, f"body_conv_fcn{index + 1}")(x))
        return x


class DensePoseChartPredictor(nn.Module):
    """Transposed-conv predictors for coarse/fine segmentation and U, V, then bilinear xN."""

    def __init__(
        self, in_channels: int, coarse: int, fine: int, kernel: int, up_scale: int
    ) -> None:
        super().__init__()
        padding = int(kernel / 2 - 1)
        self.ann_index_lowres = nn.ConvTranspose2d(in_channels, coarse, kernel, 2, padding)
        self.index_uv_lowres = nn.ConvTranspose2d(in_channels, fine, kernel, 2, padding)
        self.u_lowres = nn.ConvTranspose2d(in_channels, fine, kernel, 2, padding)
        self.v_lowres = nn.ConvTranspose2d(in_channels, fine, kernel, 2, padding)
        self.up_scale = up_scale

    def _upscale(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.up_scale, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "coarse_segm": self._upscale(self.ann_index_lowres(x)),
            "fine_segm": self._upscale(self.index_uv_lowres(x)),
            "u": self._upscale(self.u_lowres(x)),
            "v": self._upscale(self.v_lowres(x)),
        }


class DensePoseROIHeads(nn.Module):
    """Box head + DensePose head on FPN features (``roi_heads.*``)."""

    def __init__(self, arch: _Architecture, config: DensePoseRCNNConfig) -> None:
        super().__init__()
        self.config = config
        self.box_pooler_resolution = arch.box_pooler_resolution
        box_in = arch.fpn_channels * arch.box_pooler_resolution**2
        self.box_head = FastRCNNConvFCHead(box_in, arch.box_fc_dims)
        self.box_predictor = FastRCNNOutputLayers(
            arch.box_fc_dims[-1], arch.num_classes, arch.class_agnostic_boxes
        )
        if arch.decoder_convs is not None:
            self.decoder = Decoder(
                arch.fpn_channels,
                arch.decoder_channels,
                arch.decoder_out_channels,
                arch.decoder_convs,
            )
            densepose_in = arch.decoder_out_channels
        else:
            self.decoder = None
            densepose_in = arch.fpn_channels
        self.densepose_head = DensePoseV1ConvXHead(densepose_in, arch.densepose_convs)
        self.densepose_predictor = DensePoseChartPredictor(
            arch.densepose_convs[-1][0],
            arch.coarse_channels,
            arch.fine_channels,
            arch.predictor_kernel,
            config.densepose_up_scale,
        )

    def _pool_multilevel(
        self,
        features: dict[int, torch.Tensor],
        boxes: torch.Tensor,
        resolution: int,
        sampling_ratio: int,
        aligned: bool,
    ) -> torch.Tensor:
        rois = torch.cat([boxes.new_zeros((len(boxes), 1)), boxes], dim=1)
        levels = assign_boxes_to_levels(
            boxes,
            _FPN_LEVELS[0],
            _FPN_LEVELS[-1],
            self.config.canonical_box_size,
            self.config.canonical_level,
        )
        channels = features[_FPN_LEVELS[0]].shape[1]
        pooled = boxes.new_zeros((len(boxes), channels, resolution, resolution))
        for index, level in enumerate(_FPN_LEVELS):
            members = torch.nonzero(levels == index).flatten()
            if len(members):
                pooled[members] = roi_align(
                    features[level],
                    rois[members],
                    resolution,
                    1.0 / 2**level,
                    sampling_ratio,
                    aligned,
                )
        return pooled

    def detect_boxes(
        self,
        features: dict[int, torch.Tensor],
        proposals: torch.Tensor,
        image_size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Detections (boxes ``(D, 4)``, scores ``(D,)``) sorted by decreasing score."""
        config = self.config
        pooled = self._pool_multilevel(
            features,
            proposals,
            self.box_pooler_resolution,
            config.box_pooler_sampling_ratio,
            config.box_pooler_aligned,
        )
        class_logits, deltas = self.box_predictor(self.box_head(pooled))
        scores = F.softmax(class_logits, dim=-1)
        boxes = apply_deltas(deltas, proposals, config.box_weights)
        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
        boxes, scores = boxes[valid], scores[valid][:, :-1]  # drop the background column
        num_box_classes = boxes.shape[1] // 4
        boxes = clip_boxes(boxes.reshape(-1, 4), *image_size).view(-1, num_box_classes, 4)
        candidates = torch.nonzero(scores > config.score_threshold)
        if num_box_classes == 1:
            boxes = boxes[candidates[:, 0], 0]
        else:
            boxes = boxes[candidates[:, 0], candidates[:, 1]]
        scores = scores[candidates[:, 0], candidates[:, 1]]
        keep = batched_nms(boxes, scores, candidates[:, 1], config.nms_threshold)
        keep = keep[: config.detections_per_image]
        return boxes[keep], scores[keep]

    def predict_densepose(
        self, features: dict[int, torch.Tensor], boxes: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """DensePose chart outputs ``(D, C, S, S)`` for each box (S = 4 x pooler resolution)."""
        config = self.config
        resolution = config.densepose_pooler_resolution
        if self.decoder is not None:
            merged = self.decoder(features)
            rois = torch.cat([boxes.new_zeros((len(boxes), 1)), boxes], dim=1)
            pooled = roi_align(
                merged,
                rois,
                resolution,
                1.0 / 2 ** _FPN_LEVELS[0],
                config.densepose_pooler_sampling_ratio,
                config.densepose_pooler_aligned,
            )
        else:
            pooled = self._pool_multilevel(
                features,
                boxes,
                resolution,
                config.densepose_pooler_sampling_ratio,
                config.densepose_pooler_aligned,
            )
        return self.densepose_predictor(self.densepose_head(pooled))


class DensePoseRCNN(nn.Module):
    """DensePose R-CNN with detectron2's module names; see the module docstring for the steps.

    Build it from a checkpoint with :meth:`from_state_dict`; call :meth:`predict` on an RGB
    ``uint8`` image.
    """

    def __init__(self, arch: _Architecture, config: DensePoseRCNNConfig | None = None) -> None:
        super().__init__()
        self.config = config or DensePoseRCNNConfig()
        self.arch = arch
        self.backbone = FPNBackbone(arch)
        self.proposal_generator = RPN(arch, self.config)
        self.roi_heads = DensePoseROIHeads(arch, self.config)

    @classmethod
    def from_state_dict(
        cls, state_dict: dict[str, torch.Tensor], config: DensePoseRCNNConfig | None = None
    ) -> DensePoseRCNN:
        """Build the network with sizes read from ``state_dict`` and load it (all keys checked)."""
        config = config or DensePoseRCNNConfig()
        arch = _infer_architecture(state_dict, config)
        model = cls(arch, config)
        model.load_checked_state_dict(state_dict)
        return model.eval()

    def load_checked_state_dict(self, state_dict: dict[str, torch.Tensor]) -> list[str]:
        """Load detectron2-named weights; every model key must be present with its shape.

        Checkpoint keys that the model does not use are an error inside the modules this
        network runs (a different architecture) and are otherwise returned (and logged) as
        ignored, e.g. training-only buffers or heads of other tasks.
        """
        own = self.state_dict()
        state_dict = with_default_frozen_bn_stats(state_dict)
        missing = sorted(set(own) - set(state_dict))
        if missing:
            raise PreprocessModelError(
                f"{_WHAT} checkpoint lacks {len(missing)} weights the network needs, e.g. "
                f"{missing[:5]}; is it the R50-FPN DensePose model from {DENSEPOSE_WEIGHTS_SOURCE}?"
            )
        bad_shapes = [
            f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(value.shape)}"
            for key, value in own.items()
            if tuple(state_dict[key].shape) != tuple(value.shape)
        ]
        if bad_shapes:
            raise PreprocessModelError(
                f"{_WHAT} checkpoint has weights of unexpected shape: {bad_shapes[:5]}"
            )
        unused = sorted(set(state_dict) - set(own))
        ignorable = [key for key in unused if _is_ignorable_key(key)]
        foreign = [key for key in unused if key not in ignorable]
        if foreign:
            raise PreprocessModelError(
                f"{_WHAT} checkpoint has {len(foreign)} weights this network does not use in "
                f"modules it runs, e.g. {foreign[:5]}; unsupported architecture variant"
            )
        if ignorable:
            logger.info("DensePose checkpoint: ignored %d unused entries", len(ignorable))
        self.load_state_dict(
            {key: state_dict[key].to(value.dtype) for key, value in own.items()}, strict=True
        )
        return ignorable

    def preprocess(self, image_rgb: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """Resize (shortest edge), convert to normalised BGR and pad: ``(1, 3, H', W')``."""
        config = self.config
        height, width = image_rgb.shape[:2]
        new_h, new_w = _shortest_edge_size(
            height, width, config.min_size_test, config.max_size_test
        )
        resized = np.asarray(
            Image.fromarray(image_rgb).resize((new_w, new_h), Image.Resampling.BILINEAR)
        )
        bgr = torch.from_numpy(np.ascontiguousarray(resized[:, :, ::-1])).to(torch.float32)
        device = next(self.parameters()).device
        bgr = bgr.permute(2, 0, 1).to(device)
        mean = torch.tensor(config.pixel_mean_bgr, device=device).view(3, 1, 1)
        std = torch.tensor(config.pixel_std_bgr, device=device).view(3, 1, 1)
        normalised = (bgr - mean) / std
        stride = config.size_divisibility
        pad_h = (stride - new_h % stride) % stride
        pad_w = (stride - new_w % stride) % stride
        padded = F.pad(normalised, (0, pad_w, 0, pad_h), value=0.0)
        return padded[None], (new_h, new_w)

    @torch.inference_mode()
    def predict(self, image_rgb: np.ndarray) -> DensePoseResult:
        """Detect people in an RGB ``uint8`` (H, W, 3) image and estimate their DensePose."""
        height, width = image_rgb.shape[:2]
        batch, image_size = self.preprocess(image_rgb)
        features = self.backbone(batch)
        proposals = self.proposal_generator(features, image_size)
        boxes, scores = self.roi_heads.detect_boxes(features, proposals, image_size)
        if len(boxes) == 0:
            return _empty_result((height, width))
        outputs = self.roi_heads.predict_densepose(features, boxes)
        # detectron2's detector_postprocess: rescale to the input photo, clip, drop empties.
        scale_x, scale_y = width / image_size[1], height / image_size[0]
        boxes = boxes.clone()
        boxes[:, 0::2] *= scale_x
        boxes[:, 1::2] *= scale_y
        boxes = clip_boxes(boxes, height, width)
        keep = nonempty(boxes)
        boxes, scores = boxes[keep], scores[keep]
        outputs = {name: value[keep] for name, value in outputs.items()}
        labels, uv = [], []
        for index in range(len(boxes)):
            one = {name: value[index : index + 1] for name, value in outputs.items()}
            instance_labels, instance_uv = chart_outputs_to_box(one, boxes[index])
            labels.append(instance_labels.cpu())
            uv.append(instance_uv.cpu())
        return DensePoseResult((height, width), boxes.cpu(), scores.cpu(), labels, uv)


def with_default_frozen_bn_stats(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add identity statistics to frozen BN layers saved without them (returns a new dict).

    Early detectron2 checkpoints stored only ``norm.weight``/``norm.bias``; detectron2's
    ``FrozenBatchNorm2d`` then uses running mean 0 and variance 1, as done here.
    """
    filled = dict(state_dict)
    for key, value in state_dict.items():
        if key.startswith("backbone.bottom_up.") and key.endswith(".norm.weight"):
            prefix = key[: -len("weight")]
            filled.setdefault(prefix + "running_mean", torch.zeros_like(value))
            filled.setdefault(prefix + "running_var", torch.ones_like(value))
    return filled


def chart_outputs_to_box(
    outputs: dict[str, torch.Tensor], box_xyxy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample one instance's chart outputs to its integer box: labels ``(h, w)``, uv ``(2, h, w)``.

    Bilinear (``align_corners=False``) resize of every channel to the box, then
    ``label = argmax(fine) * (argmax(coarse) > 0)``; U, V taken from the label's channel
    (0 on the background), as DensePose's ``ToChartResultConverter``.
    """
    _, _, w, h = int_box_xywh(box_xyxy)
    size = (max(h, 1), max(w, 1))

    def resize(name: str) -> torch.Tensor:
        return F.interpolate(outputs[name], size, mode="bilinear", align_corners=False)[0]

    foreground = resize("coarse_segm").argmax(dim=0) > 0
    labels = resize("fine_segm").argmax(dim=0) * foreground.long()
    on_part = (labels > 0).to(torch.float32)
    index = labels[None]
    u = resize("u").gather(0, index)[0] * on_part
    v = resize("v").gather(0, index)[0] * on_part
    return labels, torch.stack((u, v))


def _empty_result(image_size: tuple[int, int]) -> DensePoseResult:
    return DensePoseResult(image_size, torch.zeros((0, 4)), torch.zeros((0,)), labels=[], uv=[])


def _shortest_edge_size(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge.get_output_shape``: (new height, new width)."""
    size = short * 1.0
    scale = size / min(height, width)
    if height < width:
        new_h, new_w = size, scale * width
    else:
        new_h, new_w = scale * height, size
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


# --------------------------------------------------------------------------------------------
# Architecture inference from weight shapes

_CONSUMED_PREFIXES = (
    "backbone.",
    "proposal_generator.rpn_head.",
    "roi_heads.box_head.",
    "roi_heads.box_predictor.",
    "roi_heads.decoder.",
    "roi_heads.densepose_head.",
    "roi_heads.densepose_predictor.",
)


def _is_ignorable_key(key: str) -> bool:
    return (
        key.endswith("num_batches_tracked")
        or key in ("pixel_mean", "pixel_std")
        or not key.startswith(_CONSUMED_PREFIXES)
        or key.startswith("proposal_generator.anchor_generator.")
    )


def _shape(state: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise PreprocessModelError(
            f"{_WHAT} checkpoint lacks {key!r}; expected the detectron2 DensePose R-CNN FPN "
            f"model from {DENSEPOSE_WEIGHTS_SOURCE}"
        )
    return tuple(state[key].shape)


def _indices(state: dict[str, torch.Tensor], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for key in state if (m := regex.fullmatch(key))})


def _infer_architecture(
    state: dict[str, torch.Tensor], config: DensePoseRCNNConfig
) -> _Architecture:
    """The network's sizes, read from the checkpoint's tensor shapes (each part checked)."""
    stem_channels = _shape(state, "backbone.bottom_up.stem.conv1.weight")[0]
    stages = _backbone_stages(state)
    fpn_channels = _shape(state, "backbone.fpn_lateral2.weight")[0]
    num_anchors = _shape(state, "proposal_generator.rpn_head.objectness_logits.weight")[0]
    expected_anchors = len(config.anchor_sizes[0]) * len(config.anchor_aspect_ratios)
    if num_anchors != expected_anchors:
        raise PreprocessModelError(
            f"{_WHAT} checkpoint predicts {num_anchors} anchors per location but the config "
            f"defines {expected_anchors} (sizes x aspect ratios)"
        )
    resolution, box_fc_dims, num_classes, box_outputs = _box_head(state, fpn_channels)
    decoder_convs, decoder_channels, decoder_out = _decoder(state)
    densepose_convs, coarse, fine = _densepose_head(state)
    return _Architecture(
        stem_channels=stem_channels,
        stages=stages,
        fpn_channels=fpn_channels,
        num_anchors=num_anchors,
        box_pooler_resolution=resolution,
        box_fc_dims=box_fc_dims,
        num_classes=num_classes,
        class_agnostic_boxes=box_outputs == 4 and num_classes > 1,
        decoder_convs=decoder_convs,
        decoder_channels=decoder_channels,
        decoder_out_channels=decoder_out,
        densepose_convs=densepose_convs,
        predictor_kernel=coarse[2],
        coarse_channels=coarse[1],
        fine_channels=fine[1],
    )


def _backbone_stages(state: dict[str, torch.Tensor]) -> dict[int, _StageSpec]:
    """The ResNet stages res2..res5: blocks, widths, groups, projection shortcuts."""
    prefix = "backbone.bottom_up."
    stages = {}
    for level in _FPN_LEVELS:
        blocks = _indices(state, re.escape(f"{prefix}res{level}.") + r"(\d+)\.conv1\.weight")
        if blocks != list(range(len(blocks))) or not blocks:
            raise PreprocessModelError(
                f"{_WHAT} checkpoint: stage res{level} blocks are {blocks}, expected 0..n-1"
            )
        conv1 = _shape(state, f"{prefix}res{level}.0.conv1.weight")
        conv2 = _shape(state, f"{prefix}res{level}.0.conv2.weight")
        conv3 = _shape(state, f"{prefix}res{level}.0.conv3.weight")
        projections = tuple(
            f"{prefix}res{level}.{index}.shortcut.weight" in state for index in blocks
        )
        stages[level] = _StageSpec(
            len(blocks), conv1[0], conv3[0], conv1[0] // conv2[1], projections
        )
    return stages


def _box_head(state: dict[str, torch.Tensor], fpn_channels: int) -> tuple[int, list[int], int, int]:
    """(pooler resolution, fc widths, number of classes, box regression outputs)."""
    fc_indices = _indices(state, r"roi_heads\.box_head\.fc(\d+)\.weight")
    if fc_indices != list(range(1, len(fc_indices) + 1)) or not fc_indices:
        raise PreprocessModelError(f"{_WHAT} checkpoint: box head fc layers are {fc_indices}")
    box_fc_dims = [_shape(state, f"roi_heads.box_head.fc{i}.weight")[0] for i in fc_indices]
    box_in = _shape(state, "roi_heads.box_head.fc1.weight")[1]
    resolution = math.isqrt(box_in // fpn_channels)
    if resolution * resolution * fpn_channels != box_in:
        raise PreprocessModelError(
            f"{_WHAT} checkpoint: box head input {box_in} is not {fpn_channels} x R x R"
        )
    num_classes = _shape(state, "roi_heads.box_predictor.cls_score.weight")[0] - 1
    box_outputs = _shape(state, "roi_heads.box_predictor.bbox_pred.weight")[0]
    return resolution, box_fc_dims, num_classes, box_outputs


def _decoder(state: dict[str, torch.Tensor]) -> tuple[dict[int, int] | None, int, int]:
    """(convs per FPN level, channels, output channels) of the DensePose decoder, if any."""
    if not any(key.startswith("roi_heads.decoder.") for key in state):
        return None, 0, 0
    decoder_convs = {}
    for level in _FPN_LEVELS:
        convs = _indices(state, rf"roi_heads\.decoder\.p{level}\.(\d+)\.weight")
        step = 1 if level == 2 else 2  # conv, upsample, conv, upsample, ...
        if not convs or convs != list(range(0, step * len(convs), step)):
            raise PreprocessModelError(
                f"{_WHAT} checkpoint: decoder level p{level} layers are {convs}"
            )
        decoder_convs[level] = len(convs)
    decoder_channels = _shape(state, "roi_heads.decoder.p2.0.weight")[0]
    decoder_out = _shape(state, "roi_heads.decoder.predictor.weight")[0]
    return decoder_convs, decoder_channels, decoder_out


def _densepose_head(
    state: dict[str, torch.Tensor],
) -> tuple[list[tuple[int, int]], tuple[int, ...], tuple[int, ...]]:
    """(head convs as (channels, kernel), coarse and fine predictor weight shapes)."""
    dp_indices = _indices(state, r"roi_heads\.densepose_head\.body_conv_fcn(\d+)\.weight")
    if dp_indices != list(range(1, len(dp_indices) + 1)) or not dp_indices:
        raise PreprocessModelError(f"{_WHAT} checkpoint: DensePose head convs are {dp_indices}")
    densepose_convs = []
    for i in dp_indices:
        shape = _shape(state, f"roi_heads.densepose_head.body_conv_fcn{i}.weight")
        densepose_convs.append((shape[0], shape[2]))
    predictor = "roi_heads.densepose_predictor."
    coarse = _shape(state, predictor + "ann_index_lowres.weight")
    fine = _shape(state, predictor + "index_uv_lowres.weight")
    if fine[1] != N_PART_LABELS + 1:
        raise PreprocessModelError(
            f"{_WHAT} checkpoint predicts {fine[1]} fine segmentation channels, expected "
            f"{N_PART_LABELS + 1} (24 body parts + background)"
        )
    return densepose_convs, coarse, fine
