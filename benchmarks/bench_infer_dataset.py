"""Throughput of ``idm-vton infer-dataset`` on the CPU with the tiny model; prints JSON lines.

For every (work size, batch size): images/s of a full run over a synthetic VITON-HD test split
(data loading, pipeline, PNG writing; the model is built once, outside the timing), then the cost
of a second run that finds everything done (the resume scan: listing, PNG checks, no model).
The tiny model's numbers measure the plumbing around the networks, not IDM-VTON's speed.

    python benchmarks/bench_infer_dataset.py [--images 16] [--steps 4] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from idm_vton.evaluation.infer_dataset import DatasetInferenceConfig, DatasetKind, infer_dataset
from idm_vton.pipelines.loading import tiny_pipeline


def write_vitonhd(root: Path, n: int, size: tuple[int, int]) -> None:
    """A VITON-HD test split of ``n`` random pictures at ``size`` (H, W)."""
    height, width = size
    rng = np.random.default_rng(0)
    phase = root / "test"
    for folder in ("image", "cloth", "agnostic-mask", "image-densepose"):
        (phase / folder).mkdir(parents=True)
    names = [f"{i:05d}_00" for i in range(n)]
    for name in names:
        for folder in ("image", "cloth", "image-densepose"):
            small = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
            picture = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
            picture.save(phase / folder / f"{name}.jpg", quality=95)
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[height // 5 : height * 3 // 4, width // 5 : width * 4 // 5] = 255
        Image.fromarray(mask).save(phase / "agnostic-mask" / f"{name}_mask.png")
    (root / "test_pairs.txt").write_text("".join(f"{a}.jpg {a}.jpg\n" for a in names))
    (phase / "vitonhd_test_tagged.json").write_text(json.dumps({"data": []}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = tiny_pipeline()
    for height, width in ((64, 48), (256, 192)):
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            write_vitonhd(data, args.images, (height, width))
            for batch_size in (1, 4):
                config = DatasetInferenceConfig(
                    model="tiny",
                    data=data,
                    dataset=DatasetKind.VITONHD,
                    out=Path(tmp) / f"out_b{batch_size}",
                    steps=args.steps,
                    height=height,
                    width=width,
                    batch_size=batch_size,
                    device="cpu",
                    num_workers=0,
                    progress=False,
                )
                start = time.perf_counter()
                summary = infer_dataset(config, pipe=pipe)
                seconds = time.perf_counter() - start
                assert summary.rendered == args.images, summary
                start = time.perf_counter()
                again = infer_dataset(config, pipe=None)  # nothing left: no model is loaded
                scan = time.perf_counter() - start
                assert again.rendered == 0, again
                print(
                    json.dumps(
                        {
                            "bench": "infer_dataset",
                            "model": "tiny",
                            "device": "cpu",
                            "threads": torch.get_num_threads(),
                            "height": height,
                            "width": width,
                            "steps": args.steps,
                            "guidance": config.guidance,
                            "batch_size": batch_size,
                            "images": args.images,
                            "seconds": round(seconds, 3),
                            "images_per_s": round(args.images / seconds, 2),
                            "resume_scan_seconds": round(scan, 3),
                            "torch": torch.__version__,
                            "python": platform.python_version(),
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
