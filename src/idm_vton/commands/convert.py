"""Convert a published checkpoint to this project's safetensors layout (``idm-vton convert``)."""

from __future__ import annotations

import argparse

from ._flags import add_shared

HELP = "convert a published checkpoint to this project's safetensors layout"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", help="the model to convert: a hub id (yisol/IDM-VTON) or a checkpoint folder"
    )
    parser.add_argument("dst", help="output folder to create (or an earlier conversion)")
    add_shared(
        parser,
        "dtype",
        defaults={"dtype": "fp16"},
        helps={"dtype": "weights dtype (default %(default)s)"},
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier conversion in DST (its model_index.json and component folders; "
        "anything else there is kept); never a folder of other files",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..devices import resolve_dtype
    from ..pipelines.convert import convert_checkpoint, earlier_conversion

    if args.overwrite:
        replaced, kept = earlier_conversion(Path(args.dst).expanduser())
        if replaced:
            print(f"replacing in {args.dst}: {', '.join(replaced)}")
        if replaced and kept:
            print(f"keeping in {args.dst}: {', '.join(kept)}")
    path = convert_checkpoint(
        args.src, args.dst, dtype=resolve_dtype(args.dtype), overwrite=args.overwrite
    )
    print(f"wrote {path}")
    return 0
