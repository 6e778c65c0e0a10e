"""Compute the automatic inpaint mask of a photo and a preview to check it (``idm-vton mask``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._flags import add_preprocess_model_arguments

HELP = "compute and preview the automatic inpaint mask"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--person", required=True, help="photo of the person")
    parser.add_argument("--out", required=True, help="mask PNG to write (white = re-generate)")
    parser.add_argument("--no-preview", action="store_true", help="do not write <out>.preview.png")
    add_preprocess_model_arguments(parser)


def preview_path(out: Path) -> Path:
    """Where the preview of the mask ``out`` goes: ``<out stem>.preview.png`` beside it."""
    return out.with_name(out.stem + ".preview.png")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from ..errors import UsageError
    from ..files import check_writable_output
    from ..images import load_image, save_image_atomic
    from ..preprocess.preprocessor import Preprocessor, mask_preview

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out must be a .png file, got '{out.name}'")
    inputs = {"--person": args.person}
    check_writable_output(out, kind="file", flag="--out", inputs=inputs)
    if not args.no_preview:
        check_writable_output(
            preview_path(out), kind="file", flag="the preview of --out", inputs=inputs
        )
    photo = load_image(args.person, "--person")
    preprocessor = Preprocessor(args.preprocess_models, device=args.preprocess_device)
    mask = preprocessor.mask(photo, args.category, args.mask_type)
    save_image_atomic(Image.fromarray(mask.astype(np.uint8) * 255), out)
    if not args.no_preview:
        try:
            save_image_atomic(mask_preview(photo, mask), preview_path(out))
        except BaseException:
            out.unlink(missing_ok=True)  # the two files come together, or neither does
            raise
    print(f"wrote {out} ({mask.mean():.1%} of the photo)")
    if not args.no_preview:
        print(f"wrote {preview_path(out)}")
    return 0
