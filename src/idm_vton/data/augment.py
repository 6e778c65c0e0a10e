"""Training augmentations of IDM-VTON (the official ``train_xl.py``), in plain torch.

Each augmentation fires with probability 0.5:

1. horizontal flip of person, mask, pose and garment together;
2. colour jitter (brightness 0.5, contrast 0.3, saturation 0.5, hue 0.5) with the *same* random
   factors on person and garment;
3. random scale in [0.8, 1.2] and 4. random shift of up to 20 % of the width / height, applied as
   one affine resample with the same draw to person, mask and pose (never to the garment).

All images are float tensors ``[..., C, H, W]`` in ``[0, 1]``. The colour operations follow the
semantics of torchvision's functional ``adjust_*`` on float images, re-implemented here so the
package does not need torchvision, which has no build matching the torch this project is tested
with (``torch==2.13.0``; docs/design.md). They run on ``[0, 1]`` images: the official trainer ran them on
tensors already scaled to ``[-1, 1]``, where torchvision's clamp to ``[0, 1]`` erased everything
darker than mid-grey (docs/training.md lists that trainer's bugs).

Randomness comes only from a ``torch.Generator``: :func:`sample_augment_params` draws a fixed
number of values per call (whether or not an augmentation fires), so a seed reproduces a sample
exactly. Drawing the parameters separately from applying them lets a caller apply the same draw to
further views, e.g. the full-resolution garment that feeds the CLIP image encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

# ITU-R 601-2 luma weights, as used by torchvision's rgb_to_grayscale.
_LUMA_WEIGHTS = (0.2989, 0.587, 0.114)

# Values drawn from the generator per sample (see sample_augment_params).
_NUM_DRAWS = 11


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities, ranges and fill values of the try-on augmentations.

    The jitter strengths use torchvision ``ColorJitter`` conventions: a factor is drawn uniformly
    from ``[max(0, 1 - x), 1 + x]`` for brightness, contrast and saturation, and the hue shift from
    ``[-hue, hue]`` (in turns of the colour wheel, at most 0.5).

    Fill values are what the affine move shows where it uncovers the frame:

    - ``person_fill = 0.5``: mid-grey, the value the official trainer produced (it filled a
      ``[-1, 1]`` tensor with 0);
    - ``pose_fill = 0.0``: black, the DensePose background colour;
    - ``mask_fill = 0.0``: "keep", so the uncovered border is never a region to regenerate.
    """

    flip_p: float = 0.5
    color_p: float = 0.5
    scale_p: float = 0.5
    shift_p: float = 0.5
    brightness: float = 0.5
    contrast: float = 0.3
    saturation: float = 0.5
    hue: float = 0.5
    scale_range: tuple[float, float] = (0.8, 1.2)
    max_shift: float = 0.2
    person_fill: float = 0.5
    pose_fill: float = 0.0
    mask_fill: float = 0.0

    def __post_init__(self) -> None:
        for name in ("flip_p", "color_p", "scale_p", "shift_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"AugmentConfig.{name} must be a probability in [0, 1], got {value}"
                )
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"AugmentConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"AugmentConfig.hue must be in [0, 0.5], got {self.hue}")
        low, high = self.scale_range
        if not 0.0 < low <= high:
            raise ValueError(
                f"AugmentConfig.scale_range must satisfy 0 < low <= high, got {self.scale_range}"
            )
        if not 0.0 <= self.max_shift < 1.0:
            raise ValueError(f"AugmentConfig.max_shift must be in [0, 1), got {self.max_shift}")
        for name in ("person_fill", "pose_fill", "mask_fill"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"AugmentConfig.{name} must be in [0, 1], got {getattr(self, name)}"
                )


@dataclass(frozen=True)
class ColorJitterFactors:
    """One colour-jitter draw: multiplicative brightness/contrast/saturation, additive hue."""

    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0


@dataclass(frozen=True)
class AugmentParams:
    """One augmentation draw, shared by every view of a sample.

    ``shift`` is ``(x, y)`` as fractions of the image width and height; positive values move the
    content right and down. ``color`` is ``None`` when colour jitter did not fire.
    """

    flip: bool = False
    color: ColorJitterFactors | None = None
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)

    @property
    def moves(self) -> bool:
        """Whether the affine (scale / shift) part changes the person, mask and pose."""
        return self.scale != 1.0 or self.shift != (0.0, 0.0)


class AugmentedSample(NamedTuple):
    person: torch.Tensor
    mask: torch.Tensor
    pose: torch.Tensor
    garment: torch.Tensor
    params: AugmentParams


def sample_augment_params(
    generator: torch.Generator, config: AugmentConfig | None = None
) -> AugmentParams:
    """Draw one set of augmentation parameters (each augmentation fires with its probability).

    Always consumes the same number of values from ``generator``, so the stream stays aligned
    across samples whatever fires.
    """
    config = config or AugmentConfig()
    u = torch.rand(_NUM_DRAWS, generator=generator, dtype=torch.float64).tolist()

    def uniform(value: float, low: float, high: float) -> float:
        return low + (high - low) * value

    color = None
    if u[1] < config.color_p:
        color = ColorJitterFactors(
            brightness=uniform(u[2], max(0.0, 1 - config.brightness), 1 + config.brightness),
            contrast=uniform(u[3], max(0.0, 1 - config.contrast), 1 + config.contrast),
            saturation=uniform(u[4], max(0.0, 1 - config.saturation), 1 + config.saturation),
            hue=uniform(u[5], -config.hue, config.hue),
        )
    scale = uniform(u[7], *config.scale_range) if u[6] < config.scale_p else 1.0
    shift = (0.0, 0.0)
    if u[8] < config.shift_p:
        shift = (
            uniform(u[9], -config.max_shift, config.max_shift),
            uniform(u[10], -config.max_shift, config.max_shift),
        )
    return AugmentParams(flip=u[0] < config.flip_p, color=color, scale=scale, shift=shift)


# --------------------------------------------------------------------------------------------
# Colour operations (torchvision.transforms.functional semantics on float images in [0, 1])
# --------------------------------------------------------------------------------------------


def _check_rgb(image: torch.Tensor) -> None:
    if image.ndim < 3 or image.shape[-3] != 3 or not image.is_floating_point():
        raise ValueError(
            f"expected a float RGB image [..., 3, H, W], got {tuple(image.shape)} {image.dtype}"
        )


def _blend(image: torch.Tensor, other: torch.Tensor, ratio: float) -> torch.Tensor:
    return (ratio * image + (1.0 - ratio) * other).clamp(0.0, 1.0)


def rgb_to_grayscale(image: torch.Tensor) -> torch.Tensor:
    """Luma ``0.2989 R + 0.587 G + 0.114 B``, shape ``[..., 1, H, W]``."""
    _check_rgb(image)
    r, g, b = image.unbind(-3)
    return (_LUMA_WEIGHTS[0] * r + _LUMA_WEIGHTS[1] * g + _LUMA_WEIGHTS[2] * b).unsqueeze(-3)


def adjust_brightness(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with black: ``clamp(factor * image, 0, 1)``."""
    _check_rgb(image)
    return _blend(image, torch.zeros_like(image), factor)


def adjust_contrast(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the mean of the image's grayscale version (one scalar per image)."""
    mean = rgb_to_grayscale(image).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(image, mean, factor)


def adjust_saturation(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the image's grayscale version, pixel by pixel."""
    return _blend(image, rgb_to_grayscale(image), factor)


def rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """RGB in ``[0, 1]`` to HSV with hue in turns ``[0, 1)``; grey pixels get hue 0."""
    _check_rgb(image)
    r, g, b = image.unbind(-3)
    value = image.amax(dim=-3)
    chroma = value - image.amin(dim=-3)
    has_chroma = chroma > 0
    saturation = torch.where(has_chroma, chroma / torch.where(has_chroma, value, 1.0), 0.0)
    safe_chroma = torch.where(has_chroma, chroma, 1.0)
    # Hue sector by which channel is the maximum (ties resolve r, then g, then b).
    hue = torch.where(
        value == r,
        (g - b) / safe_chroma,
        torch.where(value == g, 2.0 + (b - r) / safe_chroma, 4.0 + (r - g) / safe_chroma),
    )
    hue = torch.where(has_chroma, torch.remainder(hue / 6.0, 1.0), 0.0)
    return torch.stack((hue, saturation, value), dim=-3)


def hsv_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv` (hue in turns, wrapped)."""
    hue, saturation, value = image.unbind(-3)
    sector_float = torch.floor(hue * 6.0)
    fraction = hue * 6.0 - sector_float
    sector = torch.remainder(sector_float.long(), 6)
    p = (value * (1.0 - saturation)).clamp(0.0, 1.0)
    q = (value * (1.0 - saturation * fraction)).clamp(0.0, 1.0)
    t = (value * (1.0 - saturation * (1.0 - fraction))).clamp(0.0, 1.0)
    # Per sector 0..5, which of (value, q, p, t) each channel takes.
    red = torch.stack((value, q, p, p, t, value))
    green = torch.stack((t, value, value, q, p, p))
    blue = torch.stack((p, p, t, value, value, q))
    index = sector.unsqueeze(0)
    channels = [c.gather(0, index).squeeze(0) for c in (red, green, blue)]
    return torch.stack(channels, dim=-3)


def adjust_hue(image: torch.Tensor, hue_factor: float) -> torch.Tensor:
    """Rotate the hue by ``hue_factor`` turns (in ``[-0.5, 0.5]``) in HSV space."""
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"hue_factor must be in [-0.5, 0.5], got {hue_factor}")
    hsv = rgb_to_hsv(image)
    hue, saturation, value = hsv.unbind(-3)
    hue = torch.remainder(hue + hue_factor, 1.0)
    return hsv_to_rgb(torch.stack((hue, saturation, value), dim=-3))


def color_jitter(image: torch.Tensor, factors: ColorJitterFactors) -> torch.Tensor:
    """Apply one jitter draw in the official trainer's fixed order.

    The order is contrast, brightness, hue, saturation: the official code draws torchvision's
    random order but never uses it.
    """
    image = adjust_contrast(image, factors.contrast)
    image = adjust_brightness(image, factors.brightness)
    image = adjust_hue(image, factors.hue)
    return adjust_saturation(image, factors.saturation)


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def hflip(image: torch.Tensor) -> torch.Tensor:
    """Mirror left-right."""
    return image.flip(-1)


def affine_scale_shift(
    image: torch.Tensor,
    scale: float,
    shift: tuple[float, float],
    *,
    fill: float,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Scale about the image centre, then shift by ``shift`` (fractions of width, height).

    A pixel at ``p`` (relative to the centre) moves to ``scale * p + shift * (W, H)``, as
    torchvision's ``affine(angle=0, translate, scale, shear=0)``. Uncovered pixels take ``fill``;
    ``mode`` is ``"bilinear"`` for images and ``"nearest"`` for masks (keeps them binary).
    """
    if image.ndim < 3:
        raise ValueError(f"expected an image [..., C, H, W], got {tuple(image.shape)}")
    if scale == 1.0 and tuple(shift) == (0.0, 0.0):
        return image
    *lead, channels, height, width = image.shape
    flat = image.reshape(-1, channels, height, width)
    # Output -> input map in normalised coordinates (width and height both span 2 units).
    shift_x, shift_y = 2.0 * shift[0], 2.0 * shift[1]
    theta = torch.tensor(
        [[1.0 / scale, 0.0, -shift_x / scale], [0.0, 1.0 / scale, -shift_y / scale]],
        dtype=flat.dtype,
        device=flat.device,
    ).expand(flat.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
    # grid_sample pads with zeros: sample (image - fill) and add fill back so the border is
    # exactly `fill` and bilinear edges blend towards it.
    moved = F.grid_sample(flat - fill, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return (moved + fill).reshape(*lead, channels, height, width)


# --------------------------------------------------------------------------------------------
# Whole-sample augmentation
# --------------------------------------------------------------------------------------------


def augment_garment(garment: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Flip and colour-jitter a garment image (the garment is never scaled or shifted)."""
    if params.flip:
        garment = hflip(garment)
    if params.color is not None:
        garment = color_jitter(garment, params.color)
    return garment


def augment_person(
    person: torch.Tensor,
    mask: torch.Tensor,
    pose: torch.Tensor,
    params: AugmentParams,
    config: AugmentConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flip person, mask and pose; jitter the person; move all three with one affine draw.

    The mask is resampled with nearest neighbour, person and pose bilinearly; fills come from
    ``config`` (see :class:`AugmentConfig`).
    """
    config = config or AugmentConfig()
    if params.flip:
        person, mask, pose = hflip(person), hflip(mask), hflip(pose)
    if params.color is not None:
        person = color_jitter(person, params.color)
    if params.moves:
        person = affine_scale_shift(person, params.scale, params.shift, fill=config.person_fill)
        pose = affine_scale_shift(pose, params.scale, params.shift, fill=config.pose_fill)
        mask = affine_scale_shift(
            mask, params.scale, params.shift, fill=config.mask_fill, mode="nearest"
        )
    return person, mask, pose


def augment_sample(
    person: torch.Tensor,
    mask: torch.Tensor,
    pose: torch.Tensor,
    garment: torch.Tensor,
    generator: torch.Generator,
    config: AugmentConfig | None = None,
) -> AugmentedSample:
    """Draw one set of parameters from ``generator`` and apply it to a whole sample."""
    params = sample_augment_params(generator, config)
    person, mask, pose = augment_person(person, mask, pose, params, config)
    return AugmentedSample(person, mask, pose, augment_garment(garment, params), params)
