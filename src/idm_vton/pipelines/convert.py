"""``idm-vton convert``: published IDM-VTON checkpoint -> this project's safetensors layout.

The result has one folder per pipeline component (``unet/``, ``garment_unet/``,
``image_projection/``, ``vae/``, text encoders, tokenizers, ``image_encoder/``, ``scheduler/``,
``feature_extractor/``), safetensors weights with this project's key names, and reloads with
``TryOnPipeline.from_pretrained`` without pickle or key conversion. The key conversion itself
is :mod:`idm_vton.loaders.checkpoint`; this module loads the pipeline and saves it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..files import atomic_directory, check_writable_output
from ..loaders.pipeline import EMA_CONFIG_KEYS
from .tryon import TryOnPipeline

__all__ = ["convert_checkpoint", "earlier_conversion"]


def _drop_ema_keys(folder: Path) -> None:
    """Remove EMA bookkeeping keys from every diffusers ``config.json`` under ``folder``.

    The UNets are built without them already; this also covers components that diffusers loads
    itself (it keeps unknown config keys and writes them back out). Transformers configs, which
    never carry them, are left alone.
    """
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

    ``dst`` is checked before anything is loaded (:func:`_check_destination`): it can never be,
    hold or sit inside ``src``, and ``overwrite`` replaces only an earlier conversion, in one
    swap that touches nothing else.
    """
    dst = Path(dst).expanduser()
    _check_destination(src, dst, overwrite)
    kept = earlier_conversion(dst)[1] if overwrite and dst.is_dir() else []
    pipe = TryOnPipeline.from_pretrained(src, torch_dtype=dtype)
    with atomic_directory(dst) as tmp:
        pipe.save_pretrained(tmp)
        _drop_ema_keys(tmp)
        for name in kept:  # what the user added beside an earlier conversion stays
            source = dst / name
            if source.is_dir() and not source.is_symlink():
                shutil.copytree(source, tmp / name, symlinks=True)
            else:
                shutil.copy2(source, tmp / name, follow_symlinks=False)
    return dst


def earlier_conversion(dst: str | Path) -> tuple[list[str], list[str]]:
    """(the entries of the earlier conversion in ``dst`` that ``overwrite`` replaces: its
    ``model_index.json`` and the component folders it names; the other entries, which are kept),
    names sorted. Both empty when ``dst`` is not a folder."""
    dst = Path(dst)
    if not dst.is_dir():
        return [], []
    model = {"model_index.json"}
    index = dst / "model_index.json"
    if index.is_file():
        try:
            names = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            names = {}
        if isinstance(names, dict):
            model |= {n for n in names if not n.startswith("_") and (dst / n).is_dir()}
    entries = sorted(p.name for p in dst.iterdir())
    return [n for n in entries if n in model], [n for n in entries if n not in model]


def _check_destination(src: str | Path, dst: Path, overwrite: bool) -> None:
    """Refuse a ``dst`` that is, holds or sits inside a local ``src`` (symlinks resolved), that
    is not a writable folder, or that exists and is not empty, unless ``overwrite`` is given and
    ``dst`` is a converted model (``model_index.json``): nothing else is ever replaced."""
    source = Path(src).expanduser()
    inputs = {"the source": source} if os.path.lexists(source) else {}
    check_writable_output(dst, kind="folder", flag="output folder", inputs=inputs)
    if not dst.is_dir() or not any(dst.iterdir()):
        return
    if not (dst / "model_index.json").is_file():
        raise CheckpointError(
            f"{dst} already exists and is not an earlier conversion (it has no "
            "model_index.json): choose a new output folder (--overwrite only replaces an earlier "
            "conversion, never other files)"
        )
    if not overwrite:
        raise CheckpointError(
            f"{dst} already exists and holds an earlier conversion (pass --overwrite to replace "
            "its model files; other files there are kept)"
        )
