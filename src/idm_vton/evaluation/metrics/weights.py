"""Weight files the metric networks load, their published SHA-256, and strict state-dict loading.

Nothing here downloads: the user puts the files in one folder (``--weights-dir``) and every
network is built from a local path. Each file is identified by its published SHA-256 (torchvision
and pytorch-fid embed the first eight hex digits in the file name; the full digests below are the
ones those downloads produce, and the LPIPS heads were hashed from the ``lpips==0.1.4`` wheel),
so the evaluation protocol can record exactly which weights produced a number.

Loading a foreign checkpoint is a pure ``dict -> dict`` step plus checks
(:func:`idm_vton.loaders.checkpoint.check_state_dict`): every key is consumed, explicitly ignored
(with its shape still checked) or reported, and every problem is named.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import MissingWeightFileError, StateDictMismatchError, WeightFileError
from ...loaders.checkpoint import check_state_dict
from ...loaders.weights import check_weight_file, load_torch_pickle

__all__ = [
    "KNOWN_WEIGHTS",
    "StateDictMismatchError",
    "WeightFile",
    "WeightFileError",
    "load_checked_state_dict",
    "load_weight_file",
    "resolve_weight_file",
    "sha256_of_file",
    "weight_record",
]


@dataclass(frozen=True)
class WeightFile:
    """A published weight file: its name in the weights folder, digest and where to get it.

    ``sha256`` is the full hex digest, or only its leading characters when the full digest is not
    published (then only that prefix is checked). ``size_bytes`` is ``None`` when unknown.
    """

    key: str
    filename: str
    sha256: str
    size_bytes: int | None
    url: str
    description: str


KNOWN_WEIGHTS: dict[str, WeightFile] = {
    wf.key: wf
    for wf in (
        WeightFile(
            key="vgg16",
            filename="vgg16-397923af.pth",
            sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
            size_bytes=553_433_881,
            url="https://download.pytorch.org/models/vgg16-397923af.pth",
            description="torchvision VGG16 ImageNet weights (LPIPS-VGG backbone)",
        ),
        WeightFile(
            key="alexnet",
            filename="alexnet-owt-7be5be79.pth",
            sha256="7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
            size_bytes=244_408_911,
            url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
            description="torchvision AlexNet ImageNet weights (LPIPS-Alex backbone)",
        ),
        WeightFile(
            key="lpips_vgg",
            filename="vgg.pth",
            sha256="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
            size_bytes=7_289,
            url="https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",
            description="LPIPS v0.1 linear heads for VGG (also inside the `lpips` pip package)",
        ),
        WeightFile(
            key="lpips_alex",
            filename="alex.pth",
            sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
            size_bytes=6_009,
            url="https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth",
            description="LPIPS v0.1 linear heads for AlexNet (also inside the `lpips` pip package)",
        ),
        WeightFile(
            key="fid_inception",
            filename="pt_inception-2015-12-05-6726825d.pth",
            sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
            size_bytes=95_628_359,
            url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
            description="FID InceptionV3 (TF inception-2015-12-05 ported by pytorch-fid)",
        ),
    )
}

_WEIGHTS_SOURCE = "the URL docs/evaluation.md lists for it"
# Hashing a 500 MB file takes seconds; a process evaluates several folders with the same weights.
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_of_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, cached per (path, size, mtime) within the process."""
    path = Path(path)
    stat = path.stat()
    cache_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if cache_key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
        _HASH_CACHE[cache_key] = digest.hexdigest()
    return _HASH_CACHE[cache_key]


def _spec(spec: str | WeightFile) -> WeightFile:
    if isinstance(spec, WeightFile):
        return spec
    if spec not in KNOWN_WEIGHTS:
        raise KeyError(f"unknown weight file {spec!r}; known: {sorted(KNOWN_WEIGHTS)}")
    return KNOWN_WEIGHTS[spec]


def _where_to_get(spec: WeightFile) -> str:
    return f"{spec.description}; download {spec.url}"


def resolve_weight_file(
    spec: str | WeightFile, weights_dir: str | os.PathLike, *, verify: bool = True
) -> Path:
    """Path of ``spec``'s file inside ``weights_dir``, checked against its published digest.

    Raises :class:`WeightFileError` naming the expected file and where to get it when the file is
    missing, or (with ``verify``) when its size or SHA-256 differs from the published one.
    ``verify=False`` is for tests and experiments with other weights (then the file only has to
    look like a PyTorch checkpoint: no placeholder, git-lfs pointer or truncated file); the
    protocol records it.
    """
    spec = _spec(spec)
    path = Path(weights_dir) / spec.filename
    if not path.is_file():
        raise MissingWeightFileError(
            f"missing weight file {spec.filename} (expected at {path}): {_where_to_get(spec)}"
        )
    if not verify:
        # Not the published file: it must at least look like a PyTorch checkpoint.
        return check_weight_file(
            path, spec.filename, _where_to_get(spec), fmt="torch", error=WeightFileError
        )
    size = path.stat().st_size
    if spec.size_bytes is not None and size != spec.size_bytes:
        raise WeightFileError(
            f"{path} has {size} bytes, the published {spec.filename} has {spec.size_bytes}: "
            f"re-download it ({_where_to_get(spec)})"
        )
    digest = sha256_of_file(path)
    if not digest.startswith(spec.sha256):
        raise WeightFileError(
            f"{path} has SHA-256 {digest}, the published {spec.filename} has {spec.sha256}: "
            f"re-download it ({_where_to_get(spec)})"
        )
    return path


def weight_record(spec: str | WeightFile, path: str | os.PathLike, *, verified: bool) -> dict:
    """Protocol entry for one weight file: name, actual SHA-256, published SHA-256, verified."""
    spec = _spec(spec)
    return {
        "file": Path(path).name,
        "sha256": sha256_of_file(path),
        "published_sha256": spec.sha256,
        "verified": verified,
    }


def load_weight_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a pickled state dict safely (``weights_only=True``) onto the CPU; a damaged or
    unsafe file raises :class:`WeightFileError` naming it
    (:func:`~idm_vton.loaders.weights.load_torch_pickle`)."""
    state = load_torch_pickle(path, _WEIGHTS_SOURCE, WeightFileError)
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise WeightFileError(f"{path} is not a flat state dict of tensors")
    return dict(state)


def load_checked_state_dict(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    what: str,
    *,
    ignored: Mapping[str, tuple[int, ...]] | None = None,
    optional_suffixes: tuple[str, ...] = ("num_batches_tracked",),
) -> None:
    """Load ``state`` into ``module`` after checking it against the module's keys and shapes
    (:func:`idm_vton.loaders.checkpoint.check_state_dict`, so every problem is named).

    Optional keys absent from the file keep the module's own value (``num_batches_tracked`` is a
    training counter that never affects evaluation).
    """
    own = module.state_dict()
    checked = check_state_dict(
        module,
        state,
        what,
        ignored=ignored,
        optional_suffixes=optional_suffixes,
        wording="network",
    )
    for key, value in own.items():
        checked.setdefault(key, value)
    module.load_state_dict(checked, strict=True)
