"""Customization files (paper Sec. 3.3): the two formats and applying one.

``idm-vton customize`` (:mod:`idm_vton.training.customize`) tunes TryonNet's up-block attention
on one photo and stores the result as a small safetensors file that loads on top of the base
checkpoint. Two kinds, told apart by their metadata:

* **full** (``format`` = ``idm-vton-customization``, ``version`` 1): ``tuned - base`` under each
  tuned tensor's own name (``<module>.weight`` / ``.bias``, weights and biases);
* **lora**: a diffusers/PEFT LoRA file, the format diffusers' ``load_lora_weights`` reads: for
  each tuned linear layer ``unet.<module>.lora_A.weight`` (rank x in) and
  ``unet.<module>.lora_B.weight`` (out x rank), so ``W' = W + (lora_alpha / r) B A``; metadata
  ``format`` = ``pt`` and ``lora_adapter_metadata``, the JSON of the ``peft.LoraConfig`` arguments
  with the ``unet.`` prefix (``unet.r``, ``unet.lora_alpha``, ``unet.target_modules``), from which
  diffusers rebuilds the config; plus ours: ``idm_vton_customization`` (= ``2``) and ``method``.

Both carry the base: the ``--model`` string and a fingerprint (SHA-256 of the base values of the
tuned tensors in fp32) plus per-tensor sums, so :func:`apply_customization` refuses another base
with a clear message and still accepts the same base loaded in bf16/fp16. Every tensor of a file
is checked against the layer it changes (name and exact shape, nothing broadcast) before any
weight is touched.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
from safetensors import safe_open
from safetensors.torch import save_file

from ..enums import CustomizationMethod, DType
from ..errors import CustomizationError
from ..files import atomic_path

__all__ = [
    "FORMAT",
    "LORA_MARKER",
    "LORA_PREFIX",
    "LORA_VERSION",
    "VERSION",
    "CustomizationInfo",
    "apply_customization",
    "apply_customization_to_unet",
    "base_fingerprint",
    "lora_config",
    "lora_file_metadata",
    "lora_key",
    "merge_lora",
    "save_customization",
    "target_tensors",
]

#: ``format`` metadata of a full-delta file, and its version.
FORMAT = "idm-vton-customization"
VERSION = "1"
#: Metadata key marking a LoRA file as an idm-vton customization (its value: LORA_VERSION).
#: The ``format`` key of a LoRA file is safetensors' ``pt``, as diffusers writes it.
LORA_MARKER = "idm_vton_customization"
LORA_VERSION = "2"
#: diffusers' component prefix of a pipeline LoRA file (``StableDiffusionXLPipeline.unet_name``).
LORA_PREFIX = "unet"


@dataclass
class CustomizationInfo:
    """What a customization file holds and what applying it did."""

    method: str
    base_name: str
    fingerprint: str
    tensors: int
    parameters: int
    exact_base: bool


def target_tensors(unet: torch.nn.Module, modules: Iterable[str]) -> dict[str, torch.Tensor]:
    """The weight (and bias) of each named ``nn.Linear``, keyed ``<module>.weight`` / ``.bias``."""
    out = {}
    for name in modules:
        linear = unet.get_submodule(name)
        out[f"{name}.weight"] = linear.weight
        if linear.bias is not None:
            out[f"{name}.bias"] = linear.bias
    return out


def base_fingerprint(tensors: dict[str, torch.Tensor]) -> tuple[str, dict[str, list[float]]]:
    """(SHA-256 of the fp32 values with names and shapes, per-tensor [sum, sum |x|] in fp64)."""
    digest = hashlib.sha256()
    stats = {}
    for name in sorted(tensors):
        value = tensors[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(value.shape)};".encode())
        digest.update(value.numpy().tobytes())
        v64 = value.double()
        stats[name] = [float(v64.sum()), float(v64.abs().sum())]
    return digest.hexdigest(), stats


# ---------------------------------------------------------------------------------- LoRA format
def lora_config(modules: list[str], rank: int, alpha: float) -> dict:
    """The ``peft.LoraConfig`` arguments of a customization LoRA: training builds its adapter from
    them and the file stores them, so diffusers' loader rebuilds the same config."""
    return {"r": int(rank), "lora_alpha": float(alpha), "target_modules": list(modules)}


def lora_key(module: str, factor: str) -> str:
    """File key of factor ``"A"`` or ``"B"`` of ``module`` (diffusers' pipeline LoRA layout)."""
    assert factor in ("A", "B"), factor
    return f"{LORA_PREFIX}.{module}.lora_{factor}.weight"


def lora_file_metadata(config: dict) -> dict[str, str]:
    """The metadata diffusers reads from a LoRA file (``format`` and the prefixed config)."""
    packed = {f"{LORA_PREFIX}.{key}": value for key, value in config.items()}
    return {
        "format": "pt",
        LORA_ADAPTER_METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True),
        LORA_MARKER: LORA_VERSION,
    }


def merge_lora(unet: torch.nn.Module, factors: dict[str, torch.Tensor], config: dict) -> None:
    """``W += (lora_alpha / r) * B @ A`` for every module of ``config`` (in fp32, cast back).

    ``factors`` are keyed as in the file (:func:`lora_key`) and already checked against ``unet``.
    """
    scale = config["lora_alpha"] / config["r"]
    with torch.no_grad():
        for module in config["target_modules"]:
            weight = unet.get_submodule(module).weight
            a = factors[lora_key(module, "A")].to(device=weight.device, dtype=torch.float32)
            b = factors[lora_key(module, "B")].to(device=weight.device, dtype=torch.float32)
            weight.copy_((weight.float() + scale * (b @ a)).to(weight.dtype))


# ---------------------------------------------------------------------------------- files
def save_customization(customization: dict, path: str | Path, dtype: DType | str = "fp16") -> Path:
    """Write a customization (from :func:`~idm_vton.training.customize.customize`) to ``path``
    as safetensors in ``dtype``, atomically."""
    path = Path(path)
    dtype = DType.parse(dtype, "delta dtype", CustomizationError)
    tensors = {k: v.to(dtype.torch_dtype).contiguous() for k, v in customization["tensors"].items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=customization["metadata"])
    return path


def apply_customization(pipe, path: str | Path, *, check_base: bool = True) -> CustomizationInfo:
    """Load a customization file onto ``pipe.unet`` (in place); see
    :func:`apply_customization_to_unet`."""
    return apply_customization_to_unet(pipe.unet, path, check_base=check_base)


def apply_customization_to_unet(
    unet: torch.nn.Module, path: str | Path, *, check_base: bool = True
) -> CustomizationInfo:
    """Load a customization file (full delta or LoRA, told apart by its metadata) onto ``unet``
    in place; refuse one made for another base or one whose tensors do not fit.

    The base check compares the fingerprint stored in the file with the UNet's current values
    of the tuned tensors (exact, or per-tensor sums within 1 % when the base was loaded in
    bf16/fp16). A LoRA is merged into the weights: the UNet stays a plain UNet. Apply to an
    unmodified base, once.
    """
    path = Path(path)
    metadata, layout = _read_header(path)
    method = _file_kind(path, metadata)
    config = _read_lora_config(path, metadata) if method is CustomizationMethod.LORA else None
    modules = config["target_modules"] if config else _tuned_modules(path, metadata)
    current = _current_tensors(path, unet, modules)
    fingerprint, _ = base_fingerprint(current)
    exact = fingerprint == metadata["base_fingerprint"]
    if check_base and not exact:
        _check_same_base(path, metadata, current, fingerprint)
    expected = (
        {name: tuple(value.shape) for name, value in current.items()}
        if config is None
        else _lora_shapes(unet, config)
    )
    _check_layout(path, layout, expected)
    tensors = _read_tensors(path)
    if config is None:
        _add_full_delta(current, tensors)
    else:
        merge_lora(unet, tensors, config)
    return CustomizationInfo(
        method=method.value,
        base_name=metadata.get("base_name", ""),
        fingerprint=metadata["base_fingerprint"],
        tensors=len(tensors),
        parameters=sum(t.numel() for t in tensors.values()),
        exact_base=exact,
    )


def _read_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[tuple[int, ...], str]]]:
    """(metadata, {key: (shape, safetensors dtype)}) of a safetensors file, from its header
    alone: nothing is loaded before every tensor is known to fit."""
    if not path.is_file():
        raise CustomizationError(f"customization file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            layout = {}
            for key in f.keys():
                tensor = f.get_slice(key)
                layout[key] = (tuple(tensor.get_shape()), tensor.get_dtype())
    except Exception as err:  # noqa: BLE001 - safetensors raises several kinds
        raise CustomizationError(f"{path} is not a readable safetensors file ({err})") from err
    return metadata, layout


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a file whose header was checked (:func:`_check_layout`); each must hold
    finite values (NaN in a delta would silently turn the weights it touches into NaN)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 - safetensors raises several kinds
        raise CustomizationError(f"{path} is truncated or corrupt ({err})") from err
    for key, value in tensors.items():
        if not torch.isfinite(value).all():
            raise CustomizationError(
                f"{path.name}: tensor {key} holds NaN or infinite values (damaged file)"
            )
    return tensors


def _file_kind(path: Path, metadata: dict[str, str]) -> CustomizationMethod:
    """The kind of file, from its metadata; refuses files that are not ours or lack the base."""
    if metadata.get("format") == FORMAT:
        if metadata.get("method") == CustomizationMethod.LORA.value:
            raise CustomizationError(
                f"{path.name} is a LoRA in idm-vton's old private format: run idm-vton customize "
                "again (LoRA files are now diffusers/PEFT files)"
            )
        if metadata.get("method") != CustomizationMethod.FULL.value:
            raise CustomizationError(
                f"{path}: unknown customization method {metadata.get('method')!r}"
            )
        kind, required = CustomizationMethod.FULL, ("tuned_modules",)
    elif metadata.get(LORA_MARKER) == LORA_VERSION:
        kind, required = CustomizationMethod.LORA, (LORA_ADAPTER_METADATA_KEY,)
    elif LORA_ADAPTER_METADATA_KEY in metadata:
        raise CustomizationError(
            f"{path.name} is a LoRA file without an idm-vton base fingerprint "
            "(not written by idm-vton customize)"
        )
    else:
        raise CustomizationError(f"{path} is not an idm-vton customization file")
    for key in ("base_fingerprint", "base_stats", *required):
        if key not in metadata:
            raise CustomizationError(f"{path.name}: metadata {key!r} is missing (damaged file)")
    return kind


def _json_metadata(path: Path, metadata: dict[str, str], key: str):
    """The JSON value stored under metadata ``key`` (present: checked by :func:`_file_kind`)."""
    try:
        return json.loads(metadata[key])
    except (ValueError, RecursionError):
        raise CustomizationError(
            f"{path}: metadata {key!r} is not valid JSON (damaged file)"
        ) from None


def _tuned_modules(path: Path, metadata: dict[str, str]) -> list[str]:
    """The module names a full-delta file tunes: a non-empty list of strings."""
    modules = _json_metadata(path, metadata, "tuned_modules")
    if not (isinstance(modules, list) and modules and all(isinstance(m, str) for m in modules)):
        raise CustomizationError(
            f"{path}: metadata 'tuned_modules' is not a list of module names (damaged file)"
        )
    return modules


def _read_lora_config(path: Path, metadata: dict[str, str]) -> dict:
    """The LoRA config of the file's ``lora_adapter_metadata`` (as written by :func:`lora_config`)."""
    try:
        packed = json.loads(metadata[LORA_ADAPTER_METADATA_KEY])
        config = {k: packed[f"{LORA_PREFIX}.{k}"] for k in ("r", "lora_alpha", "target_modules")}
    except (KeyError, TypeError, ValueError) as err:
        raise CustomizationError(f"{path.name}: unreadable LoRA metadata ({err!r})") from None
    modules, rank, alpha = config["target_modules"], config["r"], config["lora_alpha"]
    if not (
        isinstance(modules, list)
        and modules
        and all(isinstance(m, str) for m in modules)
        and type(rank) is int
        and rank >= 1
        and type(alpha) in (int, float)
        and math.isfinite(alpha)
    ):
        raise CustomizationError(
            f"{path.name}: LoRA metadata has an invalid rank, alpha or modules"
        )
    return config


def _current_tensors(
    path: Path, unet: torch.nn.Module, modules: list[str]
) -> dict[str, torch.Tensor]:
    """The UNet's tensors the file changes; a missing or non-linear layer means another base."""
    for name in modules:
        try:
            module = unet.get_submodule(name)
        except AttributeError:
            module = None
        if not isinstance(module, torch.nn.Linear):
            raise CustomizationError(
                f"{path.name} tunes a layer this model does not have ({name}): it was made for "
                "another base"
            )
    return target_tensors(unet, modules)


def _lora_shapes(unet: torch.nn.Module, config: dict) -> dict[str, tuple[int, ...]]:
    """The exact shape of every factor: A is (r, in_features), B is (out_features, r)."""
    shapes = {}
    for module in config["target_modules"]:
        linear = unet.get_submodule(module)
        shapes[lora_key(module, "A")] = (config["r"], linear.in_features)
        shapes[lora_key(module, "B")] = (linear.out_features, config["r"])
    return shapes


def _check_layout(
    path: Path,
    layout: dict[str, tuple[tuple[int, ...], str]],
    expected: dict[str, tuple[int, ...]],
) -> None:
    """Exactly the expected tensors, each with exactly its shape (nothing left to broadcast) and
    a floating-point dtype, read from the file's header."""
    for key in expected:
        if key not in layout:
            raise CustomizationError(f"{path.name}: tensor {key} is missing (damaged file)")
    for key, (shape, dtype) in layout.items():
        if key not in expected:
            raise CustomizationError(f"{path.name}: unexpected tensor {key} (damaged file)")
        if shape != tuple(expected[key]):
            raise CustomizationError(
                f"{path.name}: tensor {key} has shape {shape}, expected "
                f"{tuple(expected[key])} (damaged file)"
            )
        if not dtype.startswith(("F", "BF")):  # F16, BF16, F32, F64, F8_*
            raise CustomizationError(
                f"{path.name}: tensor {key} is {dtype}, not floating point (damaged file)"
            )


def _check_same_base(
    path: Path, metadata: dict[str, str], current: dict[str, torch.Tensor], fingerprint: str
) -> None:
    """Accept the same base at another precision (per-tensor sums within bf16 rounding)."""
    expected = _json_metadata(path, metadata, "base_stats")
    if not (
        isinstance(expected, dict)
        and all(
            isinstance(v, list)
            and len(v) == 2
            and all(type(x) in (int, float) and math.isfinite(x) for x in v)
            for v in expected.values()
        )
    ):
        raise CustomizationError(
            f"{path}: metadata 'base_stats' is not a table of per-tensor sums (damaged file)"
        )
    if set(expected) == set(current) and stats_match(expected, current):
        return
    base = metadata.get("base_name") or "an unnamed model"
    raise CustomizationError(
        f"{path.name} was made for another base model ({base}, fingerprint "
        f"{metadata['base_fingerprint'][:12]}); this model's TryonNet attention weights "
        f"have fingerprint {fingerprint[:12]}. Load the base it was made for."
    )


def stats_match(expected: dict[str, list[float]], tensors: dict[str, torch.Tensor]) -> bool:
    """Same base at another precision: per-tensor sums within bf16-rounding tolerance."""
    _, actual = base_fingerprint(tensors)
    for name, (s, a) in expected.items():
        s2, a2 = actual[name]
        tol = 1e-2 * a + 1e-6
        if abs(a - a2) > tol or abs(s - s2) > tol:
            return False
    return True


def _add_full_delta(current: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]) -> None:
    """``W += delta`` for every tuned tensor (the delta is added in fp32, then cast back)."""
    with torch.no_grad():
        for name, value in current.items():
            change = delta[name].to(device=value.device, dtype=torch.float32)
            value.copy_((value.float() + change).to(value.dtype))
