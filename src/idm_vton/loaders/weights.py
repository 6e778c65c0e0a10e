"""Weight files: one check that a file plausibly holds weights, used by every loader.

Checkpoint loading, the preprocessing models and the metric networks all read weight files a
user downloaded. The official IDM-VTON repository ships each preprocessing checkpoint as a tiny
placeholder text file (``ckpt/humanparsing/parsing_atr.onnx`` contains the 25 bytes ``put
parsing_atr.onnx here``); a clone made without git-lfs leaves pointer files of ~130 bytes instead
of the weights. Both then fail deep inside onnxruntime or ``torch.load`` with "Protobuf parsing
failed" or a zip error, which is the most common install failure reported for the demo.
:func:`check_weight_file` turns those cases into one clear sentence before any framework sees the
file; given the expected format it also checks the file's first bytes (ONNX protobuf, PyTorch zip
/ pickle, plain pickle).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import IdmVtonError, PreprocessModelError

__all__ = ["MIN_WEIGHT_BYTES", "WEIGHT_FORMATS", "ZIP_MAGIC", "check_weight_file"]

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
