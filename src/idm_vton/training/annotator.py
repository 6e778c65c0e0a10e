"""Train the probe annotator on a dataset's tags (``idm-vton train-annotator``).

The paper reads V from the garment photo with an image annotator (Sec. 3.2); VITON-HD's tag
files hold that annotator's output for every garment. The probe learns it back from the
IP-Adapter's CLIP ViT-H/14 image embedding that the try-on computes anyway:

1. the split's garments and their tags (:func:`~idm_vton.data.tags.list_tagged_garments`), each
   tag a class of the dataset's label sets (garments with no usable tag at all are left out);
2. each garment's projected CLIP image embedding, computed once with the model's own image
   encoder and preprocessing (frozen, no gradients);
3. the heads (:class:`~idm_vton.annotation.probe.ProbeHeads`) fitted on the standardised
   embeddings, full batch with L-BFGS: the sum over attributes of the mean cross-entropy over
   the garments that have that tag, plus an L2 penalty on the weights (for linear heads a
   multinomial logistic regression per attribute, the usual linear probe of CLIP features; the
   fit is deterministic);
4. the probe file written atomically, with the label sets and the encoder's fingerprint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..annotation.datasets import AnnotatorDataOptions, label_targets
from ..annotation.encoder import GarmentEncoder, garment_batches, load_garment_encoder
from ..annotation.probe import ProbeAnnotator, ProbeHeads
from ..data.tags import ATTRIBUTES, list_tagged_garments, load_label_sets
from ..errors import DatasetError
from ..files import check_writable_output
from ..progress import progress_bar
from .config import AnnotatorTrainingConfig

__all__ = ["AnnotatorTrainingConfig", "AnnotatorTrainingSummary", "fit_probe", "train_annotator"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnnotatorTrainingSummary:
    """What :func:`train_annotator` did: the file, the garments used (``count``), per attribute
    the garments with a tag (``tagged``) and the probe's accuracy on them (``accuracy``)."""

    out: Path
    count: int
    tagged: dict[str, int]
    accuracy: dict[str, float | None]


def fit_probe(
    embeddings: torch.Tensor,
    targets: dict[str, torch.Tensor],
    classes: dict[str, int],
    *,
    hidden: int = 0,
    iterations: int = 300,
    weight_decay: float = 1e-3,
    seed: int = 0,
) -> ProbeHeads:
    """Heads fitted to ``targets`` (per attribute a class index per row, -1: no tag) on
    ``embeddings`` (N, D), standardised by their mean and std (stored in the heads); see step 3
    of the module docstring."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = ProbeHeads(embeddings.shape[1], classes, hidden)
    heads.feature_mean.copy_(embeddings.mean(0))
    heads.feature_std.copy_(embeddings.std(0, correction=0).clamp_min(1e-6))
    tagged = [a for a in ATTRIBUTES if (targets[a] >= 0).any()]
    weights = [p for name, p in heads.named_parameters() if name.endswith("weight")]
    optimizer = torch.optim.LBFGS(
        heads.parameters(),
        max_iter=iterations,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
    )

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        logits = heads(embeddings)
        loss = sum(
            torch.nn.functional.cross_entropy(logits[a], targets[a], ignore_index=-1)
            for a in tagged
        )
        loss = loss + weight_decay / 2 * sum((w**2).sum() for w in weights)
        loss.backward()
        return loss

    optimizer.step(objective)
    return heads.eval()


def train_annotator(
    config: AnnotatorTrainingConfig, encoder: GarmentEncoder | None = None
) -> AnnotatorTrainingSummary:
    """Train a probe on ``config``'s split and write it to ``config.out`` (see the module
    docstring). ``encoder``: the image encoder to use (default: ``config.model``'s, loaded
    alone)."""
    out = check_writable_output(config.out, kind="file", flag="--out")
    label_sets = load_label_sets(config.dataset)
    records = list_tagged_garments(
        config.data, config.dataset, config.split, config.category, label_sets
    )
    targets = label_targets(records, label_sets)
    usable = torch.stack([targets[a] >= 0 for a in ATTRIBUTES]).any(0)
    if not usable.any():
        raise DatasetError(
            f"no garment of {config.data} ({config.split.value}) has a tag in the "
            f"{label_sets.name} label sets: nothing to train on"
        )
    records = [r for r, keep in zip(records, usable.tolist(), strict=True) if keep]
    targets = {a: t[usable] for a, t in targets.items()}
    if encoder is None:
        device, dtype = config.device_and_dtype()
        encoder = load_garment_encoder(config.model, dtype, device)
    embeddings = _embed(encoder, [r.path for r in records], config)

    classes = {a: len(labels) for a, labels in label_sets.labels.items()}
    heads = fit_probe(
        embeddings,
        targets,
        classes,
        hidden=config.hidden,
        iterations=config.iterations,
        weight_decay=config.weight_decay,
        seed=config.seed,
    )
    with torch.no_grad():
        logits = heads(embeddings)
    tagged, accuracy = {}, {}
    for attribute in ATTRIBUTES:
        known = targets[attribute] >= 0
        tagged[attribute] = int(known.sum())
        correct = logits[attribute].argmax(-1)[known] == targets[attribute][known]
        accuracy[attribute] = float(correct.float().mean()) if known.any() else None
    training = {
        "dataset": config.dataset.value,
        "split": config.split.value,
        "category": config.category.value if config.category else None,
        "garments": len(records),
        "tagged": tagged,
        "train_accuracy": accuracy,
        "iterations": config.iterations,
        "weight_decay": config.weight_decay,
        "hidden": config.hidden,
        "seed": config.seed,
    }
    ProbeAnnotator(heads, label_sets, encoder).save(out, config.model, training)
    return AnnotatorTrainingSummary(out, len(records), tagged, accuracy)


def _embed(encoder: GarmentEncoder, paths: list[Path], config: AnnotatorDataOptions):
    parts = []
    with progress_bar(
        total=len(paths), desc="embedding garments", unit="img", show=config.progress
    ) as bar:
        for images in garment_batches(paths, config.batch_size, config.num_workers):
            parts.append(encoder.embed(images))
            bar.update(len(images))
    return torch.cat(parts)
