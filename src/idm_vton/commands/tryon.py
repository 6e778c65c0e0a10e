"""Render a person wearing a garment, or a whole outfit (``idm-vton tryon``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..enums import GarmentCategory
from ._dataclass_flags import add_memory_arguments, memory_options
from ._flags import add_shared, argparse_type, parse_float

HELP = "render a person wearing a garment (or an outfit: one --garment per piece)"
OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--person", required=True, metavar="IMG", help="photo of the person (any size)"
    )
    parser.add_argument(
        "--garment",
        action="append",
        required=True,
        metavar="IMG",
        help="photo of the garment alone, e.g. a shop picture on a plain background; repeat for an outfit (a top and trousers or a "
        "skirt, or a dress alone): one pass per garment, lower body first, each on the "
        "previous result",
    )
    parser.add_argument(
        "--category",
        action="append",
        choices=GarmentCategory.values(),
        default=None,
        help="garment category, once per --garment in the same order: the region of its "
        "automatic mask. Not given: read from the garment photo with --description auto, "
        "else upper_body (one garment only)",
    )
    parser.add_argument(
        "--mask",
        default="auto",
        help="inpaint mask, white = garment area to re-generate; 'auto' (default) computes it "
        "from the photo for --category (an outfit: for each pass, from the current image)",
    )
    parser.add_argument(
        "--pose",
        default="auto",
        help="DensePose image of the person (same framing); 'auto' (default) computes it",
    )
    parser.add_argument(
        "--description",
        action="append",
        default=None,
        help='garment text, e.g. "short sleeve round neck t-shirts" (optional, default empty '
        "as in the official demo); 'auto' reads it from the garment photo with --annotator; "
        "an outfit: once per --garment, or one 'auto' for all",
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
            "seed": "random seed, the same for every pass of an outfit (default %(default)s)",
        },
    )
    parser.add_argument(
        "--customization",
        default=None,
        metavar="FILE",
        help="customization file (.safetensors, full delta or LoRA) from `idm-vton customize`",
    )
    parser.add_argument(
        "--auto-crop",
        action="store_true",
        help="the official demo's auto-crop: render the largest 3:4 box centred in the photo "
        "and paste the whole box back (default: a box around the mask, pasted back inside "
        "the mask only; see docs/preprocessing.md)",
    )
    parser.add_argument(
        "--no-paste-back",
        action="store_true",
        help="return the raw H x W render, not the full photo (one garment only)",
    )
    add_shared(parser, "preprocess_models", "mask_type", "preprocess_device")
    add_memory_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import json

    from ..devices import check_dtype_on_device, resolve_device, resolve_dtype
    from ..images import save_image_atomic
    from ..pipelines.memory import apply_memory_options
    from ..pipelines.outfit import OutfitGarment, plan_outfit, run_outfit
    from ..progress import progress_bars_shown

    out = _check_arguments(args)
    descriptions = _descriptions(args)
    categories = _categories(args, descriptions)
    annotator_choice = _annotator_choice(args, descriptions, categories)
    memory = memory_options(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    check_dtype_on_device(dtype, device)
    resolve_device(args.preprocess_device, "--preprocess-device")
    photo, garments, mask, pose = _load_inputs(args)
    names = [f"--garment {path}" for path in args.garment]
    outfit = [
        OutfitGarment(image, category, None if text == "auto" else text, name)
        for image, category, text, name in zip(
            garments, categories, descriptions, names, strict=True
        )
    ]
    inputs = _PassInputs(args, photo, mask, pose)
    if None not in categories:
        first = plan_outfit(categories, names)[0]  # refused combinations fail before loading
        inputs.prepare_first(categories[first])
    # diffusers and transformers load only now: a missing weight file above fails at once.
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
    annotator = None
    if annotator_choice is not None:
        from ..annotation import load_annotator

        annotator = load_annotator(
            annotator_choice, model=args.model, pipe=pipe, min_score=args.min_score
        )
    inputs.work_size = (args.height or pipe.default_height, args.width or pipe.default_width)
    several = len(outfit) > 1
    if None in categories:
        outfit = _read_categories(outfit, categories, annotator)

    def announce(step: int, passes: int, garment) -> None:
        if several:
            print(f"pass {step + 1}/{passes}: {garment.category} ({garment.name})")

    result = run_outfit(
        pipe,
        photo,
        outfit,
        inputs,
        seed=args.seed,
        garment_annotator=annotator,
        auto_crop=args.auto_crop,
        on_pass=announce,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        strength=args.strength,
        height=args.height,
        width=args.width,
        paste_back=not args.no_paste_back,
        **options,
    )
    path = save_image_atomic(result.image, out)
    for done in sorted(result.passes, key=lambda p: p.index):
        which = f" of {done.garment.name}" if several else ""
        if descriptions[done.index] == "auto":
            description = json.dumps(done.description)
            print(
                f"description{which} read from the garment photo ({annotator.kind}): {description}"
            )
    print(f"wrote {path}")
    return 0


def _read_categories(outfit: list, categories: list, annotator) -> list:
    """The outfit with the categories not given read from the garment photos (each printed),
    refused in one line that says they were read when they do not make an outfit."""
    import json

    from ..errors import UsageError
    from ..pipelines.outfit import plan_outfit, read_categories

    outfit, tags = read_categories(outfit, annotator)
    for garment, given, read in zip(outfit, categories, tags, strict=True):
        if given is None:
            item = read.tags["item"]
            which = f" of {garment.name}" if len(outfit) > 1 else ""
            print(
                f"category{which} read from the garment photo ({annotator.kind}): "
                f"{garment.category} (item {json.dumps(item.label)}, score {item.score:.2f})"
            )
    try:
        plan_outfit([g.category for g in outfit], [g.name for g in outfit])
    except UsageError as err:
        raise UsageError(f"{err} (categories read from the photos: give --category)") from None
    return outfit


def _descriptions(args: argparse.Namespace) -> list[str]:
    """One description per garment: none given is the demo's empty one for all, one ``auto``
    is ``auto`` for all, else one per ``--garment``."""
    from ..errors import UsageError

    count, given = len(args.garment), args.description or [""]
    if len(given) == count:
        return list(given)
    if len(given) == 1 and (given[0] in ("", "auto")):
        return given * count
    raise UsageError(
        f"--description: got {len(given)} for {count} --garment; give one per --garment (in "
        "the same order), or one 'auto' for all"
    )


def _categories(args: argparse.Namespace, descriptions: list[str]) -> list[str | None]:
    """One category per garment, None where the annotator reads it from the photo."""
    from ..errors import UsageError

    count = len(args.garment)
    if args.category:
        if len(args.category) != count:
            raise UsageError(
                f"--category: got {len(args.category)} for {count} --garment; give one per "
                "--garment, in the same order"
            )
        return list(args.category)
    matters = count > 1 or args.mask == "auto"  # a given mask needs no category
    if matters and all(d == "auto" for d in descriptions):
        return [None] * count
    if count > 1:
        raise UsageError(
            "--category: give one per --garment, in the same order (e.g. --category lower_body "
            "--category upper_body), or use --description auto to read them from the photos"
        )
    return [GarmentCategory.UPPER_BODY.value]


def _annotator_choice(args: argparse.Namespace, descriptions: list[str], categories: list):
    """The annotator ``--description auto`` uses (None without ``auto``), chosen before any
    model is loaded; ``--annotator`` and ``--min-score`` only go with ``auto``."""
    from ..errors import UsageError

    if "auto" not in descriptions:
        if args.annotator is not None:
            raise UsageError("--annotator only applies with --description auto")
        assert None not in categories
        return None
    if not 0.0 <= args.min_score <= 1.0:
        raise UsageError(f"--min-score must be in [0, 1], got {args.min_score}")
    from ..annotation import resolve_annotator

    return resolve_annotator(args.annotator, args.model)


def _check_arguments(args: argparse.Namespace) -> Path:
    """The output path, after the checks that need no model: steps, strength, work size, output
    name, input files, outfit options, and the output writable and never one of the inputs."""
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
    files = {"--person": [args.person], "--garment": args.garment}
    files |= {f"--{flag}": [getattr(args, flag)] for flag in ("mask", "pose")}
    for flag, values in files.items():
        for value in values:
            if value != "auto" and not Path(value).is_file():
                raise UsageError(f"{flag}: file not found: {value}")
    if "auto" in (args.person, *args.garment):
        raise UsageError("only --mask and --pose can be 'auto'")
    if len(args.garment) > 1:
        if args.mask != "auto":
            raise UsageError(
                "--mask: an outfit computes each pass's mask from the current image; leave "
                "--mask auto (or run the garments one by one)"
            )
        if args.no_paste_back:
            raise UsageError(
                "--no-paste-back: an outfit pastes each pass back (the next pass starts from "
                "it); it takes one garment only"
            )
    inputs = {"--person": args.person, "--mask": args.mask, "--pose": args.pose}
    inputs |= {f"--garment {path}": path for path in args.garment}
    return check_writable_output(out, kind="file", flag="--out", inputs=inputs)


def _load_inputs(args: argparse.Namespace):
    """The input images (photo, garments, mask or None, pose or None for ``auto``), decoded and
    checked before any model is loaded: a bad file fails at once, named by its flag."""
    from PIL import Image

    from ..images import binary_mask, load_image

    photo = load_image(args.person, "--person")
    garments = [load_image(path, "--garment") for path in args.garment]
    mask = pose = None
    if args.mask != "auto":
        marked = binary_mask(args.mask, photo.size, "--mask")
        mask = Image.fromarray(marked.astype("uint8") * 255)
    if args.pose != "auto":
        pose = load_image(args.pose, "--pose")
    return photo, garments, mask, pose


class _PassInputs:
    """The mask and pose of each pass (``inputs_for`` of
    :func:`~idm_vton.pipelines.outfit.run_outfit`): the ones given, else computed from the
    current image for the pass's category (on the auto-crop box with ``--auto-crop``, as the
    demo does). The first pass's can be computed before the model is loaded, so a photo without
    a person fails at once."""

    def __init__(self, args: argparse.Namespace, photo, mask, pose) -> None:
        self.args, self.photo, self.mask, self.pose = args, photo, mask, pose
        self.work_size: tuple[int, int] | None = None
        self._first = None
        self._preprocessor = None

    def prepare_first(self, category: str) -> None:
        if not self.args.auto_crop:  # the crop box needs the model's work size
            self._first = (category, self(self.photo, category))

    def __call__(self, image, category):
        if self._first is not None:
            (first_category, computed), self._first = self._first, None
            assert first_category == category
            return computed
        if self.mask is not None and self.pose is not None:
            return self.mask, self.pose
        from ..errors import NoPersonFoundError, UsageError
        from ..pipelines.image_processor import centred_region
        from ..preprocess.preprocessor import Preprocessor

        if self._preprocessor is None:
            self._preprocessor = Preprocessor(
                self.args.preprocess_models, device=self.args.preprocess_device
            )
        box = None
        if self.args.auto_crop:
            region = centred_region(image.size, *self.work_size)
            box = (region.left, region.top, region.right, region.bottom)
        try:
            mask, pose = self._preprocessor.tryon_inputs(
                image,
                category,
                self.args.mask_type,
                mask=self.mask is None,
                pose=self.pose is None,
                box=box,
            )
        except NoPersonFoundError as err:
            raise UsageError(
                f"{err}; if the photo does show a person, give the garment area with "
                "--mask mask.png (and --pose densepose.png)"
            ) from err
        return (mask if self.mask is None else self.mask), (pose if self.pose is None else pose)
