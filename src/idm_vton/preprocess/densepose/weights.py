"""Loading the DensePose R-CNN checkpoint safely (no arbitrary code from pickles).

The demo's ``model_final_162be9.pkl`` is a detectron2 model-zoo pickle:
``{"model": {detectron2 key: numpy array}, "__author__": ...}``. ``pickle.load`` on such a
file would execute whatever the file says; here an unpickler that can only rebuild numpy
arrays reads it. ``.pth`` and ``.safetensors`` copies of the same state dict load too.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from idm_vton.errors import PreprocessModelError
from idm_vton.loaders.weights import check_weight_file, load_torch_pickle

__all__ = ["DENSEPOSE_WEIGHTS_SOURCE", "load_densepose_state_dict"]

#: Where users get the checkpoint; used in error messages.
DENSEPOSE_WEIGHTS_SOURCE = (
    "the Hugging Face repo yisol/IDM-VTON, folder densepose/ (file model_final_162be9.pkl)"
)
_WHAT = "DensePose R-CNN"


class _RefusedPickle(pickle.UnpicklingError):
    """The pickle asks for something a plain numpy-array checkpoint never needs."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays (and plain containers) and nothing else.

    detectron2 checkpoints are pickles of ``{"model": {name: ndarray}, "__author__": ...}``.
    Any global other than numpy's array/dtype/scalar reconstructors is refused, so a
    malicious file cannot make the loader call ``os.system`` or import arbitrary modules.
    Object dtypes are refused too: an object array holds Python objects, not numbers.
    """

    def find_class(self, module: str, name: str):
        target = _ALLOWED_PICKLE_GLOBALS.get((module, name))
        if target is None:
            raise _RefusedPickle(
                f"refusing to load global {module}.{name}: a DensePose checkpoint holds only "
                "numpy arrays"
            )
        return target()


def _numeric_dtype(dtype) -> np.dtype:
    """``np.dtype(dtype)``, refusing object dtypes (also inside structured/subarray dtypes)."""
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise _RefusedPickle(
            "refusing to load a numpy object array: a DensePose checkpoint holds only numbers"
        )
    return dtype


def _numeric_dtype_class(*args) -> np.dtype:
    """Stands in for ``numpy.dtype`` when unpickling (``numpy.dtype("f4", False, True)``)."""
    return _numeric_dtype(np.dtype(*args))


def _numpy_core(module: str, name: str):
    """A numpy reconstructor under its numpy 2 (``numpy._core``) or numpy 1 location."""
    import importlib

    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)
    except ImportError:  # pragma: no cover - numpy 1.x
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


def _checked_reconstruct():
    reconstruct = _numpy_core("multiarray", "_reconstruct")

    def _reconstruct(subtype, shape, dtype):
        if subtype is not np.ndarray:
            raise _RefusedPickle(f"refusing to rebuild a {subtype!r}: only plain numpy arrays")
        return reconstruct(subtype, shape, _numeric_dtype(dtype))

    return _reconstruct


def _checked_scalar():
    scalar = _numpy_core("multiarray", "scalar")

    def _scalar(dtype, *args):
        return scalar(_numeric_dtype(dtype), *args)

    return _scalar


def _checked_frombuffer():
    """numpy's protocol-5 array constructor ``_frombuffer(buf, dtype, shape, order)``."""
    frombuffer = _numpy_core("numeric", "_frombuffer")

    def _frombuffer(buf, dtype, shape, order):
        return frombuffer(buf, _numeric_dtype(dtype), shape, order)

    return _frombuffer


def _codecs_encode():
    import codecs

    return codecs.encode


def _ordered_dict():
    from collections import OrderedDict

    return OrderedDict


# Every global ``pickle.dumps`` of a detectron2 checkpoint references, under numpy 1 and numpy 2
# names: protocols 2-4 rebuild arrays with ``multiarray._reconstruct`` + ``ndarray.__setstate__``,
# protocol 5 with ``numeric._frombuffer``; numpy scalars with ``multiarray.scalar``.
_ALLOWED_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _checked_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _checked_reconstruct,
    ("numpy.core.multiarray", "scalar"): _checked_scalar,
    ("numpy._core.multiarray", "scalar"): _checked_scalar,
    ("numpy.core.numeric", "_frombuffer"): _checked_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _checked_frombuffer,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: _numeric_dtype_class,
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
    ("_codecs", "encode"): _codecs_encode,
    ("collections", "OrderedDict"): _ordered_dict,
}


def _unpickle_numpy_only(data: bytes) -> object:
    return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


def _to_tensor_dict(raw: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(raw, dict) and "model" in raw and isinstance(raw["model"], dict):
        raw = raw["model"]  # detectron2 model-zoo / training checkpoint layout
    if not isinstance(raw, dict):
        raise PreprocessModelError(
            f"{_WHAT} weights at {path} hold a {type(raw).__name__}, expected a dict of arrays"
        )
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise PreprocessModelError(
                    f"{_WHAT} weights at {path}: entry {key!r} is a numpy object array, "
                    "expected numbers"
                )
            if value.dtype.kind not in "biuf":  # strings, dates, complex: not weights
                raise PreprocessModelError(
                    f"{_WHAT} weights at {path}: entry {key!r} is a numpy array of "
                    f"{value.dtype}, expected numbers"
                )
            value = torch.from_numpy(np.array(value))
        if not isinstance(value, torch.Tensor):
            raise PreprocessModelError(
                f"{_WHAT} weights at {path}: entry {key!r} is a {type(value).__name__}, "
                "expected an array"
            )
        state[str(key)] = value
    return state


def load_densepose_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a DensePose checkpoint into ``{detectron2 key: tensor}``, safely.

    ``.pkl`` (detectron2 model zoo) files go through an unpickler that only rebuilds numpy
    arrays; ``.safetensors`` through safetensors; anything else through
    ``torch.load(weights_only=True)``. A top-level ``{"model": ...}`` wrapper is unwrapped.

    Raises:
        PreprocessModelError: missing, placeholder, git-lfs pointer, truncated or unsafe file.
    """
    path = check_weight_file(path, _WHAT, DENSEPOSE_WEIGHTS_SOURCE)
    with open(path, "rb") as stream:
        zipped = stream.read(2) == b"PK"
    if zipped or path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        raw = load_torch_pickle(path, DENSEPOSE_WEIGHTS_SOURCE, PreprocessModelError)
        return _to_tensor_dict(raw, path)
    data = path.read_bytes()
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load as load_safetensors

            raw = load_safetensors(data)
        else:
            raw = _unpickle_numpy_only(data)
    except pickle.UnpicklingError as error:
        if isinstance(error, _RefusedPickle):
            raise PreprocessModelError(
                f"{_WHAT} weights at {path} are not a plain array checkpoint and were not "
                f"loaded ({error}); use the official file from {DENSEPOSE_WEIGHTS_SOURCE}"
            ) from error
        raise PreprocessModelError(
            f"{_WHAT} weights at {path} are truncated or corrupt ({error}); download "
            f"{path.name} again from {DENSEPOSE_WEIGHTS_SOURCE}"
        ) from error
    except Exception as error:  # noqa: BLE001 - a damaged pickle fails in many ways
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise PreprocessModelError(
            f"{_WHAT} weights at {path} are truncated or corrupt "
            f"({type(error).__name__}: {detail}); download {path.name} again from "
            f"{DENSEPOSE_WEIGHTS_SOURCE}"
        ) from error
    return _to_tensor_dict(raw, path)
