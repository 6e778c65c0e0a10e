"""The size a UNet or VAE config describes, checked before the model is built.

Building a diffusers model allocates every weight (accelerate's ``init_empty_weights`` moves each
one to the meta device only after it was created), so a damaged or hostile ``config.json`` with
absurd widths or depths would allocate hundreds of gigabytes, or run for hours, before any weight
file is compared with it. :func:`check_model_size` estimates the parameter count and the number of
layers from the config alone and refuses configs past generous limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..errors import CheckpointError

__all__ = ["MAX_LAYERS", "MAX_PARAMETERS", "check_model_size", "estimate_size"]

#: Parameters one component may have: about four SDXL UNets (2.6 billion each), 40 GB in fp32.
MAX_PARAMETERS = 10_000_000_000
#: Residual and transformer layers one component may have (SDXL's UNet has 87).
MAX_LAYERS = 2_000


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _counts(value: object) -> list[int]:
    """The non-negative integers in ``value`` (an int, or a list of ints and lists of ints, as
    in reversed transformer depths); anything else is left out."""
    items = value if isinstance(value, (list, tuple)) else [value]
    found: list[int] = []
    for item in items:
        found += _counts(item) if isinstance(item, (list, tuple)) else [item] * _is_count(item)
    return found


def _per_block(config: Mapping, key: str, blocks: int, default: int) -> list[int]:
    """``config[key]`` (an int, or one entry per block) as one int per block: a list's largest
    entry beyond its length, ``default`` where it holds no integer at all."""
    value = config.get(key, default)
    if not isinstance(value, (list, tuple)):
        return [max(_counts(value), default=default)] * blocks
    per = [max(_counts(v), default=default) for v in value]
    return (per + [max(per, default=default)] * blocks)[:blocks]


def estimate_size(config: Mapping) -> tuple[int, int] | None:
    """(parameters, layers) of the UNet or VAE ``config`` describes, within a factor of about
    1.2 for SDXL's UNet and VAE (each residual block counted as two 3x3 convolutions at the
    block's width, each transformer layer as self-attention, cross-attention and a GEGLU
    feed-forward). Entries that are not integers are left out (the model's constructor refuses
    them itself); None without any width to go by."""
    channels = _counts(config.get("block_out_channels"))
    if not channels:
        return None
    blocks = len(channels)
    per_block = _per_block(config, "layers_per_block", blocks, 2)
    transformers = _per_block(config, "transformer_layers_per_block", blocks, 1)
    cross = _per_block(config, "cross_attention_dim", blocks, 0)
    kinds = config.get("down_block_types")
    kinds = kinds if isinstance(kinds, (list, tuple)) else ()
    attends = [isinstance(k, str) and "CrossAttn" in k for k in kinds] + [False] * blocks
    time_dim = 4 * channels[0]
    parameters = layers = 0
    for c, n, t, x, a in zip(channels, per_block, transformers, cross, attends, strict=False):
        depth = t if a else 0
        residual = 27 * c * c + time_dim * c
        transformer = 18 * c * c + 2 * x * c
        parameters += (2 * n + 1) * (residual + depth * transformer)
        layers += (2 * n + 1) * (1 + depth)
    c, depth = channels[-1], transformers[-1] if any(attends) else 0
    parameters += 2 * (27 * c * c + time_dim * c) + depth * (18 * c * c + 2 * cross[-1] * c)
    layers += 2 + depth
    return parameters, layers


def check_model_size(config: Mapping, path: Path, what: str) -> None:
    """Refuse a config that describes more than :data:`MAX_PARAMETERS` parameters or
    :data:`MAX_LAYERS` layers, before the model is built (``path`` names the config file)."""
    size = estimate_size(config)
    if size is None:
        return
    parameters, layers = size
    if parameters > MAX_PARAMETERS or layers > MAX_LAYERS:
        raise CheckpointError(
            f"{path}: describes a {what} of about {parameters / 1e9:,.1f} billion parameters in "
            f"{layers} layers (block_out_channels {config.get('block_out_channels')!r}), past the "
            f"limits of {MAX_PARAMETERS / 1e9:.0f} billion and {MAX_LAYERS}: the config is "
            "damaged or not this model's"
        )
