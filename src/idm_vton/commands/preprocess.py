"""Build a VITON-HD-layout dataset folder from plain photos (``idm-vton preprocess``)."""

from __future__ import annotations

import argparse
import sys

from ._flags import add_preprocess_model_arguments

HELP = "build a VITON-HD-layout folder from your photos"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, nargs="+", help="photos, or folders of photos")
    parser.add_argument("--output", required=True, help="dataset folder to write (VITON-HD layout)")
    add_preprocess_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..files import check_writable_output
    from ..preprocess.preprocessor import Preprocessor, find_photos, preprocess_photos

    photos = find_photos(args.input)
    check_writable_output(args.output, kind="folder", flag="--output")
    preprocessor = Preprocessor(args.preprocess_models, device=args.preprocess_device)
    summary = preprocess_photos(photos, args.output, preprocessor, args.category, args.mask_type)
    print(
        f"{summary.done} photos written, {summary.skipped} already done, "
        f"{len(summary.failed)} failed -> {args.output}"
    )
    for line in summary.failed:
        print(f"  skipped {line}", file=sys.stderr)
    return 1 if summary.failed else 0
