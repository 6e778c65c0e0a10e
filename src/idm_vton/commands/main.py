"""``idm-vton`` command line: argument parsing only; the work is done by the library.

Every mistake a user can make ends in one line on stderr and exit code 2, with no output file.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

__all__ = ["main"]

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class UsageError(Exception):
    """A user mistake found by the CLI itself (exit 2)."""


def resolve_device(name: str):
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"unknown device '{name}' (use cpu, cuda, cuda:N or mps)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"device '{name}' requested but CUDA is not available here (use --device cpu)"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("device 'mps' requested but MPS is not available here (use --device cpu)")
    if device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise UsageError(f"unsupported device '{name}' (use cpu, cuda, cuda:N or mps)")
    return device


def resolve_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise UsageError(f"unknown dtype '{name}' (use {', '.join(DTYPES)})")
    return getattr(torch, DTYPES[name])


def load_model(model: str, dtype, device, scheduler: str = "ddpm"):
    from ..pipelines.tryon import TryOnPipeline
    from ..schedulers import build_scheduler
    from ..testing.tiny import TINY_MODEL_NOTE, tiny_pipeline

    if model == "tiny":
        print(f"note: {TINY_MODEL_NOTE}", file=sys.stderr)
        pipe = tiny_pipeline()
        pipe.to(dtype=dtype)
        pipe.scheduler = build_scheduler(scheduler, dict(pipe.scheduler.config))
    else:
        pipe = TryOnPipeline.from_pretrained(model, torch_dtype=dtype, scheduler=scheduler)
    return pipe.to(device)


def cmd_tryon(args) -> int:
    import torch

    from ..pipelines.image_processor import save_image_atomic

    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise UsageError(f"--out must end in .png, .jpg or .webp, got '{out.name}'")
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    if dtype == torch.float16 and device.type == "cpu":
        raise UsageError("fp16 is not supported on the CPU: use --dtype bf16 or fp32")
    for flag, value in (
        ("--person", args.person),
        ("--garment", args.garment),
        ("--mask", args.mask),
        ("--pose", args.pose),
    ):
        if value != "auto" and not Path(value).is_file():
            raise UsageError(f"{flag}: file not found: {value}")
    if "auto" in (args.person, args.garment):
        raise UsageError("only --mask and --pose can be 'auto'")
    mask, pose = args.mask, args.pose
    if "auto" in (mask, pose):
        from PIL import Image

        from ..loaders.weights import NoPersonFoundError
        from ..pipelines.image_processor import load_image
        from ..preprocess.preprocessor import Preprocessor

        photo = load_image(args.person, "person image")
        pre = Preprocessor(args.preprocess_models, device=args.preprocess_device)
        # Fetch every weight file needed at once: an offline error then lists all missing ones.
        needed = (["parsing_atr", "parsing_lip", "openpose"] if mask == "auto" else []) + (
            ["densepose"] if pose == "auto" else []
        )
        pre.model_paths(needed)
        try:
            if mask == "auto":
                mask = Image.fromarray(
                    pre.mask(photo, args.category, args.mask_type).astype("uint8") * 255
                )
            if pose == "auto":
                pose = pre.densepose(photo)
        except NoPersonFoundError as err:
            raise UsageError(
                f"{err}; if the photo does show a person, give the garment area with "
                "--mask mask.png (and --pose densepose.png)"
            ) from err
    pipe = load_model(args.model, dtype, device, args.scheduler)
    if args.customization:
        from ..training.customize import apply_customization

        apply_customization(pipe, args.customization)
    from ..testing.reference import apply_memory_options

    if args.offload and device.type != "cuda":
        raise UsageError("--offload needs a CUDA device")
    apply_memory_options(pipe, args, device)
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    result = pipe(
        person_image=args.person,
        garment_image=args.garment,
        mask_image=mask,
        pose_image=pose,
        garment_description=args.description,
        negative_prompt=args.negative_prompt,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        strength=args.strength,
        height=args.height,
        width=args.width,
        generator=generator,
        paste_back=not args.no_paste_back,
    )
    path = save_image_atomic(result.images[0], out)
    print(f"wrote {path}")
    return 0


def cmd_convert(args) -> int:
    from ..loaders.convert import convert_checkpoint

    dtype = resolve_dtype(args.dtype)
    path = convert_checkpoint(args.src, args.dst, dtype=dtype, overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ..schedulers import SchedulerName

    parser = argparse.ArgumentParser(
        prog="idm-vton",
        description="IDM-VTON virtual try-on (Choi et al., ECCV 2024) on current diffusers.",
    )
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="show library logs and tracebacks"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tryon", help="render a person wearing a garment")
    p.add_argument("--person", required=True, help="photo of the person (any size)")
    p.add_argument("--garment", required=True, help="in-shop photo of the garment")
    p.add_argument(
        "--mask",
        default="auto",
        help="inpaint mask, white = garment area to re-generate; 'auto' (default) computes it "
        "from the photo for --category",
    )
    p.add_argument(
        "--pose",
        default="auto",
        help="DensePose image of the person (same framing); 'auto' (default) computes it",
    )
    p.add_argument(
        "--description",
        default="",
        help='garment text, e.g. "short sleeve round neck t-shirts" (optional, default empty '
        "as in the official demo)",
    )
    p.add_argument(
        "--negative-prompt", default=None, help="unconditional caption (reference default)"
    )
    p.add_argument(
        "--model",
        default="yisol/IDM-VTON",
        help="hub id, checkpoint folder, or 'tiny' (default %(default)s)",
    )
    p.add_argument("--out", required=True, help="output image (.png/.jpg), written atomically")
    p.add_argument("--steps", type=int, default=30, help="denoising steps (default %(default)s)")
    p.add_argument(
        "--guidance", type=float, default=2.0, help="classifier-free guidance (default %(default)s)"
    )
    p.add_argument(
        "--strength",
        type=float,
        default=1.0,
        help="denoising strength in (0, 1] (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=42, help="random seed (default %(default)s)")
    p.add_argument(
        "--scheduler",
        default="ddpm",
        choices=[name.value for name in SchedulerName],
        help="sampler (default %(default)s, the reference's; the others are faster departures "
        "from it that give other images, see docs/performance.md)",
    )
    p.add_argument(
        "--height",
        type=int,
        default=None,
        help="work height, multiple of 8 (default 1024; tiny 256)",
    )
    p.add_argument(
        "--width", type=int, default=None, help="work width, multiple of 8 (default 768; tiny 192)"
    )
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N, mps (default: cuda if available)"
    )
    p.add_argument(
        "--dtype", default=None, help="fp32, bf16 or fp16 (default: bf16 on GPU, fp32 on CPU)"
    )
    p.add_argument(
        "--customization",
        default=None,
        help="customization delta (.safetensors) from `idm-vton customize` to apply to the model",
    )
    p.add_argument(
        "--no-paste-back",
        action="store_true",
        help="return the raw H x W render, not the full photo",
    )
    from ..preprocess.preprocessor import add_preprocess_model_arguments

    add_preprocess_model_arguments(p)
    from ..testing.reference import add_memory_arguments

    add_memory_arguments(p)
    p.set_defaults(func=cmd_tryon)

    p = sub.add_parser(
        "convert", help="convert a published checkpoint to this project's safetensors layout"
    )
    p.add_argument("src", help="hub id or folder in the published IDM-VTON layout")
    p.add_argument("dst", help="output folder")
    p.add_argument("--dtype", default="fp16", help="fp16, bf16 or fp32 (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_convert)

    _add_optional_commands(sub)
    return parser


# Commands implemented in their own modules. Each module defines ``add_arguments(parser)`` and
# ``run(args) -> int``; a module that is not importable (an optional dependency missing) leaves
# its command out with a note in ``--help``.
OPTIONAL_COMMANDS = (
    (
        "evaluate",
        "idm_vton.evaluation.evaluate:evaluate",
        "score try-on results (LPIPS, SSIM, FID, KID, CLIP-I)",
    ),
    (
        "infer-dataset",
        "idm_vton.evaluation.infer_dataset",
        "batch try-on over a dataset's test split",
    ),
    ("train", "idm_vton.commands.train", "train or fine-tune TryonNet"),
    ("customize", "idm_vton.training.customize", "fine-tune on one person photo (paper Sec. 3.3)"),
    (
        "preprocess",
        "idm_vton.preprocess.preprocessor",
        "build a VITON-HD-layout folder from your photos",
    ),
    (
        "mask",
        "idm_vton.preprocess.preprocessor:mask",
        "compute and preview the automatic inpaint mask",
    ),
    (
        "download",
        "idm_vton.commands.download",
        "fetch the model and preprocessing weights ahead of use",
    ),
)


def _add_optional_commands(sub) -> None:
    import importlib

    for name, target, help_text in OPTIONAL_COMMANDS:
        module_name, _, prefix = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and (err.name == module_name or module_name.startswith(err.name + ".")):
                continue  # not part of this installation
            raise
        add = getattr(module, f"add_{prefix}_arguments" if prefix else "add_arguments", None)
        run = getattr(module, f"run_{prefix}" if prefix else "run", None)
        if add is None or run is None:
            continue
        p = sub.add_parser(name, help=help_text)
        add(p)
        p.set_defaults(func=run)


def _fill_defaults(args) -> None:
    if getattr(args, "command", None) != "tryon":
        return
    import torch

    from ..pipelines.tryon import DEFAULT_NEGATIVE_PROMPT

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dtype is None:
        args.dtype = "bf16" if args.device.startswith("cuda") else "fp32"
    if args.negative_prompt is None:
        args.negative_prompt = DEFAULT_NEGATIVE_PROMPT


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        logging.basicConfig(level=logging.ERROR)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        warnings.filterwarnings("ignore")
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.set_verbosity_error()
        transformers_logging.set_verbosity_error()
    from ..loaders.checkpoint import CheckpointError
    from ..loaders.weights import PreprocessModelError
    from ..pipelines.image_processor import ImageInputError
    from ..pipelines.tryon import NonFiniteOutputError

    try:
        _fill_defaults(args)
        return int(args.func(args) or 0)
    except (
        UsageError,
        CheckpointError,
        ImageInputError,
        NonFiniteOutputError,
        PreprocessModelError,
        ValueError,
    ) as err:
        if args.verbose:
            raise
        print(f"idm-vton {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("idm-vton: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
