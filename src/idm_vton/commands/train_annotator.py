"""Train the garment annotator probe (``idm-vton train-annotator``): one head per attribute on
the model's CLIP image embedding, fitted to a dataset split's tags; written as safetensors with
its label sets and the image encoder's fingerprint."""

from __future__ import annotations

import argparse

from ._dataclass_flags import add_dataclass_arguments, config_from_args

HELP = "train the garment annotator probe on a dataset's tags"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from ..training.config import AnnotatorTrainingConfig

    return add_dataclass_arguments(parser, AnnotatorTrainingConfig)


def run(args: argparse.Namespace) -> int:
    from ..models.tiny import TINY_MODEL_NOTE
    from ..training.annotator import AnnotatorTrainingConfig, train_annotator

    config = config_from_args(AnnotatorTrainingConfig, args)
    if config.model == "tiny":
        print(f"note: {TINY_MODEL_NOTE}")  # stdout: stderr is for errors
    summary = train_annotator(config)
    scores = ", ".join(
        f"{attribute} {'-' if value is None else f'{value:.4f}'} ({summary.tagged[attribute]} tagged)"
        for attribute, value in summary.accuracy.items()
    )
    print(f"trained on {summary.count} garments; accuracy on them: {scores}")
    print(f"wrote {summary.out}")
    return 0
