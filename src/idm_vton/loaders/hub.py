"""The preprocessing weights, fetched from the Hugging Face hub on first use.

The official demo (the Hugging Face **Space** ``yisol/IDM-VTON``) keeps the weights of its three
preprocessing models under ``ckpt/`` (:data:`MODEL_FILES`).
:func:`fetch_preprocess_models` gets the ones asked for with ``huggingface_hub.hf_hub_download``
into the normal hub cache, so huggingface_hub's progress bar, locking, atomic moves and
``HF_HOME`` / ``HF_HUB_CACHE`` / ``HF_HUB_OFFLINE`` / ``HF_ENDPOINT`` all apply, and checks each
file before anything loads it: a placeholder, git-lfs pointer, truncated or wrong-format file is
deleted from the cache and reported, so the next run downloads it again.

This is the one place where preprocessing weights come from the hub; a folder given with
``--preprocess-models`` or ``$IDM_VTON_PREPROCESS_MODELS`` never reaches this module.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import PreprocessModelError
from .weights import check_weight_file

__all__ = [
    "DEFAULT_HUB_TIMEOUT",
    "MODEL_FILES",
    "OFFLINE_HINT",
    "PREPROCESS_REPO_ID",
    "PREPROCESS_REPO_TYPE",
    "cache_dir",
    "cache_only_reason",
    "fetch_preprocess_models",
    "first_line",
    "forget_hub_probes",
    "hub_filename",
    "hub_unreachable_reason",
    "is_disk_full",
    "models_folder",
    "remove_from_cache",
]

#: Seconds the one check that the hub answers may take (``$HF_HUB_ETAG_TIMEOUT`` when set, as
#: for huggingface_hub's own metadata requests).
DEFAULT_HUB_TIMEOUT = 5.0
#: How to run from the cache without any network check; said in every offline message.
OFFLINE_HINT = "HF_HUB_OFFLINE=1 then uses the cache without trying the network"
# endpoint -> None (it answered) or why it could not be reached; one check per process.
_PROBES: dict[str, str | None] = {}

#: Weight files, relative to the models folder (the official demo's ``ckpt/`` layout).
MODEL_FILES = {
    "parsing_atr": "humanparsing/parsing_atr.onnx",
    "parsing_lip": "humanparsing/parsing_lip.onnx",
    "openpose": "openpose/ckpts/body_pose_model.pth",
    "densepose": "densepose/model_final_162be9.pkl",
}
#: The hub repository holding the demo's ``ckpt/`` folder: the official demo Space.
PREPROCESS_REPO_ID = "yisol/IDM-VTON"
PREPROCESS_REPO_TYPE = "space"
_SUBFOLDER = "ckpt"
_SOURCE = f"the Hugging Face Space {PREPROCESS_REPO_ID} (folder {_SUBFOLDER}/)"
_OVERRIDE_ADVICE = (
    "or pass a folder with the demo's ckpt/ layout (--preprocess-models DIR or "
    "IDM_VTON_PREPROCESS_MODELS=DIR)"
)
# Real files are 100-300 MB; a small minimum keeps tiny test models valid and catches stubs.
_MIN_BYTES = 1024
# name -> (model name for messages, format checked by the file's first bytes)
_CHECKS = {
    "parsing_atr": ("SCHP ATR human parser", "onnx"),
    "parsing_lip": ("SCHP LIP human parser", "onnx"),
    "openpose": ("OpenPose body model", "torch"),
    "densepose": ("DensePose R-CNN", "pickle"),
}


def hub_filename(name: str) -> str:
    """Path of a :data:`MODEL_FILES` entry inside the Space, e.g. ``ckpt/openpose/ckpts/...``."""
    if name not in MODEL_FILES:
        raise ValueError(f"unknown preprocessing model {name!r} (use {', '.join(MODEL_FILES)})")
    return f"{_SUBFOLDER}/{MODEL_FILES[name]}"


def models_folder(paths: dict[str, Path]) -> Path | None:
    """The ``ckpt/`` folder holding all of ``paths`` (as fetched), or ``None`` if they differ.

    Files fetched together land in one snapshot folder of the cache, whose ``ckpt/`` subfolder
    has the demo's layout and can be passed as ``--preprocess-models``.
    """
    folders = {
        Path(*p.parts[: len(p.parts) - len(Path(MODEL_FILES[n]).parts)]) for n, p in paths.items()
    }
    return folders.pop() if len(folders) == 1 else None


def cache_dir() -> Path:
    """The Hugging Face hub cache folder in use (``HF_HUB_CACHE``, ``HF_HOME``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_unreachable_reason(timeout: float | None = None) -> str | None:
    """``None`` when the hub (``HF_ENDPOINT``, default huggingface.co) answers an HTTP request,
    any status; otherwise why not, in a few words ("connection refused", "no answer within 5
    s", ...).

    One request, no retries, at most ``timeout`` seconds (default ``$HF_HUB_ETAG_TIMEOUT``, else
    :data:`DEFAULT_HUB_TIMEOUT`), once per endpoint and process: a machine without network is
    found out in a moment instead of through huggingface_hub's retries on every file.
    """
    import socket
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    endpoint = constants.ENDPOINT.rstrip("/")
    if endpoint in _PROBES:
        return _PROBES[endpoint]
    if timeout is None:
        timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or DEFAULT_HUB_TIMEOUT)
    request = urllib.request.Request(endpoint + "/", method="HEAD")
    reason = None
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            pass
    except urllib.error.HTTPError:
        pass  # it answered, if only with an error status: the hub is there
    except TimeoutError:
        reason = f"no answer within {timeout:g} s"
    except urllib.error.URLError as err:
        cause = err.reason
        if isinstance(cause, (TimeoutError, socket.timeout)):
            reason = f"no answer within {timeout:g} s"
        elif isinstance(cause, socket.gaierror):
            reason = "its name does not resolve"
        elif isinstance(cause, OSError) and cause.strerror:
            reason = cause.strerror[0].lower() + cause.strerror[1:]
        else:
            reason = str(cause)
    except (OSError, ValueError) as err:  # a reset connection, a malformed HF_ENDPOINT
        reason = first_line(err)
    _PROBES[endpoint] = None if reason is None else f"{endpoint} cannot be reached: {reason}"
    return _PROBES[endpoint]


def forget_hub_probes() -> None:
    """Check the hub again on the next download (e.g. after the network came back)."""
    _PROBES.clear()


def cache_only_reason(local_files_only: bool = False) -> str | None:
    """Why downloads must use the cache only, or ``None`` when the hub can be asked: the caller
    asked so, ``HF_HUB_OFFLINE`` is set, or the hub does not answer
    (:func:`hub_unreachable_reason`)."""
    from huggingface_hub import constants

    if local_files_only:
        return "local_files_only was asked"
    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    return hub_unreachable_reason()


def first_line(err: BaseException, limit: int = 160) -> str:
    text = str(err).strip()
    line = text.splitlines()[0] if text else ""
    line = line if len(line) <= limit else line[: limit - 3] + "..."
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC anywhere in the exception chain; hf_xet's Rust errors carry it only as text."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(current) or "os error 28" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def remove_from_cache(path: Path) -> str | None:
    """Delete a cached file (snapshot entry and the blob it links to); an error text or None."""
    try:
        if path.is_symlink():
            blob = Path(os.path.normpath(path.parent / os.readlink(path)))
            path.unlink()
            if blob.parent.name == "blobs":  # never follow a link out of the repo's blob store
                blob.unlink(missing_ok=True)
        else:
            path.unlink(missing_ok=True)
    except OSError as err:
        return first_line(err)
    return None


def _checked(name: str, path: Path) -> Path:
    what, fmt = _CHECKS[name]
    try:
        return check_weight_file(path, what, _SOURCE, min_bytes=_MIN_BYTES, fmt=fmt)
    except PreprocessModelError as err:
        problem = remove_from_cache(path)
        if problem is None:
            raise PreprocessModelError(
                f"{err}; it was deleted from the Hugging Face cache, the next run downloads it "
                "again"
            ) from None
        raise PreprocessModelError(
            f"{err}; deleting it from the Hugging Face cache failed ({problem}): delete {path} "
            "and run again"
        ) from None


def fetch_preprocess_models(
    names: Iterable[str] | None = None, local_files_only: bool = False
) -> dict[str, Path]:
    """Download (or find in the hub cache) preprocessing weights and return their checked paths.

    Args:
        names: keys of :data:`MODEL_FILES` to fetch (default: all four). ``idm-vton mask`` needs
            the parsers and OpenPose only, so DensePose is not downloaded for it.
        local_files_only: use the cache only, never the network (as ``HF_HUB_OFFLINE=1`` does).

    Returns:
        ``{name: path}``, paths inside the hub cache's snapshot of the Space (``.../ckpt/...``).

    Raises:
        PreprocessModelError: a file is not cached and the hub cannot be reached (one message
            listing every missing file), the disk filled up during a download, the hub refused a
            file, or a file is a placeholder / git-lfs pointer / truncated / of the wrong format
            (it is then deleted from the cache so the next run downloads it again).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    wanted = list(MODEL_FILES) if names is None else list(dict.fromkeys(names))
    filenames = {name: hub_filename(name) for name in wanted}
    paths: dict[str, Path] = {}
    missing: list[str] = []
    offline = cache_only_reason(local_files_only)
    cache_only = offline is not None
    for name, filename in filenames.items():
        try:
            path = hf_hub_download(
                PREPROCESS_REPO_ID,
                filename,
                repo_type=PREPROCESS_REPO_TYPE,
                local_files_only=cache_only,
            )
        except LocalEntryNotFoundError:
            # Not cached and the hub is out of reach: list what else is missing from the cache
            # without waiting on the network again.
            missing.append(filename)
            cache_only = True
            continue
        except Exception as err:  # noqa: BLE001 - any other hub failure gets the same advice
            if is_disk_full(err):
                raise PreprocessModelError(
                    f"no space left on the disk while downloading {filename} from {_SOURCE} into "
                    f"the Hugging Face cache {cache_dir()}; free some space (or point "
                    "HF_HUB_CACHE at a larger disk) and run again"
                ) from err
            raise _hub_error(filename, err) from err
        paths[name] = _checked(name, Path(path))
    if missing:
        why = offline or "the hub cannot be reached"
        raise PreprocessModelError(
            f"preprocessing weights not in the Hugging Face cache {cache_dir()} and {why}: "
            f"missing {', '.join(missing)} from {_SOURCE}; run `idm-vton download` with network "
            f"access ({OFFLINE_HINT}), {_OVERRIDE_ADVICE}"
        )
    return paths


def _hub_error(filename: str, err: BaseException) -> PreprocessModelError:
    return PreprocessModelError(
        f"cannot download {filename} from {_SOURCE} ({first_line(err)}); without network, "
        f"run `idm-vton download` elsewhere and copy the Hugging Face cache, {_OVERRIDE_ADVICE}"
    )
