"""Customization deltas (paper Sec. 3.3, SPEC section 5): the file format and applying one.

``idm-vton customize`` (:mod:`idm_vton.training.customize`) tunes TryonNet's up-block attention
on one photo and stores the result as a small safetensors file that loads on top of the base
checkpoint:

* **full**: ``tuned - base`` for each tuned tensor (weights and biases);
* **lora**: the factors ``A`` and ``B`` of ``W + scale * B A`` for each tuned linear layer.

The file's metadata names the base: the ``--model`` string and a fingerprint (SHA-256 of the base
values of the tuned tensors in fp32) plus per-tensor sums, so :func:`apply_customization` refuses
another base with a clear message and still accepts the same base loaded in bf16/fp16.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..enums import CustomizationMethod, DType
from ..errors import CustomizationError
from ..files import atomic_path

__all__ = [
    "FORMAT",
    "VERSION",
    "CustomizationInfo",
    "apply_customization",
    "base_fingerprint",
    "save_customization",
    "target_tensors",
]

FORMAT = "idm-vton-customization"
VERSION = "1"


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
    """Load a customization file onto ``pipe.unet`` (in place); refuse one made for another base.

    The base check compares the fingerprint stored in the file with the pipeline's current values
    of the tuned tensors (exact, or per-tensor sums within 1 % when the base was loaded in
    bf16/fp16). Apply to an unmodified base, once.
    """
    path = Path(path)
    metadata, tensors = _read_customization(path)
    modules = json.loads(metadata["tuned_modules"])
    try:
        current = target_tensors(pipe.unet, modules)
    except AttributeError as err:
        raise CustomizationError(
            f"{path} tunes layers this model does not have ({err}): it was made for another base"
        ) from err
    fingerprint, _ = base_fingerprint(current)
    exact = fingerprint == metadata["base_fingerprint"]
    if check_base and not exact:
        _check_same_base(path, metadata, current, fingerprint)
    try:
        method = CustomizationMethod(metadata["method"])
    except ValueError:
        raise CustomizationError(
            f"{path}: unknown customization method {metadata['method']!r}"
        ) from None
    with torch.no_grad():
        if method is CustomizationMethod.FULL:
            _add_full_delta(current, tensors)
        else:
            _add_lora_delta(current, tensors, modules, float(metadata["lora_scale"]))
    return CustomizationInfo(
        method=method.value,
        base_name=metadata.get("base_name", ""),
        fingerprint=metadata["base_fingerprint"],
        tensors=len(tensors),
        parameters=sum(t.numel() for t in tensors.values()),
        exact_base=exact,
    )


def _read_customization(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a customization file; refuses other files."""
    if not path.is_file():
        raise CustomizationError(f"customization file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 - safetensors raises several kinds
        raise CustomizationError(f"{path} is not a readable safetensors file ({err})") from err
    if metadata.get("format") != FORMAT:
        raise CustomizationError(f"{path} is not an idm-vton customization file")
    return metadata, tensors


def _check_same_base(
    path: Path, metadata: dict[str, str], current: dict[str, torch.Tensor], fingerprint: str
) -> None:
    """Accept the same base at another precision (per-tensor sums within bf16 rounding)."""
    expected = json.loads(metadata["base_stats"])
    if set(expected) == set(current) and _stats_match(expected, current):
        return
    base = metadata.get("base_name") or "an unnamed model"
    raise CustomizationError(
        f"{path.name} was made for another base model ({base}, fingerprint "
        f"{metadata['base_fingerprint'][:12]}); this model's TryonNet attention weights "
        f"have fingerprint {fingerprint[:12]}. Load the base it was made for."
    )


def _stats_match(expected: dict[str, list[float]], tensors: dict[str, torch.Tensor]) -> bool:
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
    for name, value in current.items():
        value.add_(delta[name].to(device=value.device, dtype=torch.float32).to(value.dtype))


def _add_lora_delta(
    current: dict[str, torch.Tensor],
    factors: dict[str, torch.Tensor],
    modules: list[str],
    scale: float,
) -> None:
    """``W += scale * B @ A`` for every tuned linear layer (in fp32, then cast back)."""
    for name in modules:
        weight = current[f"{name}.weight"]
        a = factors[f"{name}.lora_A"].to(device=weight.device, dtype=torch.float32)
        b = factors[f"{name}.lora_B"].to(device=weight.device, dtype=torch.float32)
        weight.copy_((weight.float() + scale * (b @ a)).to(weight.dtype))
