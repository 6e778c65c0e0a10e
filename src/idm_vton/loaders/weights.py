"""Weight files: one check that a file plausibly holds weights, and one safe pickle reader,
used by every loader.

Checkpoint loading, the preprocessing models and the metric networks all read weight files a
user downloaded. The official IDM-VTON repository ships each preprocessing checkpoint as a tiny
placeholder text file (``ckpt/humanparsing/parsing_atr.onnx`` contains the 25 bytes ``put
parsing_atr.onnx here``); a clone made without git-lfs leaves pointer files of ~130 bytes instead
of the weights. Both then fail deep inside onnxruntime or ``torch.load`` with "Protobuf parsing
failed" or a zip error, which is the most common install failure reported for the demo.
:func:`check_weight_file` turns those cases into one clear sentence before any framework sees the
file; given the expected format it also checks the file's first bytes (ONNX protobuf, PyTorch zip
/ pickle, plain pickle).

Every pickled weight file (``.bin`` checkpoints, OpenPose ``.pth``, metric weights, training
state) is read by :func:`load_torch_pickle`: ``torch.load(weights_only=True)``, so nothing in the
file can run code, and every failure becomes one line that names the file and says which of
three things happened: the file is damaged (truncated, not a pickle), it asks for objects other
than tensors (refused for safety), or it is a pickle the safe reader cannot read (a plain
``pickle.dump`` instead of ``torch.save``, or an old pickle protocol).
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import IdmVtonError, PreprocessModelError

__all__ = [
    "MIN_WEIGHT_BYTES",
    "WEIGHT_FORMATS",
    "ZIP_MAGIC",
    "building_from",
    "check_weight_file",
    "load_torch_pickle",
    "pickle_failure",
]

#: Files smaller than this cannot hold a real weight tensor of any model used here.
MIN_WEIGHT_BYTES = 1024
#: First bytes of a zip archive (PyTorch's default checkpoint format).
ZIP_MAGIC = b"PK\x03\x04"

# Small text files are placeholders or pointers; real weights are binary (protobuf, zip, pickle).
_TEXT_SNIFF_BYTES = 512
_MAX_PLACEHOLDER_BYTES = 64 * 1024
_GIT_LFS_MAGIC = b"version https://git-lfs"

#: Formats :func:`check_weight_file` can recognise by their first bytes, with a readable name.
WEIGHT_FORMATS = {
    "onnx": "an ONNX model (protobuf)",
    "torch": "a PyTorch checkpoint (zip archive or pickle)",
    "pickle": "a pickle file",
}
# ModelProto fields (onnx.proto) and their protobuf wire types: 0 = varint, 2 = length-delimited.
_ONNX_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def _is_pickle(head: bytes) -> bool:
    # Protocol 2+ pickles open with the PROTO opcode (0x80) and the protocol number.
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _is_onnx(head: bytes) -> bool:
    # An ONNX file is a serialized ModelProto; serializers write fields in number order, so the
    # first byte(s) are the varint tag of a ModelProto field (normally 0x08, ir_version).
    tag = shift = 0
    for byte in head[:5]:
        tag |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return _ONNX_MODEL_FIELDS.get(tag >> 3) == tag & 7
    return False


def _has_format(head: bytes, fmt: str) -> bool:
    if fmt == "onnx":
        return _is_onnx(head)
    if fmt == "torch":
        return head.startswith(ZIP_MAGIC) or _is_pickle(head)
    return _is_pickle(head)


def check_weight_file(
    path: str | os.PathLike[str],
    what: str,
    where_to_get: str,
    min_bytes: int = MIN_WEIGHT_BYTES,
    fmt: str | None = None,
    error: type[IdmVtonError] = PreprocessModelError,
) -> Path:
    """Check that ``path`` plausibly holds real model weights and return it as a ``Path``.

    Args:
        path: the weight file the user pointed at.
        what: a short name for the model in messages, e.g. ``"SCHP ATR human parser"``.
        where_to_get: where users download the file, e.g.
            ``"the Hugging Face repo yisol/IDM-VTON, folder humanparsing/"``.
        min_bytes: files smaller than this are reported as truncated. Keep it well below the real
            size (hundreds of MB) so small test models still pass.
        fmt: the expected format, a key of :data:`WEIGHT_FORMATS` (``"onnx"``, ``"torch"`` for
            ``torch.save`` files, ``"pickle"`` for detectron2 ``.pkl``), checked by the first bytes;
            ``None`` skips the check.
        error: the exception raised, naming the domain: :class:`~idm_vton.errors.PreprocessModelError`
            (default) for the preprocessing models, ``CheckpointError`` for try-on checkpoints,
            ``WeightFileError`` for the metric networks.

    Raises:
        error: the file is missing, a directory, a git-lfs pointer, a placeholder text file,
            shorter than ``min_bytes`` or not in format ``fmt``. The message names the path and
            the source.
    """
    if fmt is not None and fmt not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weight format {fmt!r} (use {', '.join(WEIGHT_FORMATS)})")
    path = Path(path)
    if not path.exists():
        raise error(f"{what} weights not found at {path}; download {path.name} from {where_to_get}")
    if not path.is_file():
        raise error(
            f"{what} weights path {path} is not a file; expected {path.name} from {where_to_get}"
        )
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(_TEXT_SNIFF_BYTES)
    if head.startswith(_GIT_LFS_MAGIC):
        raise error(
            f"{what} weights at {path} are a git-lfs pointer ({size} bytes), not the model; "
            f"run `git lfs pull` or download {path.name} from {where_to_get}"
        )
    if size <= _MAX_PLACEHOLDER_BYTES and _looks_like_text(head):
        preview = head[:60].decode("utf-8").strip()
        raise error(
            f"{what} weights at {path} are a {size}-byte placeholder text file "
            f"({preview!r}), not the model; download the real {path.name} from {where_to_get}"
        )
    if size < min_bytes:
        raise error(
            f"{what} weights at {path} are truncated ({size} bytes, expected at least "
            f"{min_bytes}); download {path.name} again from {where_to_get}"
        )
    if fmt is not None and not _has_format(head, fmt):
        raise error(
            f"{what} weights at {path} are not {WEIGHT_FORMATS[fmt]} (the file starts with "
            f"{head[:8]!r}); download {path.name} again from {where_to_get}"
        )
    return path


# ------------------------------------------------------------------------------ safe pickles
def _scan_pickles(path: Path, zipped: bool) -> tuple[bool, list[str]]:
    """(whether the pickle streams ``torch.load`` reads from ``path`` parse to their end, the
    globals they name as ``module.name``).

    Only the opcodes are parsed (:func:`pickletools.genops`), nothing is built or imported. A
    zip checkpoint holds one ``data.pkl``; a legacy one starts with up to four pickles (magic
    number, protocol, system info, the state dict) before raw storage bytes.
    """
    names: list[str] = []

    def scan(stream) -> None:
        strings: list[str] = []
        for op, arg, _pos in pickletools.genops(stream):
            if op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(".".join(strings[-2:]))
            elif isinstance(arg, str) and "UNICODE" in op.name:
                strings.append(arg)

    try:
        if zipped:
            with zipfile.ZipFile(path) as archive:
                found = [n for n in archive.namelist() if n.endswith("data.pkl")]
                if not found:
                    return False, names
                scan(io.BytesIO(archive.read(found[0])))
            return True, names
        with open(path, "rb") as stream:
            for _ in range(4):
                if not stream.peek(1):  # the file ends after whole pickles
                    break
                scan(stream)
        return True, names
    except Exception:  # noqa: BLE001 - any parse failure means an incomplete stream
        return False, names


# What torch.save files name: tensor and storage rebuilders, containers.
_TENSOR_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode")
# Rebuilders that run torch.load(weights_only=False) on embedded bytes (plain pickle.dump files).
_UNSAFE_TORCH_GLOBALS = ("torch.storage._load_from_bytes",)


def _first_detail(message: str) -> str:
    """The line of a ``torch.load`` message that says what went wrong (not the advice)."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    detail = [
        ln
        for ln in lines[1:]
        if not ln.startswith(("Please", "Check the documentation", "Trying to load"))
    ]
    text = (detail or lines or [""])[0].removeprefix("WeightsUnpickler error: ")
    return text.split(". ")[0].strip()


def pickle_failure(path: str | os.PathLike[str], err: BaseException) -> tuple[str, bool]:
    """Why ``torch.load(path, weights_only=True)`` failed with ``err``, as ``(reason, damaged)``.

    ``damaged``: the file is truncated or not a pickle at all (download it again); otherwise it
    is a whole pickle that the safe reader refuses, and ``reason`` says what it asked for.
    """
    path = Path(path)
    with open(path, "rb") as stream:
        zipped = stream.read(4) == ZIP_MAGIC
    message = str(err)
    if not isinstance(err, pickle.UnpicklingError) and "magic number" not in message:
        return _first_detail(message) or type(err).__name__, True
    whole, names = _scan_pickles(path, zipped)
    if not whole:
        return "its pickle data ends early or is malformed", True
    refused = re.search(r"GLOBAL (\S+?)(?: whose|\s|$)", message)
    refused_name = refused.group(1) if refused else None
    foreign = list(dict.fromkeys(n for n in names if not n.startswith(_TENSOR_GLOBALS)))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        return f"it holds objects other than tensors ({shown})", False
    if "magic number" in message or refused_name in _UNSAFE_TORCH_GLOBALS:
        return "it is a plain pickle (pickle.dump), not a torch.save checkpoint", False
    if refused_name:
        return f"it holds objects other than tensors ({refused_name})", False
    opcode = re.search(r"Unsupported operand (\d+)", message)
    if opcode:
        op = pickletools.code2op.get(chr(int(opcode.group(1))))
        name = f"{op.name} (pickle protocol {op.proto})" if op else opcode.group(1)
        return f"it uses the pickle opcode {name}, which the safe reader does not support", False
    return f"it holds objects other than tensors ({_first_detail(message)})", False


def load_torch_pickle(
    path: str | os.PathLike[str],
    where_to_get: str,
    error: type[IdmVtonError],
) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU (memory-mapped for zip files).

    Nothing in the file can run code: only tensors, numbers, strings and containers are built.
    Raises ``error`` with one line naming ``path``: truncated or corrupt (download it again from
    ``where_to_get``), or refused for safety / not readable safely (see :func:`pickle_failure`).
    """
    import torch

    path = Path(path)
    with open(path, "rb") as stream:
        zipped = stream.read(4) == ZIP_MAGIC
    try:
        # Only the zip format can be memory-mapped; legacy files are read into memory.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - torch.load fails in many ways on damaged files
        reason, damaged = pickle_failure(path, err)
        if damaged:
            raise error(
                f"{path} is truncated or corrupt ({reason}): download it again from {where_to_get}"
            ) from err
        raise error(
            f"{path} was refused for safety: {reason} (only tensors are loaded from pickles); "
            "use the official file, a torch.save copy of its state dict, or a safetensors copy"
        ) from err


@contextmanager
def building_from(path: str | os.PathLike[str], error: type[IdmVtonError]) -> Iterator[None]:
    """Build a network from the weights read from ``path`` inside this block: every problem the
    weights cause names ``path``.

    A network's own checks (missing or mis-shaped keys) raise the project's errors without the
    file they came from; ``load_state_dict`` and the layers raise ``RuntimeError`` /
    ``ValueError`` on weights that do not fit. Both become one ``error`` line naming ``path``.
    """
    try:
        yield
    except IdmVtonError as err:
        if str(path) in str(err):
            raise
        raise type(err)(f"{path}: {err}") from err
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = lines[0][:300] if lines else type(err).__name__
        raise error(f"the weights in {path} do not fit the network ({detail})") from err
