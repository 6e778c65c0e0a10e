"""Fine-tune TryonNet on one photo of a person wearing the garment (``idm-vton customize``,
paper Sec. 3.3); writes a small delta (``--method lora``: a diffusers/PEFT LoRA file) that
``idm-vton tryon --customization`` applies."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._dataclass_flags import add_dataclass_arguments, config_from_args
from ._flags import add_shared

HELP = "fine-tune on one person photo (paper Sec. 3.3)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``idm-vton customize``: the inputs, then :class:`CustomizeConfig`'s fields."""
    from ..enums import MixedPrecision
    from ..training.config import CustomizeConfig

    add_shared(
        parser, "model", helps={"model": "base: hub id, folder or 'tiny' (default %(default)s)"}
    )
    parser.add_argument("--person", required=True, help="photo of the person wearing the garment")
    parser.add_argument("--garment", required=True, help="in-shop photo of the garment")
    parser.add_argument("--mask", required=True, help="inpaint mask, white = garment area")
    parser.add_argument("--pose", required=True, help="DensePose image of the person")
    parser.add_argument("--description", required=True, help="garment text V")
    parser.add_argument(
        "--out", required=True, type=Path, help="output .safetensors (lora: diffusers LoRA format)"
    )
    add_dataclass_arguments(parser, CustomizeConfig)
    add_shared(
        parser,
        "height",
        "width",
        "device",
        defaults={"height": None, "width": None},
        helps={
            "height": "work height, a multiple of 8 (default: the model's, 1024; tiny 256)",
            "width": "work width, a multiple of 8 (default: the model's, 768; tiny 192)",
        },
    )
    parser.add_argument(
        "--mixed-precision",
        default=None,
        choices=MixedPrecision.values(),
        help="autocast dtype (default bf16 on GPU, no on CPU); weights stay fp32",
    )


def run(args: argparse.Namespace) -> int:
    """Tune, write the delta, print a summary."""
    from ..devices import check_mixed_precision_on_device, default_dtype, resolve_device
    from ..enums import DType, MixedPrecision
    from ..errors import CustomizationError
    from ..files import check_writable_output
    from ..images import check_work_size
    from ..loaders.customization import save_customization
    from ..training.customize import CustomizeConfig, customize, load_base

    device = resolve_device(args.device)
    # Autocast in the device's default dtype (bf16 on CUDA) unless asked; no autocast in fp32.
    default = MixedPrecision.BF16 if default_dtype(device) is DType.BF16 else MixedPrecision.NO
    precision = MixedPrecision(args.mixed_precision) if args.mixed_precision else default
    check_mixed_precision_on_device(precision, device)
    check_work_size(args.height, args.width, flag="--")  # None: the model's own size
    for flag in ("person", "garment", "mask", "pose"):
        if not Path(getattr(args, flag)).is_file():
            raise CustomizationError(f"--{flag}: file not found: {getattr(args, flag)}")
    if args.out.suffix != ".safetensors":
        raise CustomizationError(f"--out must end in .safetensors, got {args.out.name}")
    inputs = {f"--{flag}": getattr(args, flag) for flag in ("person", "garment", "mask", "pose")}
    check_writable_output(args.out, kind="file", flag="--out", inputs=inputs)
    config = config_from_args(CustomizeConfig, args, base_name=args.model)
    pipe = load_base(args.model, precision, device)
    autocast_dtype = None if precision is MixedPrecision.NO else precision.torch_dtype
    result = customize(
        pipe,
        args.person,
        args.garment,
        args.mask,
        args.pose,
        args.description,
        config,
        height=args.height,
        width=args.width,
        autocast_dtype=autocast_dtype,
    )
    path = save_customization(result, args.out, dtype=config.delta_dtype)
    n = sum(t.numel() for t in result["tensors"].values())
    total = sum(p.numel() for p in pipe.unet.parameters())
    print(
        f"wrote {path}: {len(result['tensors'])} tensors, {n} values "
        f"({100 * n / total:.2f} % of TryonNet), loss {result['losses'][0]:.4f} -> "
        f"{result['losses'][-1]:.4f}"
    )
    return 0
