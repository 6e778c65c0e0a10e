"""Fetch everything a try-on needs ahead of time, e.g. before going offline (``idm-vton download``).

Gets the model (hub id into the Hugging Face cache, or a local folder as is), the four
preprocessing weight files from the hub Space yisol/IDM-VTON (:mod:`idm_vton.loaders.hub`), the
zero-shot garment annotator's model when the try-on model has no annotator probe of its own (what
``--description auto`` then uses), and with ``--convert DIR`` writes the model in this project's
safetensors layout to ``DIR``. Prints where each thing is. Everything fetched is checked; a later
``HF_HUB_OFFLINE=1`` run finds it all in the cache.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._flags import add_shared

HELP = "fetch the model and preprocessing weights ahead of use"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``idm-vton download``."""
    add_shared(
        parser,
        "model",
        "dtype",
        helps={
            "model": "hub id or checkpoint folder of the try-on model (default %(default)s)",
            "dtype": "weights dtype for --convert (default fp16)",
        },
    )
    parser.add_argument(
        "--convert",
        default=None,
        metavar="DIR",
        help="also convert the model to this project's safetensors layout into DIR (a new folder)",
    )
    parser.add_argument(
        "--skip-preprocess",
        action="store_true",
        help="do not fetch the preprocessing weights (human parsing, OpenPose, DensePose)",
    )
    parser.add_argument(
        "--skip-annotator",
        action="store_true",
        help="do not fetch the zero-shot garment annotator's model (FashionCLIP, about 0.6 GB; "
        "only --description auto uses it)",
    )


def run(args: argparse.Namespace) -> int:
    """Fetch the model, optionally convert it, and fetch the preprocessing weights.

    Raises:
        CheckpointError: the model cannot be found or fetched, or ``--convert`` is not a new folder.
        PreprocessModelError: a preprocessing weight file cannot be fetched or is not valid.
        UsageError: ``--dtype`` without ``--convert``.
    """
    from ..errors import CheckpointError, UsageError
    from ..files import check_writable_output
    from ..loaders.pipeline import resolve_checkpoint

    if args.dtype is not None and args.convert is None:
        raise UsageError("--dtype only applies with --convert DIR")
    convert_dir = Path(args.convert).expanduser() if args.convert is not None else None
    if convert_dir is not None:  # before anything is fetched
        model = Path(args.model).expanduser()
        inputs = {"--model": model} if model.exists() else {}
        check_writable_output(convert_dir, kind="folder", flag="--convert", inputs=inputs)
        if convert_dir.exists():
            raise CheckpointError(f"--convert: {convert_dir} already exists (choose a new folder)")

    model = resolve_checkpoint(args.model)
    print(f"model: {model}")
    if convert_dir is not None:
        from ..devices import resolve_dtype
        from ..pipelines.convert import convert_checkpoint

        dtype = resolve_dtype(args.dtype or "fp16")
        converted = convert_checkpoint(model, convert_dir, dtype=dtype, overwrite=False)
        print(f"converted model: {converted} (use --model {converted})")
    if not args.skip_preprocess:
        from ..loaders.hub import fetch_preprocess_models, models_folder
        from ..preprocess.preprocessor import MODELS_DIR_ENV, default_models_dir

        paths = fetch_preprocess_models()
        for name, path in paths.items():
            print(f"preprocessing weights {name}: {path}")
        folder = models_folder(paths)
        if folder is not None:
            print(f"preprocessing weights folder (demo ckpt/ layout): {folder}")
        override = default_models_dir()
        if override is not None:
            print(f"note: ${MODELS_DIR_ENV} is set, so try-ons use {override} instead")
    if not args.skip_annotator:
        import os

        from ..annotation.loading import find_model_probe
        from ..annotation.zero_shot import ZERO_SHOT_MODEL_ENV, fetch_zero_shot_model

        probe = find_model_probe(str(model))
        if probe is not None:
            print(f"garment annotator: the model's probe {probe}")
        elif os.environ.get(ZERO_SHOT_MODEL_ENV):
            print(f"garment annotator (zero-shot): ${ZERO_SHOT_MODEL_ENV} is set, nothing to fetch")
        else:
            print(f"garment annotator (zero-shot): {fetch_zero_shot_model()}")
    return 0
