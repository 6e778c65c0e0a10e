"""Checkpoint reading and key conversion for the published IDM-VTON layout (README, "Checkpoints").

The published ``yisol/IDM-VTON`` folder stores the TryonNet with
``encoder_hid_dim_type: "ip_image_proj"`` (which stock diffusers refuses), the IP-Adapter Plus
Resampler under ``encoder_hid_proj.*`` in the original Resampler naming and the IP key/value
projections as ``<attn2>.processor.to_k_ip.weight``. Conversion to the modules used here is a pure
``dict -> dict`` mapping (:func:`convert_tryon_state_dict`) followed by :func:`check_state_dict`,
which names every missing, unexpected or mis-shaped key. Nothing is dropped silently: the only
keys ever left out (GarmentNet's unused ``add_embedding.*``) are returned and logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path, PurePath

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CheckpointError, StateDictMismatchError
from .json_files import read_json_object
from .weights import check_weight_file, load_torch_pickle

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
    folder: Path,
    variant: str | None = None,
    use_safetensors: bool | None = None,
    required: bool = True,
) -> list[Path]:
    """The weight file(s) of a component folder (a single file or an index of shards), each
    checked to be a file of the folder itself (an index cannot name files elsewhere).

    ``variant`` (e.g. ``"fp16"``): the folder's ``*.{variant}.safetensors`` / ``.bin`` files
    are taken where present, the plain ones otherwise; ``use_safetensors``: True takes
    safetensors files only, False pickles only, None (default) safetensors first.
    ``required=False``: ``[]`` for a folder without weights (tokenizers), no error.
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
            return _shards(folder, index)
    for name in filter(allowed, [*files, *_WEIGHT_NAMES]):
        if (folder / name).exists():
            return [_inside(folder, name, folder / name)]
    if not required:
        return []
    raise CheckpointError(
        f"no weight file in {folder} (expected one of {', '.join(_WEIGHT_NAMES[:1] + _WEIGHT_NAMES[4:5])})"
    )


def _shards(folder: Path, index: Path) -> list[Path]:
    """The shard files a ``*.index.json`` names (its ``weight_map`` values), each checked to be
    a file of ``folder`` itself (:func:`_inside`)."""
    weight_map = read_json_object(index, CheckpointError, "shard index").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(
            f"shard index {index} has no 'weight_map' (an object naming each tensor's file)"
        )
    if not all(isinstance(name, str) and name for name in weight_map.values()):
        raise CheckpointError(f"shard index {index}: every 'weight_map' value must be a file name")
    return [_inside(folder, name, index) for name in sorted(set(weight_map.values()))]


def _allowed_roots(folder: Path) -> list[Path]:
    """Where the files of ``folder`` may really be: the folder itself and, for a Hugging Face
    cache snapshot (``.../models--x/snapshots/<rev>/unet``, whose files are symlinks into
    ``.../models--x/blobs/``), that repository's blob store."""
    roots = [folder.resolve()]
    for parent in folder.absolute().parents:
        if parent.name == "snapshots" and (parent.parent / "blobs").is_dir():
            roots.append((parent.parent / "blobs").resolve())
            break
    return roots


def _inside(folder: Path, name: str, named_in: Path) -> Path:
    """``folder / name``, refused unless ``name`` is a relative path whose file, symlinks
    resolved, lies inside ``folder`` (or its hub-cache blob store): a checkpoint reads only its
    own files, whatever its index says."""
    path = folder / name
    if PurePath(name).is_absolute() or ".." in PurePath(name).parts:
        raise CheckpointError(
            f"{named_in} names {name!r}, outside {folder}: refused (a checkpoint may only "
            "read its own files)"
        )
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root) for root in _allowed_roots(folder)):
        raise CheckpointError(
            f"{path} is a link to {resolved}, outside {folder}: refused (a checkpoint may only "
            "read its own files)"
        )
    return path


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
    # Pickled checkpoints are read with weights_only=True: tensors only, no code.
    state = load_torch_pickle(path, CHECKPOINT_SOURCE, CheckpointError)
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(state).__name__}, not a state dict (names -> tensors)"
        )
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path} is not a flat state dict: entry {key!r} is a {type(value).__name__}, "
                "not a tensor"
            )
    return dict(state)


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

    Every key must be present with the expected shape; nothing else may be there; where
    ``expected`` is a module, its floating-point tensors must come as floating point. ``ignored``
    lists keys a published file carries but the model does not use (classifier heads): they may be
    present, their shape is still checked, and they are dropped. Keys ending in one of
    ``optional_suffixes`` (BatchNorm's ``num_batches_tracked``, present or not depending on the
    torch version that wrote the file) may be missing.

    Raises :class:`~idm_vton.errors.StateDictMismatchError` naming every missing, unexpected and
    mis-shaped key; ``wording`` is ``"checkpoint"`` (counts, the first five keys of each kind:
    a try-on checkpoint has thousands) or ``"network"`` (every key: metric networks are small).
    """
    floating: set[str] = set()
    if isinstance(expected, torch.nn.Module):
        own = expected.state_dict()
        floating = {k for k, v in own.items() if v.is_floating_point()}
        expected = {k: tuple(v.shape) for k, v in own.items()}
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
    # A floating-point weight must come as floats: integers would be cast silently.
    mistyped = sorted(k for k in floating if k in state and not state[k].is_floating_point())
    if mistyped:
        raise StateDictMismatchError(
            f"{what}: {len(mistyped)} tensor(s) are not floating point where the model holds "
            f"floating-point weights: {', '.join(mistyped[:5])} ({state[mistyped[0]].dtype})"
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
