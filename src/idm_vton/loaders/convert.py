"""``idm-vton convert``: published IDM-VTON checkpoint -> this project's safetensors layout.

The result has one folder per pipeline component (``unet/``, ``garment_unet/``,
``image_projection/``, ``vae/``, text encoders, tokenizers, ``image_encoder/``, ``scheduler/``,
``feature_extractor/``), safetensors weights with this project's key names, and reloads with
``TryOnPipeline.from_pretrained`` without pickle or key conversion.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..files import atomic_directory

__all__ = ["convert_checkpoint"]


def _drop_ema_keys(folder: Path) -> None:
    """Remove EMA bookkeeping keys from every diffusers ``config.json`` under ``folder``.

    The UNets are built without them already; this also covers components that diffusers loads
    itself (it keeps unknown config keys and writes them back out). Transformers configs, which
    never carry them, are left alone.
    """
    from .pipeline import EMA_CONFIG_KEYS

    for path in sorted(folder.rglob("config.json")):
        config = json.loads(path.read_text())
        if (
            isinstance(config, dict)
            and "_diffusers_version" in config
            and EMA_CONFIG_KEYS & config.keys()
        ):
            kept = {k: v for k, v in config.items() if k not in EMA_CONFIG_KEYS}
            path.write_text(json.dumps(kept, indent=2, sort_keys=True) + "\n")


def convert_checkpoint(
    src: str | Path, dst: str | Path, dtype: torch.dtype = torch.float16, overwrite: bool = False
) -> Path:
    """Load ``src`` (hub id or folder), cast to ``dtype`` and write it to ``dst`` atomically.

    The VAE stays in float32 when ``dtype`` is float16 (the SDXL VAE overflows in fp16).
    """
    from ..pipelines.tryon import TryOnPipeline

    dst = Path(dst).expanduser()
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst} already exists (pass --overwrite to replace it)")
    if dst.exists() and dst.resolve() == Path(src).expanduser().resolve():
        raise CheckpointError("the output folder must differ from the input folder")
    pipe = TryOnPipeline.from_pretrained(src, torch_dtype=dtype)
    with atomic_directory(dst) as tmp:
        pipe.save_pretrained(tmp)
        _drop_ema_keys(tmp)
    return dst
