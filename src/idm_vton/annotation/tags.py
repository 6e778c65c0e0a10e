"""What an annotator says about one garment: a label and a score per attribute, and the V they
compose."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..data.tags import ATTRIBUTES

__all__ = ["DEFAULT_MIN_SCORE", "AttributeTag", "GarmentTags", "compose_description"]

#: An attribute whose most likely label scores under this is left out of V (an assumption, not
#: a measured optimum: see docs/annotator.md; ``evaluate-annotator --min-score`` measures others).
DEFAULT_MIN_SCORE = 0.25


def compose_description(labels: Mapping[str, str | None]) -> str:
    """V from per-attribute labels: the labels of sleeve length, neckline and item, in this
    order (the paper's), joined by single spaces; a missing (None) attribute is left out.

    The datasets' own V is the same words in the same order with a trailing space
    (:func:`~idm_vton.data.captions.describe_vitonhd`); the CLIP tokenizers drop that space, so
    both give the same caption tokens.
    """
    return " ".join(label for a in ATTRIBUTES if (label := labels.get(a)) is not None)


@dataclass(frozen=True)
class AttributeTag:
    """An attribute's most likely label and its score (a probability in [0, 1])."""

    label: str
    score: float


@dataclass(frozen=True)
class GarmentTags:
    """An annotator's reading of one garment.

    ``tags``: every attribute's most likely label with its score; ``min_score``: the score under
    which an attribute is left out of :attr:`description` (it stays in ``tags``).
    """

    tags: Mapping[str, AttributeTag]
    min_score: float = DEFAULT_MIN_SCORE

    @property
    def labels(self) -> dict[str, str | None]:
        """Attribute -> the label V uses, None where the score is under ``min_score``."""
        return {
            a: (tag.label if (tag := self.tags.get(a)) and tag.score >= self.min_score else None)
            for a in ATTRIBUTES
        }

    @property
    def description(self) -> str:
        """V: :func:`compose_description` of :attr:`labels`."""
        return compose_description(self.labels)

    def to_json(self) -> dict[str, Any]:
        """``{"description": V, "tags": {attribute: {"label": ..., "score": ...}}}``."""
        return {
            "description": self.description,
            "tags": {
                a: {"label": self.tags[a].label, "score": round(self.tags[a].score, 4)}
                for a in ATTRIBUTES
                if a in self.tags
            },
        }

    @classmethod
    def from_scores(
        cls, scores: Mapping[str, Iterable[float]], labels: Mapping[str, Iterable[str]], min_score
    ) -> GarmentTags:
        """The tags of one garment from per-attribute class scores over ``labels``."""
        tags = {}
        for attribute in ATTRIBUTES:
            ranked = sorted(zip(scores[attribute], labels[attribute], strict=True), reverse=True)
            score, label = ranked[0]
            tags[attribute] = AttributeTag(label=label, score=float(score))
        return cls(tags=tags, min_score=min_score)
