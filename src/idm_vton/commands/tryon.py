"""Render a person wearing a garment (``idm-vton tryon``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._dataclass_flags import add_memory_arguments, memory_options
from ._flags import add_preprocess_model_arguments, add_shared, argparse_type, parse_float

HELP = "render a person wearing a garment"
OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--person", required=True, metavar="IMG", help="photo of the person (any size)"
    )
    parser.add_argument(
        "--garment",
        required=True,
        metavar="IMG",
        help="photo of the garment alone, e.g. a shop picture on a plain background",
    )
    parser.add_argument(
        "--mask",
        default="auto",
        help="inpaint mask, white = garment area to re-generate; 'auto' (default) computes it "
        "from the photo for --category",
    )
    parser.add_argument(
        "--pose",
        default="auto",
        help="DensePose image of the person (same framing); 'auto' (default) computes it",
    )
    parser.add_argument(
        "--description",
        default="",
        help='garment text, e.g. "short sleeve round neck t-shirts" (optional, default empty '
        "as in the official demo); 'auto' reads it from the garment photo with --annotator",
    )
    add_shared(parser, "annotator", "min_score", "negative_prompt", "model")
    parser.add_argument(
        "--out",
        required=True,
        help="output image: .png, .jpg/.jpeg or .webp (written whole or not at all)",
    )
    add_shared(parser, "steps", "guidance")
    parser.add_argument(
        "--strength",
        type=argparse_type(parse_float),
        default=1.0,
        help="denoising strength in (0, 1]: below 1 keeps some of the photo's original garment "
        "area; steps x strength must be at least 1 (default %(default)s)",
    )
    add_shared(
        parser,
        "seed",
        "scheduler",
        "height",
        "width",
        "device",
        "dtype",
        defaults={"height": None, "width": None},
        helps={
            "height": "work height, multiple of 8 (default 1024; tiny 256)",
            "width": "work width, multiple of 8 (default 768; tiny 192)",
        },
    )
    parser.add_argument(
        "--customization",
        default=None,
        metavar="FILE",
        help="customization file (.safetensors, full delta or LoRA) from `idm-vton customize`",
    )
    parser.add_argument(
        "--no-paste-back",
        action="store_true",
        help="return the raw H x W render, not the full photo",
    )
    add_preprocess_model_arguments(parser)
    add_memory_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import json

    from ..devices import check_dtype_on_device, resolve_device, resolve_dtype
    from ..images import save_image_atomic
    from ..pipelines.memory import apply_memory_options
    from ..progress import progress_bars_shown

    out = _check_arguments(args)
    annotator_choice = _annotator_choice(args)
    memory = memory_options(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    check_dtype_on_device(dtype, device)
    resolve_device(args.preprocess_device, "--preprocess-device")
    photo, garment, mask, pose = _load_inputs(args)
    mask, pose = _mask_and_pose(args, photo, mask, pose)
    # diffusers and transformers load only now: a missing weight file above fails at once.
    import torch

    from ..models.tiny import TINY_MODEL_NOTE
    from ..pipelines.loading import load_model

    if args.model == "tiny":
        print(f"note: {TINY_MODEL_NOTE}")  # stdout: stderr is for errors
    pipe = load_model(args.model, dtype, device, args.scheduler)
    pipe.set_progress_bar_config(disable=not progress_bars_shown())  # the command line's rule
    if args.customization:
        from ..loaders.customization import apply_customization

        apply_customization(pipe, args.customization)
    apply_memory_options(pipe, memory, device)
    options = {} if args.negative_prompt is None else {"negative_prompt": args.negative_prompt}
    if annotator_choice is not None:
        from ..annotation import load_annotator

        options["garment_annotator"] = load_annotator(
            annotator_choice, model=args.model, pipe=pipe, min_score=args.min_score
        )
    result = pipe(
        person_image=photo,
        garment_image=garment,
        mask_image=mask,
        pose_image=pose,
        garment_description=None if annotator_choice else args.description,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        strength=args.strength,
        height=args.height,
        width=args.width,
        generator=torch.Generator(device="cpu").manual_seed(args.seed),
        paste_back=not args.no_paste_back,
        **options,
    )
    path = save_image_atomic(result.images[0], out)
    if annotator_choice is not None:
        annotator = options["garment_annotator"]
        description = json.dumps(result.garment_descriptions[0])
        print(f"description read from the garment photo ({annotator.kind}): {description}")
    print(f"wrote {path}")
    return 0


def _annotator_choice(args: argparse.Namespace):
    """The annotator ``--description auto`` uses (None without ``auto``), chosen before any
    model is loaded; ``--annotator`` and ``--min-score`` only go with ``auto``."""
    from ..errors import UsageError

    if args.description != "auto":
        if args.annotator is not None:
            raise UsageError("--annotator only applies with --description auto")
        return None
    if not 0.0 <= args.min_score <= 1.0:
        raise UsageError(f"--min-score must be in [0, 1], got {args.min_score}")
    from ..annotation import resolve_annotator

    return resolve_annotator(args.annotator, args.model)


def _check_arguments(args: argparse.Namespace) -> Path:
    """The output path, after the checks that need no model: steps, strength, work size, output
    name, input files, and the output writable and never one of the inputs."""
    from ..errors import UsageError
    from ..files import check_writable_output
    from ..images import check_work_size
    from ..pipelines.checks import check_strength

    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    check_strength(args.steps, args.strength)
    check_work_size(args.height, args.width, flag="--")  # None: the model's own size
    out = Path(args.out)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(f"--out must end in .png, .jpg or .webp, got '{out.name}'")
    for flag in ("person", "garment", "mask", "pose"):
        value = getattr(args, flag)
        if value != "auto" and not Path(value).is_file():
            raise UsageError(f"--{flag}: file not found: {value}")
    if "auto" in (args.person, args.garment):
        raise UsageError("only --mask and --pose can be 'auto'")
    inputs = {f"--{flag}": getattr(args, flag) for flag in ("person", "garment", "mask", "pose")}
    return check_writable_output(out, kind="file", flag="--out", inputs=inputs)


def _load_inputs(args: argparse.Namespace):
    """The input images (photo, garment, mask or None, pose or None for ``auto``), decoded and
    checked before any model is loaded: a bad file fails at once, named by its flag."""
    from PIL import Image

    from ..images import binary_mask, load_image

    photo = load_image(args.person, "--person")
    garment = load_image(args.garment, "--garment")
    mask = pose = None
    if args.mask != "auto":
        marked = binary_mask(args.mask, photo.size, "--mask")
        mask = Image.fromarray(marked.astype("uint8") * 255)
    if args.pose != "auto":
        pose = load_image(args.pose, "--pose")
    return photo, garment, mask, pose


def _mask_and_pose(args: argparse.Namespace, photo, mask, pose):
    """The mask and pose images, computed from the photo where they are ``auto`` (None)."""
    if mask is not None and pose is not None:
        return mask, pose
    from ..errors import NoPersonFoundError, UsageError
    from ..preprocess.preprocessor import Preprocessor

    preprocessor = Preprocessor(args.preprocess_models, device=args.preprocess_device)
    try:
        auto_mask, auto_pose = preprocessor.tryon_inputs(
            photo, args.category, args.mask_type, mask=mask is None, pose=pose is None
        )
    except NoPersonFoundError as err:
        raise UsageError(
            f"{err}; if the photo does show a person, give the garment area with "
            "--mask mask.png (and --pose densepose.png)"
        ) from err
    return (auto_mask if mask is None else mask), (auto_pose if pose is None else pose)
