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

``--estimate-memory`` prints instead, for each strategy of ``configs/accelerate/`` and each
``--gpus`` count, the memory per GPU that the model states take in bf16 mixed precision (an
estimate from the parameter counts of the real SDXL-shaped networks, built on the meta device, no
weights): trainable weights, gradients and AdamW states as each strategy keeps and shards them,
plus the frozen networks. Activations come on top (they depend on the batch and on gradient
checkpointing: measure them with the ``sdxl`` preset on a GPU).

    python benchmarks/bench_train.py --preset tiny --resolution 64 48 --batch 2
    python benchmarks/bench_train.py --preset sdxl --device cuda --dtype bf16 --gradient-checkpointing
    python benchmarks/bench_train.py --estimate-memory --gpus 1 4 8
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


#: SDXL's two text encoders (CLIP ViT-L/14 text tower; OpenCLIP ViT-bigG/14 text tower).
SDXL_TEXT_ENCODERS = (
    dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
         max_position_embeddings=77, vocab_size=49408, projection_dim=768),
    dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
         max_position_embeddings=77, vocab_size=49408, projection_dim=1280),
)  # fmt: skip


def sdxl_parameter_counts() -> dict[str, int]:
    """Parameters of each network at the real SDXL shapes (built on the meta device)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from idm_vton.models.tiny import random_tryon_models
    from idm_vton.testing.sdxl_shapes import (
        IP_ADAPTER_PLUS_SDXL,
        SDXL_VAE,
        VIT_H_14,
        sdxl_unet_config,
    )

    with torch.device("meta"):
        models = random_tryon_models(sdxl_unet_config, IP_ADAPTER_PLUS_SDXL, VIT_H_14, SDXL_VAE)
        models["text_encoder"] = CLIPTextModel(CLIPTextConfig(**SDXL_TEXT_ENCODERS[0]))
        models["text_encoder_2"] = CLIPTextModelWithProjection(
            CLIPTextConfig(**SDXL_TEXT_ENCODERS[1])
        )
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    # FSDP gathers one unit at a time: the largest TryonNet block sets the transient extra.
    blocks = [
        m
        for m in models["unet"].modules()
        if type(m).__name__ in ("BasicTransformerBlock", "ResnetBlock2D")
    ]
    counts["largest_fsdp_unit"] = max(sum(p.numel() for p in b.parameters()) for b in blocks)
    return counts


def estimate_memory(gpus: int, counts: dict[str, int]) -> list[dict]:
    """Model-state memory per GPU (GiB) for each strategy in bf16 mixed precision.

    P = trainable values (TryonNet + Resampler). Bytes per trainable value:
    DDP 16 (fp32 weights 4, fp32 gradients 4, AdamW moments 8; accelerate autocasts);
    ZeRO-2 2 + 14/N (bf16 weights 2 on every GPU; bf16 gradients 2, fp32 master weights 4 and
    AdamW moments 8 sharded); ZeRO-3 16/N; FSDP full shard 16/N (fp32 weights, gradients and
    moments sharded) plus the largest unit gathered in bf16 with its gradient (2 x 2 bytes).
    Frozen (every strategy, every GPU): GarmentNet, CLIP image encoder and text encoders in bf16,
    the VAE in fp32.
    """
    trainable = counts["unet"] + counts["image_projection"]
    frozen = 2 * sum(counts[n] for n in ("garment_unet", "image_encoder", "text_encoder",
                                         "text_encoder_2")) + 4 * counts["vae"]  # fmt: skip
    per_value = {
        "ddp": 16.0,
        "deepspeed-zero2": 2 + 14 / gpus,
        "deepspeed-zero3": 16 / gpus,
        "fsdp": 16 / gpus,
    }
    rows = []
    for strategy, bytes_per_value in per_value.items():
        states = trainable * bytes_per_value
        if strategy == "fsdp":
            states += 4 * counts["largest_fsdp_unit"]
        rows.append(
            {
                "estimate": True,
                "strategy": strategy,
                "gpus": gpus,
                "trainable_parameters": trainable,
                "frozen_parameters": sum(
                    counts[n]
                    for n in (
                        "garment_unet",
                        "image_encoder",
                        "text_encoder",
                        "text_encoder_2",
                        "vae",
                    )
                ),  # fmt: skip
                "trainable_states_gib": round(states / 2**30, 1),
                "frozen_gib": round(frozen / 2**30, 1),
                "model_states_gib": round((states + frozen) / 2**30, 1),
            }
        )
    return rows


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
    parser.add_argument(
        "--estimate-memory", action="store_true", help="print model-state memory estimates"
    )
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args(argv)
    if args.estimate_memory:
        counts = sdxl_parameter_counts()
        print(json.dumps({"parameters": counts}), flush=True)
        for gpus in args.gpus:
            for row in estimate_memory(gpus, counts):
                print(json.dumps(row), flush=True)
        return 0
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
