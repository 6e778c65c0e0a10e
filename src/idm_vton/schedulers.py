"""Samplers: the reference's DDPM by default, faster diffusers samplers by choice.

The official IDM-VTON code always builds ``DDPMScheduler.from_pretrained(model,
subfolder="scheduler")``, whatever class the config names; the published checkpoint's config,
inherited from SDXL-inpainting, names ``EulerDiscreteScheduler``. Building "whatever the config
names" would therefore sample differently from the reference. :func:`build_scheduler` builds the
class chosen here from the config's numbers (betas, spacing, offset, prediction type), ignoring
its ``_class_name``.

The other samplers are departures from the reference, for fewer steps: they share the trained
noise schedule but integrate it differently, so their images differ from DDPM's at any step
count (on the golden tiny model, see ``tests/test_schedulers.py``).
"""

from __future__ import annotations

import inspect
from typing import Any

from diffusers import (
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .enums import SchedulerName

__all__ = ["SchedulerName", "build_scheduler", "reference_scheduler"]


# (class, settings on top of the checkpoint's config) per sampler.
_SAMPLERS: dict[SchedulerName, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    SchedulerName.DDPM: (DDPMScheduler, {}),
    SchedulerName.EULER: (EulerDiscreteScheduler, {}),
    SchedulerName.EULER_ANCESTRAL: (EulerAncestralDiscreteScheduler, {}),
    SchedulerName.DPMPP_2M: (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
    ),
    SchedulerName.DPMPP_2M_KARRAS: (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    SchedulerName.UNIPC: (UniPCMultistepScheduler, {}),
}


def build_scheduler(name: SchedulerName | str, config: dict[str, Any]) -> SchedulerMixin:
    """The sampler ``name`` built from a scheduler config (any ``_class_name``).

    Only the settings the chosen class takes are passed on, so a config written for another
    class (SDXL-inpainting's Euler config) builds DDPM without warnings about unused keys.
    """
    cls, overrides = _SAMPLERS[SchedulerName.parse(name)]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    settings = {k: v for k, v in config.items() if k in accepted}
    settings.update(overrides)
    return cls(**settings)


def reference_scheduler() -> DDPMScheduler:
    """The DDPM sampler of the published checkpoint, built without it: SDXL's scaled-linear
    betas (0.00085 to 0.012 over 1000 steps), leading timestep spacing, offset 1 (the tiny model
    and the SDXL-shaped test models sample with it)."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        clip_sample=False,
        timestep_spacing="leading",
    )
