"""``--device`` / ``--preprocess-device`` as a careless or hostile user gives them, in every command
that takes one: a name torch does not know, a kind this project does not run on, a backend this
machine does not have (CUDA, XPU, MPS), an index past the last GPU. Each ends in one line naming
the flag and the device before any work, and nothing on disk; fp16 mixed precision on the CPU too
(``customize`` here; ``train``'s case is in test_train.py).

The backends are made unavailable (or one-GPU) with monkeypatch, so the cases mean the same on a
machine with a GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from idm_vton.devices import resolve_device
from idm_vton.errors import UsageError

from ..conftest import EXAMPLES
from .conftest import assert_user_error, files_under

IMAGES = [
    "--person", EXAMPLES / "person.jpg", "--garment", EXAMPLES / "garment.jpg",
    "--mask", EXAMPLES / "mask.png", "--pose", EXAMPLES / "densepose.png",
]  # fmt: skip
SMALL = ["--height", "64", "--width", "48"]


def _tryon(out: Path, flag: str, device: str) -> list:
    other = "--preprocess-device" if flag == "--device" else "--device"
    return ["tryon", "--model", "tiny", *IMAGES, *SMALL, "--steps", "1", other, "cpu",
            flag, device, "--out", out / "out.png"]  # fmt: skip


# command -> (flag, argv builder for an output folder and a device)
COMMANDS = {
    "tryon": ("--device", lambda out, d: _tryon(out, "--device", d)),
    "tryon-preprocess": ("--preprocess-device", lambda out, d: _tryon(out, "--preprocess-device", d)),
    "customize": ("--device", lambda out, d: [
        "customize", "--model", "tiny", *IMAGES, "--description", "t-shirt", *SMALL,
        "--device", d, "--out", out / "delta.safetensors"]),
    "evaluate": ("--device", lambda out, d: [
        "evaluate", EXAMPLES, EXAMPLES, "--metrics", "ssim", "--device", d,
        "--json", out / "scores.json"]),
    "infer-dataset": ("--device", lambda out, d: [
        "infer-dataset", "--model", "tiny", "--data", out / "missing-data", "--dataset",
        "vitonhd", "--device", d, "--out", out / "results"]),
    "mask": ("--preprocess-device", lambda out, d: [
        "mask", "--person", EXAMPLES / "person.jpg", "--preprocess-models", out / "no-models",
        "--preprocess-device", d, "--out", out / "mask.png"]),
    "preprocess": ("--preprocess-device", lambda out, d: [
        "preprocess", "--input", EXAMPLES / "person.jpg", "--preprocess-models",
        out / "no-models", "--preprocess-device", d, "--output", out / "dataset"]),
    "serve": ("--device", lambda out, d: ["serve", "--model", "tiny", "--device", d]),
}  # fmt: skip

# device -> (backends made available: {kind: device count}, fragments of the message)
DEVICES = {
    "gpu": ({}, ("unknown device 'gpu'",)),
    "cuda 0": ({}, ("unknown device",)),
    "meta": ({}, ("unsupported device 'meta'",)),
    "hpu": ({}, ("unsupported device 'hpu'",)),
    "cuda": ({}, ("'cuda'", "CUDA is not available")),
    "cuda:0": ({}, ("'cuda:0'", "CUDA is not available")),
    "xpu": ({}, ("'xpu'", "XPU is not available")),
    "mps": ({}, ("'mps'", "MPS is not available")),
    "cuda:3": ({"cuda": 1}, ("'cuda:3'", "only 1 cuda device")),
}


@pytest.fixture
def backends(monkeypatch):
    """Make CUDA, XPU and MPS unavailable; ``backends({"cuda": 1})`` gives one visible GPU."""

    def set_available(counts: dict[str, int]) -> None:
        for kind in ("cuda", "xpu"):
            module = getattr(torch, kind, None)
            if module is None:
                continue
            n = counts.get(kind, 0)
            monkeypatch.setattr(module, "is_available", lambda n=n: n > 0)
            monkeypatch.setattr(module, "device_count", lambda n=n: n)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)

    set_available({})
    return set_available


@pytest.fixture
def no_server(monkeypatch):
    """``serve`` never starts a server here: an accepted device fails the test instead."""
    import idm_vton.serving.server as server

    def refuse(*args, **kwargs):
        raise AssertionError("serve accepted the device and started")

    monkeypatch.setattr(server, "serve", refuse)


@pytest.mark.parametrize("device", list(DEVICES))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_or_unavailable_device_is_one_line(cli, tmp_path, backends, no_server, command, device):
    counts, fragments = DEVICES[device]
    backends(counts)
    flag, argv = COMMANDS[command]
    before = files_under(tmp_path)
    result = cli(*argv(tmp_path, device))
    assert_user_error(result, command.split("-preprocess")[0], flag, *fragments)
    assert files_under(tmp_path) == before


def test_device_rule_accepts_what_exists(backends):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")  # no GPU: the CPU
    backends({"cuda": 2})
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(UsageError, match="only 2 cuda device"):
        resolve_device("cuda:2")


def test_customize_fp16_mixed_precision_on_cpu_is_refused(cli, tmp_path):
    result = cli(
        "customize", "--model", "tiny", *IMAGES, "--description", "t-shirt", *SMALL,
        "--device", "cpu", "--mixed-precision", "fp16", "--out", tmp_path / "delta.safetensors",
    )  # fmt: skip
    assert_user_error(result, "customize", "--mixed-precision fp16", "CPU")
    assert files_under(tmp_path) == {}
