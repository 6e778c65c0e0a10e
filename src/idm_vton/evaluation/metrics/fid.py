"""FID and KID from Inception features, the FID Inception network, and clean-fid resizing.

* :func:`frechet_distance` / :func:`fid_from_features`: Heusel et al. 2017,
  ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))`` with ``scipy.linalg.sqrtm``; as clean-fid does,
  a non-finite square root is retried with ``eps`` on both diagonals and a complex result
  (numerical noise) is replaced by its real part. Covariances use ``N - 1`` (``np.cov``).
* :func:`kid_from_features`: Binkowski et al. 2018, the unbiased MMD^2 estimate with the cubic
  polynomial kernel ``k(x, y) = (x.y / d + 1)^3`` averaged over random subsets (clean-fid /
  torch-fidelity defaults: 100 subsets of at most 1000 features); seeded, so it is reproducible.
* :class:`FIDInceptionV3`: the TensorFlow ``inception-2015-12-05`` graph as ported by pytorch-fid
  (``pt_inception-2015-12-05-6726825d.pth``). It differs from torchvision's InceptionV3: the
  average pools in the A, C and first E blocks exclude padding (TF semantics) and the last E block
  max-pools. Module names follow torchvision so the file loads by name; features are the 2048-d
  pool3 output.
* :func:`clean_resize`: clean-fid's ``clean`` mode: each channel of the uint8 image becomes a
  float32 PIL image, is resized to 299x299 with PIL bicubic, clipped to [0, 255], and is *not*
  re-quantised. The network then maps [0, 255] to [-1, 1] with ``(x - 128) / 128``, the
  normalisation inside the TF graph that clean-fid applies.

The network is written here because torchvision is not a dependency: no torchvision build matches
the torch this project is tested with (``torch==2.13.0``). It stays while that holds
(docs/design.md).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import linalg
from torch import nn

from ...errors import WeightFileError
from ...loaders.weights import building_from
from .weights import load_checked_state_dict, load_weight_file, resolve_weight_file, weight_record

logger = logging.getLogger(__name__)

__all__ = [
    "FIDInceptionV3",
    "KIDResult",
    "clean_resize",
    "fid_from_features",
    "frechet_distance",
    "inception_features",
    "kid_from_features",
    "load_fid_inception",
    "polynomial_mmd2",
]

INCEPTION_SIZE = 299
FEATURE_DIM = 2048


# --------------------------------------------------------------------------- FID / KID


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed as clean-fid does."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1 = np.atleast_2d(sigma1).astype(np.float64)
    sigma2 = np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(
            f"feature statistics differ in size: means {mu1.shape} vs {mu2.shape}, "
            f"covariances {sigma1.shape} vs {sigma2.shape}"
        )
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # A singular product is expected with fewer samples than dimensions; handled below.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            logger.warning("FID: singular covariance product; adding %g to the diagonals", eps)
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _as_features(features: np.ndarray, name: str) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"{name} must be an (N >= 2, D) feature array, got shape {features.shape}")
    return features


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two (N, D) feature arrays (sample means and ``N - 1`` covariances)."""
    f1, f2 = _as_features(features1, "features1"), _as_features(features2, "features2")
    return frechet_distance(
        f1.mean(axis=0), np.cov(f1, rowvar=False), f2.mean(axis=0), np.cov(f2, rowvar=False)
    )


def polynomial_mmd2(x: np.ndarray, y: np.ndarray, *, unbiased: bool = True) -> float:
    """MMD^2 between two samples with the KID kernel ``(a.b / d + 1)^3``.

    ``unbiased=True`` is the U-statistic KID uses (within-sample kernel sums skip ``i == j``;
    needs equal sizes ``m >= 2``); ``unbiased=False`` is the V-statistic, biased upwards by
    ``O(1/m)`` and kept for comparison.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    m, dim = x.shape
    assert y.shape == (m, dim), (x.shape, y.shape)
    k_xx = (x @ x.T / dim + 1) ** 3
    k_yy = (y @ y.T / dim + 1) ** 3
    k_xy = (x @ y.T / dim + 1) ** 3
    if not unbiased:
        return float(k_xx.mean() + k_yy.mean() - 2 * k_xy.mean())
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.mean())


class KIDResult(NamedTuple):
    """KID mean over subsets, its standard deviation across subsets, and the subset size used."""

    mean: float
    std: float
    subset_size: int


def kid_from_features(
    features1: np.ndarray,
    features2: np.ndarray,
    *,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> KIDResult:
    """KID between two (N, D) feature arrays, as clean-fid / torch-fidelity compute it.

    Each subset draws ``m = min(N1, N2, max_subset_size)`` rows without replacement from
    ``features2`` and then from ``features1`` (``numpy.random.default_rng(seed).choice``), and
    takes the unbiased :func:`polynomial_mmd2`; the result is the mean (and std) over subsets.
    """
    f1, f2 = _as_features(features1, "features1"), _as_features(features2, "features2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature sizes differ: {f1.shape[1]} vs {f2.shape[1]}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    m = min(f1.shape[0], f2.shape[0], max_subset_size)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_subsets):
        y = f2[rng.choice(f2.shape[0], m, replace=False)]
        x = f1[rng.choice(f1.shape[0], m, replace=False)]
        values.append(polynomial_mmd2(x, y, unbiased=True))
    return KIDResult(float(np.mean(values)), float(np.std(values)), m)


# --------------------------------------------------------------------------- resizing


def clean_resize(image: np.ndarray, size: int = INCEPTION_SIZE) -> np.ndarray:
    """clean-fid ``clean`` resize of an (H, W, 3) uint8 image to (size, size, 3) float32 in [0, 255]."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    channels = []
    for c in range(3):
        plane = Image.fromarray(image[:, :, c].astype(np.float32), mode="F")
        plane = plane.resize((size, size), resample=Image.BICUBIC)
        channels.append(np.asarray(plane).clip(0, 255))
    return np.stack(channels, axis=2).astype(np.float32)


# --------------------------------------------------------------------------- network


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm (eps 1e-3) + ReLU, torchvision's Inception unit."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's 3x3 average pool divides by the number of real (unpadded) inputs.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """Mixed_5b/c/d: 1x1, 5x5, double 3x3 and pool branches (TF average pool)."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    """Mixed_6a: grid reduction 35 -> 17."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([self.branch3x3(x), branch3x3dbl, branch_pool], 1)


class FIDInceptionC(nn.Module):
    """Mixed_6b-e: factorised 7x7 branches (TF average pool)."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for layer in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            branch7x7dbl = layer(branch7x7dbl)
        branch_pool = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
    """Mixed_7a: grid reduction 17 -> 8."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = x
        for layer in (
            self.branch7x7x3_1,
            self.branch7x7x3_2,
            self.branch7x7x3_3,
            self.branch7x7x3_4,
        ):
            branch7x7x3 = layer(branch7x7x3)
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)


class FIDInceptionE(nn.Module):
    """Mixed_7b (TF average pool) and Mixed_7c (``max_pool=True``: the TF graph max-pools here)."""

    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat(
            [self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1
        )
        if self.max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _tf_avg_pool(x)
        branch_pool = self.branch_pool(pooled)
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, branch_pool], 1)


# The 1008-way TF classifier is in the file but FID uses pool3 only: accepted, checked, dropped.
_FID_INCEPTION_UNUSED = {"fc.weight": (1008, 2048), "fc.bias": (1008,)}


class FIDInceptionV3(nn.Module):
    """InceptionV3 of the TF FID graph; ``forward`` maps 299x299 [0, 255] images to pool3 (B, 2048)."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, max_pool=False)
        self.Mixed_7c = FIDInceptionE(2048, max_pool=True)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> FIDInceptionV3:
        """Build from the pytorch-fid state dict (torchvision key names), every key checked."""
        model = cls()
        load_checked_state_dict(
            model, state, "FID Inception weights", ignored=_FID_INCEPTION_UNUSED
        )
        return model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, INCEPTION_SIZE, INCEPTION_SIZE):
            raise ValueError(
                f"FID Inception expects (B, 3, 299, 299) inputs (use clean_resize), "
                f"got {tuple(images.shape)}"
            )
        x = (images - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        return x.mean(dim=(2, 3))


def load_fid_inception(
    weights_dir: str | os.PathLike = "weights",
    *,
    verify: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[FIDInceptionV3, dict]:
    """Load the FID Inception from ``weights_dir``; returns the model and its protocol record."""
    path = resolve_weight_file("fid_inception", weights_dir, verify=verify)
    with building_from(path, WeightFileError):
        model = FIDInceptionV3.from_state_dict(load_weight_file(path))
    model = model.to(device)
    return model, {"fid_inception": weight_record("fid_inception", path, verified=verify)}


@torch.no_grad()
def inception_features(
    model: FIDInceptionV3,
    images: Iterable[np.ndarray],
    *,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Pool3 features (N, 2048) float64 of (H, W, 3) uint8 images, clean-resized to 299."""
    batch = np.stack([clean_resize(image) for image in images])
    tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).to(device)
    return model(tensor).double().cpu().numpy()
