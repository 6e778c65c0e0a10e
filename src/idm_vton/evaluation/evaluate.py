"""Evaluate try-on outputs against ground truth folders (SPEC section 7, paper section 4).

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
published number states its protocol. :func:`add_evaluate_arguments` / :func:`run_evaluate` are
the command-line entry (``idm-vton evaluate``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from enum import Enum
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..files import write_json_atomic
from .metrics.fid import (
    fid_from_features,
    inception_features,
    kid_from_features,
    load_fid_inception,
)
from .metrics.lpips import load_lpips
from .metrics.ssim import ssim
from .metrics.weights import StateDictMismatchError, WeightFileError, sha256_of_file

__all__ = [
    "DEFAULT_METRICS",
    "EvaluationError",
    "Metric",
    "add_evaluate_arguments",
    "evaluate_folders",
    "format_table",
    "run_evaluate",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
DEFAULT_RESOLUTION = (1024, 768)  # (height, width) of VITON-HD / DressCode test images


class Metric(str, Enum):
    """Metrics :func:`evaluate_folders` can compute."""

    LPIPS = "lpips"
    SSIM = "ssim"
    FID = "fid"
    KID = "kid"
    CLIP_I = "clip_i"


DEFAULT_METRICS = tuple(m.value for m in Metric)

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


class EvaluationError(ValueError):
    """The folders cannot be evaluated as asked (missing pairs, unreadable images, bad options)."""


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
    pairs = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
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
    """(H, W, 3) uint8 image, resized with PIL bicubic to ``size`` (H, W) when it differs."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            resized = size is not None and image.size != (size[1], size[0])
            if resized:
                image = image.resize((size[1], size[0]), resample=Image.BICUBIC)
            return np.asarray(image), resized
    except (UnidentifiedImageError, OSError) as error:
        raise EvaluationError(f"cannot read image {path}: {error}") from error


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


# --------------------------------------------------------------------------- evaluation


def evaluate_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    garments_dir: str | os.PathLike | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    weights_dir: str | os.PathLike = "weights",
    resolution: tuple[int, int] = DEFAULT_RESOLUTION,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    *,
    lpips_net: str = "alex",
    clip_model: str | os.PathLike | None = None,
    pairs_file: str | os.PathLike | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    verify_weights: bool = True,
    progress: bool = True,
) -> dict:
    """Compute try-on metrics for ``pred_dir`` against ``gt_dir``; see the module docstring.

    Args:
        pred_dir: generated images; every one needs a ground-truth image with the same stem.
        gt_dir: ground-truth photos (extra images there are ignored and counted).
        garments_dir: in-shop garment images for CLIP-I; CLIP-I is skipped (and recorded as
            skipped) when not given.
        metrics: any of ``lpips``, ``ssim``, ``fid``, ``kid``, ``clip_i``.
        weights_dir: folder with the published weight files (see ``metrics.weights``).
        resolution: (height, width) every output and ground-truth image is brought to (PIL
            bicubic) before any metric.
        batch_size: images per forward pass.
        device: torch device for the networks.
        lpips_net: ``alex`` (the ``lpips`` package default) or ``vgg``.
        clip_model: local transformers CLIP vision folder; default ``weights_dir/clip``.
        pairs_file: VITON-HD style ``person garment`` lines for the unpaired setting's CLIP-I.
        kid_subsets, kid_subset_size, seed: KID subset sampling.
        verify_weights: check the weight files' SHA-256 against the published ones.
        progress: show a tqdm progress bar.

    Returns:
        ``{"metrics": {...}, "per_image": {stem: {...}}, "protocol": {...}, "skipped": {...}}``.
    """
    try:
        wanted = [Metric(m) for m in metrics]
    except ValueError as error:
        raise EvaluationError(f"{error}; choose from {', '.join(DEFAULT_METRICS)}") from None
    if not wanted:
        raise EvaluationError("no metrics requested")
    height, width = (int(v) for v in resolution)
    if height < 11 or width < 11:
        raise EvaluationError(f"resolution must be at least 11x11, got {height}x{width}")
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be >= 1, got {batch_size}")
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    device = torch.device(device)

    preds = _list_images(pred_dir, "prediction")
    gts = _list_images(gt_dir, "ground-truth")
    gt_of, garment_of = _match_ground_truth(preds, gts, gt_dir)
    stems = sorted(preds)

    skipped: dict[str, str] = {}
    garment_paths: dict[str, Path] = {}
    if Metric.CLIP_I in wanted:
        if garments_dir is None:
            wanted.remove(Metric.CLIP_I)
            skipped[Metric.CLIP_I.value] = "no garments_dir given"
        else:
            garments = _list_images(Path(garments_dir), "garment")
            if pairs_file is not None:
                pairs = _read_pairs_file(Path(pairs_file))
                not_listed = [s for s in stems if s not in pairs]
                if not_listed:
                    raise EvaluationError(
                        _missing_message(not_listed, f"the pairs file {pairs_file}")
                    )
            else:
                pairs = {}
            wanted_garment = {s: pairs.get(s, garment_of.get(s, s)) for s in stems}
            unpaired = [s for s in stems if wanted_garment[s] not in garments]
            if unpaired:
                raise EvaluationError(
                    _missing_message(unpaired, f"the garment folder {garments_dir}")
                )
            garment_paths = {s: garments[wanted_garment[s]] for s in stems}
    needs_features = Metric.FID in wanted or Metric.KID in wanted
    if needs_features and len(stems) < 2:
        raise EvaluationError(f"FID/KID need at least 2 image pairs, found {len(stems)}")
    if not wanted:
        raise EvaluationError(
            "nothing to compute: " + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )

    # Networks first: a missing weight file should fail before any image is read.
    weights: dict[str, dict] = {}
    lpips_model = inception = scorer = None
    clip_record = None
    if Metric.LPIPS in wanted:
        lpips_model, record = load_lpips(
            lpips_net, weights_dir, verify=verify_weights, device=device
        )
        weights.update(record)
    if needs_features:
        inception, record = load_fid_inception(weights_dir, verify=verify_weights, device=device)
        weights.update(record)
    if Metric.CLIP_I in wanted:
        from .metrics.clip_score import CLIPImageScorer

        clip_path = Path(clip_model) if clip_model is not None else Path(weights_dir) / "clip"
        scorer = CLIPImageScorer.from_pretrained(clip_path, device=device)
        clip_record = _clip_record(clip_path, scorer)

    per_image: dict[str, dict[str, float]] = {s: {} for s in stems}
    pred_features, gt_features = [], []
    resized = {"pred": 0, "gt": 0}
    with (
        torch.no_grad(),
        tqdm(total=len(stems), unit="img", desc="evaluate", disable=not progress) as bar,
    ):
        for batch in _batches(stems, batch_size):
            pred_images, gt_images = [], []
            for stem in batch:
                image, was_resized = _load_rgb(preds[stem], (height, width))
                pred_images.append(image)
                resized["pred"] += was_resized
                image, was_resized = _load_rgb(gts[gt_of[stem]], (height, width))
                gt_images.append(image)
                resized["gt"] += was_resized
            if Metric.SSIM in wanted or Metric.LPIPS in wanted:
                pred_u8 = torch.from_numpy(np.stack(pred_images)).permute(0, 3, 1, 2).to(device)
                gt_u8 = torch.from_numpy(np.stack(gt_images)).permute(0, 3, 1, 2).to(device)
                if Metric.SSIM in wanted:
                    # float64 from the uint8 values, as scikit-image would see them.
                    values = ssim(pred_u8.double() / 255, gt_u8.double() / 255).tolist()
                    for stem, value in zip(batch, values, strict=True):
                        per_image[stem]["ssim"] = value
                if Metric.LPIPS in wanted:
                    values = lpips_model(pred_u8.float() / 255, gt_u8.float() / 255).tolist()
                    for stem, value in zip(batch, values, strict=True):
                        per_image[stem]["lpips"] = value
            if needs_features:
                pred_features.append(inception_features(inception, pred_images, device=device))
                gt_features.append(inception_features(inception, gt_images, device=device))
            if Metric.CLIP_I in wanted:
                garment_images = [_load_rgb(garment_paths[s])[0] for s in batch]
                values = scorer.similarity(pred_images, garment_images).tolist()
                for stem, value in zip(batch, values, strict=True):
                    per_image[stem]["clip_i"] = value
            bar.update(len(batch))

    results: dict[str, float] = {}
    for metric in (Metric.SSIM, Metric.LPIPS, Metric.CLIP_I):
        if metric in wanted:
            results[metric.value] = float(np.mean([per_image[s][metric.value] for s in stems]))
    kid_protocol = None
    notes = []
    if needs_features:
        pred_all, gt_all = np.concatenate(pred_features), np.concatenate(gt_features)
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
                num_subsets=kid_subsets,
                max_subset_size=kid_subset_size,
                seed=seed,
            )
            results["kid"], results["kid_std"] = kid.mean, kid.std
            kid_protocol = {
                "num_subsets": kid_subsets,
                "subset_size": kid.subset_size,
                "seed": seed,
            }
    if resized["pred"] or resized["gt"]:
        notes.append(
            f"resized to {height}x{width} (PIL bicubic): {resized['pred']} outputs, "
            f"{resized['gt']} ground-truth images"
        )

    implementations = {}
    for metric in wanted:
        text = _IMPLEMENTATIONS[metric]
        implementations[metric.value] = text.format(net=lpips_net)
    protocol = {
        "resolution": [height, width],
        "pred_dir": str(pred_dir),
        "gt_dir": str(gt_dir),
        "garments_dir": None if garments_dir is None else str(garments_dir),
        "pairs_file": None if pairs_file is None else str(pairs_file),
        "pairing": "file stem" + (" + pairs file for garments" if pairs_file else ""),
        "num_pairs": len(stems),
        "num_pred_images": len(preds),
        "num_gt_images": len(gts),
        "num_gt_unused": len(gts) - len(set(gt_of.values())),
        "num_resized": resized,
        "metrics": [m.value for m in wanted],
        "implementations": implementations,
        "lpips_net": lpips_net if Metric.LPIPS in wanted else None,
        "kid": kid_protocol,
        "clip_model": clip_record,
        "weights": weights,
        "weights_verified": verify_weights,
        "device": str(device),
        "versions": _versions(),
        "notes": notes,
    }
    return {"metrics": results, "per_image": per_image, "protocol": protocol, "skipped": skipped}


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


# --------------------------------------------------------------------------- command line


def _resolution(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"resolution must be HEIGHTxWIDTH such as 1024x768, got {text!r}"
        ) from None
    return height, width


def _metric_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in DEFAULT_METRICS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(DEFAULT_METRICS)}"
        )
    return names


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``evaluate`` command's arguments to ``parser`` (returned for chaining)."""
    parser.add_argument("pred_dir", type=Path, help="folder of generated try-on images")
    parser.add_argument("gt_dir", type=Path, help="folder of ground-truth photos (same names)")
    parser.add_argument("--garments-dir", type=Path, help="in-shop garment images (for CLIP-I)")
    parser.add_argument(
        "--pairs-file",
        type=Path,
        help="VITON-HD style 'person garment' lines naming each output's garment (unpaired)",
    )
    parser.add_argument(
        "--metrics",
        type=_metric_list,
        default=DEFAULT_METRICS,
        help=f"comma-separated subset of {','.join(DEFAULT_METRICS)} (default: all)",
    )
    parser.add_argument(
        "--weights-dir",
        type=Path,
        default=Path("weights"),
        help="folder with the metric weight files (default: ./weights)",
    )
    parser.add_argument(
        "--resolution",
        type=_resolution,
        default=DEFAULT_RESOLUTION,
        help="HEIGHTxWIDTH every image is brought to first (default: 1024x768)",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cpu")
    parser.add_argument("--lpips-net", choices=("alex", "vgg"), default="alex")
    parser.add_argument(
        "--clip-model", type=Path, help="CLIP vision model folder (default: WEIGHTS_DIR/clip)"
    )
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--kid-subset-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="seed for KID subsets")
    parser.add_argument(
        "--no-verify-weights",
        action="store_true",
        help="do not check weight files against their published SHA-256 (recorded)",
    )
    parser.add_argument("--json", type=Path, help="also write the full result to this file")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def run_evaluate(args: argparse.Namespace) -> int:
    """Run :func:`evaluate_folders` from parsed arguments; print the table; 0 on success."""
    try:
        result = evaluate_folders(
            args.pred_dir,
            args.gt_dir,
            garments_dir=args.garments_dir,
            metrics=args.metrics,
            weights_dir=args.weights_dir,
            resolution=args.resolution,
            batch_size=args.batch_size,
            device=args.device,
            lpips_net=args.lpips_net,
            clip_model=args.clip_model,
            pairs_file=args.pairs_file,
            kid_subsets=args.kid_subsets,
            kid_subset_size=args.kid_subset_size,
            seed=args.seed,
            verify_weights=not args.no_verify_weights,
            progress=not args.no_progress,
        )
    except (EvaluationError, WeightFileError, StateDictMismatchError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json is not None:
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")
    return 0
