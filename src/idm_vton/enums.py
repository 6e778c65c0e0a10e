"""Closed sets shared across the package (STYLE section 7)."""

from __future__ import annotations

from enum import Enum

__all__ = ["GarmentCategory"]


class GarmentCategory(str, Enum):
    """Garment category: the DressCode sub-folders and the mask regions of SPEC section 6."""

    UPPER_BODY = "upper_body"
    LOWER_BODY = "lower_body"
    DRESSES = "dresses"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: GarmentCategory | str) -> GarmentCategory:
        """Validate a user-given category, with a one-line error listing the valid values."""
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(c.value for c in cls)
            raise ValueError(
                f"unknown garment category {value!r}; expected one of: {valid}"
            ) from None
