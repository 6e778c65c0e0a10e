"""The one interface of the garment annotators: a garment photo in, :class:`GarmentTags` out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.tags import LabelSets
from ..enums import GarmentCategory
from ..images import load_image
from .tags import DEFAULT_MIN_SCORE, GarmentTags

__all__ = ["GarmentAnnotator", "GarmentImage"]

#: What :meth:`GarmentAnnotator.describe` takes: a path, a PIL image or an array.
GarmentImage = str | Path | Image.Image | np.ndarray


class GarmentAnnotator(ABC):
    """Reads the garment description V from a garment photo (the paper's image annotator,
    Sec. 3.2): for each attribute of :attr:`label_sets`, the most likely label and its score.

    Subclasses implement :meth:`describe_batch`; an annotator that works on the try-on
    pipeline's own CLIP image embedding (the probe) also implements
    :meth:`describe_embeddings` and says for which encoder in :meth:`reads_embeddings_of`.
    """

    #: Short name for messages: "probe" or "zero-shot".
    kind: str = ""

    def __init__(self, label_sets: LabelSets, min_score: float = DEFAULT_MIN_SCORE) -> None:
        if not 0.0 <= min_score <= 1.0:
            from ..errors import UsageError

            raise UsageError(f"min_score must be in [0, 1], got {min_score}")
        self.label_sets = label_sets
        self.min_score = float(min_score)

    def describe(self, image: GarmentImage) -> GarmentTags:
        """The tags (and V, ``.description``) of one garment photo."""
        return self.describe_batch([image])[0]

    @abstractmethod
    def describe_batch(self, images: Sequence[GarmentImage]) -> list[GarmentTags]:
        """The tags of each garment photo, in order."""

    def reads_embeddings_of(self, image_encoder: torch.nn.Module) -> bool:
        """Whether :meth:`describe_embeddings` reads ``image_encoder``'s embeddings (so a try-on
        that has computed them needs no other forward pass)."""
        return False

    def describe_embeddings(self, embeddings: torch.Tensor) -> list[GarmentTags]:
        """The tags of garments from their projected CLIP image embeddings (N, D)."""
        raise NotImplementedError(f"the {self.kind} annotator reads photos, not embeddings")

    def category(self, tags: GarmentTags) -> GarmentCategory:
        """The garment category (the body region of its automatic mask) of a garment this
        annotator has read: that of its most likely item label, whatever the label's score."""
        return self.label_sets.category_of(tags.tags["item"].label)

    @property
    def identity(self) -> str:
        """What produced the tags, for records (e.g. ``infer-dataset``'s manifest)."""
        return self.kind

    def _tags(self, probabilities: dict[str, torch.Tensor]) -> list[GarmentTags]:
        """Tags from per-attribute class probabilities (N, K) over the label sets."""
        count = next(iter(probabilities.values())).shape[0]
        rows = {a: p.float().cpu().tolist() for a, p in probabilities.items()}
        return [
            GarmentTags.from_scores(
                {a: rows[a][i] for a in rows}, self.label_sets.labels, self.min_score
            )
            for i in range(count)
        ]


def rgb_images(images: Sequence[GarmentImage]) -> list[Image.Image]:
    """Garment photos as RGB PIL images, through the package's image boundary."""
    return [load_image(image, "garment") for image in images]
