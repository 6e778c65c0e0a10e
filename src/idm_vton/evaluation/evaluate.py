"""Evaluate try-on outputs against ground truth folders (paper Sec. 4; the protocol is
in docs/evaluation.md).

:func:`evaluate_folders` pairs ``pred_dir`` and ``gt_dir`` by file name (stem, so ``x.png``
pairs with ``x.jpg``; an output named ``{person}_{garment}.png``, as ``idm-vton infer-dataset``
writes them, pairs with ``{person}.jpg`` and names its garment), brings every image to the
evaluation resolution, and computes

* paired metrics against the ground-truth photo: SSIM, LPIPS;
* distribution metrics between the two folders: FID, KID (clean-fid resizing, FID Inception);
* CLIP-I between each output and its input garment (``garments_dir``; same name, or the garment
  named for that person in a VITON-HD style ``pairs_file``).

Everything that moves the numbers (resolution, image counts, implementations, weight-file
SHA-256, KID subsets and seed, library versions) is recorded in ``result["protocol"]`` so a
published number states its protocol. The options are the fields of :class:`EvaluationConfig`
(the options of ``idm-vton evaluate``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import EvaluationError, ImageInputError
from ..images import MAX_WORK_SIDE, load_image
from ..progress import progress_bar
from .config import DEFAULT_METRICS, EvaluationConfig, Metric, parse_metrics, parse_resolution
from .metrics.fid import (
    fid_from_features,
    inception_features,
    kid_from_features,
    load_fid_inception,
)
from .metrics.lpips import load_lpips
from .metrics.ssim import ssim
from .metrics.weights import sha256_of_file

__all__ = [
    "DEFAULT_METRICS",
    "EvaluationConfig",
    "EvaluationError",
    "Metric",
    "evaluate",
    "evaluate_folders",
    "format_table",
    "parse_metrics",
    "parse_resolution",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
# Pixels in one batch (per side of a pair), checked before anything is read: 128 images of
# 1024 x 1024, far more than a GPU holds through LPIPS, far less than a runaway allocation.
MAX_BATCH_PIXELS = 2**27


_IMPLEMENTATIONS = {
    Metric.SSIM: (
        "Gaussian window sigma=1.5 (11 taps), K1=0.01, K2=0.03, population covariance, "
        "data_range=1, valid region mean then channel mean (= skimage structural_similarity "
        "gaussian_weights=True, use_sample_covariance=False); float64"
    ),
    Metric.LPIPS: (
        "LPIPS v0.1 (lpips package semantics, normalize=True): torchvision {net} trunk + lpips "
        "linear heads, spatial average"
    ),
    Metric.FID: (
        "clean-fid 'clean' resize (PIL bicubic on float32 channels to 299, no re-quantisation), "
        "pytorch-fid FID Inception pool3 2048-d, (x-128)/128 input scaling; Frechet distance "
        "with scipy sqrtm, real part (clean-fid)"
    ),
    Metric.KID: (
        "same features as FID; unbiased MMD^2, kernel (x.y/d+1)^3, mean over random subsets "
        "(clean-fid / torch-fidelity)"
    ),
    Metric.CLIP_I: (
        "cosine similarity of CLIPVisionModelWithProjection image_embeds of the whole output "
        "image and the garment image (CLIPImageProcessor preprocessing)"
    ),
}


# --------------------------------------------------------------------------- inputs


def _list_images(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise EvaluationError(f"{what} folder not found: {folder}")
    images: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        if path.stem in images:
            raise EvaluationError(
                f"{what} folder has two images named {path.stem!r}: {images[path.stem].name} "
                f"and {path.name}"
            )
        images[path.stem] = path
    if not images:
        raise EvaluationError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {folder}")
    return images


def _match_ground_truth(
    preds: dict[str, Path], gts: dict[str, Path], gt_dir: Path
) -> tuple[dict[str, str], dict[str, str]]:
    """Prediction stem -> ground-truth stem, and -> garment stem where the file name gives one.

    ``x`` pairs with ``x``; otherwise ``{person}_{garment}`` pairs with the single ground-truth
    stem ``person`` that prefixes it (the naming of ``idm-vton infer-dataset``).
    """
    gt_of: dict[str, str] = {}
    garment_of: dict[str, str] = {}
    missing = []
    for stem in preds:
        if stem in gts:
            gt_of[stem] = stem
            continue
        candidates = [g for g in gts if stem.startswith(g + "_")]
        if len(candidates) > 1:
            raise EvaluationError(
                f"prediction {preds[stem].name} could belong to several ground-truth images "
                f"({', '.join(sorted(candidates)[:3])}); rename it to the person's name"
            )
        if not candidates:
            missing.append(stem)
            continue
        gt_of[stem] = candidates[0]
        garment_of[stem] = stem[len(candidates[0]) + 1 :]
    if missing:
        raise EvaluationError(
            _missing_message(sorted(missing), f"the ground-truth folder {gt_dir}")
        )
    return gt_of, garment_of


def _read_pairs_file(path: Path) -> dict[str, str]:
    """VITON-HD ``test_pairs.txt``: ``person.jpg garment.jpg`` per line -> person stem: garment stem."""
    if not path.is_file():
        raise EvaluationError(f"pairs file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not UTF-8 text"
        raise EvaluationError(f"cannot read pairs file {path}: {reason}") from None
    pairs = {}
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise EvaluationError(f"{path}:{number}: expected 'person garment', got {line!r}")
        pairs[Path(fields[0]).stem] = Path(fields[1]).stem
    return pairs


def _missing_message(names: Sequence[str], where: str) -> str:
    shown = ", ".join(names[:10]) + (f" (+{len(names) - 10} more)" if len(names) > 10 else "")
    return f"{len(names)} output image(s) have no counterpart in {where}: {shown}"


def _load_rgb(path: Path, size: tuple[int, int] | None = None) -> tuple[np.ndarray, bool]:
    """(H, W, 3) uint8 image, resized with PIL bicubic to ``size`` (H, W) when it differs.

    Read through the package's one image boundary (:func:`~idm_vton.images.load_image`): verified, bounded before decoding (a decompression bomb is refused from its
    header), 16-bit and float files by their range, transparency on white; an unusable file
    raises :class:`~idm_vton.errors.EvaluationError` naming it.
    """
    try:
        image = load_image(path, "cannot read image")
    except ImageInputError as error:
        raise EvaluationError(str(error)) from error
    resized = size is not None and image.size != (size[1], size[0])
    if resized:
        image = image.resize((size[1], size[0]), resample=Image.BICUBIC)
    return np.asarray(image), resized


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("idm-vton", "torch", "numpy", "scipy", "pillow", "transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _clip_record(path: Path, scorer) -> dict:
    config = scorer.image_encoder.config
    return {
        "path": str(path),
        "model_type": config.model_type,
        "hidden_size": config.hidden_size,
        "projection_dim": config.projection_dim,
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "processor": type(scorer.image_processor).__name__,
        "weights_sha256": {
            p.name: sha256_of_file(p)
            for p in sorted(path.iterdir())
            if p.suffix in {".safetensors", ".bin"}
        },
    }


@dataclass
class _Pairs:
    """Which files are compared: outputs, their ground truth and (for CLIP-I) garments."""

    preds: dict[str, Path]
    gts: dict[str, Path]
    gt_of: dict[str, str]
    garment_paths: dict[str, Path]
    stems: list[str]


@dataclass
class _Networks:
    lpips: torch.nn.Module | None = None
    inception: torch.nn.Module | None = None
    clip: object | None = None
    weights: dict = field(default_factory=dict)
    clip_record: dict | None = None


@dataclass
class _Scores:
    per_image: dict[str, dict[str, float]]
    pred_features: list[np.ndarray]
    gt_features: list[np.ndarray]
    resized: dict[str, int]


# --------------------------------------------------------------------------- evaluation


def evaluate_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    garments_dir: str | os.PathLike | None = None,
    **options,
) -> dict:
    """Compute try-on metrics for ``pred_dir`` against ``gt_dir``; see the module docstring.

    ``pred_dir``: generated images, each paired with a ground-truth image of ``gt_dir`` by name
    (extra ground-truth images are ignored and counted); ``garments_dir``: in-shop garments for
    CLIP-I. ``options`` are the other fields of :class:`EvaluationConfig` (``metrics``,
    ``weights_dir``, ``resolution``, ``batch_size``, ``device``, ``lpips_net``, ``clip_model``,
    ``pairs_file``, ``kid_subsets``, ``kid_subset_size``, ``seed``, ``verify_weights``,
    ``progress``).

    Returns:
        ``{"metrics": {...}, "per_image": {stem: {...}}, "protocol": {...}, "skipped": {...}}``.
    """
    config = EvaluationConfig(
        pred_dir=Path(pred_dir),
        gt_dir=Path(gt_dir),
        garments_dir=None if garments_dir is None else Path(garments_dir),
        **options,
    )
    return evaluate(config)


def evaluate(config: EvaluationConfig) -> dict:
    """:func:`evaluate_folders` for a ready :class:`EvaluationConfig`."""
    from ..devices import resolve_device

    wanted = _wanted_metrics(config)
    height, width = (int(v) for v in config.resolution)
    device = resolve_device(config.device)
    skipped: dict[str, str] = {}
    pairs = _pair_files(config, wanted, skipped)
    needs_features = Metric.FID in wanted or Metric.KID in wanted
    if needs_features and len(pairs.stems) < 2:
        raise EvaluationError(f"FID/KID need at least 2 image pairs, found {len(pairs.stems)}")
    if not wanted:
        raise EvaluationError(
            "nothing to compute: " + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    # Networks first: a missing weight file should fail before any image is read.
    networks = _load_networks(config, wanted, device)
    scores = _score_images(config, pairs, wanted, networks, (height, width), device)
    results, kid_protocol, notes = _aggregate(config, pairs.stems, wanted, scores)
    if scores.resized["pred"] or scores.resized["gt"]:
        notes.append(
            f"resized to {height}x{width} (PIL bicubic): {scores.resized['pred']} outputs, "
            f"{scores.resized['gt']} ground-truth images"
        )
    protocol = _protocol(config, pairs, wanted, networks, scores, kid_protocol, notes, device)
    return {
        "metrics": results,
        "per_image": scores.per_image,
        "protocol": protocol,
        "skipped": skipped,
    }


def _wanted_metrics(config: EvaluationConfig) -> list[Metric]:
    """The requested metrics, after checking the options that do not need any file."""
    try:
        wanted = [Metric(m) for m in config.metrics]
    except ValueError as error:
        raise EvaluationError(f"{error}; choose from {', '.join(DEFAULT_METRICS)}") from None
    if not wanted:
        raise EvaluationError("no metrics requested")
    height, width = (int(v) for v in config.resolution)
    if not (11 <= height <= MAX_WORK_SIDE and 11 <= width <= MAX_WORK_SIDE):
        raise EvaluationError(
            f"resolution must be from 11x11 to {MAX_WORK_SIDE}x{MAX_WORK_SIDE}, got "
            f"{height}x{width}"
        )
    if config.batch_size < 1:
        raise EvaluationError(f"batch_size must be >= 1, got {config.batch_size}")
    if config.batch_size * height * width > MAX_BATCH_PIXELS:
        raise EvaluationError(
            f"batch_size {config.batch_size} at {height}x{width} is over {MAX_BATCH_PIXELS} "
            "pixels per batch: use a smaller --batch-size"
        )
    return wanted


def _pair_files(config: EvaluationConfig, wanted: list[Metric], skipped: dict) -> _Pairs:
    """Pair outputs with ground truth (and garments for CLIP-I, which is dropped from
    ``wanted`` and noted in ``skipped`` without a garment folder)."""
    preds = _list_images(Path(config.pred_dir), "prediction")
    gts = _list_images(Path(config.gt_dir), "ground-truth")
    gt_of, garment_of = _match_ground_truth(preds, gts, Path(config.gt_dir))
    stems = sorted(preds)
    garment_paths: dict[str, Path] = {}
    if Metric.CLIP_I in wanted:
        if config.garments_dir is None:
            wanted.remove(Metric.CLIP_I)
            skipped[Metric.CLIP_I.value] = "no garments_dir given"
        else:
            garment_paths = _garment_files(config, stems, garment_of)
    return _Pairs(preds, gts, gt_of, garment_paths, stems)


def _garment_files(
    config: EvaluationConfig, stems: list[str], garment_of: dict[str, str]
) -> dict[str, Path]:
    """Each output's garment image: named by the pairs file, the output's name, or its stem."""
    garments = _list_images(Path(config.garments_dir), "garment")
    pairs = {}
    if config.pairs_file is not None:
        pairs = _read_pairs_file(Path(config.pairs_file))
        not_listed = [s for s in stems if s not in pairs]
        if not_listed:
            raise EvaluationError(
                _missing_message(not_listed, f"the pairs file {config.pairs_file}")
            )
    wanted_garment = {s: pairs.get(s, garment_of.get(s, s)) for s in stems}
    unpaired = [s for s in stems if wanted_garment[s] not in garments]
    if unpaired:
        raise EvaluationError(
            _missing_message(unpaired, f"the garment folder {config.garments_dir}")
        )
    return {s: garments[wanted_garment[s]] for s in stems}


def _load_networks(config: EvaluationConfig, wanted: list[Metric], device) -> _Networks:
    """The metric networks ``wanted`` needs, with the records of their weight files."""
    networks = _Networks()
    if Metric.LPIPS in wanted:
        networks.lpips, record = load_lpips(
            config.lpips_net, config.weights_dir, verify=config.verify_weights, device=device
        )
        networks.weights.update(record)
    if Metric.FID in wanted or Metric.KID in wanted:
        networks.inception, record = load_fid_inception(
            config.weights_dir, verify=config.verify_weights, device=device
        )
        networks.weights.update(record)
    if Metric.CLIP_I in wanted:
        from .metrics.clip_score import CLIPImageScorer

        clip_path = (
            Path(config.clip_model)
            if config.clip_model is not None
            else Path(config.weights_dir) / "clip"
        )
        networks.clip = CLIPImageScorer.from_pretrained(clip_path, device=device)
        networks.clip_record = _clip_record(clip_path, networks.clip)
    return networks


def _score_images(
    config: EvaluationConfig,
    pairs: _Pairs,
    wanted: list[Metric],
    networks: _Networks,
    size: tuple[int, int],
    device,
) -> _Scores:
    """Per-image SSIM / LPIPS / CLIP-I and the FID features, batch by batch."""
    scores = _Scores({s: {} for s in pairs.stems}, [], [], {"pred": 0, "gt": 0})
    needs_features = networks.inception is not None
    with (
        torch.no_grad(),
        progress_bar(
            total=len(pairs.stems), unit="img", desc="evaluate", show=config.progress
        ) as bar,
    ):
        for batch in _batches(pairs.stems, config.batch_size):
            pred_images, gt_images = [], []
            for stem in batch:
                image, was_resized = _load_rgb(pairs.preds[stem], size)
                pred_images.append(image)
                scores.resized["pred"] += was_resized
                image, was_resized = _load_rgb(pairs.gts[pairs.gt_of[stem]], size)
                gt_images.append(image)
                scores.resized["gt"] += was_resized
            if Metric.SSIM in wanted or Metric.LPIPS in wanted:
                _paired_scores(batch, pred_images, gt_images, wanted, networks, scores, device)
            if needs_features:
                inception = networks.inception
                scores.pred_features.append(
                    inception_features(inception, pred_images, device=device)
                )
                scores.gt_features.append(inception_features(inception, gt_images, device=device))
            if Metric.CLIP_I in wanted:
                garment_images = [_load_rgb(pairs.garment_paths[s])[0] for s in batch]
                values = networks.clip.similarity(pred_images, garment_images).tolist()
                for stem, value in zip(batch, values, strict=True):
                    scores.per_image[stem]["clip_i"] = value
            bar.update(len(batch))
    return scores


def _paired_scores(batch, pred_images, gt_images, wanted, networks, scores: _Scores, device):
    """SSIM and LPIPS of one batch of (output, ground truth) pairs."""
    pred_u8 = torch.from_numpy(np.stack(pred_images)).permute(0, 3, 1, 2).to(device)
    gt_u8 = torch.from_numpy(np.stack(gt_images)).permute(0, 3, 1, 2).to(device)
    if Metric.SSIM in wanted:
        # float64 from the uint8 values, as scikit-image would see them.
        values = ssim(pred_u8.double() / 255, gt_u8.double() / 255).tolist()
        for stem, value in zip(batch, values, strict=True):
            scores.per_image[stem]["ssim"] = value
    if Metric.LPIPS in wanted:
        values = networks.lpips(pred_u8.float() / 255, gt_u8.float() / 255).tolist()
        for stem, value in zip(batch, values, strict=True):
            scores.per_image[stem]["lpips"] = value


def _aggregate(
    config: EvaluationConfig, stems: list[str], wanted: list[Metric], scores: _Scores
) -> tuple[dict[str, float], dict | None, list[str]]:
    """(means and distribution metrics, the KID protocol, notes on the numbers)."""
    results: dict[str, float] = {}
    for metric in (Metric.SSIM, Metric.LPIPS, Metric.CLIP_I):
        if metric in wanted:
            values = [scores.per_image[s][metric.value] for s in stems]
            results[metric.value] = float(np.mean(values))
    kid_protocol = None
    notes = []
    if not scores.pred_features:
        return results, kid_protocol, notes
    pred_all, gt_all = np.concatenate(scores.pred_features), np.concatenate(scores.gt_features)
    if Metric.FID in wanted:
        results["fid"] = fid_from_features(pred_all, gt_all)
        if len(stems) < pred_all.shape[1]:
            notes.append(
                f"FID from {len(stems)} images (< {pred_all.shape[1]} feature dimensions): "
                "strongly biased upwards, compare only with the same image count"
            )
    if Metric.KID in wanted:
        kid = kid_from_features(
            pred_all,
            gt_all,
            num_subsets=config.kid_subsets,
            max_subset_size=config.kid_subset_size,
            seed=config.seed,
        )
        results["kid"], results["kid_std"] = kid.mean, kid.std
        kid_protocol = {
            "num_subsets": config.kid_subsets,
            "subset_size": kid.subset_size,
            "seed": config.seed,
        }
    return results, kid_protocol, notes


def _protocol(
    config: EvaluationConfig,
    pairs: _Pairs,
    wanted: list[Metric],
    networks: _Networks,
    scores: _Scores,
    kid_protocol: dict | None,
    notes: list[str],
    device,
) -> dict:
    """Everything that moves the numbers, recorded with them."""
    height, width = (int(v) for v in config.resolution)
    return {
        "resolution": [height, width],
        "pred_dir": str(config.pred_dir),
        "gt_dir": str(config.gt_dir),
        "garments_dir": None if config.garments_dir is None else str(config.garments_dir),
        "pairs_file": None if config.pairs_file is None else str(config.pairs_file),
        "pairing": "file stem" + (" + pairs file for garments" if config.pairs_file else ""),
        "num_pairs": len(pairs.stems),
        "num_pred_images": len(pairs.preds),
        "num_gt_images": len(pairs.gts),
        "num_gt_unused": len(pairs.gts) - len(set(pairs.gt_of.values())),
        "num_resized": scores.resized,
        "metrics": [m.value for m in wanted],
        "implementations": {
            m.value: _IMPLEMENTATIONS[m].format(net=config.lpips_net) for m in wanted
        },
        "lpips_net": config.lpips_net if Metric.LPIPS in wanted else None,
        "kid": kid_protocol,
        "clip_model": networks.clip_record,
        "weights": networks.weights,
        "weights_verified": config.verify_weights,
        "device": str(device),
        "versions": _versions(),
        "notes": notes,
    }


# --------------------------------------------------------------------------- reporting

_LABELS = {
    "ssim": ("SSIM", "higher"),
    "lpips": ("LPIPS", "lower"),
    "fid": ("FID", "lower"),
    "kid": ("KID", "lower"),
    "clip_i": ("CLIP-I", "higher"),
}


def format_table(result: dict) -> str:
    """Plain-text table of the metrics followed by the protocol lines a reader needs."""
    metrics, protocol = result["metrics"], result["protocol"]
    rows = []
    for key, (label, better) in _LABELS.items():
        if key not in metrics:
            continue
        value = f"{metrics[key]:.4f}" if key != "kid" else f"{metrics[key]:.6f}"
        if key == "kid":
            value += f" +- {metrics['kid_std']:.6f}"
        if key == "lpips":
            label += f" ({protocol['lpips_net']})"
        rows.append((label, value, better))
    name_width = max(len(r[0]) for r in rows) if rows else 6
    value_width = max(len(r[1]) for r in rows) if rows else 5
    lines = [f"{'metric':<{name_width}}  {'value':>{value_width}}  better"]
    lines.append("-" * len(lines[0]))
    lines += [f"{n:<{name_width}}  {v:>{value_width}}  {b}" for n, v, b in rows]
    height, width = protocol["resolution"]
    lines.append("")
    lines.append(
        f"{protocol['num_pairs']} pairs at {height}x{width} (HxW), paired by {protocol['pairing']}; "
        f"device {protocol['device']}"
    )
    if protocol.get("kid"):
        kid = protocol["kid"]
        lines.append(
            f"KID: {kid['num_subsets']} subsets of {kid['subset_size']}, seed {kid['seed']}"
        )
    if protocol["weights"]:
        state = "verified" if protocol["weights_verified"] else "NOT verified"
        files = ", ".join(f"{w['file']} ({w['sha256'][:8]})" for w in protocol["weights"].values())
        lines.append(f"weights ({state}): {files}")
    for key, reason in result.get("skipped", {}).items():
        lines.append(f"skipped {key}: {reason}")
    lines += [f"note: {note}" for note in protocol.get("notes", [])]
    return "\n".join(lines)
