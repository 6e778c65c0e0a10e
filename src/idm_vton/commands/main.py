"""``idm-vton``: the command line. Each command is a module of this package that parses its
options and calls the library.

Every mistake a user can make ends in one line on stderr and exit code 2, with no output file:
an :class:`~idm_vton.errors.IdmVtonError`, an argparse mistake (its message, not the usage), an
``OSError`` (the path and the reason: a full disk, a read-only folder...). Ctrl-C ends in one
line and exit code 130, wherever it comes, the imports of start-up included. Anything else is a
bug, reported in one line with exit code 1 (``--verbose`` shows the traceback). When stderr is
not a terminal, progress bars are off, so the error line stands alone there.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import warnings

__all__ = [
    "COMMANDS",
    "OneLineParser",
    "build_parser",
    "describe_command",
    "cli",
    "describe_os_error",
    "exit_quietly_on_interrupt",
    "quiet_libraries",
    "when_imported",
    "main",
    "run_command",
]

#: The command modules, in the order ``--help`` lists them. Each defines ``HELP``,
#: ``add_arguments(parser)`` and ``run(args) -> int``.
COMMANDS = {
    "tryon": "tryon",
    "describe": "describe",
    "convert": "convert",
    "evaluate": "evaluate",
    "evaluate-annotator": "evaluate_annotator",
    "infer-dataset": "infer_dataset",
    "train": "train",
    "train-annotator": "train_annotator",
    "customize": "customize",
    "preprocess": "preprocess",
    "mask": "mask",
    "download": "download",
    "serve": "serve",
}


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, ``PROG: error: MESSAGE (see PROG
    --help)``, instead of the whole usage; its sub-command parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        # Unknown options are the sub-command's mistake: say so under its name.
        args, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = getattr(args, "command_parser", self)
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        return args


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="idm-vton",
        description="IDM-VTON virtual try-on (Choi et al., ECCV 2024) on current diffusers.",
    )
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="show library logs and tracebacks"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"{__package__}.{module_name}")
        command = sub.add_parser(name, help=module.HELP, description=describe_command(module))
        module.add_arguments(command)
        command.set_defaults(func=module.run, command_parser=command)
    return parser


def describe_command(module) -> str:
    """The ``--help`` description of a command module: its docstring's first paragraph, on one
    line, as plain text (reStructuredText markup such as double backticks and roles removed)."""
    paragraph = (module.__doc__ or module.HELP).strip().split("\n\n")[0]
    text = " ".join(paragraph.split())
    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return text.replace("``", "")


def quiet_libraries() -> None:
    """Only errors from the libraries underneath (diffusers, transformers, warnings), and none
    of their progress bars.

    diffusers and transformers are not imported for this: the verbosity goes through their
    environment variables, and their progress bars are turned off when (if ever) a command
    imports them, so a command that fails early, or prints help, never pays for loading them.
    """
    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    # Their "Loading weights" bars would put lines of their own around a one-line error.
    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        when_imported(name, _quiet_library_logging)


def _quiet_library_logging(module) -> None:
    module.set_verbosity_error()
    module.disable_progress_bar()


def when_imported(name: str, callback) -> None:
    """Call ``callback(module)`` once the module ``name`` is imported (now, if it already is)."""
    if name in sys.modules:
        callback(sys.modules[name])
        return
    sys.meta_path.insert(0, _AfterImport(name, callback))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of one module to run a callback after it."""

    def __init__(self, name: str, callback) -> None:
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once; and so the lookup below finds the real spec
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        execute, callback = spec.loader.exec_module, self.callback

        def exec_module(module) -> None:
            execute(module)
            callback(module)

        spec.loader.exec_module = exec_module
        return spec


def main(argv: list[str] | None = None) -> int:
    """Run ``idm-vton`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    prog = "idm-vton"
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exit:  # --help, or a usage error argparse has already printed
            return exit.code if isinstance(exit.code, int) else int(exit.code is not None)
        prog = f"idm-vton {args.command}"
        if not args.verbose:
            quiet_libraries()
    except KeyboardInterrupt:  # during the imports of the commands and libraries
        return _interrupted(prog)
    except Exception as err:  # e.g. no usable temporary folder for a library's import
        verbose = any(a in ("--verbose", "-v") for a in (sys.argv[1:] if argv is None else argv))
        return _failed(err, prog, verbose)
    return run_command(args.func, args, prog, verbose=args.verbose)


def cli(argv: list[str] | None = None) -> int:
    """The ``idm-vton`` program: :func:`main`, then a Ctrl-C while the process is exiting (its
    libraries' exit handlers, threads being joined) ends it at once with one line and exit code
    130, instead of a traceback and the command's own exit code."""
    code = main(argv)
    exit_quietly_on_interrupt("idm-vton")
    return code


def exit_quietly_on_interrupt(prog: str) -> None:
    """From now on, Ctrl-C prints ``PROG: interrupted`` and ends the process with code 130 at
    once (for the end of a program: the work is done, what is left is the interpreter's exit)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, frame) -> None:
        try:
            sys.stdout.flush()
        finally:
            os.write(2, f"{prog}: interrupted\n".encode())
            os._exit(130)

    signal.signal(signal.SIGINT, stop)


def run_command(func, args, prog: str, verbose: bool = False) -> int:
    """``func(args)`` with the error policy of the module docstring."""
    try:
        with _progress_bars_on_terminals_only():
            return int(func(args) or 0)
    except KeyboardInterrupt:
        return _interrupted(prog)
    except Exception as err:
        try:
            return _failed(err, prog, verbose)
        except KeyboardInterrupt:
            return _interrupted(prog)


def _failed(err: Exception, prog: str, verbose: bool) -> int:
    """Report ``err`` in one line and return the exit code (re-raise it under ``--verbose``)."""
    from ..errors import IdmVtonError
    from ..files import as_write_error

    if verbose:
        raise err
    if isinstance(err, IdmVtonError):
        _say(f"{prog}: error: {_one_line(str(err))}")
        return 2
    io_error = as_write_error(err, None)  # OSError, or an I/O failure in a library's type
    if io_error is not None:
        _say(f"{prog}: error: {_one_line(describe_os_error(io_error))}")
        return 2
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    _say(
        f"{prog}: internal error: {type(err).__name__}: {message} (run with --verbose for "
        "the traceback; please report it)"
    )
    return 1


def describe_os_error(err: OSError) -> str:
    """What went wrong and where, for one line: ``disk full while writing PATH``, or
    ``REASON: PATH``."""
    where = None if err.filename is None else os.fsdecode(err.filename)
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"disk full while writing {where}" if where else "disk full"
    reason = err.strerror or str(err) or type(err).__name__
    if where is None:
        return reason
    if err.filename2 is not None:
        return f"{reason}: {where} -> {os.fsdecode(err.filename2)}"
    return f"{reason}: {where}"


def _say(line: str) -> None:
    """Write one line to stderr in a single write, so that processes sharing the stream (the
    processes of one ``accelerate launch``) never interleave inside a line."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _interrupted(prog: str) -> int:
    _say(f"{prog}: interrupted")
    return 130


def _one_line(text: str) -> str:
    """``text`` on one line: line breaks (in a message, or in a hostile file name) escaped."""
    return text.strip().replace("\r", "\\r").replace("\n", "\\n")


def _progress_bars_on_terminals_only():
    """Progress bars only when stderr is a terminal (:mod:`idm_vton.progress`)."""
    from ..progress import progress_bars

    return progress_bars(getattr(sys.stderr, "isatty", lambda: False)())


if __name__ == "__main__":
    sys.exit(main())
