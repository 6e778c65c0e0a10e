"""Score a garment annotator against a dataset split's tags (``idm-vton evaluate-annotator``):
per-attribute accuracy and macro-F1, and the exact-match rate of the composed description
(protocol: docs/evaluation.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._dataclass_flags import add_dataclass_arguments, config_from_args

HELP = "score a garment annotator against a dataset's tags"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from ..evaluation.config import AnnotatorEvaluationConfig

    add_dataclass_arguments(parser, AnnotatorEvaluationConfig)
    parser.add_argument("--json", type=Path, help="also write the scores to this file")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..evaluation.annotator import (
        AnnotatorEvaluationConfig,
        evaluate_annotator,
        format_annotator_table,
    )
    from ..files import check_writable_output, write_json_atomic

    config = config_from_args(AnnotatorEvaluationConfig, args)
    if args.json is not None:  # before the work
        check_writable_output(args.json, kind="file", flag="--json")
    result = evaluate_annotator(config)
    print(format_annotator_table(result))
    if args.json is not None:
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")
    return 0
