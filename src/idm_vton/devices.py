"""Device and dtype choice, one rule everywhere: CUDA when available, else the CPU; bf16 on
CUDA, fp32 otherwise. Unknown or unavailable choices raise :class:`~idm_vton.errors.UsageError`.

Every command that takes a device (``--device``, ``--preprocess-device``) resolves it with
:func:`resolve_device` before any work: the name must be one torch knows, of a kind this project
runs on (cpu, cuda, mps, xpu), and the device must exist here (its backend is built into this
torch and sees a device with that index). A device that passes is usable by every ``.to()``.
"""

from __future__ import annotations

from .enums import DType, MixedPrecision
from .errors import UsageError

__all__ = [
    "check_dtype_on_device",
    "check_mixed_precision_on_device",
    "default_device",
    "default_dtype",
    "resolve_device",
    "resolve_dtype",
]

_DEVICES = "cpu, cuda, cuda:N, mps or xpu"
_BACKENDS = {"cuda": "CUDA", "mps": "MPS", "xpu": "XPU"}


def default_device() -> str:
    """``"cuda"`` when a CUDA GPU is visible, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _device_count(kind: str) -> int:
    """How many devices of ``kind`` this torch build can use here (0: none or not built in)."""
    import torch

    if kind == "cpu":
        return 1
    if kind == "mps":
        return int(torch.backends.mps.is_available())
    module = getattr(torch, kind, None)
    if module is None or not module.is_available():
        return 0
    return int(module.device_count())


def resolve_device(name: str | None = None, flag: str = "--device"):
    """A ``torch.device`` for ``name`` (default :func:`default_device`), checked to be usable here.

    ``flag`` names the option the value came from in messages (``--preprocess-device``).
    """
    import torch

    name = default_device() if name is None else str(name)
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"{flag}: unknown device '{name}' (use {_DEVICES})") from None
    if device.type not in ("cpu", *_BACKENDS):
        raise UsageError(f"{flag}: unsupported device '{name}' (use {_DEVICES})")
    count = _device_count(device.type)
    if count == 0:
        raise UsageError(
            f"{flag}: device '{name}' requested but {_BACKENDS[device.type]} is not available "
            f"here (use {flag} cpu)"
        )
    if device.index is not None and device.index >= count:
        raise UsageError(
            f"{flag}: device '{name}' requested but only {count} {device.type} device(s) are "
            f"visible here (use {device.type}:0 to {device.type}:{count - 1})"
        )
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


def check_mixed_precision_on_device(precision: MixedPrecision | str, device) -> None:
    """Refuse ``--mixed-precision fp16`` on the CPU: torch has no fp16 autocast there, and the
    gradient scaler it needs is CUDA-only."""
    import torch

    precision = MixedPrecision.parse(precision, "--mixed-precision", UsageError)
    if precision is MixedPrecision.FP16 and torch.device(device).type == "cpu":
        raise UsageError(
            "--mixed-precision fp16 is not supported on the CPU: use --mixed-precision bf16 or no"
        )
