"""``--help`` is instant and useful: it loads no heavy library, and every flag says what it does."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from idm_vton.commands.main import COMMANDS, build_parser, describe_command

# Libraries whose import takes seconds on a small machine; printing help needs none of them.
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "huggingface_hub", "gradio", "ray")

_PROBE = """
import contextlib, io, json, sys
from idm_vton.commands.main import main
from idm_vton.commands.train import main as train_main
codes = {}
for argv in [["--help"]] + [[name, "--help"] for name in sys.argv[1:]]:
    with contextlib.redirect_stdout(io.StringIO()):
        codes[" ".join(argv)] = main(argv)
with contextlib.redirect_stdout(io.StringIO()):
    codes["idm_vton.train --help"] = train_main(["--help"])
print(json.dumps({"codes": codes, "modules": sorted(sys.modules)}))
"""


def test_help_of_every_command_imports_no_heavy_library():
    run = subprocess.run(
        [sys.executable, "-c", _PROBE, *COMMANDS],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    report = json.loads(run.stdout)
    assert set(report["codes"].values()) == {0}, report["codes"]
    loaded = {name.split(".")[0] for name in report["modules"]}
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_flag_has_help_a_user_can_act_on(name):
    parser = _subparsers()[name]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flag = action.option_strings[0] if action.option_strings else action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"{name} {flag}: no help"
        assert len(action.help) >= 12, f"{name} {flag}: {action.help!r}"
    text = " ".join(parser.format_help().split())  # wrapped lines joined
    for leftover in ("``", ":class:", ":func:", "(default None)", "(default (", "%("):
        assert leftover not in text, f"{name}: {leftover!r} in its help"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_description_is_whole_sentences(name):
    description = _subparsers()[name].description
    assert description.endswith("."), description
    assert description.count("(") == description.count(")"), description
    assert "``" not in description


def test_description_is_the_whole_first_paragraph():
    module = type(sys)("example")
    module.HELP = "x"
    module.__doc__ = (
        "Score results (``idm-vton evaluate``): LPIPS,\nSSIM and :class:`~a.b.Config`.\n\nMore."
    )
    assert describe_command(module) == "Score results (idm-vton evaluate): LPIPS, SSIM and Config."


_LATE_INTERRUPT = """
import atexit, os, signal, sys, time
from idm_vton.commands.main import cli

def interrupt_while_exiting():  # as a Ctrl-C while a library's exit handler runs
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)

atexit.register(interrupt_while_exiting)
sys.exit(cli(["--help"]))
"""


def test_ctrl_c_while_exiting_is_one_line_and_code_130():
    run = subprocess.run(
        [sys.executable, "-c", _LATE_INTERRUPT], capture_output=True, text=True, timeout=120
    )
    assert run.stderr == "idm-vton: interrupted\n", run.stderr
    assert run.returncode == 130
    assert run.stdout.startswith("usage: idm-vton")  # the command's own output was not lost


def _numeric_actions():
    for name, parser in _subparsers().items():
        for action in parser._actions:
            default = action.default
            numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
            numeric = numeric or (
                isinstance(default, tuple) and default and isinstance(default[0], (int, float))
            )
            if action.type is not None and numeric:
                yield name, action


def test_every_numeric_flag_refuses_non_finite_and_huge_values():
    """NaN, infinities and (for counts) integers past any sensible count are refused where they
    are parsed,
    in one argparse line, rather than reaching a library (an "internal error")."""
    checked = 0
    for name, action in _numeric_actions():
        default = action.default[0] if action.nargs == 2 else action.default
        try:  # an integer option read as the integer written (not MB turned into bytes)
            value = action.type(str(default))
            counts = type(value) is int and value == default
        except (argparse.ArgumentTypeError, ValueError):  # a value in another form ("HxW")
            counts = False
        huge = (str(2**64), str(-(2**64))) if counts else ()
        for text in ("nan", "inf", "-inf", *huge):
            with pytest.raises((argparse.ArgumentTypeError, ValueError)):
                action.type(text)
                pytest.fail(f"{name} {action.option_strings} took {text}")
        checked += 1
    assert checked >= 40  # steps, seeds, sizes, rates... of every command


def test_steps_beyond_the_noise_schedule_and_seeds_beyond_generators_are_refused():
    for name in ("tryon", "infer-dataset"):
        parser = _subparsers()[name]
        steps = next(a for a in parser._actions if a.dest == "steps")
        seed = next(a for a in parser._actions if a.dest == "seed")
        assert steps.type("1000") == 1000
        for bad in ("1001", "0", "-5"):
            with pytest.raises(argparse.ArgumentTypeError, match="steps must be from 1 to 1000"):
                steps.type(bad)
        assert seed.type(str(2**32 - 1)) == 2**32 - 1
        for bad in ("-1", str(2**32)):
            with pytest.raises(argparse.ArgumentTypeError, match="seed must be from 0"):
                seed.type(bad)
