"""How well an annotator reads V (``idm-vton evaluate-annotator``); protocol in docs/evaluation.md.

Over the garments of a dataset split (:func:`~idm_vton.data.tags.list_tagged_garments`), the
annotator's labels are compared with the dataset's tags:

* per attribute, over the garments that have a tag for it (a missing or ``null`` tag does not
  count): ``accuracy`` (the label V uses equals the tag; an attribute the annotator left out of
  V for its low score counts as wrong), ``macro_f1`` (the mean over the labels that occur as tag
  or as prediction of ``2 TP / (2 TP + FP + FN)``) and ``count``;
* ``exact_match``: the share of garments whose V equals the V of their tags (both composed by
  :func:`~idm_vton.annotation.tags.compose_description`; a tag that is missing is left out of
  the dataset's V, as the datasets do);
* ``count``: the garments evaluated, those with at least one tag (the others are not run).

:func:`score_annotations` is the pure computation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..annotation.annotator import GarmentAnnotator
from ..annotation.encoder import garment_batches, load_garment_encoder
from ..annotation.loading import load_annotator, resolve_annotator
from ..annotation.tags import compose_description
from ..data.tags import ATTRIBUTES, list_tagged_garments, load_label_sets
from ..errors import DatasetError
from ..progress import progress_bar
from .config import AnnotatorEvaluationConfig

__all__ = [
    "AnnotatorEvaluationConfig",
    "evaluate_annotator",
    "format_annotator_table",
    "score_annotations",
]

Labels = Mapping[str, str | None]


def score_annotations(truth: Sequence[Labels], predicted: Sequence[Labels]) -> dict[str, Any]:
    """The metrics of the module docstring for garments whose dataset tags are ``truth`` and
    whose annotator labels are ``predicted`` (attribute -> label; None: no tag / left out).

    Returns ``{"count": N, "attributes": {attribute: {"accuracy", "macro_f1", "count"}},
    "exact_match": ...}``; a rate over no garment is None.
    """
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} tag sets but {len(predicted)} predictions")
    rows = [
        (t, p) for t, p in zip(truth, predicted, strict=True) if any(t.get(a) for a in ATTRIBUTES)
    ]
    attributes = {}
    for attribute in ATTRIBUTES:
        pairs = [(t[attribute], p.get(attribute)) for t, p in rows if t.get(attribute) is not None]
        correct = sum(true == guess for true, guess in pairs)
        attributes[attribute] = {
            "accuracy": correct / len(pairs) if pairs else None,
            "macro_f1": _macro_f1(pairs) if pairs else None,
            "count": len(pairs),
        }
    matches = sum(compose_description(t) == compose_description(p) for t, p in rows)
    return {
        "count": len(rows),
        "attributes": attributes,
        "exact_match": matches / len(rows) if rows else None,
    }


def _macro_f1(pairs: Sequence[tuple[str, str | None]]) -> float:
    """Mean F1 over every label that occurs as a tag or a prediction (no prediction is no
    label: a false negative of the tag only)."""
    labels = {true for true, _ in pairs} | {guess for _, guess in pairs if guess is not None}
    scores = []
    for label in labels:
        tp = sum(true == label and guess == label for true, guess in pairs)
        fp = sum(true != label and guess == label for true, guess in pairs)
        fn = sum(true == label and guess != label for true, guess in pairs)
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def evaluate_annotator(
    config: AnnotatorEvaluationConfig, annotator: GarmentAnnotator | None = None
) -> dict[str, Any]:
    """Run ``annotator`` (default: ``config.annotator`` for ``config.model``, loaded with the
    dataset's label sets) over the split's tagged garments and score it
    (:func:`score_annotations`)."""
    label_sets = load_label_sets(config.dataset)
    records = list_tagged_garments(
        config.data, config.dataset, config.split, config.category, label_sets
    )
    records = [r for r in records if any(r.tags.get(a) for a in ATTRIBUTES)]
    if not records:
        raise DatasetError(
            f"no garment of {config.data} ({config.split.value}) has a tag: nothing to evaluate"
        )
    if annotator is None:
        device, dtype = config.device_and_dtype()
        choice = resolve_annotator(config.annotator, config.model)
        encoder = None
        if choice.kind == "probe":
            encoder = load_garment_encoder(config.model, dtype, device)
        annotator = load_annotator(
            choice,
            model=config.model,
            encoder=encoder,
            label_sets=label_sets,
            min_score=config.min_score,
            device=device,
            dtype=dtype if device.type != "cpu" else None,
        )
    predicted: list[Labels] = []
    with progress_bar(
        total=len(records), desc="annotating garments", unit="img", show=config.progress
    ) as bar:
        for images in garment_batches(
            [r.path for r in records], config.batch_size, config.num_workers
        ):
            predicted += [tags.labels for tags in annotator.describe_batch(images)]
            bar.update(len(images))
    return score_annotations([r.tags for r in records], predicted)


def format_annotator_table(result: Mapping[str, Any]) -> str:
    """The scores as a plain-text table, then the exact-match line."""

    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines = [f"{'attribute':<14}{'accuracy':>10}{'macro-F1':>10}{'count':>8}"]
    lines.append("-" * len(lines[0]))
    for attribute, scores in result["attributes"].items():
        lines.append(
            f"{attribute:<14}{rate(scores['accuracy']):>10}{rate(scores['macro_f1']):>10}"
            f"{scores['count']:>8}"
        )
    lines.append("")
    lines.append(f"exact match of V: {rate(result['exact_match'])} over {result['count']} garments")
    return "\n".join(lines)
