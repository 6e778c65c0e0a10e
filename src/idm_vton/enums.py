"""Closed sets shared across the package (STYLE section 7): ``str`` enums parsed at the boundary.

Each enum's :meth:`Choice.parse` turns a user-given string into a member, or raises a one-line
:class:`~idm_vton.errors.UsageError` that lists the valid values. Members compare equal to their
values (``DatasetKind.VITONHD == "vitonhd"``), so configs written as plain strings keep working.
"""

from __future__ import annotations

import re
from enum import Enum

from .errors import IdmVtonError, UsageError

__all__ = [
    "Choice",
    "CustomizationMethod",
    "DType",
    "DatasetKind",
    "GarmentCategory",
    "MixedPrecision",
    "Pairing",
    "SchedulerName",
    "Split",
    "parse_dataset_category",
]


class Choice(str, Enum):
    """A closed set of strings; ``str(member)`` is its value."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def values(cls) -> list[str]:
        return [member.value for member in cls]

    @classmethod
    def parse(cls, value, what: str | None = None, error: type[IdmVtonError] = UsageError):
        """``value`` as a member; otherwise ``error("unknown <what> ...; expected one of: ...")``.

        ``what`` names the setting in the message (default: the class name in words, e.g.
        "garment category").
        """
        try:
            return cls(value)
        except ValueError:
            what = what or re.sub(r"(?<!^)(?=[A-Z])", " ", cls.__name__).lower()
            raise error(
                f"unknown {what} {value!r}; expected one of: {', '.join(cls.values())}"
            ) from None


class GarmentCategory(Choice):
    """Garment category: the DressCode sub-folders and the mask regions of the official demo's mask function."""

    UPPER_BODY = "upper_body"
    LOWER_BODY = "lower_body"
    DRESSES = "dresses"


def parse_dataset_category(value: GarmentCategory | str | None) -> GarmentCategory | None:
    """A DressCode category to use, or ``None`` for ``"all"`` (the three together)."""
    if value is None or value == "all":
        return None
    return GarmentCategory.parse(value, "DressCode category")


class DatasetKind(Choice):
    """Dataset layout (see :mod:`idm_vton.data.datasets`)."""

    VITONHD = "vitonhd"
    DRESSCODE = "dresscode"


class Split(Choice):
    """Dataset split."""

    TRAIN = "train"
    TEST = "test"


class Pairing(Choice):
    """Evaluation setting: the person's own garment (paired) or another one (unpaired)."""

    PAIRED = "paired"
    UNPAIRED = "unpaired"


class DType(Choice):
    """Floating-point precision of weights and compute, by its command-line name."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"

    @property
    def torch_dtype(self):
        import torch

        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.value]

    @classmethod
    def of(cls, dtype) -> DType:
        """The member naming a ``torch.dtype`` (float32, float16 or bfloat16)."""
        return next(member for member in cls if member.torch_dtype == dtype)


class MixedPrecision(Choice):
    """Autocast precision of training and customization; weights stay fp32."""

    NO = "no"
    FP16 = "fp16"
    BF16 = "bf16"

    @property
    def torch_dtype(self):
        """The compute dtype: float32 for ``no``."""
        return (
            DType.FP32.torch_dtype if self is MixedPrecision.NO else DType(self.value).torch_dtype
        )


class CustomizationMethod(Choice):
    """How a customization delta is stored: the full difference, or low-rank LoRA factors."""

    FULL = "full"
    LORA = "lora"


class SchedulerName(Choice):
    """Samplers (:func:`idm_vton.schedulers.build_scheduler`); ``ddpm`` is the reference's."""

    DDPM = "ddpm"
    EULER = "euler"
    EULER_ANCESTRAL = "euler_a"
    DPMPP_2M = "dpmpp_2m"
    DPMPP_2M_KARRAS = "dpmpp_2m_karras"
    UNIPC = "unipc"

    @classmethod
    def parse(cls, value, what: str | None = "scheduler", error: type[IdmVtonError] = UsageError):
        return super().parse(value, what, error)
