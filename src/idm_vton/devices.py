"""Device and dtype choice, one rule everywhere: CUDA when available, else the CPU; bf16 on
CUDA, fp32 otherwise. Unknown or unavailable choices raise :class:`~idm_vton.errors.UsageError`.
"""

from __future__ import annotations

from .enums import DType
from .errors import UsageError

__all__ = [
    "check_dtype_on_device",
    "default_device",
    "default_dtype",
    "resolve_device",
    "resolve_dtype",
]

_DEVICES = "cpu, cuda, cuda:N or mps"


def default_device() -> str:
    """``"cuda"`` when a CUDA GPU is visible, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(name: str | None = None):
    """A ``torch.device`` for ``name`` (default :func:`default_device`), checked to be usable here."""
    import torch

    name = default_device() if name is None else str(name)
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"unknown device '{name}' (use {_DEVICES})") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"device '{name}' requested but CUDA is not available here (use --device cpu)"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("device 'mps' requested but MPS is not available here (use --device cpu)")
    if device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise UsageError(f"unsupported device '{name}' (use {_DEVICES})")
    return device


def default_dtype(device) -> DType:
    """bf16 on CUDA, fp32 elsewhere."""
    import torch

    return DType.BF16 if torch.device(device).type == "cuda" else DType.FP32


def resolve_dtype(name: DType | str | None = None, device=None):
    """The ``torch.dtype`` named ``name`` (``fp32``, ``fp16``, ``bf16``); ``None``: the default
    for ``device`` (:func:`default_dtype`)."""
    if name is None:
        return default_dtype(device if device is not None else default_device()).torch_dtype
    try:
        return DType(name).torch_dtype
    except ValueError:
        raise UsageError(f"unknown dtype '{name}' (use {', '.join(DType.values())})") from None


def check_dtype_on_device(dtype, device) -> None:
    """Refuse fp16 on the CPU (no fp16 kernels there for much of the model)."""
    import torch

    if dtype == torch.float16 and torch.device(device).type == "cpu":
        raise UsageError("fp16 is not supported on the CPU: use --dtype bf16 or fp32")
