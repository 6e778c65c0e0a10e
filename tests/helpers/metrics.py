"""The metric networks and formulas written out independently of ``idm_vton.evaluation``.

Each reference here is built from the published description of the metric (plain
``torch.nn.functional`` calls on a state dict, numpy formulas), so a test can compare the
library's implementation against it rather than against itself:

- LPIPS v0.1 (:func:`reference_lpips`) with random AlexNet / VGG trunks and heads;
- the FID Inception of pytorch-fid's ``pt_inception`` file (:func:`reference_inception_features`),
  its key layout (:func:`pt_inception_shapes`) and random weights in it;
- clean-fid's resize (:func:`reference_clean_resize`), FID and KID from their definitions;
- a tiny random CLIP vision tower saved as a folder (:func:`tiny_clip_folder`), for CLIP-I.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# ----------------------------------------------------------------------------------- LPIPS

# Written out from torchvision's definitions: conv index -> (out, in, k, stride, padding).
ALEX_CONVS = {
    0: (64, 3, 11, 4, 2),
    3: (192, 64, 5, 1, 2),
    6: (384, 192, 3, 1, 1),
    8: (256, 384, 3, 1, 1),
    10: (256, 256, 3, 1, 1),
}
VGG_STAGES = [[0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28]]
VGG_WIDTHS = [64, 128, 256, 512, 512]
#: LPIPS' ScalingLayer constants (inputs in [-1, 1]).
LPIPS_SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
LPIPS_SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)


def vgg_convs() -> dict[int, tuple[int, int, int, int, int]]:
    """VGG16 ``features`` convolutions in the :data:`ALEX_CONVS` format (3x3, stride 1, pad 1)."""
    convs, cin = {}, 3
    for stage, width in zip(VGG_STAGES, VGG_WIDTHS, strict=True):
        for index in stage:
            convs[index] = (width, cin, 3, 1, 1)
            cin = width
    return convs


def random_trunk(convs: dict, seed: int) -> dict[str, torch.Tensor]:
    """He-initialised torchvision-named ``features.<i>.weight/bias`` for ``convs``."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for index, (cout, cin, k, _, _) in convs.items():
        std = (2.0 / (cin * k * k)) ** 0.5
        state[f"features.{index}.weight"] = torch.randn(cout, cin, k, k, generator=gen) * std
        state[f"features.{index}.bias"] = torch.randn(cout, generator=gen) * 0.01
    return state


def random_heads(widths: list[int], seed: int) -> dict[str, torch.Tensor]:
    """Non-negative LPIPS linear heads ``lin<k>.model.1.weight``, one per tap width."""
    gen = torch.Generator().manual_seed(seed)
    return {
        f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=gen)
        for k, c in enumerate(widths)
    }


def reference_lpips(
    net: str, trunk: dict, heads: dict, x0: torch.Tensor, x1: torch.Tensor
) -> torch.Tensor:
    """LPIPS v0.1 written directly with functional ops in float64."""
    trunk = {k: v.double() for k, v in trunk.items()}

    def conv(h, index, convs):
        _, _, _, stride, padding = convs[index]
        w, b = trunk[f"features.{index}.weight"], trunk[f"features.{index}.bias"]
        return F.relu(F.conv2d(h, w, b, stride=stride, padding=padding))

    def features(x):
        h = ((2 * x.double() - 1) - LPIPS_SHIFT.double()) / LPIPS_SCALE.double()
        taps = []
        if net == "alex":
            for index in (0, 3, 6, 8, 10):
                if index in (3, 6):
                    h = F.max_pool2d(h, 3, 2)
                h = conv(h, index, ALEX_CONVS)
                taps.append(h)
        else:
            convs = vgg_convs()
            for stage_number, stage in enumerate(VGG_STAGES):
                if stage_number:
                    h = F.max_pool2d(h, 2, 2)
                for index in stage:
                    h = conv(h, index, convs)
                taps.append(h)
        return taps

    total = torch.zeros(x0.shape[0], dtype=torch.float64)
    for k, (f0, f1) in enumerate(zip(features(x0), features(x1), strict=True)):
        f0 = f0 / (torch.sqrt((f0**2).sum(1, keepdim=True)) + 1e-10)
        f1 = f1 / (torch.sqrt((f1**2).sum(1, keepdim=True)) + 1e-10)
        weight = heads[f"lin{k}.model.1.weight"].double().view(1, -1, 1, 1)
        total += ((f0 - f1) ** 2 * weight).sum(1).mean(dim=(1, 2))
    return total


# ----------------------------------------------------------------------------------- FID Inception


def basic_conv(name: str, cin: int, cout: int, kh: int, kw: int | None = None) -> dict:
    """Key -> shape of one torchvision ``BasicConv2d`` (conv without bias + BatchNorm)."""
    kw = kh if kw is None else kw
    return {
        f"{name}.conv.weight": (cout, cin, kh, kw),
        f"{name}.bn.weight": (cout,),
        f"{name}.bn.bias": (cout,),
        f"{name}.bn.running_mean": (cout,),
        f"{name}.bn.running_var": (cout,),
    }


def inception_a(name: str, cin: int, pool: int) -> list[tuple]:
    """(name, in, out, kh[, kw]) of an InceptionA block's convolutions."""
    return [
        (f"{name}.branch1x1", cin, 64, 1),
        (f"{name}.branch5x5_1", cin, 48, 1),
        (f"{name}.branch5x5_2", 48, 64, 5),
        (f"{name}.branch3x3dbl_1", cin, 64, 1),
        (f"{name}.branch3x3dbl_2", 64, 96, 3),
        (f"{name}.branch3x3dbl_3", 96, 96, 3),
        (f"{name}.branch_pool", cin, pool, 1),
    ]


def inception_c(name: str, c7: int) -> list[tuple]:
    """(name, in, out, kh[, kw]) of an InceptionC block's convolutions."""
    return [
        (f"{name}.branch1x1", 768, 192, 1),
        (f"{name}.branch7x7_1", 768, c7, 1),
        (f"{name}.branch7x7_2", c7, c7, 1, 7),
        (f"{name}.branch7x7_3", c7, 192, 7, 1),
        (f"{name}.branch7x7dbl_1", 768, c7, 1),
        (f"{name}.branch7x7dbl_2", c7, c7, 7, 1),
        (f"{name}.branch7x7dbl_3", c7, c7, 1, 7),
        (f"{name}.branch7x7dbl_4", c7, c7, 7, 1),
        (f"{name}.branch7x7dbl_5", c7, 192, 1, 7),
        (f"{name}.branch_pool", 768, 192, 1),
    ]


def inception_e(name: str, cin: int) -> list[tuple]:
    """(name, in, out, kh[, kw]) of an InceptionE block's convolutions."""
    return [
        (f"{name}.branch1x1", cin, 320, 1),
        (f"{name}.branch3x3_1", cin, 384, 1),
        (f"{name}.branch3x3_2a", 384, 384, 1, 3),
        (f"{name}.branch3x3_2b", 384, 384, 3, 1),
        (f"{name}.branch3x3dbl_1", cin, 448, 1),
        (f"{name}.branch3x3dbl_2", 448, 384, 3),
        (f"{name}.branch3x3dbl_3a", 384, 384, 1, 3),
        (f"{name}.branch3x3dbl_3b", 384, 384, 3, 1),
        (f"{name}.branch_pool", cin, 192, 1),
    ]


def pt_inception_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of pytorch-fid's pt_inception file (torchvision names, 1008 classes)."""
    convs = [
        ("Conv2d_1a_3x3", 3, 32, 3),
        ("Conv2d_2a_3x3", 32, 32, 3),
        ("Conv2d_2b_3x3", 32, 64, 3),
        ("Conv2d_3b_1x1", 64, 80, 1),
        ("Conv2d_4a_3x3", 80, 192, 3),
        *inception_a("Mixed_5b", 192, 32),
        *inception_a("Mixed_5c", 256, 64),
        *inception_a("Mixed_5d", 288, 64),
        ("Mixed_6a.branch3x3", 288, 384, 3),
        ("Mixed_6a.branch3x3dbl_1", 288, 64, 1),
        ("Mixed_6a.branch3x3dbl_2", 64, 96, 3),
        ("Mixed_6a.branch3x3dbl_3", 96, 96, 3),
        *inception_c("Mixed_6b", 128),
        *inception_c("Mixed_6c", 160),
        *inception_c("Mixed_6d", 160),
        *inception_c("Mixed_6e", 192),
        ("Mixed_7a.branch3x3_1", 768, 192, 1),
        ("Mixed_7a.branch3x3_2", 192, 320, 3),
        ("Mixed_7a.branch7x7x3_1", 768, 192, 1),
        ("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7),
        ("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1),
        ("Mixed_7a.branch7x7x3_4", 192, 192, 3),
        *inception_e("Mixed_7b", 1280),
        *inception_e("Mixed_7c", 2048),
    ]
    shapes = {}
    for spec in convs:
        shapes.update(basic_conv(*spec))
    shapes["fc.weight"] = (1008, 2048)
    shapes["fc.bias"] = (1008,)
    return shapes


def random_pt_inception(seed: int) -> dict[str, torch.Tensor]:
    """Random weights in the pt_inception layout that keep the activations in a sane range."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in pt_inception_shapes().items():
        if key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=gen)
        elif key.endswith("conv.weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
        elif key.endswith("bn.weight"):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=gen)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=gen)
    return state


# Layers that do not pad ("VALID" in the TF graph) and their strides; every other convolution
# pads to keep the size ("SAME"). Names are torchvision's, as in the pt_inception file.
_VALID_CONVS = {
    "Conv2d_1a_3x3": 2,
    "Conv2d_2a_3x3": 1,
    "Conv2d_4a_3x3": 1,
    "Mixed_6a.branch3x3": 2,
    "Mixed_6a.branch3x3dbl_3": 2,
    "Mixed_7a.branch3x3_2": 2,
    "Mixed_7a.branch7x7x3_4": 2,
}
_BN_EPS = 1e-3


def _unit(state: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    """Convolution without bias, BatchNorm with the running statistics (eps 1e-3), ReLU."""
    weight = state[f"{name}.conv.weight"]
    stride = _VALID_CONVS.get(name, 1)
    padding = (0, 0) if name in _VALID_CONVS else (weight.shape[2] // 2, weight.shape[3] // 2)
    x = F.conv2d(x, weight, stride=stride, padding=padding)
    mean, var = state[f"{name}.bn.running_mean"], state[f"{name}.bn.running_var"]
    gamma, beta = state[f"{name}.bn.weight"], state[f"{name}.bn.bias"]
    scale = gamma / torch.sqrt(var + _BN_EPS)
    return F.relu(x * scale.view(1, -1, 1, 1) + (beta - mean * scale).view(1, -1, 1, 1))


def _chain(state: dict[str, torch.Tensor], x: torch.Tensor, *names: str) -> torch.Tensor:
    for name in names:
        x = _unit(state, name, x)
    return x


def _tf_average_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average over the pixels inside the image (TF ignores the zero padding)."""
    window_sum = F.conv2d(
        F.pad(x, (1, 1, 1, 1)).flatten(0, 1)[:, None], torch.ones(1, 1, 3, 3, dtype=x.dtype)
    ).view_as(x)
    ones = torch.ones(1, 1, *x.shape[2:], dtype=x.dtype)
    count = F.conv2d(F.pad(ones, (1, 1, 1, 1)), torch.ones(1, 1, 3, 3, dtype=x.dtype))
    return window_sum / count


def _mixed_a(state, name: str, x: torch.Tensor) -> torch.Tensor:
    b = f"{name}.branch"
    return torch.cat(
        [
            _chain(state, x, f"{b}1x1"),
            _chain(state, x, f"{b}5x5_1", f"{b}5x5_2"),
            _chain(state, x, f"{b}3x3dbl_1", f"{b}3x3dbl_2", f"{b}3x3dbl_3"),
            _chain(state, _tf_average_pool(x), f"{b}_pool"),
        ],
        dim=1,
    )


def _mixed_c(state, name: str, x: torch.Tensor) -> torch.Tensor:
    b = f"{name}.branch"
    return torch.cat(
        [
            _chain(state, x, f"{b}1x1"),
            _chain(state, x, *(f"{b}7x7_{i}" for i in (1, 2, 3))),
            _chain(state, x, *(f"{b}7x7dbl_{i}" for i in (1, 2, 3, 4, 5))),
            _chain(state, _tf_average_pool(x), f"{b}_pool"),
        ],
        dim=1,
    )


def _mixed_e(state, name: str, x: torch.Tensor, max_pool: bool) -> torch.Tensor:
    b = f"{name}.branch"
    narrow = _chain(state, x, f"{b}3x3_1")
    wide = _chain(state, x, f"{b}3x3dbl_1", f"{b}3x3dbl_2")
    pooled = F.max_pool2d(x, 3, stride=1, padding=1) if max_pool else _tf_average_pool(x)
    return torch.cat(
        [
            _chain(state, x, f"{b}1x1"),
            _chain(state, narrow, f"{b}3x3_2a"),
            _chain(state, narrow, f"{b}3x3_2b"),
            _chain(state, wide, f"{b}3x3dbl_3a"),
            _chain(state, wide, f"{b}3x3dbl_3b"),
            _chain(state, pooled, f"{b}_pool"),
        ],
        dim=1,
    )


def reference_inception_features(
    state: dict[str, torch.Tensor], images: torch.Tensor
) -> torch.Tensor:
    """pool3 features (B, 2048) of (B, 3, 299, 299) images in [0, 255], float64.

    The TF ``inception-2015-12-05`` graph as pytorch-fid ports it, written block by block from
    the state dict: the stem, Mixed_5b-d (A: 1x1 | 5x5 | double 3x3 | TF average pool),
    Mixed_6a (3x3 stride 2 | double 3x3 stride 2 | max pool), Mixed_6b-e (C: 1x1 | 7x7 | double
    7x7 | TF average pool), Mixed_7a (3x3 stride 2 | 7x7x3 stride 2 | max pool), Mixed_7b
    (E: 1x1 | 3x3 split 1x3, 3x1 | double 3x3 split | TF average pool) and Mixed_7c (the same
    with a 3x3 max pool), then the spatial mean.
    """
    state = {key: value.double() for key, value in state.items()}
    x = (images.double() - 128) / 128
    x = _chain(state, x, "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3")
    x = F.max_pool2d(x, 3, stride=2)
    x = _chain(state, x, "Conv2d_3b_1x1", "Conv2d_4a_3x3")
    x = F.max_pool2d(x, 3, stride=2)
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        x = _mixed_a(state, name, x)
    b = "Mixed_6a.branch"
    x = torch.cat(
        [
            _chain(state, x, f"{b}3x3"),
            _chain(state, x, f"{b}3x3dbl_1", f"{b}3x3dbl_2", f"{b}3x3dbl_3"),
            F.max_pool2d(x, 3, stride=2),
        ],
        dim=1,
    )
    for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        x = _mixed_c(state, name, x)
    b = "Mixed_7a.branch"
    x = torch.cat(
        [
            _chain(state, x, f"{b}3x3_1", f"{b}3x3_2"),
            _chain(state, x, *(f"{b}7x7x3_{i}" for i in (1, 2, 3, 4))),
            F.max_pool2d(x, 3, stride=2),
        ],
        dim=1,
    )
    x = _mixed_e(state, "Mixed_7b", x, max_pool=False)
    x = _mixed_e(state, "Mixed_7c", x, max_pool=True)
    return x.mean(dim=(2, 3))


def reference_clean_resize(image: np.ndarray, size: int = 299) -> np.ndarray:
    """clean-fid's ``clean`` resize: each uint8 channel as a float32 PIL image, bicubic, clipped."""
    planes = [
        np.asarray(
            Image.fromarray(image[:, :, c].astype(np.float32), mode="F").resize(
                (size, size), Image.BICUBIC
            )
        ).clip(0, 255)
        for c in range(3)
    ]
    return np.stack(planes, axis=2)


# ----------------------------------------------------------------------------------- FID / KID


def direct_fid(x: np.ndarray, y: np.ndarray) -> float:
    """FID written from the definition, with the matrix square root's trace from eigenvalues."""
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x = (x - mu_x).T @ (x - mu_x) / (len(x) - 1)
    cov_y = (y - mu_y).T @ (y - mu_y) / (len(y) - 1)
    # Tr sqrt(A B) = sum sqrt(eig(A B)): eigenvalues of a product of SPD matrices are positive.
    eigenvalues = np.linalg.eigvals(cov_x @ cov_y).real
    tr_sqrt = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    return float(((mu_x - mu_y) ** 2).sum() + np.trace(cov_x) + np.trace(cov_y) - 2 * tr_sqrt)


def direct_mmd2(x: np.ndarray, y: np.ndarray, unbiased: bool) -> float:
    """MMD^2 with KID's kernel ``(x.y / d + 1)^3``; ``unbiased`` drops the diagonal terms."""
    d = x.shape[1]
    m = len(x)

    def k(a, b):
        return (a @ b.T / d + 1.0) ** 3

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    if unbiased:
        off = ~np.eye(m, dtype=bool)
        return float(kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean())
    return float(kxx.mean() + kyy.mean() - 2 * kxy.mean())


def low_rank_fid(x: np.ndarray, y: np.ndarray) -> float:
    """FID for N << D without a 2048x2048 square root: the non-zero eigenvalues of S1 S2 are the
    squared singular values of Xc Yc^T / sqrt((n-1)(m-1)), so Tr sqrt(S1 S2) is its nuclear norm."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    cross = xc @ yc.T / np.sqrt((len(x) - 1) * (len(y) - 1))
    tr_sqrt = np.linalg.svd(cross, compute_uv=False).sum()
    tr_x = (xc**2).sum() / (len(x) - 1)
    tr_y = (yc**2).sum() / (len(y) - 1)
    return float(((x.mean(0) - y.mean(0)) ** 2).sum() + tr_x + tr_y - 2 * tr_sqrt)


# ----------------------------------------------------------------------------------- CLIP-I


def tiny_clip_folder(path: Path) -> Path:
    """A random CLIP vision tower (hidden size 32, 32 x 32 input, seeded with
    ``torch.manual_seed(0)``) and its image processor, saved in ``path``; returns ``path``."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from idm_vton.evaluation.metrics.clip_score import _image_processor_class

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    CLIPVisionModelWithProjection(config).save_pretrained(path)
    processor = _image_processor_class()(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    processor.save_pretrained(path)
    return path
