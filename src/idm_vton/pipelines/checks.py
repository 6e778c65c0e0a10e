"""Checks of the try-on call's plain arguments, importable without torch or diffusers (the command
line runs them before any model loads)."""

from __future__ import annotations

import math

from ..errors import UsageError

__all__ = ["check_strength"]


def check_strength(num_inference_steps: int, strength: float) -> None:
    """Refuse a strength outside (0, 1], or one so small that no step runs.

    Denoising runs the last ``int(num_inference_steps * strength)`` steps of the schedule
    (diffusers' img2img rule); at 0 there would be nothing to run.
    """
    if not 0.0 < strength <= 1.0:
        raise UsageError(f"strength must be in (0, 1], got {strength}")
    if int(num_inference_steps * strength) < 1:
        raise UsageError(
            f"strength {strength:g} with {num_inference_steps} steps runs no denoising step "
            f"(it runs int(steps x strength) of them): use a strength of at least "
            f"{math.ceil(1000 / num_inference_steps) / 1000:g}, or more steps"
        )
