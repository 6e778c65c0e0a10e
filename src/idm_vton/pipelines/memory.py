"""Memory modes of the try-on pipeline, chosen together (``idm-vton tryon`` memory flags).

Each mode is a :class:`~idm_vton.pipelines.tryon.TryOnPipeline` method (see
``docs/performance.md``); :class:`MemoryOptions` names a combination and
:func:`apply_memory_options` applies it after loading.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..options import option

__all__ = ["MIN_VAE_TILE_SIZE", "MemoryOptions", "apply_memory_options", "check_vae_tile_size"]

_MEMORY = "memory"

#: The smallest VAE tile, in pixels: two latent pixels, the smallest tile diffusers' tiling can
#: step over with its overlap (a tile of 0 makes its loop step by 0 and fail).
MIN_VAE_TILE_SIZE = 16


def check_vae_tile_size(tile_size: object, multiple: int = 8) -> None:
    """Refuse a VAE tile size that is not a multiple of ``multiple`` (the VAE factor) or is
    below :data:`MIN_VAE_TILE_SIZE`."""
    if (
        not isinstance(tile_size, int)
        or isinstance(tile_size, bool)
        or tile_size % multiple
        or tile_size < MIN_VAE_TILE_SIZE
    ):
        raise UsageError(
            f"VAE tile size (--vae-tile-size) must be a multiple of {multiple} and at least "
            f"{MIN_VAE_TILE_SIZE}, got {tile_size!r}"
        )


@dataclass(frozen=True)
class MemoryOptions:
    """Which memory modes to turn on; all off gives the fastest, fully resident pipeline."""

    offload: bool = option(
        False,
        "model CPU offload: one model on the GPU at a time (implies --two-phase order)",
        group=_MEMORY,
    )
    two_phase: bool = option(
        False,
        "run GarmentNet for all steps first, then TryonNet: one UNet on the GPU at a time",
        group=_MEMORY,
    )
    garment_features_on_host: bool = option(
        False,
        "with --two-phase/--offload: keep GarmentNet features in pinned host memory",
        group=_MEMORY,
    )
    fp8_weights: bool = option(
        False,
        "store UNet weights in fp8 (e4m3), compute in --dtype: half the UNet memory of bf16",
        group=_MEMORY,
    )
    vae_tiling: bool = option(
        False, "VAE encode/decode in overlapping tiles (approximate at tile seams)", group=_MEMORY
    )
    vae_tile_size: int = option(512, "VAE tile size in pixels (default 512)", group=_MEMORY)
    vae_slicing: bool = option(False, "decode a batch one image at a time (exact)", group=_MEMORY)

    def __post_init__(self) -> None:
        check_vae_tile_size(self.vae_tile_size)


def apply_memory_options(pipe, options: MemoryOptions, device=None):
    """Turn on the modes ``options`` asks for; returns ``pipe``.

    Call after loading (and after ``pipe.to(device)``). ``offload`` needs a CUDA device and
    installs diffusers' model CPU offload on ``device``; it also makes GarmentNet run in phase
    1 (otherwise both UNets would be moved in and out at every step).
    """
    import torch  # here: the options above are read by the command line before torch loads

    device = torch.device(device) if device is not None else pipe._execution_device
    if options.fp8_weights:
        pipe.enable_fp8_weight_storage()
    if options.vae_tiling:
        pipe.enable_vae_tiling(tile_size=options.vae_tile_size)
    if options.vae_slicing:
        pipe.enable_vae_slicing()
    if options.two_phase or options.offload:
        pipe.enable_two_phase_garment(features_on_host=options.garment_features_on_host)
    if options.offload:
        if device.type != "cuda":
            raise UsageError("--offload needs a CUDA device")
        pipe.enable_model_cpu_offload(device=device)
    return pipe
