"""Score try-on results against ground truth (``idm-vton evaluate``): LPIPS, SSIM, FID, KID,
CLIP-I, with the protocol that produced them."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._dataclass_flags import add_dataclass_arguments, config_from_args

HELP = "score try-on results (LPIPS, SSIM, FID, KID, CLIP-I)"


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``evaluate`` (:class:`~idm_vton.evaluation.evaluate.EvaluationConfig`'s
    fields and ``--json``) on ``parser``, returned for chaining."""
    from ..evaluation.config import EvaluationConfig

    add_dataclass_arguments(parser, EvaluationConfig)
    parser.add_argument("--json", type=Path, help="also write the full result to this file")
    return parser


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate, print the table (and write ``--json``); user errors raise ``IdmVtonError``,
    reported on one line by the command boundary (:func:`~.main.run_command`)."""
    from ..evaluation.evaluate import IMAGE_EXTENSIONS, EvaluationConfig, evaluate, format_table
    from ..files import check_writable_output, write_json_atomic

    config = config_from_args(EvaluationConfig, args)
    if args.json is not None:  # before the work; and never over one of the images evaluated
        folders = {"PRED_DIR": config.pred_dir, "GT_DIR": config.gt_dir}
        folders["--garments-dir"] = config.garments_dir
        images = {}
        if args.json.suffix.lower() in IMAGE_EXTENSIONS:
            images = {
                f"an image of {flag}": Path(folder) / args.json.name
                for flag, folder in folders.items()
                if folder is not None
            }
        check_writable_output(args.json, kind="file", flag="--json", inputs=images)
    result = evaluate(config)
    print(format_table(result))
    if args.json is not None:
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")
    return 0


add_arguments = add_evaluate_arguments
run = run_evaluate
