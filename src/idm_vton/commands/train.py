"""Train or fine-tune TryonNet (``idm-vton train``, ``accelerate launch -m idm_vton.train``).

The options are the fields of :class:`~idm_vton.training.config.TrainConfig`; the loop is
:class:`~idm_vton.training.trainer.Trainer`. See ``docs/training.md`` for recipes and the
accelerate configurations (DDP, DeepSpeed, FSDP).
"""

from __future__ import annotations

import argparse
import sys

from ._dataclass_flags import add_dataclass_arguments
from ._dataclass_flags import config_from_args as _config_from_args

__all__ = ["HELP", "add_arguments", "config_from_args", "main", "parse_args", "run"]

HELP = "train or fine-tune TryonNet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``idm-vton train``, generated from ``TrainConfig`` and ``SdxlSources``."""
    from ..training.config import SdxlSources, TrainConfig

    model = parser.add_argument_group("model")
    model.add_argument(
        "--init-from-sdxl",
        action="store_true",
        help="train from scratch as the paper: TryonNet from SDXL-inpainting + IP-Adapter Plus, "
        "GarmentNet from SDXL base (needs the four paths below)",
    )
    add_dataclass_arguments(model, SdxlSources, defaults=dict.fromkeys(_sdxl_fields(), None))
    add_dataclass_arguments(parser, TrainConfig)


def config_from_args(args: argparse.Namespace):
    """Parsed options -> :class:`~idm_vton.training.config.TrainConfig` (validated)."""
    from ..errors import TrainConfigError
    from ..training.config import SdxlSources, TrainConfig

    sdxl = None
    if args.init_from_sdxl:
        missing = [
            f"--{name.replace('_', '-')}" for name in _sdxl_fields() if getattr(args, name) is None
        ]
        if missing:
            raise TrainConfigError(f"--init-from-sdxl needs {', '.join(missing)}")
        sdxl = _config_from_args(SdxlSources, args)
    return _config_from_args(TrainConfig, args, sdxl=sdxl)


def _sdxl_fields() -> list[str]:
    import dataclasses

    from ..training.config import SdxlSources

    return [f.name for f in dataclasses.fields(SdxlSources)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from .main import OneLineParser

    parser = OneLineParser(
        prog="idm_vton.train", description="Train IDM-VTON's TryonNet (paper Sec. 3)."
    )
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="show library logs and tracebacks"
    )
    add_arguments(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    """Train; returns 0. Configuration errors raise ``TrainConfigError``."""
    from ..training.trainer import Trainer

    Trainer(config_from_args(args)).train()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m idm_vton.train``: the ``idm-vton train`` command on its own, with the same
    ``--verbose`` (library logs, and the traceback of an internal error)."""
    from .main import quiet_libraries, run_command

    try:
        args = parse_args(argv)
        if not args.verbose:
            quiet_libraries()
    except SystemExit as exit:  # --help, or a usage error already printed on one line
        return exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    except KeyboardInterrupt:
        print("idm_vton.train: interrupted", file=sys.stderr)
        return 130
    return run_command(run, args, "idm_vton.train", verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
