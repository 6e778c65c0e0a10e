"""Pairs files (``test_pairs.txt``: one ``person garment`` line per sample) and where a dataset
split's tag file lies: plain file reading, shared by the datasets and the garment tags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePath

from ..enums import Split
from ..errors import DatasetError

__all__ = ["PairLine", "read_pairs", "vitonhd_tag_file_candidates"]


@dataclass(frozen=True)
class PairLine:
    """One line of a pairs file: the person and garment file names, and where it was read."""

    person: str
    garment: str
    source: str


def read_pairs(path: Path) -> list[PairLine]:
    """Read a pairs file: one ``<person> <garment> [...]`` per non-empty line."""
    if not path.is_file():
        raise DatasetError(f"pairs file not found: {path}", path=path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read pairs file {path}: {error}", path=path) from error
    pairs = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise DatasetError(
                f"{path} line {number}: expected '<person file> <garment file>', got {line!r}",
                path=path,
            )
        for name in fields[:2]:
            if PurePath(name).is_absolute() or ".." in PurePath(name).parts:
                raise DatasetError(
                    f"{path} line {number}: {name!r} is not a file name of the dataset (a pairs "
                    "file names files inside the dataset folder)",
                    path=path,
                )
        pairs.append(PairLine(fields[0], fields[1], f"{path} line {number}: {line.strip()!r}"))
    return pairs


def vitonhd_tag_file_candidates(root: Path, split: Split) -> list[Path]:
    """Where a VITON-HD split's tag file is looked for: ``{split}/`` (the official place), then
    the root folder."""
    name = f"vitonhd_{split.value}_tagged.json"
    return [root / split.value / name, root / name]
