"""A dataset split's garments with their tags, for training and evaluating annotators.

``idm-vton train-annotator`` and ``evaluate-annotator`` share these options
(:class:`AnnotatorDataOptions`) and this reading: the split's garments and tags
(:func:`~idm_vton.data.tags.list_tagged_garments`), each tag as a class index of the dataset's
label sets (:func:`label_targets`), garments batched through the image boundary.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.tags import ATTRIBUTES, GarmentTagRecord, LabelSets
from ..enums import DatasetKind, DType, GarmentCategory, Split, parse_dataset_category
from ..errors import UsageError
from ..options import option

__all__ = ["AnnotatorDataOptions", "label_targets"]

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class AnnotatorDataOptions:
    """The dataset split, the model whose image encoder is used, and how to run it."""

    model: str = option(shared="model")
    data: Path = option(help="dataset root folder")
    dataset: DatasetKind = option(help="dataset layout; its label sets are the classes")
    split: Split = option(Split.TEST, "dataset split (default %(default)s)")
    category: GarmentCategory | None = option(
        None,
        "DressCode category (default: all)",
        parse=parse_dataset_category,
        metavar="{upper_body,lower_body,dresses,all}",
    )
    batch_size: int = option(32, "garments per encoder pass (default %(default)s)")
    num_workers: int = option(2, "image decoding processes (default %(default)s)")
    device: str | None = option(None, shared="device")
    dtype: DType | None = option(None, shared="dtype")
    progress: bool = option(True, "hide the progress bar")

    def __post_init__(self) -> None:
        # Plain strings are accepted (as from a script); the fields hold the enums.
        object.__setattr__(self, "dataset", DatasetKind.parse(self.dataset, "dataset"))
        object.__setattr__(self, "split", Split.parse(self.split, "split"))
        object.__setattr__(self, "category", parse_dataset_category(self.category))
        if self.dtype is not None:
            object.__setattr__(self, "dtype", DType.parse(self.dtype, "dtype"))
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise UsageError(f"--num-workers must be >= 0, got {self.num_workers}")
        if self.dataset is DatasetKind.VITONHD and self.category not in (
            None,
            GarmentCategory.UPPER_BODY,
        ):
            raise UsageError(
                f"VITON-HD has upper_body garments only, got --category {self.category}"
            )

    def device_and_dtype(self):
        """(torch device, torch dtype): the flags', by default cuda if available and bf16 there,
        fp32 on the CPU."""
        from ..devices import check_dtype_on_device, resolve_device, resolve_dtype

        device = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype, device)
        check_dtype_on_device(dtype, device)
        return device, dtype


def label_targets(
    records: Sequence[GarmentTagRecord], label_sets: LabelSets
) -> dict[str, torch.Tensor]:
    """Per attribute, each garment's class index in ``label_sets``, -1 where it has no tag.

    A tag whose label is not in the label sets is left out too (-1), with one warning per
    attribute naming the labels and how many garments carry them.
    """
    import torch  # here, so that the options above are read without loading torch

    targets = {}
    for attribute in ATTRIBUTES:
        unknown: Counter[str] = Counter()
        column = []
        for record in records:
            label = record.tags.get(attribute)
            index = None if label is None else label_sets.index(attribute, label)
            if label is not None and index is None:
                unknown[label] += 1
            column.append(-1 if index is None else index)
        if unknown:
            logger.warning(
                "%d garments' %s tags are not in the %s label sets and are left out: %s",
                sum(unknown.values()),
                attribute,
                label_sets.name,
                ", ".join(f"{label!r} x{n}" for label, n in unknown.most_common()),
            )
        targets[attribute] = torch.tensor(column, dtype=torch.long)
    return targets
