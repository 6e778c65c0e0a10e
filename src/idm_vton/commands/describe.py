"""Read the garment description V from garment photos (``idm-vton describe``): one line per
garment, or JSON with each attribute's label and score."""

from __future__ import annotations

import argparse

from ._flags import add_shared

HELP = "read the garment description from garment photos"
_BATCH = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--garment",
        action="append",
        required=True,
        metavar="IMG",
        help="garment photo (repeat the flag for several)",
    )
    add_shared(
        parser,
        "model",
        "annotator",
        "min_score",
        "device",
        "dtype",
        helps={
            "model": "model whose image encoder the probe reads: hub id, folder or 'tiny' "
            "(default %(default)s)"
        },
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list of {garment, description, category, tags: {attribute: {label, "
        "score}}} (category: the garment category of the item label)",
    )


def run(args: argparse.Namespace) -> int:
    import json

    from ..annotation import load_annotator, resolve_annotator
    from ..devices import check_dtype_on_device, resolve_device, resolve_dtype
    from ..errors import UsageError
    from ..images import load_image
    from ..models.tiny import TINY_MODEL_NOTE

    if not 0.0 <= args.min_score <= 1.0:
        raise UsageError(f"--min-score must be in [0, 1], got {args.min_score}")
    images = [load_image(path, "--garment") for path in args.garment]
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    check_dtype_on_device(dtype, device)
    choice = resolve_annotator(args.annotator, args.model)
    if args.model == "tiny" and choice.kind == "probe" and not args.json:
        print(f"note: {TINY_MODEL_NOTE}")  # stdout: stderr is for errors
    annotator = load_annotator(
        choice, model=args.model, min_score=args.min_score, device=device, dtype=dtype
    )
    tags = []
    for start in range(0, len(images), _BATCH):
        tags += annotator.describe_batch(images[start : start + _BATCH])
    if args.json:
        listed = [
            {"garment": path, **t.to_json(), "category": annotator.category(t).value}
            for path, t in zip(args.garment, tags, strict=True)
        ]
        print(json.dumps(listed, indent=2))
    else:
        for garment_tags in tags:
            print(garment_tags.description)
    return 0
