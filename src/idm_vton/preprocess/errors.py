"""Errors and weight-file checks shared by the preprocessing model adapters.

The official IDM-VTON repository ships each preprocessing checkpoint as a tiny placeholder text
file (``ckpt/humanparsing/parsing_atr.onnx`` contains the 25 bytes ``put parsing_atr.onnx here``);
a clone made without git-lfs leaves pointer files of ~130 bytes instead of the weights. Both then
fail deep inside onnxruntime or ``torch.load`` with "Protobuf parsing failed" or a zip error,
which is the most common install failure reported for the demo. :func:`check_weight_file` turns
those cases into one clear sentence before any framework sees the file.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PreprocessModelError", "check_weight_file"]

# Small text files are placeholders or pointers; real weights are binary (protobuf, zip, pickle).
_TEXT_SNIFF_BYTES = 512
_MAX_PLACEHOLDER_BYTES = 64 * 1024
_GIT_LFS_MAGIC = b"version https://git-lfs"


class PreprocessModelError(ValueError):
    """A preprocessing model file is missing, a placeholder, truncated or not a valid model."""


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def check_weight_file(
    path: str | os.PathLike[str],
    what: str,
    where_to_get: str,
    min_bytes: int = 1024,
) -> Path:
    """Check that ``path`` plausibly holds real model weights and return it as a ``Path``.

    Args:
        path: the weight file the user pointed at.
        what: a short name for the model in messages, e.g. ``"SCHP ATR human parser"``.
        where_to_get: where users download the file, e.g.
            ``"the Hugging Face repo yisol/IDM-VTON, folder humanparsing/"``.
        min_bytes: files smaller than this are reported as truncated. Keep it well below the real
            size (hundreds of MB) so small test models still pass.

    Raises:
        PreprocessModelError: the file is missing, a directory, a git-lfs pointer, a placeholder
            text file or shorter than ``min_bytes``. The message names the path and the source.
    """
    path = Path(path)
    if not path.exists():
        raise PreprocessModelError(
            f"{what} weights not found at {path}; download {path.name} from {where_to_get}"
        )
    if not path.is_file():
        raise PreprocessModelError(
            f"{what} weights path {path} is not a file; expected {path.name} from {where_to_get}"
        )
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(_TEXT_SNIFF_BYTES)
    if head.startswith(_GIT_LFS_MAGIC):
        raise PreprocessModelError(
            f"{what} weights at {path} are a git-lfs pointer ({size} bytes), not the model; "
            f"run `git lfs pull` or download {path.name} from {where_to_get}"
        )
    if size <= _MAX_PLACEHOLDER_BYTES and _looks_like_text(head):
        preview = head[:60].decode("utf-8").strip()
        raise PreprocessModelError(
            f"{what} weights at {path} are a {size}-byte placeholder text file "
            f"({preview!r}), not the model; download the real {path.name} from {where_to_get}"
        )
    if size < min_bytes:
        raise PreprocessModelError(
            f"{what} weights at {path} are truncated ({size} bytes, expected at least "
            f"{min_bytes}); download {path.name} again from {where_to_get}"
        )
    return path
