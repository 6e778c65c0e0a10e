"""``idm-vton``: the command line. Each command is a module of this package that parses its
options and calls the library.

Every mistake a user can make (an :class:`~idm_vton.errors.IdmVtonError`) ends in one line on
stderr and exit code 2, with no output file; Ctrl-C ends with exit code 130; anything else is a
bug, reported in one line with exit code 1 (``--verbose`` shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings

__all__ = ["COMMANDS", "build_parser", "main"]

#: The command modules, in the order ``--help`` lists them. Each defines ``HELP``,
#: ``add_arguments(parser)`` and ``run(args) -> int``.
COMMANDS = {
    "tryon": "tryon",
    "convert": "convert",
    "evaluate": "evaluate",
    "infer-dataset": "infer_dataset",
    "train": "train",
    "customize": "customize",
    "preprocess": "preprocess",
    "mask": "mask",
    "download": "download",
    "serve": "serve",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="idm-vton",
        description="IDM-VTON virtual try-on (Choi et al., ECCV 2024) on current diffusers.",
    )
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="show library logs and tracebacks"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"{__package__}.{module_name}")
        command = sub.add_parser(name, help=module.HELP, description=module.__doc__.split("\n")[0])
        module.add_arguments(command)
        command.set_defaults(func=module.run)
    return parser


def quiet_libraries() -> None:
    """Only errors from the libraries underneath (diffusers, transformers, warnings)."""
    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    """Run ``idm-vton`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:  # --help, or a usage error argparse has already printed
        return int(exit.code or 0)
    if not args.verbose:
        quiet_libraries()
    return run_command(args.func, args, f"idm-vton {args.command}", verbose=args.verbose)


def run_command(func, args, prog: str, verbose: bool = False) -> int:
    """``func(args)`` with the error policy of the module docstring."""
    from ..errors import IdmVtonError

    try:
        return int(func(args) or 0)
    except IdmVtonError as err:
        if verbose:
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if verbose:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(
            f"{prog}: internal error: {type(err).__name__}: {message} (run with --verbose for "
            "the traceback; please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
