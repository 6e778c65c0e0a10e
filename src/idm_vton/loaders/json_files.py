"""JSON files a user gives (configs, shard indexes, tag files, training state): one reader.

Every such file is a JSON object at the top. :func:`read_json_object` reads one and turns every
way it can be wrong (unreadable, not UTF-8, not JSON, nested past Python's recursion limit,
``NaN``/``Infinity`` where a number should be, a list or a string at the top) into one line that
names the file, raised as the caller's :class:`~idm_vton.errors.IdmVtonError` subclass.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import IdmVtonError

__all__ = ["MAX_JSON_BYTES", "read_json_object"]

#: Larger JSON files are refused before they are parsed (the largest one read here, VITON-HD's
#: training tag file, is about 15 MB).
MAX_JSON_BYTES = 256 * 1024 * 1024


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def read_json_object(
    path: str | os.PathLike[str], error: type[IdmVtonError], what: str = "JSON file"
) -> dict:
    """The JSON object in ``path``; ``error`` (one line naming ``what`` and ``path``) otherwise."""
    path = Path(path)
    if not path.exists():
        raise error(f"{what} not found: {path}")
    if not path.is_file():
        raise error(f"{what} {path} is not a file")
    try:
        size = path.stat().st_size
        data = path.read_bytes() if size <= MAX_JSON_BYTES else b""
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror or err}") from None
    if size > MAX_JSON_BYTES:
        raise error(f"{what} {path} is too large ({size} bytes) to be a JSON file read here")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not UTF-8 text (not a JSON file)") from None
    try:
        content = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as err:  # json.JSONDecodeError, or a NaN / Infinity constant
        raise error(f"{what} {path} is not valid JSON ({err})") from None
    except RecursionError:
        raise error(f"{what} {path} is nested too deeply to be read") from None
    if not isinstance(content, dict):
        raise error(f"{what} {path} must hold a JSON object {{...}}, found {_json_kind(content)}")
    return content


def _json_kind(value: object) -> str:
    """``value``'s JSON type in words, for messages."""
    kinds = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")
