"""Garment descriptions V and the two prompts built from them (paper Sec. 3.2).

IDM-VTON conditions both UNets on a short garment description V:

- TryonNet prompt: ``"model is wearing " + V`` (the training form; the official dataset-inference
  script says ``"model is wearing a " + V``, which we do not copy);
- GarmentNet prompt: ``"a photo of " + V``.

For VITON-HD, V comes from the attribute tags IDM-VTON published (``vitonhd_{phase}_tagged.json``);
for DressCode, from the per-category ``dc_caption.txt`` files.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..enums import GarmentCategory
from ..errors import DatasetError
from ..loaders.json_files import read_json_object

__all__ = [
    "GarmentCategory",
    "describe_vitonhd",
    "garment_prompt",
    "load_dresscode_captions",
    "load_vitonhd_tags",
    "read_vitonhd_entries",
    "tryon_prompt",
]

logger = logging.getLogger(__name__)

#: Tag names that make up a VITON-HD description, in the order they are concatenated.
VITONHD_TAG_ORDER: tuple[str, ...] = ("sleeveLength", "neckLine", "item")

#: Description used for a VITON-HD garment that has no entry in the tag file.
VITONHD_FALLBACK_DESCRIPTION = "shirts"


def describe_vitonhd(tag_entry: Mapping[str, Any] | None) -> str:
    """Build the garment description V from one entry of the VITON-HD tag file.

    For each of ``sleeveLength``, ``neckLine`` and ``item`` (in this order) the first tag with that
    ``tag_name`` and a non-null ``tag_category`` contributes ``tag_category + " "``, so a non-empty V
    ends in a space (e.g. ``"Short Sleeve Round Neck T-shirts "``). ``None`` (no entry for the
    garment) gives ``"shirts"``. An entry whose three tags are all null gives ``""``, as in the
    official code.

    The official loop appends *every* matching tag rather than the first; the published tag files
    hold exactly one tag of each name per garment, so both rules give the same text there.
    """
    if tag_entry is None:
        return VITONHD_FALLBACK_DESCRIPTION
    tags = tag_entry.get("tag_info") or []  # checked by load_vitonhd_tags: a list of objects
    parts: list[str] = []
    for tag_name in VITONHD_TAG_ORDER:
        for tag in tags:
            if tag.get("tag_name") == tag_name and tag.get("tag_category") is not None:
                parts.append(f"{tag['tag_category']} ")
                break
    return "".join(parts)


def load_vitonhd_tags(json_path: str | Path) -> dict[str, str]:
    """Read a ``vitonhd_{phase}_tagged.json`` file into ``{file_name: V}``.

    Keys are the ``file_name`` values exactly as written in the file (garment file names with
    their extension, e.g. ``"00067_00.jpg"``). The file is ``{"data": [entry, ...]}``; like the
    official loader, entries under every top-level key are read.

    Raises :class:`~idm_vton.errors.DatasetError` naming the file when it is not such a file:
    not JSON, not an object, entries without a ``file_name``, ``tag_info`` that is not a list
    of tag objects with string (or null) ``tag_name`` / ``tag_category``.
    """
    return {
        entry["file_name"]: describe_vitonhd(entry) for entry in read_vitonhd_entries(json_path)
    }


def read_vitonhd_entries(json_path: str | Path) -> list[dict[str, Any]]:
    """The entries of a ``vitonhd_{phase}_tagged.json``, each checked to have the published
    shape (see :func:`load_vitonhd_tags`, which names the errors raised)."""
    path = Path(json_path)
    content = read_json_object(path, DatasetError, "VITON-HD tag file")
    checked: list[dict[str, Any]] = []
    for key, entries in content.items():
        if not isinstance(entries, list):
            raise DatasetError(
                f"VITON-HD tag file {path}: key {key!r} should hold a list of entries", path=path
            )
        for entry in entries:
            _check_tag_entry(entry, path)
            checked.append(entry)
    return checked


def _check_tag_entry(entry: object, path: Path) -> None:
    """One entry of a VITON-HD tag file has the published shape: ``{"file_name": str,
    "tag_info": [{"tag_name": str, "tag_category": str | null}, ...] | null}``."""

    def bad(what: str) -> DatasetError:
        return DatasetError(f"VITON-HD tag file {path}: {what}: {entry!r:.200}", path=path)

    if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str):
        raise bad("entry without a 'file_name' string")
    tags = entry.get("tag_info")
    if tags is None:
        return
    if not isinstance(tags, list):
        raise bad(f"'tag_info' of {entry['file_name']} is not a list")
    for tag in tags:
        if not isinstance(tag, dict):
            raise bad(f"'tag_info' of {entry['file_name']} holds {tag!r:.40}, not a tag object")
        for field in ("tag_name", "tag_category"):
            if not isinstance(tag.get(field), str | None):
                raise bad(f"'{field}' of a tag of {entry['file_name']} is not a string")


def load_dresscode_captions(path: str | Path) -> dict[str, str]:
    """Read a DressCode ``dc_caption.txt`` into ``{name: V}``.

    Each line is ``<file name> <caption words...>``; V is the words joined by single spaces.
    Blank lines and lines without caption words are skipped (the dataset then falls back to the
    category name, as the official code does).

    Keying: every caption is stored under the name exactly as written (``"013563_1.jpg"``) and also
    under that name without its extension (``"013563_1"``), so a lookup works with either form
    whichever form the file uses. An explicitly written name always wins over a derived one.
    """
    path = Path(path)
    explicit: dict[str, str] = {}
    try:
        with path.open("r", encoding="utf-8") as file:
            for line in file:
                fields = line.split(maxsplit=1)
                if len(fields) < 2:
                    continue
                name, words = fields
                explicit[name] = " ".join(words.split())
    except OSError as error:
        raise DatasetError(
            f"cannot read DressCode caption file {path}: {error.strerror or error}", path=path
        ) from error
    except UnicodeDecodeError:
        raise DatasetError(f"DressCode caption file {path} is not UTF-8 text", path=path) from None
    captions: dict[str, str] = {}
    for name, description in explicit.items():
        stem = Path(name).stem
        if stem != name and stem not in explicit:
            captions[stem] = description
    captions.update(explicit)
    return captions


def tryon_prompt(description: str) -> str:
    """TryonNet prompt for garment description V (the official training form, used everywhere)."""
    return "model is wearing " + description


def garment_prompt(description: str) -> str:
    """GarmentNet prompt for garment description V (paper Sec. 3.2)."""
    return "a photo of " + description
