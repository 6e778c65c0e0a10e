"""LPIPS v0.1 (Zhang et al. 2018) with the VGG16 and AlexNet trunks, without torchvision.

The trunks are written here with torchvision's layer indices, so the published torchvision files
(``features.N.weight`` ...) load by name; the learned per-channel weights come from the ``lpips``
package's ``vgg.pth`` / ``alex.pth`` (``linK.model.1.weight``). The distance is computed as the
``lpips`` package does for ``LPIPS(net=..., version="0.1")`` on ``normalize=True`` inputs:

1. map ``[0, 1]`` images to ``[-1, 1]`` and apply the scaling layer
   ``(x - shift) / scale`` with shift ``(-0.030, -0.088, -0.188)``, scale ``(0.458, 0.448, 0.450)``;
2. take five ReLU activations of the trunk (VGG: relu1_2 ... relu5_3; Alex: relu1 ... relu5);
3. unit-normalise each activation over channels (``x / (||x||_2 + 1e-10)``);
4. squared difference, 1x1 conv with the non-negative learned weights (no bias), spatial mean;
5. sum over the five layers.

torchvision is not a dependency: no torchvision build matches the torch this project is tested
with (``torch==2.13.0``). This re-implementation stays while that holds (docs/design.md).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ...loaders.checkpoint import check_state_dict
from .weights import (
    load_checked_state_dict,
    load_weight_file,
    resolve_weight_file,
    weight_record,
)

__all__ = [
    "LPIPS",
    "LPIPS_CHANNELS",
    "AlexNetFeatures",
    "VGG16Features",
    "convert_lpips_heads",
    "lpips_head_shapes",
    "load_lpips",
]

LPIPS_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}

# lpips/lpips.py ScalingLayer: ImageNet statistics expressed for [-1, 1] inputs.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10

# Keys present in the torchvision files but unused by LPIPS (the ImageNet classifier head):
# accepted, shape-checked and dropped.
_VGG16_CLASSIFIER = {
    "classifier.0.weight": (4096, 25088),
    "classifier.0.bias": (4096,),
    "classifier.3.weight": (4096, 4096),
    "classifier.3.bias": (4096,),
    "classifier.6.weight": (1000, 4096),
    "classifier.6.bias": (1000,),
}
_ALEXNET_CLASSIFIER = {
    "classifier.1.weight": (4096, 9216),
    "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096),
    "classifier.4.bias": (4096,),
    "classifier.6.weight": (1000, 4096),
    "classifier.6.bias": (1000,),
}


# torchvision VGG configuration "D" (VGG16): conv widths per stage, each stage then a 2x2 max pool.
_VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class _TappedFeatures(nn.Module):
    """A ``features`` Sequential that also returns the outputs of the layers in ``taps``."""

    taps: tuple[int, ...] = ()

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outputs.append(x)
            if index == self.taps[-1]:
                break
        return outputs


class VGG16Features(_TappedFeatures):
    """torchvision ``vgg16().features`` (configuration D); taps relu1_2, 2_2, 3_3, 4_3, 5_3."""

    taps = (3, 8, 15, 22, 29)

    def __init__(self) -> None:
        layers: list[nn.Module] = []
        in_channels = 3
        for stage in _VGG16_STAGES:
            for width in stage:
                layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU()]
                in_channels = width
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        super().__init__(layers)


class AlexNetFeatures(_TappedFeatures):
    """torchvision ``alexnet().features``; taps relu1 ... relu5."""

    taps = (1, 4, 7, 9, 11)

    def __init__(self) -> None:
        super().__init__(
            [
                nn.Conv2d(3, 64, 11, stride=4, padding=2),
                nn.ReLU(),
                nn.MaxPool2d(kernel_size=3, stride=2),
                nn.Conv2d(64, 192, 5, padding=2),
                nn.ReLU(),
                nn.MaxPool2d(kernel_size=3, stride=2),
                nn.Conv2d(192, 384, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(384, 256, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(256, 256, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(kernel_size=3, stride=2),
            ]
        )


_TRUNKS = {
    "alex": (AlexNetFeatures, _ALEXNET_CLASSIFIER),
    "vgg": (VGG16Features, _VGG16_CLASSIFIER),
}
_TRUNK_WEIGHTS = {"alex": ("alexnet", "lpips_alex"), "vgg": ("vgg16", "lpips_vgg")}


def lpips_head_shapes(net: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the ``lpips`` package's head file for ``net`` (``linK.model.1.weight``)."""
    return {f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate(LPIPS_CHANNELS[net])}


def convert_lpips_heads(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map ``linK.model.1.weight`` (``model.1``: the conv after the ``lpips`` package's dropout,
    an identity at evaluation) to ``K.weight`` of :attr:`LPIPS.heads`."""
    converted = {}
    for key, value in state.items():
        prefix, suffix = key.split(".", 1)
        assert prefix.startswith("lin") and suffix == "model.1.weight", key
        converted[f"{int(prefix[3:])}.weight"] = value
    return converted


class LPIPS(nn.Module):
    """LPIPS v0.1 distance between two batches of ``[0, 1]`` RGB images, shape (B, 3, H, W)."""

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in _TRUNKS:
            raise ValueError(f"LPIPS net must be one of {sorted(_TRUNKS)}, got {net!r}")
        self.net_name = net
        self.trunk = _TRUNKS[net][0]()
        self.heads = nn.ModuleList(
            nn.Conv2d(channels, 1, 1, bias=False) for channels in LPIPS_CHANNELS[net]
        )
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_state_dicts(
        cls,
        net: str,
        trunk_state: dict[str, torch.Tensor],
        heads_state: dict[str, torch.Tensor],
    ) -> LPIPS:
        """Build from a torchvision trunk state dict and an ``lpips`` heads state dict (checked)."""
        model = cls(net)
        trunk_file, heads_file = _TRUNK_WEIGHTS[net]
        load_checked_state_dict(
            model.trunk, trunk_state, f"{trunk_file} trunk weights", ignored=_TRUNKS[net][1]
        )
        heads_state = check_state_dict(
            lpips_head_shapes(net),
            heads_state,
            f"{heads_file} LPIPS head weights",
            wording="network",
        )
        model.heads.load_state_dict(convert_lpips_heads(heads_state), strict=True)
        return model

    def forward(self, images0: torch.Tensor, images1: torch.Tensor) -> torch.Tensor:
        """Per-pair LPIPS distances, shape (B,)."""
        if images0.shape != images1.shape or images0.dim() != 4 or images0.shape[1] != 3:
            raise ValueError(
                f"expected two (B, 3, H, W) batches of one shape, got {tuple(images0.shape)} "
                f"and {tuple(images1.shape)}"
            )
        batch = images0.shape[0]
        both = torch.cat([images0, images1]).to(self.shift.dtype)
        both = (2 * both - 1 - self.shift) / self.scale
        distance = torch.zeros(batch, dtype=both.dtype, device=both.device)
        for features, head in zip(self.trunk(both), self.heads, strict=True):
            features = features / (features.square().sum(dim=1, keepdim=True).sqrt() + _EPS)
            diff = (features[:batch] - features[batch:]).square()
            distance += head(diff).mean(dim=(1, 2, 3))
        return distance


def load_lpips(
    net: str = "alex",
    weights_dir: str | os.PathLike = "weights",
    *,
    verify: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[LPIPS, dict]:
    """Load LPIPS from ``weights_dir``; returns the model and the protocol record of its files."""
    if net not in _TRUNK_WEIGHTS:
        raise ValueError(f"LPIPS net must be one of {sorted(_TRUNK_WEIGHTS)}, got {net!r}")
    trunk_key, heads_key = _TRUNK_WEIGHTS[net]
    trunk_path = resolve_weight_file(trunk_key, weights_dir, verify=verify)
    heads_path = resolve_weight_file(heads_key, weights_dir, verify=verify)
    model = LPIPS.from_state_dicts(
        net, load_weight_file(trunk_path), load_weight_file(heads_path)
    ).to(device)
    record = {
        trunk_key: weight_record(trunk_key, trunk_path, verified=verify),
        heads_key: weight_record(heads_key, heads_path, verified=verify),
    }
    return model, record
