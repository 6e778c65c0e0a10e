"""Checkpoint reading and key conversion for the published IDM-VTON layout (SPEC section 1).

The published ``yisol/IDM-VTON`` folder stores the TryonNet with
``encoder_hid_dim_type: "ip_image_proj"`` (which stock diffusers refuses), the IP-Adapter Plus
Resampler under ``encoder_hid_proj.*`` in the original Resampler naming and the IP key/value
projections as ``<attn2>.processor.to_k_ip.weight``. Conversion to the modules used here is a pure
``dict -> dict`` mapping (:func:`convert_tryon_state_dict`) followed by :func:`check_state_dict`,
which names every missing, unexpected or mis-shaped key. Nothing is dropped silently: the only
keys ever left out (GarmentNet's unused ``add_embedding.*``) are returned and logged.
"""

from __future__ import annotations

import json
import logging
import pickle
import pickletools
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CheckpointError, StateDictMismatchError
from .weights import ZIP_MAGIC, check_weight_file

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_SOURCE",
    "CheckpointError",
    "StateDictMismatchError",
    "check_state_dict",
    "convert_garment_state_dict",
    "convert_resampler_state_dict",
    "convert_tryon_state_dict",
    "read_state_dict",
]

#: Where a try-on checkpoint's weight files come from, for error messages.
CHECKPOINT_SOURCE = (
    "the model's hub repository (e.g. `huggingface-cli download yisol/IDM-VTON`, or "
    "`git lfs pull` in a clone)"
)


_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)


_INDEX_NAMES = (
    "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors.index.json",
    "diffusion_pytorch_model.bin.index.json",
    "pytorch_model.bin.index.json",
)


def variant_name(name: str, variant: str | None) -> str:
    """diffusers' name of a variant file: ``model.safetensors`` -> ``model.fp16.safetensors``,
    ``model.safetensors.index.json`` -> ``model.safetensors.index.fp16.json``."""
    if not variant:
        return name
    stem, suffix = name.rsplit(".", 1)
    return f"{stem}.{variant}.{suffix}"


def weight_files(
    folder: Path, variant: str | None = None, use_safetensors: bool | None = None
) -> list[Path]:
    """The weight file(s) of a component folder (a single file or an index of shards).

    ``variant`` (e.g. ``"fp16"``): the folder's ``*.{variant}.safetensors`` / ``.bin`` files
    are taken where present, the plain ones otherwise; ``use_safetensors``: True takes
    safetensors files only, False pickles only, None (default) safetensors first.
    """

    def allowed(name: str) -> bool:
        return use_safetensors is None or (".safetensors" in name) == use_safetensors

    indexes = [variant_name(n, variant) for n in _INDEX_NAMES] if variant else []
    files = (
        [variant_name(n, variant) for n in _WEIGHT_NAMES if n.count(".") == 1] if variant else []
    )
    for index_name in filter(allowed, [*indexes, *_INDEX_NAMES]):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / s for s in shards]
    for name in filter(allowed, [*files, *_WEIGHT_NAMES]):
        if (folder / name).exists():
            return [folder / name]
    raise CheckpointError(
        f"no weight file in {folder} (expected one of {', '.join(_WEIGHT_NAMES[:1] + _WEIGHT_NAMES[4:5])})"
    )


def _pickles_are_whole(path: Path, zipped: bool) -> bool:
    """Whether the pickle streams ``torch.load`` reads from ``path`` parse to their end.

    Only the opcodes are parsed (:func:`pickletools.genops`), nothing is built or imported. A
    zip checkpoint holds one ``data.pkl``; a legacy one starts with up to four pickles (magic
    number, protocol, system info, the state dict) before raw storage bytes.
    """
    try:
        if zipped:
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                if not names:
                    return False
                for _op in pickletools.genops(archive.read(names[0])):
                    pass
            return True
        with open(path, "rb") as stream:
            for _ in range(4):
                if not stream.peek(1):  # the file ends after whole pickles
                    break
                for _op in pickletools.genops(stream):
                    pass
        return True
    except Exception:  # noqa: BLE001 - any parse failure means an incomplete stream
        return False


def _refused_global(message: str) -> str:
    """The object ``torch.load(weights_only=True)`` refused, as its message names it."""
    m = re.search(r"GLOBAL (\S+?)(?: whose|\s|$)", message)
    if m:
        return m.group(1)
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    detail = [ln for ln in lines[1:] if not ln.startswith(("Please", "Check the documentation"))]
    return (detail or lines or ["unsupported content"])[0].removeprefix("WeightsUnpickler error: ")


def _read_one(path: Path) -> dict[str, torch.Tensor]:
    check_weight_file(path, f"{path.parent.name}/", CHECKPOINT_SOURCE, error=CheckpointError)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, RuntimeError, OSError, ValueError) as err:
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CheckpointError(
                f"{path} is truncated or corrupt ({msg}): download it again"
            ) from err
    with open(path, "rb") as stream:
        zipped = stream.read(4) == ZIP_MAGIC
    try:
        # Pickled checkpoints are read with weights_only=True: tensors only, no code. Only the
        # zip format can be memory-mapped; legacy (_use_new_zipfile_serialization=False) files
        # are read into memory.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as err:
        if _pickles_are_whole(path, zipped):
            raise CheckpointError(
                f"{path} holds objects other than tensors ({_refused_global(str(err))}) and was "
                "refused for safety (only weights are loaded from pickles): use the official "
                "weights or a safetensors copy"
            ) from err
        raise CheckpointError(
            f"{path} is truncated or corrupt (its pickle data ends early or is malformed): "
            "download it again"
        ) from err
    except Exception as err:  # noqa: BLE001 - torch.load fails in many ways on damaged files
        msg = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else ""
        raise CheckpointError(
            f"{path} is truncated or corrupt ({msg or type(err).__name__}): download it again"
        ) from err


def read_state_dict(
    folder: Path, variant: str | None = None, use_safetensors: bool | None = None
) -> dict[str, torch.Tensor]:
    """Read a component folder's weights (safetensors or ``weights_only`` pickle, sharded or not;
    ``variant`` and ``use_safetensors`` choose the files as :func:`weight_files` does)."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(Path(folder), variant, use_safetensors):
        state.update(_read_one(path))
    return state


_IP_KV = re.compile(r"^(?P<attn>.+\.attn2)\.processor\.to_(?P<kv>[kv])_ip\.weight$")


def convert_resampler_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original IP-Adapter Plus Resampler keys -> :class:`~idm_vton.models.tryon_net.ImageProjection`.

    ``layers.i.0`` is the perceiver attention (``norm1`` on the image features, ``norm2`` on the
    latents, fused ``to_kv``), ``layers.i.1`` the feed-forward ``[LayerNorm, Linear, GELU, Linear]``.
    """
    out: dict[str, torch.Tensor] = {}
    simple = {
        "0.norm1": "ln0",
        "0.norm2": "ln1",
        "0.to_q": "attn.to_q",
        "0.to_out": "attn.to_out.0",
        "1.0": "ff.0",
        "1.1": "ff.1.net.0.proj",
        "1.3": "ff.1.net.2",
    }
    layer_key = re.compile(r"^layers\.(\d+)\.(\d\.\w+)\.(weight|bias)$")
    for key, value in state.items():
        if key in ("latents",) or key.split(".")[0] in ("proj_in", "proj_out", "norm_out"):
            out[f"resampler.{key}"] = value
            continue
        m = layer_key.match(key)
        if m is None:
            raise CheckpointError(f"unexpected Resampler key: encoder_hid_proj.{key}")
        layer, part, kind = m.groups()
        prefix = f"resampler.layers.{layer}"
        if part == "0.to_kv":
            k, v = value.chunk(2, dim=0)
            out[f"{prefix}.attn.to_k.{kind}"] = k.clone()
            out[f"{prefix}.attn.to_v.{kind}"] = v.clone()
        elif part in simple:
            out[f"{prefix}.{simple[part]}.{kind}"] = value
        else:
            raise CheckpointError(f"unexpected Resampler key: encoder_hid_proj.{key}")
    return out


def convert_tryon_state_dict(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a TryonNet checkpoint into (UNet state dict, ImageProjection state dict).

    Accepts both the published naming (``encoder_hid_proj.*`` Resampler,
    ``...attn2.processor.to_k_ip.weight``) and this project's own naming (no Resampler keys,
    ``...attn2.processor.to_k_ip.0.weight``).
    """
    unet: dict[str, torch.Tensor] = {}
    resampler: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("encoder_hid_proj."):
            resampler[key[len("encoder_hid_proj.") :]] = value
            continue
        m = _IP_KV.match(key)
        if m is not None:
            unet[f"{m['attn']}.processor.to_{m['kv']}_ip.0.weight"] = value
        else:
            unet[key] = value
    projection = convert_resampler_state_dict(resampler) if resampler else {}
    return unet, projection


def convert_garment_state_dict(
    state: dict[str, torch.Tensor], expected: set[str]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """GarmentNet keys: keep everything; drop only ``add_embedding.*`` the model does not have.

    The published ``unet_encoder`` may carry SDXL ``add_embedding`` weights that GarmentNet never
    uses (it has no pooled/time conditioning). Returns (state dict, dropped keys).
    """
    dropped = sorted(k for k in state if k.startswith("add_embedding.") and k not in expected)
    return {k: v for k, v in state.items() if k not in dropped}, dropped


def check_state_dict(
    expected: torch.nn.Module | Mapping[str, tuple[int, ...]],
    state: Mapping[str, torch.Tensor],
    what: str,
    *,
    ignored: Mapping[str, tuple[int, ...]] | None = None,
    optional_suffixes: tuple[str, ...] = (),
    wording: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """Check ``state`` against ``expected`` (a module or key -> shape) and return the expected keys.

    Every key must be present with the expected shape; nothing else may be there. ``ignored``
    lists keys a published file carries but the model does not use (classifier heads): they may be
    present, their shape is still checked, and they are dropped. Keys ending in one of
    ``optional_suffixes`` (BatchNorm's ``num_batches_tracked``, present or not depending on the
    torch version that wrote the file) may be missing.

    Raises :class:`~idm_vton.errors.StateDictMismatchError` naming every missing, unexpected and
    mis-shaped key; ``wording`` is ``"checkpoint"`` (counts, the first five keys of each kind:
    a try-on checkpoint has thousands) or ``"network"`` (every key: metric networks are small).
    """
    if isinstance(expected, torch.nn.Module):
        expected = {k: tuple(v.shape) for k, v in expected.state_dict().items()}
    ignored = dict(ignored or {})
    missing = sorted(
        k
        for k in expected
        if k not in state and not (optional_suffixes and k.endswith(optional_suffixes))
    )
    unexpected = sorted(k for k in state if k not in expected and k not in ignored)
    mismatched = sorted(
        (key, tuple(tensor.shape), tuple(shape))
        for key, tensor in state.items()
        if (shape := expected.get(key, ignored.get(key))) is not None
        and tuple(tensor.shape) != tuple(shape)
    )
    if missing or unexpected or mismatched:
        raise StateDictMismatchError(
            _state_dict_problems(what, missing, unexpected, mismatched, wording)
        )
    return {k: v for k, v in state.items() if k in expected}


def _state_dict_problems(what, missing, unexpected, mismatched, wording: str) -> str:
    """The message of :func:`check_state_dict` in its ``wording``."""
    if wording == "network":
        shapes = [f"{k} (file {got}, network {want})" for k, got, want in mismatched]
        kinds = (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("mis-shaped keys", shapes),
        )
        problems = [f"{label}: {', '.join(items)}" for label, items in kinds if items]
        return f"{what} does not fit the network; " + "; ".join(problems)
    assert wording == "checkpoint", wording
    shapes = [f"{k}: checkpoint {got} vs model {want}" for k, got, want in mismatched]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
        if items:
            shown = ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
            problems.append(f"{len(items)} {label} key(s): {shown}")
    return f"{what} checkpoint does not fit the model: " + "; ".join(problems)
