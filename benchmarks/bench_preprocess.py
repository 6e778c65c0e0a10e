"""Preprocessing time per photo on the CPU: human parsing, OpenPose, DensePose, mask.

Prints one JSON line per figure. No weights can be downloaded here, so the networks carry random
weights: OpenPose and DensePose at their real layer sizes (the real compute), human parsing with
a small stand-in ONNX graph of the SCHP signature (the figure then covers the demo's pre- and
post-processing plus the stand-in, not the real ResNet-101 SCHP: it says so in its line).

    python benchmarks/bench_preprocess.py [--photos N] [--threads T] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from idm_vton.loaders.hub import MODEL_FILES  # noqa: E402
from idm_vton.preprocess.densepose.model import DensePoseRCNNConfig  # noqa: E402
from idm_vton.preprocess.densepose.predictor import DensePosePredictor  # noqa: E402
from idm_vton.preprocess.preprocessor import Preprocessor  # noqa: E402
from tests.helpers.preprocess_models import (  # noqa: E402
    REAL_SIZES,
    make_random_parsers,
    tiny_densepose_state,
)


def openpose_real_shapes() -> dict[str, tuple[int, int, int, int]]:
    """Conv shapes (out, in, k, k) of the CMU body model in body_pose_model.pth."""
    shapes: dict[str, tuple[int, int, int, int]] = {}
    trunk = [("conv1_1", 64), ("conv1_2", 64), ("conv2_1", 128), ("conv2_2", 128), ("conv3_1", 256),
             ("conv3_2", 256), ("conv3_3", 256), ("conv3_4", 256), ("conv4_1", 512), ("conv4_2", 512),
             ("conv4_3_CPM", 256), ("conv4_4_CPM", 128)]  # fmt: skip
    prev = 3
    for name, width in trunk:
        shapes[name] = (width, prev, 3, 3)
        prev = width
    for branch, out in (("L1", 38), ("L2", 19)):
        for i in (1, 2, 3):
            shapes[f"conv5_{i}_CPM_{branch}"] = (128, 128, 3, 3)
        shapes[f"conv5_4_CPM_{branch}"] = (512, 128, 1, 1)
        shapes[f"conv5_5_CPM_{branch}"] = (out, 512, 1, 1)
        for stage in range(2, 7):
            shapes[f"Mconv1_stage{stage}_{branch}"] = (128, 128 + 38 + 19, 7, 7)
            for i in (2, 3, 4, 5):
                shapes[f"Mconv{i}_stage{stage}_{branch}"] = (128, 128, 7, 7)
            shapes[f"Mconv6_stage{stage}_{branch}"] = (128, 128, 1, 1)
            shapes[f"Mconv7_stage{stage}_{branch}"] = (out, 128, 1, 1)
    return shapes


def write_models(root: Path) -> None:
    for rel in MODEL_FILES.values():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
    make_random_parsers(root)
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in openpose_real_shapes().items():
        fan_in = shape[1] * shape[2] * shape[3]
        state[f"{name}.weight"] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        state[f"{name}.bias"] = torch.zeros(shape[0])
    torch.save(state, root / MODEL_FILES["openpose"])
    with open(root / MODEL_FILES["densepose"], "wb") as f:
        pickle.dump({"model": tiny_densepose_state(sizes=REAL_SIZES)}, f, protocol=4)


def timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=2, help="example photos to time (default 2)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeat", type=int, default=2, help="best of R runs per photo")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    photos_dir = REPO.parent / "shared" / "examples" / "person"
    photos = sorted(photos_dir.glob("*.jpg"))[: args.photos]
    if not photos:
        print(f"no example photos in {photos_dir}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        write_models(Path(tmp))
        pre = Preprocessor(tmp)
        # Random weights score every anchor as a person; keep one detection, as for a real photo.
        pre._densepose = DensePosePredictor(
            Path(tmp) / MODEL_FILES["densepose"], config=DensePoseRCNNConfig(detections_per_image=1)
        )
        pre.parser, pre.pose  # noqa: B018  (load outside the timing)
        rows = {"parsing": [], "openpose": [], "densepose": [], "mask": []}
        for path in photos:
            photo = Image.open(path).convert("RGB")
            small = photo.resize(pre.work_size(photo), Image.Resampling.BICUBIC)
            rows["parsing"].append(timed(lambda s=small: pre.parser(s), args.repeat))
            rows["openpose"].append(timed(lambda s=small: pre.pose(s), args.repeat))
            rows["densepose"].append(timed(lambda p=photo: pre.densepose(p), args.repeat))
            rows["mask"].append(timed(lambda p=photo: pre.mask(p), args.repeat))
    notes = {
        "parsing": "stand-in SCHP-signature ONNX graph (random): pre/post-processing + a small net, not the real SCHP",
        "openpose": "CMU body model, real layer sizes, random weights",
        "densepose": "DensePose R-CNN R50-FPN at detectron2 test size (short side 800), real layer sizes, random weights, one detection",
        "mask": "parsing + OpenPose + agnostic_mask (as used by --mask auto)",
    }
    for name, values in rows.items():
        line = {
            "path": name,
            "metric": "seconds_per_photo",
            "value": round(float(np.mean(values)), 4),
            "unit": "s",
            "photos": len(values),
            "size": "768x1024 photo, models at 384x512",
            "threads": args.threads,
            "note": notes[name],
        }
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
