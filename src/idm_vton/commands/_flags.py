"""Flags several commands share, each defined once: same name, parsing and meaning everywhere.

A command adds them with :func:`add_shared` (or a config field names one with
``option(shared=...)``, which :mod:`._dataclass_flags` reads here); the preprocessing flags come
as a set. This module is the bottom of the command layer's flag code: it imports nothing of
:mod:`._dataclass_flags`, which builds on it.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from .. import defaults
from ..enums import DType, GarmentCategory, SchedulerName
from ..options import MAX_SEED, parse_seed

__all__ = [
    "MAX_INT",
    "SHARED",
    "add_preprocess_model_arguments",
    "add_shared",
    "argparse_type",
    "parse_float",
    "parse_guidance",
    "parse_int",
    "parse_probability",
    "parse_steps",
]


#: The largest integer an option takes (counts, sizes, steps): past it, a number is a typo, and
#: the libraries underneath would overflow on it.
MAX_INT = 2**31 - 1


def parse_int(text: str) -> int:
    """An integer within +-:data:`MAX_INT` (``ValueError`` naming the text otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"invalid integer {text!r}") from None
    if abs(value) > MAX_INT:
        raise ValueError(f"{text} is too large (at most {MAX_INT})")
    return value


def parse_float(text: str) -> float:
    """A finite number: NaN and infinities are refused (``ValueError``)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"invalid number {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {text!r}")
    return value


def parse_steps(text: str) -> int:
    """Denoising steps: 1 to :data:`~idm_vton.defaults.MAX_INFERENCE_STEPS`."""
    steps = parse_int(text)
    if not 1 <= steps <= defaults.MAX_INFERENCE_STEPS:
        raise ValueError(
            f"steps must be from 1 to {defaults.MAX_INFERENCE_STEPS} (the noise schedule's "
            f"training steps), got {steps}"
        )
    return steps


def parse_guidance(text: str) -> float:
    """A guidance scale: finite, 0 to :data:`~idm_vton.defaults.MAX_GUIDANCE_SCALE`."""
    value = parse_float(text)
    if not 0 <= value <= defaults.MAX_GUIDANCE_SCALE:
        raise ValueError(f"guidance must be from 0 to {defaults.MAX_GUIDANCE_SCALE:g}, got {text}")
    return value


def parse_probability(text: str) -> float:
    """A number from 0 to 1."""
    value = parse_float(text)
    if not 0 <= value <= 1:
        raise ValueError(f"expected a number from 0 to 1, got {text}")
    return value


#: name -> how the flag ``--<name with dashes>`` is parsed and described. ``parse`` raises
#: ``ValueError`` on a bad value; ``default`` is the usual one (a command may pass its own).
SHARED: dict[str, dict[str, Any]] = {
    "model": dict(
        default="yisol/IDM-VTON",
        help="the try-on model: a hub id, a checkpoint folder, or 'tiny' (a built-in random "
        "model that runs anywhere and draws noise) (default %(default)s)",
    ),
    "device": dict(
        default=None,
        help="cpu, cuda, cuda:N, mps or xpu (default: cuda if available, else cpu)",
    ),
    "dtype": dict(
        default=None,
        parse=lambda text: DType.parse(text, "dtype"),
        metavar="{" + ",".join(DType.values()) + "}",
        help="weights and compute precision (default: bf16 on CUDA, fp32 otherwise)",
    ),
    "seed": dict(
        default=defaults.SEED,
        parse=parse_seed,
        help=f"random seed, 0 to {MAX_SEED} (default %(default)s)",
    ),
    "steps": dict(
        default=defaults.NUM_INFERENCE_STEPS,
        parse=parse_steps,
        help=f"denoising steps, 1 to {defaults.MAX_INFERENCE_STEPS}; fewer is faster and rougher "
        "(default %(default)s)",
    ),
    "guidance": dict(
        default=defaults.GUIDANCE_SCALE,
        parse=parse_guidance,
        help="classifier-free guidance scale: how strongly the garment and text steer the image; "
        f"1 or less turns guidance off, at most {defaults.MAX_GUIDANCE_SCALE:g} "
        "(default %(default)s)",
    ),
    "height": dict(
        default=defaults.WORK_HEIGHT,
        parse=parse_int,
        help="work height in pixels, a multiple of 8 (default %(default)s)",
    ),
    "width": dict(
        default=defaults.WORK_WIDTH,
        parse=parse_int,
        help="work width in pixels, a multiple of 8 (default %(default)s)",
    ),
    "scheduler": dict(
        default=SchedulerName.DDPM.value,
        choices=SchedulerName.values(),
        help="sampler (default %(default)s, the reference's; the others are faster departures "
        "from it that give other images, see docs/performance.md)",
    ),
    "negative_prompt": dict(
        default=None,
        metavar="TEXT",
        help="unconditional caption, what guidance steers away from (default: "
        f'"{defaults.NEGATIVE_PROMPT}", as the official demo)',
    ),
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
        help="garment category, which sets the area the automatic mask covers: upper_body "
        "(torso and arms), lower_body (hips and legs), dresses (both) (default %(default)s)",
    ),
    "mask_type": dict(
        default="hd",
        choices=["hd", "dc"],
        help="automatic mask flavour: hd (as VITON-HD: a wide band around the arms) or dc (as "
        "DressCode: closer to the body) (default %(default)s)",
    ),
    "preprocess_device": dict(
        default="cpu",
        help="device that computes the automatic mask and DensePose (default %(default)s)",
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
        parse=parse_probability,
        help="an attribute the annotator scores under this (0 to 1) is left out of the "
        "description (default %(default)s)",
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
