"""Flags several commands share, each defined once: same name, parsing and meaning everywhere.

A command adds them with :func:`add_shared` (or a config field names one with
``option(shared=...)``, which :mod:`._dataclass_flags` reads here); the preprocessing flags come
as a set. This module is the bottom of the command layer's flag code: it imports nothing of
:mod:`._dataclass_flags`, which builds on it.
"""

from __future__ import annotations

import argparse
from typing import Any

from .. import defaults
from ..enums import DType, GarmentCategory, SchedulerName

__all__ = ["SHARED", "add_preprocess_model_arguments", "add_shared", "argparse_type"]

#: name -> how the flag ``--<name with dashes>`` is parsed and described. ``parse`` raises
#: ``ValueError`` on a bad value; ``default`` is the usual one (a command may pass its own).
SHARED: dict[str, dict[str, Any]] = {
    "model": dict(
        default="yisol/IDM-VTON", help="hub id, checkpoint folder, or 'tiny' (default %(default)s)"
    ),
    "device": dict(
        default=None,
        help="cpu, cuda, cuda:N or mps (default: cuda if available, else cpu)",
    ),
    "dtype": dict(
        default=None,
        parse=lambda text: DType.parse(text, "dtype"),
        metavar="{" + ",".join(DType.values()) + "}",
        help="weights and compute precision (default: bf16 on CUDA, fp32 otherwise)",
    ),
    "seed": dict(default=defaults.SEED, parse=int, help="random seed (default %(default)s)"),
    "steps": dict(
        default=defaults.NUM_INFERENCE_STEPS,
        parse=int,
        help="denoising steps (default %(default)s)",
    ),
    "guidance": dict(
        default=defaults.GUIDANCE_SCALE,
        parse=float,
        help="classifier-free guidance (default %(default)s)",
    ),
    "height": dict(
        default=defaults.WORK_HEIGHT,
        parse=int,
        help="work height, multiple of 8 (default %(default)s)",
    ),
    "width": dict(
        default=defaults.WORK_WIDTH,
        parse=int,
        help="work width, multiple of 8 (default %(default)s)",
    ),
    "scheduler": dict(
        default=SchedulerName.DDPM.value,
        choices=SchedulerName.values(),
        help="sampler (default %(default)s, the reference's; the others are faster departures "
        "from it that give other images, see docs/performance.md)",
    ),
    "negative_prompt": dict(default=None, help="unconditional caption (reference default)"),
    "preprocess_models": dict(
        default=None,
        metavar="DIR",
        help="folder with the demo's ckpt/ layout (humanparsing/, openpose/ckpts/, densepose/); "
        "default: $IDM_VTON_PREPROCESS_MODELS, else downloaded from the hub Space yisol/IDM-VTON "
        "on first use",
    ),
    "category": dict(
        default=GarmentCategory.UPPER_BODY.value,
        choices=GarmentCategory.values(),
        help="garment category whose area is masked (default %(default)s)",
    ),
    "mask_type": dict(
        default="hd",
        choices=["hd", "dc"],
        help="mask flavour: hd (VITON-HD, wide arm band) or dc (DressCode) (default %(default)s)",
    ),
    "preprocess_device": dict(
        default="cpu", help="device for OpenPose/DensePose (default %(default)s)"
    ),
    "annotator": dict(
        default=None,
        metavar="{probe,zero-shot,PATH}",
        help="the garment annotator: probe (the model's), zero-shot, or a probe file from "
        "`idm-vton train-annotator`; default: the model's probe if it has one, else zero-shot "
        "(see docs/annotator.md)",
    ),
    "min_score": dict(
        default=0.25,
        parse=float,
        help="an attribute the annotator scores under this is left out of the description "
        "(default %(default)s)",
    ),
}


def add_shared(parser, *names: str, defaults: dict | None = None, helps: dict | None = None):
    """Add the shared flags ``names`` to ``parser`` (optionally with this command's defaults)."""
    for name in names:
        spec = dict(SHARED[name])
        parse = spec.pop("parse", None)
        if parse is not None:
            spec["type"] = argparse_type(parse)
        if defaults and name in defaults:
            spec["default"] = defaults[name]
        if helps and name in helps:
            spec["help"] = helps[name]
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, **spec)
    return parser


def add_preprocess_model_arguments(parser) -> None:
    """``--preprocess-models``, ``--category``, ``--mask-type`` and ``--preprocess-device``."""
    add_shared(parser, "preprocess_models", "category", "mask_type", "preprocess_device")


def argparse_type(parse):
    """``parse`` as an argparse type: its ``ValueError`` message becomes the usage error."""

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert
