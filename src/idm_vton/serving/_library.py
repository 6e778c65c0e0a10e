"""The library names the server uses, imported in one place.

The package is being reorganised; everything the serving code needs from the rest of idm-vton is
imported here (through the stable top-level package where it exports the name), so a module
that moves is a one-line change in this file.
"""

from __future__ import annotations

import inspect
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

    Why: a batch of people shares ONE garment latent (one GarmentNet pass per step), and the
    pipeline draws that latent's noise from ``generator[0]``, the first person's generator. For
    a batched request to equal the same request made alone, the garment draw must not depend on
    which request came first: the server takes it from a generator of its own.

    The pipeline has no argument for this yet (see the serving report: ``garment_generator``).
    Meanwhile the garment is routed through the pipeline's phase-1 garment path (taken whenever a
    :class:`GarmentCache` is passed; one with no budget when the server keeps none) and that
    path's generator argument is replaced for this call. Once ``TryOnPipeline.__call__`` takes
    ``garment_generator`` it is passed straight through and this workaround is unused.
    """
    if "garment_generator" in inspect.signature(pipe.__call__).parameters:
        return pipe(garment_generator=garment_generator, **kwargs)
    if kwargs.get("garment_cache") is None and pipe.garment_cache is None:
        kwargs["garment_cache"] = GarmentCache(max_bytes=0)
    schedule = pipe._garment_schedule

    def garment_schedule(pixels, text, timesteps, generator, cache, key_fields):
        return schedule(pixels, text, timesteps, garment_generator, cache, key_fields)

    pipe._garment_schedule = garment_schedule
    try:
        return pipe(**kwargs)
    finally:
        del pipe._garment_schedule
