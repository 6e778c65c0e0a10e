"""Training-step benchmark: time per optimizer step and peak memory of IDM-VTON training.

One step = what :class:`idm_vton.training.trainer.Trainer` does per micro-batch: four VAE encodes
(fp32), CLIP image encoder, GarmentNet to its last self-attention (no grad), Resampler + TryonNet
forward and backward (autocast in ``--dtype``, fp32 master weights), gradient clipping, AdamW.
The loss is :func:`idm_vton.training.objective.diffusion_loss`, the one training uses.

Presets:

* ``tiny``: the test model (:func:`idm_vton.pipelines.loading.tiny_pipeline`), real tiny text encoders;
* ``sdxl``: the real shapes with random weights, no download: SDXL-inpainting UNet widened to 13
  channels with IP-Adapter attention, SDXL base UNet (GarmentNet), IP-Adapter Plus Resampler
  (1280 wide, 4 layers, 20 heads), CLIP ViT-H/14 vision tower, SDXL VAE. Prompt embeddings are
  random tensors of the real shapes (77 x 2048 tokens, 1280 pooled): the text encoders are frozen
  and their outputs are cached during training. Built on the meta device, then ``to_empty`` and
  filled from a small random pool (seconds, not minutes).

Prints one JSON line per configuration: ``step_s`` (median over ``--steps`` after ``--warmup``),
``steps_per_s``, ``peak_memory_mb`` (CUDA ``max_memory_allocated`` on a GPU; the process's max RSS
on the CPU, which includes building the model), and the context.

    python benchmarks/bench_train.py --preset tiny --resolution 64 48 --batch 2
    python benchmarks/bench_train.py --preset sdxl --device cuda --dtype bf16 --gradient-checkpointing
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import torch

from idm_vton.pipelines.loading import tiny_pipeline
from idm_vton.testing.sdxl_shapes import sdxl_pipeline
from idm_vton.training.objective import (
    Conditioner,
    ObjectiveConfig,
    TryonTrainable,
    diffusion_loss,
    step_generator,
    training_noise_scheduler,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class FixedTextConditioner(Conditioner):
    """Prompt embeddings of the real SDXL shapes without text encoders (training caches them)."""

    def text(self, captions):
        n = len(captions)
        gen = torch.Generator().manual_seed(0)
        embeds = torch.randn(n, 77, 2048, generator=gen).to(self.device, self.weight_dtype)
        pooled = torch.randn(n, 1280, generator=gen).to(self.device, self.weight_dtype)
        return embeds, pooled


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    if args.preset == "tiny":
        pipe = tiny_pipeline().to(device)
        conditioner_cls = Conditioner
    else:
        pipe = sdxl_pipeline(torch.float32, device=device)
        pipe.unet.requires_grad_(True)  # built frozen for inference; TryonNet + Resampler train
        pipe.image_projection.requires_grad_(True)
        conditioner_cls = FixedTextConditioner
    for module in (pipe.garment_unet, pipe.image_encoder, pipe.text_encoder, pipe.text_encoder_2):
        if module is not None:
            module.requires_grad_(False).to(dtype)
    pipe.vae.requires_grad_(False).to(torch.float32)
    model = TryonTrainable(pipe.unet, pipe.image_projection).float().train()
    if args.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=1e-2)
    conditioner = conditioner_cls(pipe, device)
    scheduler = training_noise_scheduler(pipe.scheduler)
    h, w = args.resolution
    clip = pipe.image_encoder.config.image_size
    gen = torch.Generator().manual_seed(0)
    b = args.batch
    batch = {
        "person": torch.rand(b, 3, h, w, generator=gen),
        "garment": torch.rand(b, 3, h, w, generator=gen),
        "pose": torch.rand(b, 3, h, w, generator=gen),
        "mask": (torch.rand(b, 1, h, w, generator=gen) > 0.5).float(),
        "garment_clip": torch.randn(b, 3, clip, clip, generator=gen),
        "caption": ["model is wearing short sleeve t-shirts"] * b,
        "garment_caption": ["a photo of short sleeve t-shirts"] * b,
    }
    use_autocast = dtype != torch.float32
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(args.warmup + args.steps):
        sync()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=use_autocast):
            loss = diffusion_loss(
                model, conditioner, scheduler, batch, step_generator(0, step), ObjectiveConfig()
            )
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        pipe.garment_store.clear()
        sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        memory_kind = "cuda_max_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        memory_kind = "max_rss"
    median = statistics.median(times)
    return {
        "preset": args.preset,
        "device": str(device),
        "dtype": args.dtype,
        "resolution": [h, w],
        "batch": b,
        "gradient_checkpointing": bool(args.gradient_checkpointing),
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "step_s": round(median, 4),
        "steps_per_s": round(1 / median, 3),
        "peak_memory_mb": round(peak, 1),
        "memory": memory_kind,
        "trainable_parameters": sum(p.numel() for p in params),
        "final_loss": round(float(loss.detach()), 4),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=["tiny", "sdxl"], default="tiny")
    parser.add_argument("--resolution", type=int, nargs=2, default=None, metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--both-checkpointing", action="store_true", help="run with and without")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.resolution is None:
        args.resolution = [64, 48] if args.preset == "tiny" else [1024, 768]
    settings = [False, True] if args.both_checkpointing else [args.gradient_checkpointing]
    for checkpointing in settings:
        args.gradient_checkpointing = checkpointing
        print(json.dumps(run(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
