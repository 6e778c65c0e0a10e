"""Convert a published checkpoint to this project's safetensors layout (``idm-vton convert``)."""

from __future__ import annotations

import argparse

from ._flags import add_shared

HELP = "convert a published checkpoint to this project's safetensors layout"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="hub id or folder in the published IDM-VTON layout")
    parser.add_argument("dst", help="output folder")
    add_shared(
        parser,
        "dtype",
        defaults={"dtype": "fp16"},
        helps={"dtype": "weights dtype (default %(default)s)"},
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output folder"
    )


def run(args: argparse.Namespace) -> int:
    from ..devices import resolve_dtype
    from ..pipelines.convert import convert_checkpoint

    path = convert_checkpoint(
        args.src, args.dst, dtype=resolve_dtype(args.dtype), overwrite=args.overwrite
    )
    print(f"wrote {path}")
    return 0
