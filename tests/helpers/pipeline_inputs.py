"""Random inputs for the tiny pipeline at the tests' work size, and the call the tests make on them.

The photos are uniform random pixels from a seed, the mask a white box over the middle half: no
file is read, and every input is the same in every test module that uses them.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

#: The tests' work size (a multiple of 8, 3:4 like the real 1024 x 768).
H, W = 64, 48


def random_photo(seed: int = 0, size: tuple[int, int] = (W, H)) -> Image.Image:
    """Uniform random RGB pixels drawn from ``seed``, ``size`` given as PIL's (W, H)."""
    return Image.fromarray(
        np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    )


def box_mask(size: tuple[int, int] = (W, H)) -> Image.Image:
    """White (regenerate) over the middle half of each side, ``size`` given as PIL's (W, H)."""
    m = np.zeros((size[1], size[0]), np.uint8)
    m[size[1] // 4 : 3 * size[1] // 4, size[0] // 4 : 3 * size[0] // 4] = 255
    return Image.fromarray(m)


def tryon_images(pipe, seed: int = 0, **kwargs):
    """``pipe``'s images for photo 0 wearing garment photo 1 (pose photo 2, :func:`box_mask`),
    2 steps at H x W from a generator seeded with ``seed``, as a numpy array; ``kwargs`` replace
    any of these arguments."""
    args = dict(
        person_image=random_photo(0),
        garment_image=random_photo(1),
        mask_image=box_mask(),
        pose_image=random_photo(2),
        garment_description="short sleeve round neck t-shirts",
        num_inference_steps=2,
        height=H,
        width=W,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
    args.update(kwargs)
    return pipe(**args).images
