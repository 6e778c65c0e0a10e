"""The library names the server uses, imported in one place.

The package is being reorganised; everything the serving code needs from the rest of idm-vton is
imported here (through the stable top-level package where it exports the name), so a module
that moves is a one-line change in this file.
"""

from __future__ import annotations

from typing import Any

from idm_vton import (
    IdmVtonError,
    ImageInputError,
    Preprocessor,
    TryOnPipeline,
    load_image,
    tiny_pipeline,
)
from idm_vton.devices import check_dtype_on_device, resolve_device, resolve_dtype
from idm_vton.enums import DType, GarmentCategory
from idm_vton.errors import (
    NonFiniteOutputError,
    NoPersonFoundError,
    PreprocessModelError,
    UsageError,
)
from idm_vton.loaders.pipeline import load_model
from idm_vton.pipelines.garment_cache import GarmentCache
from idm_vton.pipelines.image_processor import MAX_PIXELS
from idm_vton.pipelines.memory import MemoryOptions, apply_memory_options
from idm_vton.testing.tiny import TINY_MODEL_NOTE

__all__ = [
    "MAX_PIXELS",
    "TINY_MODEL_NOTE",
    "DType",
    "GarmentCache",
    "GarmentCategory",
    "MemoryOptions",
    "IdmVtonError",
    "ImageInputError",
    "NoPersonFoundError",
    "NonFiniteOutputError",
    "PreprocessModelError",
    "Preprocessor",
    "TryOnPipeline",
    "UsageError",
    "apply_memory_options",
    "call_pipeline",
    "check_dtype_on_device",
    "load_image",
    "load_model",
    "resolve_device",
    "resolve_dtype",
    "tiny_pipeline",
]


def call_pipeline(pipe: TryOnPipeline, *, garment_generator, **kwargs: Any):
    """``pipe(**kwargs)`` with the garment latent's posterior draw taken from ``garment_generator``.

    Why: a batch of people shares ONE garment latent (one GarmentNet pass per step), and without
    ``garment_generator`` the pipeline draws that latent's noise from ``generator[0]``, the first
    person's generator. For a batched request to equal the same request made alone, the garment
    draw must not depend on which request came first: the server takes it from a generator of
    its own.
    """
    return pipe(garment_generator=garment_generator, **kwargs)
