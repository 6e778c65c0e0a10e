"""CPU throughput of the evaluation metrics; prints one JSON line per figure.

Networks have the real architectures with random weights (no weight files are needed, and speed
does not depend on the values), which every line states. Figures:

* ``ssim``, ``lpips_alex``, ``lpips_vgg``: image pairs per second at the evaluation resolution;
* ``clean_resize``, ``inception_features`` (clean resize + FID Inception pool3): images/s;
* ``clip_i``: images/s through a CLIP ViT-L/14 sized vision tower (224 px);
* ``fid_from_features``, ``kid_from_features``: seconds for one score from VITON-HD-sized
  feature sets (2032 x 2048 per side), the sqrtm and the 100 subsets being the costs.

Usage: ``python benchmarks/bench_metrics.py [--resolution 1024x768] [--images 2] [--only ssim,fid]``
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from idm_vton.evaluation.metrics.fid import (
    FIDInceptionV3,
    clean_resize,
    fid_from_features,
    inception_features,
    kid_from_features,
)
from idm_vton.evaluation.metrics.lpips import LPIPS
from idm_vton.evaluation.metrics.ssim import ssim
from idm_vton.testing.metric_shapes import random_clip_scorer

FIGURES = (
    "ssim",
    "lpips_alex",
    "lpips_vgg",
    "clean_resize",
    "inception_features",
    "clip_i",
    "fid_from_features",
    "kid_from_features",
)
RANDOM_WEIGHTS = "random (real architecture; speed does not depend on weight values)"


def timed(function, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` runs after one warm-up run."""
    function()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def emit(figure: str, seconds: float, count: int, unit: str, **extra) -> None:
    line = {
        "metric": figure,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "n": count,
        "seconds": round(seconds, 4),
        # The machine may be shared: the 1-minute load average says how busy it was.
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    if unit == "images/s":
        line["images_per_s"] = round(count / seconds, 3)
    line.update(extra)
    print(json.dumps(line), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", default="1024x768", help="HEIGHTxWIDTH (default 1024x768)")
    parser.add_argument("--images", type=int, default=2, help="images (pairs) per timed batch")
    parser.add_argument("--only", default=",".join(FIGURES), help="comma-separated figures")
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.resolution.lower().split("x"))
    only = set(args.only.split(","))
    n = args.images
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images_u8 = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)]
    batch = torch.from_numpy(np.stack(images_u8)).permute(0, 3, 1, 2).float() / 255
    other = (batch + 0.1 * torch.rand_like(batch)).clamp(0, 1)
    resolution = [height, width]

    with torch.no_grad():
        if "ssim" in only:
            seconds = timed(lambda: ssim(batch, other))
            emit("ssim", seconds, n, "images/s", resolution=resolution, dtype="float64")
        for net in ("alex", "vgg"):
            if f"lpips_{net}" in only:
                model = LPIPS(net)
                seconds = timed(lambda model=model: model(batch, other))
                emit(
                    f"lpips_{net}",
                    seconds,
                    n,
                    "images/s",
                    resolution=resolution,
                    weights=RANDOM_WEIGHTS,
                )
        if "clean_resize" in only:
            seconds = timed(lambda: [clean_resize(image) for image in images_u8])
            emit("clean_resize", seconds, n, "images/s", resolution=resolution)
        if "inception_features" in only:
            inception = FIDInceptionV3()
            seconds = timed(lambda: inception_features(inception, images_u8))
            emit(
                "inception_features",
                seconds,
                n,
                "images/s",
                resolution=resolution,
                weights=RANDOM_WEIGHTS,
                includes="clean_resize + FID Inception at 299",
            )
        if "clip_i" in only:
            scorer = random_clip_scorer()
            seconds = timed(lambda: scorer.embed(images_u8))
            emit(
                "clip_i",
                seconds,
                n,
                "images/s",
                resolution=resolution,
                weights=RANDOM_WEIGHTS,
                model="CLIP ViT-L/14 vision tower, 224 px",
            )

    # VITON-HD test split: 2032 images; FID Inception features: 2048-d.
    features_a = rng.standard_normal((2032, 2048))
    features_b = rng.standard_normal((2032, 2048)) + 0.01
    if "fid_from_features" in only:
        start = time.perf_counter()
        fid_from_features(features_a, features_b)
        emit(
            "fid_from_features",
            time.perf_counter() - start,
            2032,
            "seconds",
            features=[2032, 2048],
            note="scipy sqrtm of a 2048x2048 product",
        )
    if "kid_from_features" in only:
        start = time.perf_counter()
        kid_from_features(features_a, features_b)
        emit(
            "kid_from_features",
            time.perf_counter() - start,
            2032,
            "seconds",
            features=[2032, 2048],
            subsets=100,
            subset_size=1000,
        )


if __name__ == "__main__":
    main()
