"""Atomic file writes: a reader never sees a half-written output, a killed run leaves none."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UsageError

__all__ = [
    "atomic_directory",
    "atomic_path",
    "refuse_output_over_inputs",
    "replace_directory",
    "write_json_atomic",
]


def _same_file(a: Path, b: Path) -> bool:
    """True if ``a`` and ``b`` name one file: same resolved path, or (both existing) same inode."""
    try:
        if a.resolve() == b.resolve():
            return True
        return os.path.samefile(a, b)
    except (OSError, RuntimeError):  # does not exist (yet), or a symlink loop: not the same
        return False


def refuse_output_over_inputs(
    out: str | os.PathLike[str],
    inputs: dict[str, str | os.PathLike[str] | None],
    out_flag: str = "--out",
) -> None:
    """Refuse an output path that is one of the command's input files, before any work.

    ``inputs`` maps the flag that named each input (``"--person"``) to its path; ``None`` and
    non-file values (``"auto"``) are skipped. The same file reached through a symlink, a hard
    link or another spelling of the path counts as the same file, so writing the output can never
    replace the user's photo. Raises :class:`~idm_vton.errors.UsageError` naming both flags.
    """
    out = Path(out)
    for flag, value in inputs.items():
        if value is None or not Path(value).is_file():
            continue
        if _same_file(out, Path(value)):
            raise UsageError(
                f"{out_flag} {out} is the input file given to {flag}: writing it would replace "
                "your input; choose another output path"
            )


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    The temporary name is ``.{name}.<random>.tmp`` in the same folder (so the rename is atomic
    and leftovers of a killed process are easy to recognise); it is removed on failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path``
    (:func:`replace_directory`); it is removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        replace_directory(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def replace_directory(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Move the finished folder ``tmp`` to ``path`` with a rename. An existing ``path`` is
    renamed aside first and deleted after, so ``path`` is never a half-written folder."""
    tmp, path = Path(tmp), Path(path)
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)
    return path


def write_json_atomic(path: str | os.PathLike[str], data, sort_keys: bool = False) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically (flushed to disk before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "w") as stream:
        json.dump(data, stream, indent=2, sort_keys=sort_keys)
        stream.write("\n")
        stream.flush()
        os.fsync(stream.fileno())
    return Path(path)
