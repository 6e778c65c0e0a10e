"""Render every pair of a VITON-HD / DressCode split with the dataset's masks, DensePose and
captions into OUT/{person}_{garment}.png (resumable; run it under 'accelerate launch -m idm_vton
infer-dataset ...' to share the work over GPUs)."""

from __future__ import annotations

import argparse
import sys

from ._dataclass_flags import add_dataclass_arguments, config_from_args

HELP = "batch try-on over a dataset's test split"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``infer-dataset``: the fields of ``DatasetInferenceConfig``."""
    from ..evaluation.infer_dataset import DatasetInferenceConfig

    return add_dataclass_arguments(parser, DatasetInferenceConfig)


def run(args: argparse.Namespace) -> int:
    """Run the configured inference; exit code 1 when images are missing at the end."""
    from ..evaluation.infer_dataset import DatasetInferenceConfig, infer_dataset
    from ..models.tiny import TINY_MODEL_NOTE

    config = config_from_args(DatasetInferenceConfig, args)
    if config.model == "tiny":
        print(f"note: {TINY_MODEL_NOTE}")  # stdout: stderr is for errors
    summary = infer_dataset(config)
    if summary.num_processes > 1:
        print(
            f"process {summary.process_index}/{summary.num_processes} rendered "
            f"{summary.rendered} images",
            flush=True,
        )
    if summary.finished is None:  # not the main process
        return 0
    print(
        f"{summary.finished}/{summary.total} images in {summary.out} "
        f"({summary.skipped} were already done)"
    )
    if summary.finished != summary.total:
        print(
            f"idm-vton infer-dataset: error: {summary.total - summary.finished} images missing "
            f"after the run",
            file=sys.stderr,
        )
        return 1
    return 0
