"""Preprocessing weights fetched from the hub on first use, and `idm-vton download`.

No network: a loopback HTTP server (:mod:`tests.helpers.hub`) stands in for the Hugging Face
hub, serving the Space's files under ``/spaces/{repo}/resolve/{revision}/``. In-process tests
point huggingface_hub's import-time constants (endpoint, cache, offline flag) at it; one test
runs a subprocess with the real ``HF_ENDPOINT`` / ``HF_HOME`` / ``HF_HUB_OFFLINE``.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants, file_download
from PIL import Image
from safetensors import safe_open

from idm_vton.commands.main import main
from idm_vton.errors import PreprocessModelError
from idm_vton.loaders.hub import (
    MODEL_FILES,
    PREPROCESS_REPO_ID,
    fetch_preprocess_models,
    hub_filename,
    models_folder,
)
from idm_vton.loaders.weights import check_weight_file
from idm_vton.preprocess.parsing import ATR_INPUT_SIZE, LIP_INPUT_SIZE
from idm_vton.preprocess.preprocessor import Preprocessor

from .helpers.hub import FakeHub, point_hub_at
from .helpers.preprocess_models import make_body_state_dict, make_random_schp, tiny_densepose_state

COMMIT = "0123456789abcdef0123456789abcdef01234567"
RESOLVE = f"/spaces/{PREPROCESS_REPO_ID}/resolve/main/"
REPO_CACHE = "spaces--yisol--IDM-VTON"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, bytes]:
    """Small random-weight files in the real formats, by MODEL_FILES key."""
    root = tmp_path_factory.mktemp("weights")
    make_random_schp(root / "atr.onnx", ATR_INPUT_SIZE, 18, seed=1)
    make_random_schp(root / "lip.onnx", LIP_INPUT_SIZE, 20, seed=2)
    pose = io.BytesIO()
    torch.save(make_body_state_dict(), pose)
    densepose = pickle.dumps({"model": tiny_densepose_state(), "__author__": "test"}, protocol=2)
    return {
        "parsing_atr": (root / "atr.onnx").read_bytes(),
        "parsing_lip": (root / "lip.onnx").read_bytes(),
        "openpose": pose.getvalue(),
        "densepose": densepose,
    }


@pytest.fixture(scope="module")
def server():
    hub = FakeHub(RESOLVE, COMMIT)
    yield hub
    hub.close()


@pytest.fixture
def hub(server, weights, tmp_path, monkeypatch) -> FakeHub:
    """The fake hub serving ``weights``, huggingface_hub pointed at it, an empty cache."""
    server.files = {hub_filename(name): data for name, data in weights.items()}
    server.requests.clear()
    point_hub_at(server, monkeypatch, tmp_path)
    monkeypatch.delenv("IDM_VTON_PREPROCESS_MODELS", raising=False)
    return server


def cache_root(tmp_path: Path) -> Path:
    return (tmp_path / "hf" / "hub" / REPO_CACHE).resolve()


def one_line(message: str) -> str:
    assert message.strip() and "\n" not in message.strip(), message
    return message


# ---------------------------------------------------------------------------- format check
def test_check_weight_file_recognises_each_format_by_its_first_bytes(weights, tmp_path):
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(512)}, legacy, _use_new_zipfile_serialization=False)
    files = {"onnx": "parsing_atr", "torch": "openpose", "pickle": "densepose"}
    for fmt, name in files.items():
        (tmp_path / name).write_bytes(weights[name])
        assert check_weight_file(tmp_path / name, "m", "src", fmt=fmt) == tmp_path / name
        assert (
            check_weight_file(tmp_path / name, "m", "src") == tmp_path / name
        )  # no fmt: as before
    assert check_weight_file(legacy, "m", "src", fmt="torch") == legacy  # legacy pickle format
    for fmt, name in [("onnx", "openpose"), ("torch", "parsing_atr"), ("pickle", "openpose")]:
        with pytest.raises(PreprocessModelError, match="are not an? .* starts with"):
            check_weight_file(tmp_path / name, "m", "src", fmt=fmt)
    noise = tmp_path / "noise.onnx"
    noise.write_bytes(b"\x00\xff" * 1024)
    with pytest.raises(PreprocessModelError, match="not an ONNX model"):
        check_weight_file(noise, "m", "src", fmt="onnx")
    with pytest.raises(ValueError, match="unknown weight format"):
        check_weight_file(noise, "m", "src", fmt="safetensors")


# ---------------------------------------------------------------------------- fetching
def test_first_call_downloads_and_the_second_uses_the_cache(hub, weights, tmp_path):
    paths = fetch_preprocess_models()
    assert sorted(hub.gets()) == sorted(hub_filename(name) for name in MODEL_FILES)
    snapshot = cache_root(tmp_path) / "snapshots" / COMMIT
    for name, path in paths.items():
        assert path == snapshot / "ckpt" / MODEL_FILES[name]
        assert path.read_bytes() == weights[name]
    assert models_folder(paths) == snapshot / "ckpt"  # the demo's ckpt/ layout, usable as a folder

    hub.requests.clear()
    assert fetch_preprocess_models() == paths
    assert hub.gets() == []  # only metadata (HEAD) requests: the content came from the cache
    assert fetch_preprocess_models(local_files_only=True) == paths


def test_placeholder_served_by_the_hub_is_refused_and_removed(hub, weights, tmp_path):
    hub.files[hub_filename("parsing_atr")] = b"put parsing_atr.onnx here"
    with pytest.raises(PreprocessModelError) as info:
        fetch_preprocess_models(["parsing_atr"])
    message = one_line(str(info.value))
    assert "placeholder" in message and "deleted from the Hugging Face cache" in message
    root = cache_root(tmp_path)
    assert not (root / "snapshots" / COMMIT / hub_filename("parsing_atr")).exists()
    assert list((root / "blobs").iterdir()) == []  # the blob went with its snapshot link

    hub.files[hub_filename("parsing_atr")] = weights["parsing_atr"]  # the hub is fixed
    path = fetch_preprocess_models(["parsing_atr"])["parsing_atr"]
    assert path.read_bytes() == weights["parsing_atr"]


@pytest.mark.parametrize(
    "name, damage, problem",
    [
        ("parsing_atr", lambda data: data[:200], "truncated"),
        ("densepose", lambda data: b"PK\x03\x04" + data[4:], "not a pickle file"),
        (
            "openpose",
            lambda data: b"version https://git-lfs.github.com/spec/v1\n",
            "git-lfs pointer",
        ),
    ],
)
def test_a_corrupt_cached_file_is_deleted_and_downloaded_again(
    hub, weights, tmp_path, name, damage, problem
):
    path = fetch_preprocess_models([name])[name]
    path.write_bytes(damage(weights[name]))  # through the snapshot link: corrupts the blob
    hub.requests.clear()
    with pytest.raises(PreprocessModelError) as info:
        fetch_preprocess_models([name])
    message = one_line(str(info.value))
    assert problem in message and "the next run downloads it again" in message
    assert hub.gets() == []
    assert not path.exists() and not path.is_symlink()
    assert list((cache_root(tmp_path) / "blobs").iterdir()) == []

    assert fetch_preprocess_models([name])[name].read_bytes() == weights[name]
    assert hub.gets() == [hub_filename(name)]


def test_offline_without_cache_lists_every_missing_file(hub, monkeypatch):
    fetch_preprocess_models(["openpose"])  # cached while online
    hub.requests.clear()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PreprocessModelError) as info:
        fetch_preprocess_models()
    message = one_line(str(info.value))
    assert hub.requests == []
    for name in ("parsing_atr", "parsing_lip", "densepose"):
        assert hub_filename(name) in message
    assert hub_filename("openpose") not in message  # found in the cache
    assert "HF_HUB_OFFLINE" in message
    assert "--preprocess-models DIR" in message and "IDM_VTON_PREPROCESS_MODELS" in message
    assert fetch_preprocess_models(["openpose"])["openpose"].is_file()  # cached ones still work


def test_other_hub_failures_name_the_repo_and_file(hub):
    del hub.files[hub_filename("densepose")]
    with pytest.raises(PreprocessModelError) as info:
        fetch_preprocess_models(["densepose"])
    message = one_line(str(info.value))
    assert f"cannot download {hub_filename('densepose')}" in message
    assert f"Space {PREPROCESS_REPO_ID}" in message and "RemoteEntryNotFoundError" in message
    assert "--preprocess-models DIR" in message


class _DiskFills:
    """A file object that writes half of the first chunk, then fails as a full disk does."""

    def __init__(self, file, error: Exception) -> None:
        self._file = file
        self._error = error
        self.name = file.name

    def write(self, data: bytes) -> int:
        self._file.write(data[: len(data) // 2])
        self._file.flush()
        raise self._error

    def __getattr__(self, name: str):
        return getattr(self._file, name)


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("Data processing error: IO Error: No space left on device (os error 28)"),
    ],
    ids=["oserror", "xet-style-text"],
)
def test_disk_full_is_one_line_and_leaves_nothing_a_later_run_would_trust(
    hub, weights, tmp_path, monkeypatch, error
):
    real_http_get = file_download.http_get
    partial: list[str] = []

    def http_get_on_full_disk(url, temp_file, **kwargs):
        wrapped = _DiskFills(temp_file, error)
        partial.append(wrapped.name)
        return real_http_get(url, wrapped, **kwargs)

    monkeypatch.setattr(file_download, "http_get", http_get_on_full_disk)
    with pytest.raises(PreprocessModelError) as info:
        fetch_preprocess_models(["openpose"])
    message = one_line(str(info.value))
    assert "no space left" in message and str(tmp_path / "hf" / "hub") in message
    root = cache_root(tmp_path)
    assert partial and not any(Path(p).exists() for p in partial)  # partial download removed
    assert [p for p in root.rglob("*") if p.is_file() and "blobs" in p.parts] == []
    assert not (root / "snapshots" / COMMIT / hub_filename("openpose")).exists()

    monkeypatch.setattr(file_download, "http_get", real_http_get)  # space freed
    path = fetch_preprocess_models(["openpose"])["openpose"]
    assert path.read_bytes() == weights["openpose"]
    assert hub.gets() == [hub_filename("openpose")] * 2  # the failed download, then a fresh one


# ---------------------------------------------------------------------------- Preprocessor
@pytest.fixture
def photo_path(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "person.png"
    Image.fromarray(rng.integers(0, 256, (160, 120, 3), dtype=np.uint8)).save(path)
    return path


def test_folder_and_environment_variable_override_the_hub(
    hub, weights, tmp_path, monkeypatch, photo_path
):
    folder = tmp_path / "ckpt"
    for name, rel in MODEL_FILES.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(weights[name])
    expected = {name: folder / rel for name, rel in MODEL_FILES.items()}
    assert Preprocessor(folder).model_paths() == expected
    monkeypatch.setenv("IDM_VTON_PREPROCESS_MODELS", str(folder))  # read at call time
    assert Preprocessor().model_paths() == expected
    out = tmp_path / "mask.png"
    assert main(["mask", "--person", str(photo_path), "--out", str(out), "--no-preview"]) == 0
    assert out.is_file()
    assert hub.requests == [] and not (tmp_path / "hf").exists()

    monkeypatch.setenv("IDM_VTON_PREPROCESS_MODELS", str(tmp_path / "missing"))
    with pytest.raises(PreprocessModelError, match=r"not found: \$IDM_VTON_PREPROCESS_MODELS"):
        Preprocessor()


def test_mask_command_fetches_only_the_models_it_needs(hub, tmp_path, photo_path, capsys):
    out = tmp_path / "mask.png"
    assert main(["mask", "--person", str(photo_path), "--out", str(out), "--no-preview"]) == 0
    mask = np.asarray(Image.open(out))
    assert mask.shape == (160, 120)
    assert sorted(hub.gets()) == sorted(
        hub_filename(name) for name in ("parsing_atr", "parsing_lip", "openpose")
    )  # no DensePose download for a mask


def test_mask_command_offline_without_weights_is_one_line(
    hub, tmp_path, photo_path, capsys, monkeypatch
):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "mask.png"
    assert main(["mask", "--person", str(photo_path), "--out", str(out)]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith("idm-vton mask: error:") and hub_filename("parsing_lip") in err
    assert hub_filename("densepose") not in err and not out.exists()


# ---------------------------------------------------------------------------- idm-vton download
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from idm_vton.pipelines.loading import tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny") / "ckpt"
    tiny_pipeline().save_pretrained(folder)
    return folder


def test_download_command_converts_the_model(hub, tiny_checkpoint, tmp_path, capsys):
    from idm_vton import TryOnPipeline
    from idm_vton.pipelines.loading import tiny_pipeline

    out = tmp_path / "converted"
    args = ["download", "--model", str(tiny_checkpoint), "--skip-preprocess", "--skip-annotator"]
    args += ["--convert", str(out)]
    assert main([*args, "--dtype", "bf16"]) == 0
    printed = capsys.readouterr().out
    assert f"model: {tiny_checkpoint}" in printed and f"converted model: {out}" in printed
    assert hub.requests == []  # --skip-preprocess
    with safe_open(out / "unet" / "diffusion_pytorch_model.safetensors", "pt") as stored:
        assert {stored.get_slice(k).get_dtype() for k in stored.keys()} == {"BF16"}
    pipe = TryOnPipeline.from_pretrained(out, torch_dtype=torch.bfloat16)
    reference = tiny_pipeline().unet.state_dict()
    assert pipe.unet.state_dict().keys() == reference.keys()
    for key, value in pipe.unet.state_dict().items():
        assert torch.equal(value, reference[key].to(torch.bfloat16)), key

    capsys.readouterr()
    assert main(args) == 2  # the folder exists now
    assert one_line(capsys.readouterr().err).startswith("idm-vton download: error: --convert:")
    assert main(["download", "--model", str(tiny_checkpoint), "--dtype", "fp16"]) == 2
    assert "--dtype only applies with --convert" in one_line(capsys.readouterr().err)


def test_download_command_fetches_the_preprocessing_weights(
    hub, tiny_checkpoint, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["download", "--model", str(tiny_checkpoint), "--skip-annotator"]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith("idm-vton download: error: preprocessing weights not in the")
    assert all(hub_filename(name) in err for name in MODEL_FILES)
    assert hub.requests == []

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert main(["download", "--model", str(tiny_checkpoint), "--skip-annotator"]) == 0
    printed = capsys.readouterr().out
    folder = cache_root(tmp_path) / "snapshots" / COMMIT / "ckpt"
    assert f"preprocessing weights folder (demo ckpt/ layout): {folder}" in printed
    assert sorted(hub.gets()) == sorted(hub_filename(name) for name in MODEL_FILES)
    # what `download` fetched is all a later offline run needs
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert Preprocessor().model_paths() == {n: folder / rel for n, rel in MODEL_FILES.items()}


def test_real_environment_variables_in_a_fresh_process(hub, weights, tmp_path):
    """HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE as users set them (read at import)."""
    code = (
        "import json; from idm_vton.loaders.hub import fetch_preprocess_models; "
        "print(json.dumps({k: str(v) for k, v in fetch_preprocess_models().items()}))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "IDM_VTON_"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "home"), HF_HUB_DISABLE_TELEMETRY="1")

    def run(**extra: str) -> dict[str, str]:
        result = subprocess.run(
            [sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    first = run()
    assert sorted(hub.gets()) == sorted(hub_filename(name) for name in MODEL_FILES)
    assert all(p.startswith(str((tmp_path / "home" / "hub").resolve())) for p in first.values())
    hub.requests.clear()
    assert run(HF_HUB_OFFLINE="1") == first
    assert hub.requests == []  # offline: served from the cache without a single request
    assert {n: Path(p).read_bytes() for n, p in first.items()} == weights
