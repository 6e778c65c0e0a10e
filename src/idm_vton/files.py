"""Writing outputs: checked before the work, written atomically, never over an input.

Every command's outputs go through this module, so the rules hold everywhere:

* :func:`check_writable_output` runs before any work: the path is the right kind of thing (a
  file where a file goes, a folder where a folder goes, never a device or a pipe), its folder
  exists or can be created, and files can be created there; it is not one of the command's inputs
  (:func:`refuse_output_over_inputs`) and an output folder neither is, holds nor sits inside an
  input folder. Each refusal is a :class:`~idm_vton.errors.UsageError` naming the flag and path.
* :func:`atomic_path` / :func:`atomic_directory` write beside the target under a temporary name
  and rename it over the target when complete, so a reader never sees a half-written output.
  What they write gets the user's umask (files ``0666 & ~umask``, folders ``0777 & ~umask``, as
  ``open``/``mkdir`` do; :func:`apply_umask` also fixes the 0600 files some writers, such as
  safetensors, create). On failure the temporary is removed, with the folders the write
  created, and the error is an ``OSError`` naming the output (not the temporary), including the
  I/O errors that safetensors and torch report in exception types of their own.
* Temporaries are named ``.{name}.idm-vton-{pid}-{random}.tmp`` and ``flock``-ed while in use. One
  left by a killed process (its pid is gone and nobody holds its lock) is removed by the next
  write to the same output; one in use is never touched.
* :func:`lock_folder`: one run at a time writes into a folder (an OS lock, released when the
  process ends, however it ends).

Why not ``filelock`` and ``os.replace`` alone: the renames are ``os.replace``; what this module
adds is what no library gives together (the checks before the work, temporaries a killed run's
successor can recognise and remove while a live run's are left alone, the umask on what
safetensors and ``mkstemp`` create as 0600, errors naming the output, not the temporary), and a
folder lock that leaves no file behind: ``filelock`` leaves its lock file in the user's output
folder on Unix. See docs/design.md.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from .errors import UsageError

try:
    import fcntl
except ImportError:  # Windows: no flock; temporaries of dead processes are then left alone
    fcntl = None

__all__ = [
    "LOCK_NAME",
    "apply_umask",
    "as_write_error",
    "atomic_directory",
    "atomic_path",
    "check_writable_output",
    "current_umask",
    "lock_folder",
    "make_folders",
    "naming_write_errors",
    "refuse_output_over_inputs",
    "remove_empty_folders",
    "remove_stale_temporaries",
    "replace_directory",
    "write_json_atomic",
]

#: The lock file :func:`lock_folder` keeps in a folder while a run writes there.
LOCK_NAME = ".idm-vton.lock"
# A temporary of ours: ``.{target name}.idm-vton-{pid}-{8 hex}.tmp`` (``.old``: a replaced output
# on its way out). Long target names are cut so the whole name stays within NAME_MAX.
_TARGET_KEEP = 160
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.idm-vton-(?P<pid>\d+)-[0-9a-f]{8}\.(?:tmp|old)$")
# I/O failures that libraries report in their own exception types: safetensors (Rust) says
# "... (os error 28)"; torch's zip writer fails with an "inline_container.cc" enforce message.
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")
_TORCH_WRITE_FAILURE = ("inline_container.cc", "PytorchStreamWriter")


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

    The temporary file exists (empty, created with the umask) when the block starts; write it
    by name. On failure it is removed with the folders this call created, and the error is an
    ``OSError`` naming ``path`` (:func:`naming_write_errors`).
    """
    path = Path(path)
    created = make_folders(path.parent)
    try:
        remove_stale_temporaries(path.parent, path.name)
        tmp = _temporary_name(path, "tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except BaseException:
        remove_empty_folders(created)
        raise
    try:
        _lock_while_open(fd)
        with naming_write_errors(path, tmp):
            yield tmp
            apply_umask(tmp)
            os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        remove_empty_folders(created)
        raise
    finally:
        os.close(fd)


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path``
    (:func:`replace_directory`). On failure it is removed with the folders this call created,
    and the error is an ``OSError`` naming the output (:func:`naming_write_errors`)."""
    path = Path(path)
    created = make_folders(path.parent)
    try:
        remove_stale_temporaries(path.parent, path.name)
        tmp = _temporary_name(path, "tmp")
        os.mkdir(tmp, 0o777)
    except BaseException:
        remove_empty_folders(created)
        raise
    fd = None
    try:
        fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        _lock_while_open(fd)
        with naming_write_errors(path, tmp):
            yield tmp
            apply_umask(tmp)
            replace_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty_folders(created)
        raise
    finally:
        if fd is not None:
            os.close(fd)


def replace_directory(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Move the finished folder ``tmp`` to ``path`` with a rename. An existing ``path`` (folder,
    file or link) is renamed aside first and deleted after, so ``path`` is never a half-written
    folder; if moving ``tmp`` in fails, the old ``path`` is put back."""
    tmp, path = Path(tmp), Path(path)
    if not os.path.lexists(path):
        os.replace(tmp, path)
        return path
    old = _temporary_name(path, "old")
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    # A failure here leaves only ``old``, under a name the next write to ``path`` cleans up.
    _remove(old)
    return path


def current_umask() -> int:
    """The process's umask (read from ``/proc`` where it can be, so nothing changes it)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike[str]) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the permissions a plain
    ``open``/``mkdir`` would under the current umask: files ``0666 & ~umask`` (execute bits kept
    where the writer set them), folders ``0777 & ~umask``. Links are left alone."""
    mask = current_umask()
    root = Path(path)
    paths = [root]
    if root.is_dir() and not root.is_symlink():
        for folder, dirs, files in os.walk(root):
            paths += [Path(folder, name) for name in dirs + files]
    for each in paths:
        info = os.lstat(each)
        if stat.S_ISDIR(info.st_mode):
            wanted = 0o777 & ~mask
        elif stat.S_ISREG(info.st_mode):
            wanted = (0o666 | (info.st_mode & 0o111)) & ~mask
        else:
            continue
        if stat.S_IMODE(info.st_mode) != wanted:
            os.chmod(each, wanted)


def write_json_atomic(path: str | os.PathLike[str], data, sort_keys: bool = False) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically (flushed to disk before the
    rename)."""
    with atomic_path(path) as tmp, open(tmp, "w") as stream:
        json.dump(data, stream, indent=2, sort_keys=sort_keys)
        stream.write("\n")
        stream.flush()
        os.fsync(stream.fileno())
    return Path(path)


# ---------------------------------------------------------------------------- checks before work
def check_writable_output(
    path: str | os.PathLike[str],
    *,
    kind: str = "file",
    flag: str = "--out",
    inputs: dict[str, str | os.PathLike[str] | None] | None = None,
) -> Path:
    """Refuse, before any work, an output the command could not write or must not write.

    ``kind`` ``"file"``: ``path`` must not be a folder nor anything but a regular file (a device,
    a pipe); ``"folder"``: it must be a folder if it exists. Its nearest existing folder must be
    a folder (not a file the path runs through) where files can be created; that is tried, with
    a temporary file, not guessed from permission bits (which do not stop root, and do not show
    a read-only mount). ``inputs`` (flag -> path) are what the command reads: a file output must
    not be one of them (:func:`refuse_output_over_inputs`), a folder output must not be one,
    hold one or sit inside one. Returns ``path`` as a ``Path``; raises
    :class:`~idm_vton.errors.UsageError` naming ``flag`` and the path.
    """
    assert kind in ("file", "folder"), kind
    if not str(path).strip():
        raise UsageError(f"{flag}: the path is empty")
    out = Path(path).expanduser()
    if kind == "file":
        if out.is_dir():
            raise UsageError(f"{flag} {out} is a folder; give the name of a file to write")
        if out.exists() and not out.is_file():
            raise UsageError(f"{flag} {out} is not a regular file (a device or a pipe?)")
        refuse_output_over_inputs(out, inputs or {}, flag)
        folder = out.parent
    else:
        if out.exists() and not out.is_dir():
            raise UsageError(f"{flag} {out} is not a folder")
        _refuse_folder_over_inputs(out, inputs or {}, flag)
        folder = out
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {out}: {existing} is not a folder")
    probe = existing / f".write-check.idm-vton-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as err:
        reason = err.strerror or str(err)
        raise UsageError(f"{flag} {out}: cannot write in {existing} ({reason})") from None
    with suppress(OSError):
        probe.unlink()
    return out


def _refuse_folder_over_inputs(
    out: Path, inputs: dict[str, str | os.PathLike[str] | None], flag: str
) -> None:
    """A folder output that is, holds or sits inside an input (symlinks resolved)."""
    target = _resolved(out)
    for name, value in inputs.items():
        if value is None or not os.path.lexists(value):
            continue
        source = _resolved(Path(value))
        if target == source:
            raise UsageError(f"{flag} {out} is {name} {value}; write the output somewhere else")
        if target in source.parents:
            raise UsageError(
                f"{flag} {out} contains {name} {value}; writing it could delete the input, "
                "choose a new folder"
            )
        if source in target.parents:
            raise UsageError(f"{flag} {out} is inside {name} {value}; choose a folder outside it")


def _resolved(path: Path) -> Path:
    try:
        return path.expanduser().resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare as spelled
        return Path(os.path.abspath(path))


# ---------------------------------------------------------------------------- one run per folder
@contextmanager
def lock_folder(folder: str | os.PathLike[str], flag: str = "--out") -> Iterator[Path]:
    """Hold an exclusive OS lock on ``folder`` (which must exist) while the block runs.

    The lock is ``flock`` on ``folder/.idm-vton.lock``: the kernel drops it when the process
    ends, even by SIGKILL, so a crashed run never blocks the next. A second holder is refused at
    once with a :class:`~idm_vton.errors.UsageError` naming the folder. The lock file is removed
    at the end (and a holder that opened a file already unlinked by the previous holder retries
    on the new one, so two runs can never both hold the lock).
    """
    folder = Path(folder)
    lock = folder / LOCK_NAME
    if fcntl is None:  # no OS locks: run without one
        yield lock
        return
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(
                f"{flag} {folder} is in use by another run (it holds {lock}); wait for it to "
                "end or choose another folder"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        if _still_the_file_at(fd, lock):
            break
        os.close(fd)  # the previous holder removed that file meanwhile: lock the new one
    try:
        yield lock
    finally:
        with suppress(OSError):
            lock.unlink()
        os.close(fd)


def _still_the_file_at(fd: int, path: Path) -> bool:
    """True if the open file ``fd`` is still the file at ``path``."""
    try:
        on_disk = os.stat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


# ---------------------------------------------------------------------------- temporaries
def _temporary_name(path: Path, kind: str) -> Path:
    name = f".{path.name[:_TARGET_KEEP]}.idm-vton-{os.getpid()}-{secrets.token_hex(4)}.{kind}"
    return path.with_name(name)


def _lock_while_open(fd: int) -> None:
    """Lock the temporary behind ``fd`` for as long as it is open: it is in use. (Where the file
    system has no locks, the writer's pid, alive, still keeps it from being cleaned up.)"""
    if fcntl is not None:
        with suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but not ours to signal, or cannot tell: count it as alive
        return True
    return True


def remove_stale_temporaries(
    folder: str | os.PathLike[str], target: str | None = None
) -> list[Path]:
    """Remove the temporaries in ``folder`` (of the output named ``target`` only, if given)
    that a killed idm-vton process left: named as ours, their process gone, and nobody holding
    their lock. Anything else is left alone; returns what was removed."""
    if fcntl is None:
        return []
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    prefix = "." if target is None else f".{target[:_TARGET_KEEP]}.idm-vton-"
    for entry in entries:
        if not entry.name.startswith(prefix):  # cheap: a folder of many outputs is scanned often
            continue
        match = _TEMPORARY.match(entry.name)
        if match is None or entry.is_symlink():
            continue
        if target is not None and match["target"] != target[:_TARGET_KEEP]:
            continue
        if _pid_alive(int(match["pid"])):
            continue
        directory = entry.is_dir(follow_symlinks=False)
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
        flags |= getattr(os, "O_DIRECTORY", 0) if directory else 0
        try:
            fd = os.open(entry.path, flags)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _remove(Path(entry.path))
            removed.append(Path(entry.path))
        except OSError:  # locked by a live writer, or could not be removed: leave it
            continue
        finally:
            os.close(fd)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents (with the umask); returns those created,
    outermost first."""
    missing = []
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    created = []
    try:
        for each in reversed(missing):
            try:
                os.mkdir(each, 0o777)
            except FileExistsError:
                continue
            created.append(each)
    except BaseException:
        remove_empty_folders(created)
        raise
    return created


def remove_empty_folders(created: list[Path]) -> None:
    """Remove the folders :func:`make_folders` created, innermost first, while they are empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return


# ---------------------------------------------------------------------------- write errors
def as_write_error(
    error: BaseException, path: str | os.PathLike[str] | None, tmp: Path | None = None
) -> OSError | None:
    """``error``, raised while writing ``path`` through the temporary ``tmp``, as an ``OSError``
    that names ``path``; ``None`` if it is not an I/O failure.

    An ``OSError`` about the temporary (or a file inside a temporary folder) is renamed to the
    output (or the file inside it); one about another file is kept as it is. The I/O errors that
    safetensors and torch raise as their own exception types become the ``OSError`` they stand
    for.
    """
    if isinstance(error, OSError):
        filename = error.filename
        if filename is not None and tmp is not None and path is not None:
            name = Path(os.fsdecode(filename))
            if name == tmp or tmp in name.parents:
                filename = str(Path(path) / name.relative_to(tmp)) if name != tmp else str(path)
        elif filename is None and path is not None:
            filename = str(path)
        if filename == error.filename:
            return error
        return OSError(error.errno, error.strerror or str(error), filename)
    if not isinstance(error, Exception):
        return None
    message = str(error)
    found = _RUST_OS_ERROR.search(message)
    if found is not None:
        code = int(found.group(1))
        return OSError(code, os.strerror(code), None if path is None else str(path))
    if isinstance(error, RuntimeError) and any(s in message for s in _TORCH_WRITE_FAILURE):
        reason = "could not write the file (is the disk full?)"
        return OSError(errno.EIO, reason, None if path is None else str(path))
    return None


@contextmanager
def naming_write_errors(path: str | os.PathLike[str], tmp: Path | None = None) -> Iterator[None]:
    """Re-raise an I/O failure inside the block as an ``OSError`` naming ``path``
    (:func:`as_write_error`); other exceptions pass unchanged."""
    try:
        yield
    except Exception as error:
        translated = as_write_error(error, path, tmp)
        if translated is None or translated is error:
            raise
        raise translated from error
