"""OpenPose body keypoints (18-point COCO layout) in plain PyTorch, as the IDM-VTON demo runs them.

The network is the CMU two-branch, six-stage model (Cao et al., "Realtime Multi-Person 2D Pose
Estimation using Part Affinity Fields", CVPR 2017): a VGG-19 front end, then stages that each
predict 38 part-affinity-field (PAF) channels (branch L1, an x/y vector field per limb) and 19
heatmaps (branch L2, 18 parts + background). The weights are pytorch-openpose's
``body_pose_model.pth`` whose keys are the Caffe layer names (``conv1_1.weight``,
``Mconv7_stage6_L1.weight``).

Decoding follows the ControlNet annotator used by the demo: one scale (half of a 368-pixel box),
right/bottom padding to a multiple of the stride 8, maps resized back to the image, Gaussian
smoothing (sigma 3) and 4-neighbour peak finding above 0.1, limb scoring by sampling the PAF at
10 points on the segment, greedy matching, and assembly of people who keep at least 4 parts and
a mean score of 0.4. The demo then reads the first person; this module returns the person with
the most parts (ties: highest score), in the input photo's pixels, with ``[0, 0]`` for a missing
part.

``load_openpose_json`` / ``write_openpose_json`` read and write the OpenPose JSON files that ship
with VITON-HD (``openpose_json/*_keypoints.json``, BODY_25 layout).
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter
from torch import nn

from idm_vton.errors import DatasetError, PreprocessModelError
from idm_vton.loaders.json_files import read_json_object
from idm_vton.loaders.weights import building_from, check_weight_file, load_torch_pickle

__all__ = [
    "BODY_PARTS",
    "LIMBS",
    "PAF_CHANNELS",
    "NUM_PAF_CHANNELS",
    "NUM_HEATMAPS",
    "OpenPoseBodyNet",
    "OpenPoseBody",
    "convert_body_pose_state_dict",
    "resize_to_resolution",
    "find_peaks",
    "connect_limbs",
    "assemble_people",
    "select_person",
    "load_openpose_json",
    "write_openpose_json",
]

BODY_PARTS = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
)
"""The 18-point COCO body layout of the OpenPose body model, in output order."""

LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
    (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17),
)  # fmt: skip
"""Part pairs (0-based) connected by a PAF, in the order limbs are matched and assembled.

The last two (shoulder-ear) are redundant connections that may join people but never start one.
"""

PAF_CHANNELS = (
    (12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7),
    (8, 9), (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27),
)  # fmt: skip
"""(x, y) channels of the 38-channel PAF output for each entry of :data:`LIMBS`."""

NUM_PAF_CHANNELS = 38
NUM_HEATMAPS = 19
STRIDE = 8

# Constants of the official annotator (body.py).
BOX_SIZE = 368
SCALE_SEARCH = (0.5,)
PAD_VALUE = 128
PEAK_THRESHOLD = 0.1  # thre1, on the smoothed heatmap
PAF_THRESHOLD = 0.05  # thre2, per sample on the segment
PAF_SAMPLES = 10
HEATMAP_SIGMA = 3.0
MIN_PARTS = 4
MIN_MEAN_SCORE = 0.4

WEIGHTS_SOURCE = (
    "the IDM-VTON Hugging Face repo yisol/IDM-VTON, folder openpose/ckpts/ "
    "(https://huggingface.co/yisol/IDM-VTON/tree/main/openpose/ckpts)"
)
_MIN_PTH_BYTES = 1024


# --- network -------------------------------------------------------------------------------

_POOL = "pool"
_BACKBONE_LAYERS = (
    "conv1_1", "conv1_2", _POOL, "conv2_1", "conv2_2", _POOL,
    "conv3_1", "conv3_2", "conv3_3", "conv3_4", _POOL,
    "conv4_1", "conv4_2", "conv4_3_CPM", "conv4_4_CPM",
)  # fmt: skip
_NUM_STAGES = 6
_BRANCHES = (("paf", "L1", NUM_PAF_CHANNELS), ("heatmap", "L2", NUM_HEATMAPS))


def _stage_layers(stage: int, branch_tag: str) -> list[str]:
    if stage == 1:
        return [f"conv5_{i}_CPM_{branch_tag}" for i in range(1, 6)]
    return [f"Mconv{i}_stage{stage}_{branch_tag}" for i in range(1, 8)]


def _module_key(layer: str) -> str:
    """Module path of a Caffe layer name inside :class:`OpenPoseBodyNet`."""
    if layer in _BACKBONE_LAYERS:
        return f"backbone.{layer}"
    match = re.fullmatch(r"(?:conv5_\d_CPM|Mconv\d_stage(\d))_(L[12])", layer)
    assert match is not None, layer
    stage = int(match.group(1) or 1)
    branch = "paf" if match.group(2) == "L1" else "heatmap"
    return f"stages.{stage - 1}.{branch}.{layer}"


def _all_conv_layers() -> list[str]:
    names = [n for n in _BACKBONE_LAYERS if n != _POOL]
    for stage in range(1, _NUM_STAGES + 1):
        for _, tag, _ in _BRANCHES:
            names.extend(_stage_layers(stage, tag))
    return names


def _strip_wrapper_prefix(key: str) -> str:
    # Checkpoints saved from pytorch-openpose's own module carry "model0." / "model2_1." prefixes.
    return re.sub(r"^model\d(?:_\d)?\.", "", key)


def convert_body_pose_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map ``body_pose_model.pth`` keys (Caffe layer names) to :class:`OpenPoseBodyNet` keys.

    Every conv layer must have a 4-D weight and a matching bias; every key must be used.

    Raises:
        PreprocessModelError: keys are missing or unexpected, or a tensor has the wrong rank.
    """
    source = {_strip_wrapper_prefix(k): v for k, v in state_dict.items()}
    converted: dict[str, torch.Tensor] = {}
    missing = []
    for layer in _all_conv_layers():
        for suffix in ("weight", "bias"):
            key = f"{layer}.{suffix}"
            if key not in source:
                missing.append(key)
                continue
            tensor = source.pop(key)
            if not isinstance(tensor, torch.Tensor) or tensor.ndim != (
                4 if suffix == "weight" else 1
            ):
                raise PreprocessModelError(
                    f"OpenPose checkpoint entry {key} should be a {4 if suffix == 'weight' else 1}-D "
                    f"tensor, got {getattr(tensor, 'shape', type(tensor))}"
                )
            converted[f"{_module_key(layer)}.{suffix}"] = tensor
    if missing:
        raise PreprocessModelError(
            f"OpenPose checkpoint lacks {len(missing)} body-model entries (first: "
            f"{', '.join(missing[:3])}); is this pytorch-openpose's body_pose_model.pth?"
        )
    if source:
        raise PreprocessModelError(
            f"OpenPose checkpoint has {len(source)} unexpected entries (first: "
            f"{', '.join(sorted(source)[:3])}); expected only the body model's conv layers"
        )
    return converted


class _Stage(nn.Module):
    def __init__(self, paf: nn.Sequential, heatmap: nn.Sequential) -> None:
        super().__init__()
        self.paf = paf
        self.heatmap = heatmap


def _conv_block(
    layers: Sequence[str], shapes: dict[str, torch.Size], relu_last: bool
) -> nn.Sequential:
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    for i, name in enumerate(layers):
        if name == _POOL:
            modules[f"pool{i}"] = nn.MaxPool2d(kernel_size=2, stride=2)
            continue
        out_ch, in_ch, kh, kw = shapes[name]
        modules[name] = nn.Conv2d(in_ch, out_ch, (kh, kw), padding=(kh // 2, kw // 2))
        if i < len(layers) - 1 or relu_last:
            modules[f"{name}_relu"] = nn.ReLU(inplace=True)
    return nn.Sequential(modules)


class OpenPoseBodyNet(nn.Module):
    """The CMU 6-stage, 2-branch body network with widths read from a checkpoint.

    Args:
        shapes: conv weight shape ``(out, in, kh, kw)`` per Caffe layer name, e.g. from
            :meth:`from_state_dict`. Only the PAF (38) and heatmap (19) output widths are fixed;
            the others may be scaled down (tests use random weights with narrow layers).

    ``forward`` returns ``(pafs, heatmaps)``, each at 1/8 of the input resolution.

    Like pytorch-openpose (whose no-ReLU list names ``Mconv7_stage6_L1`` twice and omits
    ``Mconv7_stage6_L2``), a ReLU follows the final heatmap layer; the released decoding was tuned
    on that output, so it is kept.
    """

    def __init__(self, shapes: dict[str, torch.Size]) -> None:
        super().__init__()
        self._check_shapes(shapes)
        self.backbone = _conv_block(_BACKBONE_LAYERS, shapes, relu_last=True)
        stages = []
        for stage in range(1, _NUM_STAGES + 1):
            branches = {}
            for branch, tag, _ in _BRANCHES:
                relu_last = stage == _NUM_STAGES and branch == "heatmap"
                branches[branch] = _conv_block(_stage_layers(stage, tag), shapes, relu_last)
            stages.append(_Stage(**branches))
        self.stages = nn.ModuleList(stages)

    @staticmethod
    def _check_shapes(shapes: dict[str, torch.Size]) -> None:
        problems = []

        def expect(layer: str, in_ch: int) -> int:
            out_ch, got_in = shapes[layer][0], shapes[layer][1]
            if got_in != in_ch:
                problems.append(f"{layer} takes {got_in} channels, previous layers give {in_ch}")
            return out_ch

        channels = 3
        for layer in _BACKBONE_LAYERS:
            if layer != _POOL:
                channels = expect(layer, channels)
        features = channels
        stage_in = features
        for stage in range(1, _NUM_STAGES + 1):
            for _, tag, width in _BRANCHES:
                ch = stage_in
                for layer in _stage_layers(stage, tag):
                    ch = expect(layer, ch)
                if ch != width:
                    problems.append(
                        f"stage {stage} branch {tag} outputs {ch} channels, not {width}"
                    )
            stage_in = NUM_PAF_CHANNELS + NUM_HEATMAPS + features
        if problems:
            raise PreprocessModelError(
                "OpenPose checkpoint shapes are inconsistent: " + "; ".join(problems)
            )

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> OpenPoseBodyNet:
        """Build the network with widths inferred from a ``body_pose_model.pth`` state dict."""
        converted = convert_body_pose_state_dict(state_dict)
        shapes = {
            layer: converted[f"{_module_key(layer)}.weight"].shape for layer in _all_conv_layers()
        }
        net = cls(shapes)
        net.load_state_dict(converted, strict=True)
        return net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        h = features
        for stage in self.stages:
            paf, heatmap = stage.paf(h), stage.heatmap(h)
            h = torch.cat([paf, heatmap, features], dim=1)
        return paf, heatmap


# --- image and map resizing ------------------------------------------------------------------


def _resize(x: np.ndarray, height: float, width: float) -> np.ndarray:
    """The annotator's resize: area when shrinking, Lanczos when growing, channel by channel.

    The target may be fractional: the choice of filter uses it, the output size truncates it.
    """
    ho, wo = x.shape[:2]
    growing = (height + width) / (ho + wo) >= 1
    interp = cv2.INTER_LANCZOS4 if growing else cv2.INTER_AREA
    if x.ndim == 2 or x.shape[2] in (1, 3):
        return cv2.resize(x, (int(width), int(height)), interpolation=interp)
    return np.stack(
        [
            cv2.resize(x[:, :, c], (int(width), int(height)), interpolation=interp)
            for c in range(x.shape[2])
        ],
        axis=2,
    )


def resize_to_resolution(image: np.ndarray, resolution: int) -> np.ndarray:
    """Resize so the short side is ~``resolution``, both sides rounded to multiples of 64.

    The demo's ``resize_image`` (a no-op for its 384 x 512 input at resolution 384).
    """
    h, w = image.shape[:2]
    k = float(resolution) / min(h, w)
    new_h = int(np.round(h * k / 64.0)) * 64
    new_w = int(np.round(w * k / 64.0)) * 64
    interp = cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA
    return cv2.resize(image, (new_w, new_h), interpolation=interp)


# --- decoding --------------------------------------------------------------------------------


def find_peaks(
    heatmaps: np.ndarray, threshold: float = PEAK_THRESHOLD, sigma: float = HEATMAP_SIGMA
) -> list[np.ndarray]:
    """Part candidates: local maxima of the smoothed heatmaps above ``threshold``.

    A pixel is a peak when the Gaussian-smoothed map is ``>=`` its four neighbours (zero outside
    the image) and ``> threshold``. Its score is the *unsmoothed* heatmap value there.

    Args:
        heatmaps: (H, W, >=18) part heatmaps in image pixels (the background channel is ignored).

    Returns:
        One (n, 4) float64 array per part with rows ``(x, y, score, id)``, peaks in row-major
        order, ids running across all parts.
    """
    peaks = []
    next_id = 0
    for part in range(len(BODY_PARTS)):
        raw = heatmaps[:, :, part].astype(np.float64)
        smooth = gaussian_filter(raw, sigma=sigma)
        p = np.pad(smooth, 1)
        is_peak = (
            (smooth >= p[:-2, 1:-1])
            & (smooth >= p[2:, 1:-1])
            & (smooth >= p[1:-1, :-2])
            & (smooth >= p[1:-1, 2:])
            & (smooth > threshold)
        )
        ys, xs = np.nonzero(is_peak)
        ids = np.arange(next_id, next_id + len(xs))
        peaks.append(np.stack([xs, ys, raw[ys, xs], ids], axis=1).astype(np.float64).reshape(-1, 4))
        next_id += len(xs)
    return peaks


def _score_pairs(cand_a: np.ndarray, cand_b: np.ndarray, paf_xy: np.ndarray, image_height: int):
    """PAF line integral for every (a, b) pair; returns (scores, valid), both (nA, nB)."""
    a = cand_a[:, None, :2]
    b = cand_b[None, :, :2]
    vec = b - a
    norm = np.maximum(np.sqrt(vec[..., 0] * vec[..., 0] + vec[..., 1] * vec[..., 1]), 0.001)
    unit = vec / norm[..., None]
    shape = norm.shape
    xs = np.linspace(
        np.broadcast_to(a[..., 0], shape), np.broadcast_to(b[..., 0], shape), PAF_SAMPLES, axis=-1
    )
    ys = np.linspace(
        np.broadcast_to(a[..., 1], shape), np.broadcast_to(b[..., 1], shape), PAF_SAMPLES, axis=-1
    )
    # np.round rounds half to even, as Python's round() in the reference does.
    xi, yi = np.round(xs).astype(np.int64), np.round(ys).astype(np.int64)
    samples = paf_xy[yi, xi]  # (nA, nB, S, 2)
    along = samples[..., 0] * unit[..., None, 0] + samples[..., 1] * unit[..., None, 1]
    total = along[..., 0]
    for s in range(1, PAF_SAMPLES):  # sequential sum, as the reference's Python sum()
        total = total + along[..., s]
    scores = total / PAF_SAMPLES + np.minimum(0.5 * image_height / norm - 1, 0)
    enough = np.count_nonzero(along > PAF_THRESHOLD, axis=-1) > 0.8 * PAF_SAMPLES
    return scores, enough & (scores > 0)


def connect_limbs(
    peaks: Sequence[np.ndarray], pafs: np.ndarray, image_height: int
) -> list[np.ndarray | None]:
    """Match part candidates into limbs with the part affinity fields.

    For each limb of :data:`LIMBS`, every candidate pair is scored by the mean projection of the
    PAF onto the pair's direction at 10 points on the segment, plus a penalty
    ``min(0.5 * image_height / length - 1, 0)`` for long limbs. Pairs need more than 80% of the
    samples above 0.05 and a positive score; then pairs are taken greedily by score, each
    candidate used once.

    Args:
        peaks: output of :func:`find_peaks`.
        pafs: (H, W, 38) part affinity fields in image pixels.
        image_height: height used in the length penalty.

    Returns:
        Per limb, ``None`` when a part has no candidate, else a (n, 5) array with rows
        ``(id_a, id_b, score, index_a, index_b)``.
    """
    connections: list[np.ndarray | None] = []
    for (part_a, part_b), channels in zip(LIMBS, PAF_CHANNELS, strict=True):
        cand_a, cand_b = peaks[part_a], peaks[part_b]
        if len(cand_a) == 0 or len(cand_b) == 0:
            connections.append(None)
            continue
        scores, valid = _score_pairs(cand_a, cand_b, pafs[:, :, list(channels)], image_height)
        ia, ib = np.nonzero(valid)  # row-major, the reference's (i, j) loop order
        order = np.argsort(-scores[ia, ib], kind="stable")
        rows: list[list[float]] = []
        used_a: set[int] = set()
        used_b: set[int] = set()
        for k in order:
            i, j = int(ia[k]), int(ib[k])
            if i in used_a or j in used_b:
                continue
            rows.append([cand_a[i, 3], cand_b[j, 3], scores[i, j], i, j])
            used_a.add(i)
            used_b.add(j)
            if len(rows) >= min(len(cand_a), len(cand_b)):
                break
        connections.append(np.array(rows, dtype=np.float64).reshape(-1, 5))
    return connections


def assemble_people(
    peaks: Sequence[np.ndarray], connections: Sequence[np.ndarray | None]
) -> tuple[np.ndarray, np.ndarray]:
    """Group limbs into people, as the OpenPose reference does.

    Returns:
        ``(candidate, subset)``: candidate is (N, 4) rows ``(x, y, score, id)`` of all peaks;
        subset is (M, 20), per person the candidate index of each of the 18 parts (-1 when
        missing), then the total score and the number of parts. People with fewer than 4 parts
        or a mean score below 0.4 are dropped.
    """
    candidate = np.concatenate(
        [np.asarray(p, dtype=np.float64).reshape(-1, 4) for p in peaks], axis=0
    )
    people: list[np.ndarray] = []
    for k, ((part_a, part_b), conn) in enumerate(zip(LIMBS, connections, strict=True)):
        if conn is None:
            continue
        for id_a, id_b, limb_score, _, _ in conn:
            hits = [
                n
                for n, person in enumerate(people)
                if person[part_a] == id_a or person[part_b] == id_b
            ]
            score_b = candidate[int(id_b), 2] + limb_score
            if len(hits) == 1 or (len(hits) >= 2 and _overlap(people[hits[0]], people[hits[1]])):
                person = people[hits[0]]
                # With two overlapping hits the reference overwrites part B unconditionally.
                if len(hits) >= 2 or person[part_b] != id_b:
                    person[part_b] = id_b
                    person[-1] += 1
                    person[-2] += score_b
            elif len(hits) >= 2:  # two disjoint fragments of one person: merge them
                first, second = people[hits[0]], people[hits[1]]
                first[:-2] += second[:-2] + 1
                first[-2:] += second[-2:]
                first[-2] += limb_score
                del people[hits[1]]
            elif k < len(LIMBS) - 2:  # the redundant shoulder-ear limbs never start a person
                person = -np.ones(20)
                person[part_a], person[part_b] = id_a, id_b
                person[-1] = 2
                person[-2] = candidate[int(id_a), 2] + candidate[int(id_b), 2] + limb_score
                people.append(person)
    kept = [p for p in people if p[-1] >= MIN_PARTS and p[-2] / p[-1] >= MIN_MEAN_SCORE]
    return candidate, np.array(kept, dtype=np.float64).reshape(-1, 20)


def _overlap(p: np.ndarray, q: np.ndarray) -> bool:
    return bool(np.any((p[:-2] >= 0) & (q[:-2] >= 0)))


def select_person(candidate: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """(18, 2) keypoints of the person with most parts (ties: highest score); [0, 0] = missing."""
    keypoints = np.zeros((len(BODY_PARTS), 2), dtype=np.float64)
    if len(subset) == 0:
        return keypoints
    best = max(range(len(subset)), key=lambda n: (subset[n, -1], subset[n, -2]))
    for part, index in enumerate(subset[best, : len(BODY_PARTS)]):
        if index >= 0:
            keypoints[part] = candidate[int(index), :2]
    return keypoints


# --- adapter ---------------------------------------------------------------------------------


def _to_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    if (
        isinstance(image, np.ndarray)
        and image.dtype == np.uint8
        and image.ndim == 3
        and image.shape[2] == 3
    ):
        return image
    desc = (
        f"array of shape {image.shape} and dtype {image.dtype}"
        if isinstance(image, np.ndarray)
        else type(image)
    )
    raise ValueError(
        f"expected an RGB image as a PIL image or an (H, W, 3) uint8 array, got {desc}"
    )


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    state = load_torch_pickle(path, WEIGHTS_SOURCE, PreprocessModelError)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PreprocessModelError(
            f"OpenPose body model file {path} does not hold a state dict of tensors"
        )
    return state


class OpenPoseBody:
    """OpenPose body-pose estimator returning one person's 18 keypoints.

    Args:
        model_path: ``body_pose_model.pth`` (pytorch-openpose / ControlNet annotator weights; the
            demo keeps it in ``ckpt/openpose/ckpts/``).
        device: torch device for the network.
        resolution: the photo is first resized so its short side is about this many pixels
            (sides rounded to multiples of 64), as the demo's ``resize_image(image, 384)``;
            ``None`` decodes at the photo's own size. Smoothing and thresholds are in these
            pixels, so keep 384 for demo-equivalent results.

    Calling it on an RGB photo returns an (18, 2) float64 array of (x, y) in the photo's pixels,
    :data:`BODY_PARTS` order, ``[0, 0]`` for parts not found.

    Raises:
        PreprocessModelError: the weight file is missing, a placeholder, truncated, not a PyTorch
            checkpoint, or not the body model.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        resolution: int | None = 384,
    ) -> None:
        path = check_weight_file(
            model_path, "OpenPose body model", WEIGHTS_SOURCE, min_bytes=_MIN_PTH_BYTES, fmt="torch"
        )
        self.device = torch.device(device)
        self.resolution = resolution
        with building_from(path, PreprocessModelError):
            net = OpenPoseBodyNet.from_state_dict(_load_state_dict(path))
        self.net = net.to(self.device).eval()

    def network_maps(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps (H, W, 19) and PAFs (H, W, 38) in the pixels of ``image_bgr`` (uint8 BGR).

        One scale: the image is resized to half of a 368-pixel box height, padded right and
        bottom with grey (128) to a multiple of 8, normalised to ``x / 256 - 0.5``; outputs are
        upsampled by 8, unpadded and resized to the image.
        """
        height, width = image_bgr.shape[:2]
        (scale,) = (s * BOX_SIZE / height for s in SCALE_SEARCH)
        small = _resize(image_bgr, height * scale, width * scale)
        sh, sw = small.shape[:2]
        pad_h, pad_w = -sh % STRIDE, -sw % STRIDE
        padded = np.pad(small, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=PAD_VALUE)
        x = np.ascontiguousarray(padded.transpose(2, 0, 1)[None].astype(np.float32) / 256 - 0.5)
        with torch.inference_mode():
            pafs, heatmaps = self.net(torch.from_numpy(x).to(self.device))
        maps = []
        for out in (heatmaps, pafs):
            m = out[0].permute(1, 2, 0).float().cpu().numpy()
            m = _resize(m, m.shape[0] * STRIDE, m.shape[1] * STRIDE)[:sh, :sw]
            maps.append(_resize(m, height, width).astype(np.float64))
        return maps[0], maps[1]

    def detect(
        self, image: Image.Image | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
        """All people: ``(candidate, subset, (sx, sy))`` as in :func:`assemble_people`.

        Candidate coordinates are in the working image (after ``resolution`` resizing); multiply
        x by ``sx`` and y by ``sy`` to get photo pixels.
        """
        rgb = _to_rgb(image)
        work = resize_to_resolution(rgb, self.resolution) if self.resolution else rgb
        bgr = np.ascontiguousarray(work[:, :, ::-1])
        heatmaps, pafs = self.network_maps(bgr)
        peaks = find_peaks(heatmaps)
        connections = connect_limbs(peaks, pafs, image_height=bgr.shape[0])
        candidate, subset = assemble_people(peaks, connections)
        scale = (rgb.shape[1] / work.shape[1], rgb.shape[0] / work.shape[0])
        return candidate, subset, scale

    def __call__(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """(18, 2) keypoints of the most complete person, in the photo's pixels."""
        candidate, subset, (sx, sy) = self.detect(image)
        keypoints = select_person(candidate, subset)
        return keypoints * np.array([sx, sy])


# --- OpenPose JSON ---------------------------------------------------------------------------

# BODY_25 index of each COCO-18 part (BODY_25 adds mid-hip at 8 and six foot points at 19-24).
_BODY25_TO_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)


def load_openpose_json(path: str | os.PathLike[str], min_confidence: float = 0.0) -> np.ndarray:
    """Read the first person's body keypoints from an OpenPose JSON file as (18, 2).

    Accepts OpenPose's own output (``people[0].pose_keypoints_2d``, flat ``x, y, c`` triplets in
    BODY_25 or COCO-18 layout, as in VITON-HD's ``openpose_json``), flat ``x, y`` pairs, and the
    IDM-VTON demo's ``{"pose_keypoints_2d": [[x, y], ...]}``. BODY_25 is converted to the 18-point
    layout. Points with confidence ``<= min_confidence`` (OpenPose writes missing ones as 0, 0, 0)
    become ``[0, 0]``; the default keeps every detected point, like VITON-HD's loader. A file
    with no person gives all zeros.
    """
    path = Path(path)
    data = read_json_object(path, DatasetError, "OpenPose JSON file")
    if "people" in data:
        people = data["people"]
        if not isinstance(people, list) or not all(isinstance(p, dict) for p in people):
            raise DatasetError(f"{path}: 'people' should be a list of objects", path=path)
        if not people:
            return np.zeros((len(BODY_PARTS), 2))
        data = people[0]
    if "pose_keypoints_2d" not in data:
        raise DatasetError(f"{path} has no pose_keypoints_2d", path=path)
    try:
        values = np.asarray(data["pose_keypoints_2d"], dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: pose_keypoints_2d should hold numbers", path=path) from None
    if values.ndim == 1:
        n = values.size
        if n % 3 == 0 and n // 3 in (18, 25):
            values = values.reshape(-1, 3)
        elif n % 2 == 0 and n // 2 in (18, 25):
            values = values.reshape(-1, 2)
    if values.ndim != 2 or values.shape[0] not in (18, 25) or values.shape[1] not in (2, 3):
        raise DatasetError(
            f"{path}: pose_keypoints_2d should hold 18 or 25 points as (x, y[, confidence]), "
            f"got {values.shape}",
            path=path,
        )
    if values.shape[0] == 25:
        values = values[list(_BODY25_TO_COCO18)]
    keypoints = values[:, :2].copy()
    if values.shape[1] == 3:
        keypoints[values[:, 2] <= min_confidence] = 0.0
    return keypoints


def write_openpose_json(path: str | os.PathLike[str], keypoints: np.ndarray) -> None:
    """Write (18, 2) keypoints as an OpenPose-format JSON (COCO-18, confidence 1 or 0)."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.shape != (len(BODY_PARTS), 2):
        raise ValueError(f"keypoints must have shape (18, 2), got {keypoints.shape}")
    flat: list[float] = []
    for x, y in keypoints:
        present = not (x == 0 and y == 0)
        flat.extend([float(x), float(y), 1.0 if present else 0.0])
    person = {
        "person_id": [-1],
        "pose_keypoints_2d": flat,
        "face_keypoints_2d": [],
        "hand_left_keypoints_2d": [],
        "hand_right_keypoints_2d": [],
        "pose_keypoints_3d": [],
        "face_keypoints_3d": [],
        "hand_left_keypoints_3d": [],
        "hand_right_keypoints_3d": [],
    }
    with Path(path).open("w") as f:
        json.dump({"version": 1.3, "people": [person]}, f)
