"""The try-on pipeline a command or the server names by one string: a hub id, a checkpoint
folder, or ``"tiny"`` (the tiny random model of :mod:`idm_vton.models.tiny`, no download)."""

from __future__ import annotations

import torch

from ..schedulers import SchedulerName, build_scheduler
from .tryon import TryOnPipeline

__all__ = ["load_model", "tiny_pipeline"]


def tiny_pipeline(seed: int = 0, text_encoders: bool = True) -> TryOnPipeline:
    """A :class:`~idm_vton.pipelines.tryon.TryOnPipeline` of tiny random components (default
    256 x 192), initialised from ``seed``; ``text_encoders=False`` leaves the text encoders and
    tokenizers out (prompt embeddings are then passed)."""
    from ..models.tiny import tiny_components

    return TryOnPipeline(**tiny_components(seed, text_encoders=text_encoders))


def load_model(
    model: str,
    dtype: torch.dtype,
    device,
    scheduler: SchedulerName | str = SchedulerName.DDPM,
) -> TryOnPipeline:
    """The try-on pipeline ``model`` (hub id, folder, or ``"tiny"``: the tiny random model) in
    ``dtype`` on ``device``, sampling with ``scheduler``."""
    if model == "tiny":
        pipe = tiny_pipeline()
        pipe.to(dtype=dtype)
        pipe.scheduler = build_scheduler(scheduler, dict(pipe.scheduler.config))
    else:
        pipe = TryOnPipeline.from_pretrained(model, torch_dtype=dtype, scheduler=scheduler)
    return pipe.to(device)
