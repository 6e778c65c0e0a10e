"""Every error a user can cause derives from :class:`IdmVtonError` (STYLE section 10).

The command line catches :class:`IdmVtonError` only and reports it on one line (exit code 2);
anything else is a bug and is reported as an internal error. Each class keeps the built-in base
it had before the common root existed (``ValueError`` or ``RuntimeError``), so code that catches
those still works. Internal invariants are ``assert`` statements, not exceptions from this module.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "AnnotatorError",
    "CheckpointError",
    "CustomizationError",
    "DatasetError",
    "EvaluationError",
    "IdmVtonError",
    "ImageInputError",
    "MissingWeightFileError",
    "NoPersonFoundError",
    "NonFiniteOutputError",
    "PreprocessModelError",
    "StateDictMismatchError",
    "TrainConfigError",
    "UsageError",
    "WeightFileError",
]


class IdmVtonError(Exception):
    """Root of the errors a user can cause: bad options, inputs, weight files or datasets."""


class UsageError(IdmVtonError, ValueError):
    """An option or argument value that cannot be used (unknown device, bad size, step count...)."""


class ImageInputError(IdmVtonError, ValueError):
    """An input image cannot be used (unreadable, truncated, too large, empty mask...)."""


class NonFiniteOutputError(IdmVtonError, RuntimeError):
    """The denoising produced NaN/inf values (typically fp16 overflow)."""


class CheckpointError(IdmVtonError, ValueError):
    """A checkpoint folder or weight file is missing, a placeholder, corrupt or does not fit."""


class StateDictMismatchError(CheckpointError):
    """A state dict does not fit the network: names every missing, extra and mis-shaped key."""


class WeightFileError(IdmVtonError, RuntimeError):
    """A metric weight file is missing or is not the published file (size or SHA-256 differs)."""


class MissingWeightFileError(WeightFileError, FileNotFoundError):
    """A weight file or model folder the user was asked to provide is not there."""


class PreprocessModelError(IdmVtonError, ValueError):
    """A preprocessing model file is missing, a placeholder, truncated or not a valid model."""


class NoPersonFoundError(IdmVtonError, ValueError):
    """The photo shows no person the models can find (parsing or DensePose found nobody)."""


class DatasetError(IdmVtonError, ValueError):
    """A dataset file is missing, unreadable or inconsistent.

    ``path`` is the offending file and ``row`` the dataset index it belongs to, when known.
    """

    def __init__(self, message: str, *, path: Path | None = None, row: int | None = None):
        super().__init__(message)
        self.path = path
        self.row = row


class TrainConfigError(IdmVtonError, ValueError):
    """An invalid training option."""


class CustomizationError(IdmVtonError, ValueError):
    """A customization file that is unreadable or made for another base model, or a bad option."""


class EvaluationError(IdmVtonError, ValueError):
    """The folders cannot be evaluated as asked (missing pairs, unreadable images, bad options)."""


class AnnotatorError(IdmVtonError, ValueError):
    """A garment annotator that cannot be used: a probe file that is damaged or made for another
    image encoder or label sets, a zero-shot model that cannot be fetched or loaded."""
