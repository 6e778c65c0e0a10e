"""``idm-vton train`` / ``accelerate launch -m idm_vton.train``: train TryonNet (paper Sec. 3).

Argument parsing only; the loop is :class:`idm_vton.training.trainer.Trainer`. See
``docs/training.md`` for recipes and the accelerate configurations (DDP, DeepSpeed, FSDP).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "config_from_args", "main", "parse_args", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``idm-vton train`` (shared by the CLI and ``python -m idm_vton.train``)."""
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None,
        help="starting checkpoint: hub id, folder (published or this project's layout), or 'tiny'",
    )
    g.add_argument(
        "--init-from-sdxl",
        action="store_true",
        help="train from scratch as the paper: TryonNet from SDXL-inpainting + IP-Adapter Plus, "
        "GarmentNet from SDXL base (needs the four paths below)",
    )
    g.add_argument("--sdxl-inpainting", type=Path, help="diffusers folder of SDXL-inpainting-0.1")
    g.add_argument("--sdxl-base", type=Path, help="diffusers folder of SDXL base 1.0")
    g.add_argument("--ip-adapter", type=Path, help="ip-adapter-plus_sdxl_vit-h .bin/.safetensors")
    g.add_argument("--image-encoder", type=Path, help="folder of the IP-Adapter CLIP ViT-H/14")

    g = parser.add_argument_group("data")
    g.add_argument("--data", type=Path, required=True, help="dataset root folder")
    g.add_argument("--dataset", default="vitonhd", choices=["vitonhd", "dresscode"])
    g.add_argument(
        "--category",
        default="all",
        help="DressCode category: upper_body, lower_body, dresses or all (default %(default)s)",
    )
    g.add_argument(
        "--resolution",
        type=int,
        nargs=2,
        default=[1024, 768],
        metavar=("H", "W"),
        help="training size (default %(default)s)",
    )
    g.add_argument(
        "--no-augment", action="store_true", help="turn the SPEC section 4 augmentations off"
    )
    g.add_argument(
        "--skip-bad-samples", action="store_true", help="log and skip unreadable samples"
    )
    g.add_argument("--num-workers", type=int, default=0, help="data loader workers (default 0)")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--output", type=Path, required=True, help="output folder (checkpoints, logs)")
    g.add_argument("--batch-size", type=int, default=1, help="per process (default 1)")
    g.add_argument("--gradient-accumulation-steps", type=int, default=1)
    g.add_argument("--lr", type=float, default=1e-5, help="learning rate (default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=1e-2, help="(default %(default)s)")
    g.add_argument(
        "--max-grad-norm",
        type=float,
        default=1.0,
        help="clip the global gradient norm (default %(default)s; <= 0: no clipping)",
    )
    g.add_argument("--optimizer", default="adamw", choices=["adamw", "adamw8bit"])
    g.add_argument(
        "--lr-scheduler",
        default="constant",
        help="diffusers schedule: constant, constant_with_warmup, linear, cosine (default %(default)s)",
    )
    g.add_argument("--lr-warmup-steps", type=int, default=0)
    g.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--allow-tf32", action="store_true", help="TF32 matmuls on Ampere+ GPUs")
    g.add_argument("--snr-gamma", type=float, default=None, help="min-SNR-gamma weighting (e.g. 5)")
    g.add_argument("--noise-offset", type=float, default=0.0)
    g.add_argument(
        "--condition-dropout",
        type=float,
        default=0.0,
        help="per-condition drop probability for CFG training (default 0 = off, as the paper)",
    )
    g.add_argument("--seed", type=int, default=0)

    g = parser.add_argument_group("length, checkpoints, logging")
    g.add_argument(
        "--max-steps", type=int, default=None, help="optimizer steps (overrides --epochs)"
    )
    g.add_argument("--epochs", type=int, default=None, help="epochs when --max-steps is not given")
    g.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop (and checkpoint) after this many steps; the LR schedule still spans --max-steps "
        "(for time-limited jobs: continue with --resume latest)",
    )
    g.add_argument("--checkpointing-steps", type=int, default=None)
    g.add_argument("--checkpoints-total-limit", type=int, default=None)
    g.add_argument(
        "--resume", default=None, help="'latest' (in --output) or a checkpoint-<step> folder"
    )
    g.add_argument("--validation-steps", type=int, default=None, help="render every N steps")
    g.add_argument("--num-validation-images", type=int, default=1)
    g.add_argument("--validation-inference-steps", type=int, default=20)
    g.add_argument("--report-to", default="auto", choices=["auto", "tensorboard", "none"])
    g.add_argument("--text-cache-size", type=int, default=512, help="cached prompt embeddings")


def config_from_args(args: argparse.Namespace):
    """argparse namespace -> :class:`~idm_vton.training.config.TrainConfig` (validated)."""
    from ..training.config import SdxlSources, TrainConfig, TrainConfigError

    sdxl = None
    if args.init_from_sdxl:
        paths = {
            "--sdxl-inpainting": args.sdxl_inpainting,
            "--sdxl-base": args.sdxl_base,
            "--ip-adapter": args.ip_adapter,
            "--image-encoder": args.image_encoder,
        }
        missing = [flag for flag, value in paths.items() if value is None]
        if missing:
            raise TrainConfigError(f"--init-from-sdxl needs {', '.join(missing)}")
        sdxl = SdxlSources(*paths.values())
    return TrainConfig(
        output=args.output,
        data=args.data,
        model=args.model,
        sdxl=sdxl,
        dataset=args.dataset,
        category=args.category,
        resolution=tuple(args.resolution),
        augment=not args.no_augment,
        batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        lr=args.lr,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        optimizer=args.optimizer,
        lr_scheduler=args.lr_scheduler,
        lr_warmup_steps=args.lr_warmup_steps,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        allow_tf32=args.allow_tf32,
        snr_gamma=args.snr_gamma,
        noise_offset=args.noise_offset,
        condition_dropout=args.condition_dropout,
        max_steps=args.max_steps,
        epochs=args.epochs,
        stop_after=args.stop_after,
        checkpointing_steps=args.checkpointing_steps,
        checkpoints_total_limit=args.checkpoints_total_limit,
        resume=args.resume,
        validation_steps=args.validation_steps,
        num_validation_images=args.num_validation_images,
        validation_inference_steps=args.validation_inference_steps,
        report_to=args.report_to,
        skip_bad_samples=args.skip_bad_samples,
        seed=args.seed,
        num_workers=args.num_workers,
        text_cache_size=args.text_cache_size,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="idm_vton.train", description="Train IDM-VTON's TryonNet (paper Sec. 3)."
    )
    add_arguments(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    """Train; returns 0. Configuration errors raise ``TrainConfigError`` (a ValueError)."""
    from ..training.trainer import Trainer

    trainer = Trainer(config_from_args(args))
    trainer.train()
    return 0


def run(args: argparse.Namespace) -> int:
    """``idm-vton train`` (the CLI reports ValueErrors on one line with exit code 2)."""
    return main(args)
