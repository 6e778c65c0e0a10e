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
