"""Checkpoint folders as a careless or hostile user hands them to ``idm-vton tryon --model DIR`` and
``idm-vton convert DIR OUT``: the tiny model saved with ``save_pretrained``, then damaged.

Configs that are lists, not JSON or hold nonsense; shard indexes without ``weight_map`` or naming
files outside the component folder (``../``, absolute paths, symlinks); pickles that run code,
that are plain ``pickle.dump`` files or use an old protocol; truncated weight files; a damaged
image projection, scheduler, tokenizer or feature extractor. Each ends in exit code 2, one line
naming the offending file or folder, no output, no code run from a pickle, and no file outside
the checkpoint ever read. The preprocessing models' and metric networks' pickles likewise.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from idm_vton.errors import CheckpointError
from idm_vton.loaders.checkpoint import read_state_dict, weight_files

from ..conftest import EXAMPLES
from ..helpers.pickles import RunsCode
from .conftest import assert_user_error, files_under

ST = "diffusion_pytorch_model.safetensors"
INDEX = f"{ST}.index.json"


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    from idm_vton.pipelines.loading import tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny") / "model"
    tiny_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture
def model(tmp_path, saved_model) -> Path:
    """A fresh copy of the tiny model in ``tmp_path/model``, to damage."""
    return Path(shutil.copytree(saved_model, tmp_path / "model"))


def tryon(cli, model: Path, out: Path):
    return cli(
        "tryon", "--model", model, "--person", EXAMPLES / "person.jpg",
        "--garment", EXAMPLES / "garment.jpg", "--mask", EXAMPLES / "mask.png",
        "--pose", EXAMPLES / "densepose.png", "--height", "64", "--width", "48",
        "--steps", "1", "--device", "cpu", "--out", out,
    )  # fmt: skip


def _outside(model: Path, folder: Path | None = None) -> Path:
    """A valid copy of TryonNet's weights in ``folder`` (default: beside the checkpoint),
    readable and loadable: only the rule keeps the loader from using it. The component's own
    weights are removed."""
    outside = (folder or model.parent) / "outside.safetensors"
    shutil.move(model / "unet" / ST, outside)
    return outside


def _index(folder: Path, weight_map) -> None:
    (folder / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _first_key(folder: Path) -> str:
    return next(iter(load_file(folder / ST)))


# ----------------------------------------------------------------------------- the damages
def list_config(m):
    (m / "unet" / "config.json").write_text("[1, 2]")
    return ("unet/config.json", "JSON object")


def broken_json_config(m):
    (m / "garment_unet" / "config.json").write_text('{"block_out_channels": [32, 64')
    return ("garment_unet/config.json", "not valid JSON")


def binary_config(m):
    (m / "vae" / "config.json").write_bytes(b"\xff\xfe\x00garbage\x80")
    return ("vae/config.json", "not UTF-8")


def nan_ip_scale(m):
    (m / "unet" / "ip_adapter_config.json").write_text('{"num_tokens": 4, "scale": NaN}')
    return ("ip_adapter_config.json", "NaN")


def string_ip_tokens(m):
    (m / "unet" / "ip_adapter_config.json").write_text('{"num_tokens": "many", "scale": 1.0}')
    return ("ip_adapter_config.json", "num_tokens")


def nonsense_unet_config(m):
    path = m / "unet" / "config.json"
    config = json.loads(path.read_text())
    config["block_out_channels"] = "abc"
    path.write_text(json.dumps(config))
    return ("TryonNet", str(m / "unet"))


def integer_weights(m):
    path = m / "unet" / ST
    save_file({k: v.to(torch.int32) for k, v in load_file(path).items()}, path)
    return ("unet", "not floating point")


def index_without_weight_map(m):
    (m / "unet" / INDEX).write_text('{"metadata": {}}')
    return (INDEX, "weight_map")


def index_is_a_list(m):
    (m / "garment_unet" / INDEX).write_text("[]")
    return ("garment_unet/" + INDEX, "JSON object")


def index_names_parent_folder(m):
    outside = _outside(m, m)  # in the checkpoint root, not in unet/
    _index(m / "unet", {_first_key_of(outside): "../outside.safetensors"})
    return ("../outside.safetensors", "outside")


def index_names_grandparent_folder(m):
    outside = _outside(m)  # beside the checkpoint
    _index(m / "unet", {_first_key_of(outside): "../../outside.safetensors"})
    return ("../../outside.safetensors", "outside")


def index_names_absolute_path(m):
    outside = _outside(m)
    _index(m / "unet", {_first_key_of(outside): str(outside)})
    return (str(outside), "outside")


def index_names_symlink_out(m):
    outside = _outside(m)
    os.symlink(outside, m / "unet" / "shard-00001.safetensors")
    _index(m / "unet", {_first_key_of(outside): "shard-00001.safetensors"})
    return ("shard-00001.safetensors", "outside")


def weights_are_symlink_out(m):
    outside = _outside(m)
    os.symlink(outside, m / "unet" / ST)
    return (f"unet/{ST}", "outside")


def index_names_missing_shard(m):
    _index(m / "vae", {_first_key(m / "vae"): "nothere.safetensors"})
    return ("vae/nothere.safetensors", "not found")


def pickle_runs_code(m):
    (m / "unet" / ST).unlink()
    payload = {"w": torch.zeros(64), "x": RunsCode(m.parent / "ran")}
    torch.save(payload, m / "unet" / "diffusion_pytorch_model.bin")
    return ("unet/diffusion_pytorch_model.bin", "refused for safety", "_leave_marker")


def pickle_runs_code_protocol_5(m):
    (m / "unet" / ST).unlink()
    payload = {"w": torch.zeros(512).numpy(), "x": RunsCode(m.parent / "ran")}
    (m / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(payload, protocol=5))
    return ("unet/diffusion_pytorch_model.bin", "refused for safety", "_leave_marker")


def image_encoder_pickle_runs_code(m):
    (m / "image_encoder" / "model.safetensors").unlink()
    payload = {"w": torch.zeros(512), "x": RunsCode(m.parent / "ran")}
    torch.save(payload, m / "image_encoder" / "pytorch_model.bin")
    return ("image_encoder/pytorch_model.bin", "refused for safety", "_leave_marker")


def plain_pickle_of_tensors(m):
    state = load_file(m / "unet" / ST)
    (m / "unet" / ST).unlink()
    with open(m / "unet" / "diffusion_pytorch_model.bin", "wb") as stream:
        pickle.dump(state, stream, protocol=2)
    return ("unet/diffusion_pytorch_model.bin", "plain pickle", "not a torch.save")


def old_protocol_pickle(m):
    state = load_file(m / "garment_unet" / ST)
    (m / "garment_unet" / ST).unlink()
    path = m / "garment_unet" / "diffusion_pytorch_model.bin"
    torch.save(state, path, _use_new_zipfile_serialization=False, pickle_protocol=1)
    return ("garment_unet/diffusion_pytorch_model.bin", "pickle protocol")


def truncated_safetensors(m):
    path = m / "unet" / ST
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return (f"unet/{ST}", "truncated or corrupt")


def truncated_pickle(m):
    state = load_file(m / "garment_unet" / ST)
    (m / "garment_unet" / ST).unlink()
    path = m / "garment_unet" / "diffusion_pytorch_model.bin"
    torch.save(state, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return ("garment_unet/diffusion_pytorch_model.bin", "truncated or corrupt")


def truncated_vae(m):
    path = m / "vae" / ST
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return ("vae",)


def truncated_text_encoder(m):
    path = m / "text_encoder" / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return ("text_encoder",)


def image_projection_config_is_a_list(m):
    (m / "image_projection" / "config.json").write_text("[]")
    return ("image_projection/config.json", "JSON object")


def image_projection_weights_garbage(m):
    (m / "image_projection" / ST).write_bytes(os.urandom(4096))
    return ("image_projection", "IP-Adapter Resampler")


def scheduler_config_is_a_list(m):
    (m / "scheduler" / "scheduler_config.json").write_text("[]")
    return ("scheduler/scheduler_config.json", "JSON object")


def scheduler_config_nonsense(m):
    path = m / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config.update(num_train_timesteps="many", beta_start=[1])
    path.write_text(json.dumps(config))
    return ("scheduler", "cannot load scheduler")


def tokenizer_config_is_a_list(m):
    (m / "tokenizer_2" / "tokenizer_config.json").write_text("[]")
    return ("tokenizer_2/tokenizer_config.json", "JSON object")


def feature_extractor_broken(m):
    (m / "feature_extractor" / "preprocessor_config.json").write_text("{oops")
    return ("feature_extractor/preprocessor_config.json", "not valid JSON")


def _first_key_of(path: Path) -> str:
    return next(iter(load_file(path)))


DAMAGES = [
    list_config, broken_json_config, binary_config, nan_ip_scale, string_ip_tokens,
    nonsense_unet_config, integer_weights, index_without_weight_map, index_is_a_list,
    index_names_parent_folder, index_names_grandparent_folder, index_names_absolute_path, index_names_symlink_out,
    weights_are_symlink_out, index_names_missing_shard, pickle_runs_code,
    pickle_runs_code_protocol_5, image_encoder_pickle_runs_code, plain_pickle_of_tensors,
    old_protocol_pickle, truncated_safetensors, truncated_pickle, truncated_vae,
    truncated_text_encoder, image_projection_config_is_a_list, image_projection_weights_garbage,
    scheduler_config_is_a_list, scheduler_config_nonsense, tokenizer_config_is_a_list,
    feature_extractor_broken,
]  # fmt: skip


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__)
def test_damaged_checkpoint_is_one_line_in_tryon(cli, model, damage):
    fragments = damage(model)
    out = model.parent / "out.png"
    before = files_under(model.parent)
    line = assert_user_error(tryon(cli, model, out), "tryon", *fragments)
    assert "truncated" not in line or "truncated" in fragments[-1]  # never a misdiagnosis
    assert files_under(model.parent) == before  # no output; no code ran from a pickle


# The conversion reads through the same loaders: a sample of the damages, nothing written.
@pytest.mark.parametrize(
    "damage",
    [list_config, index_names_parent_folder, pickle_runs_code, scheduler_config_nonsense],
    ids=lambda f: f.__name__,
)
def test_damaged_checkpoint_is_one_line_in_convert(cli, model, damage):
    fragments = damage(model)
    before = files_under(model.parent)
    result = cli("convert", model, model.parent / "converted", "--dtype", "fp32")
    assert_user_error(result, "convert", *fragments)
    assert files_under(model.parent) == before


def test_symlinks_inside_the_folder_and_the_hub_cache_layout_load(tmp_path, saved_model):
    """The containment rule resolves links: a link to a file of the same folder, and the Hugging
    Face cache's links from ``snapshots/<rev>/`` into ``blobs/``, are the checkpoint's own."""
    expected = load_file(saved_model / "unet" / ST)

    local = tmp_path / "local" / "unet"
    local.mkdir(parents=True)
    shutil.copy(saved_model / "unet" / ST, local / "real.safetensors")
    os.symlink("real.safetensors", local / ST)
    assert weight_files(local) == [local / ST]

    repo = tmp_path / "hub" / "models--someone--tryon"
    (repo / "blobs").mkdir(parents=True)
    shutil.copy(saved_model / "unet" / ST, repo / "blobs" / "0123abcd")
    unet = repo / "snapshots" / "f00d" / "unet"
    unet.mkdir(parents=True)
    os.symlink("../../../blobs/0123abcd", unet / ST)

    for folder in (local, unet):
        loaded = read_state_dict(folder)
        assert loaded.keys() == expected.keys()
        assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    # ... but another repository's blobs are outside this one.
    other = tmp_path / "hub" / "models--other--x" / "blobs"
    other.mkdir(parents=True)
    shutil.copy(saved_model / "unet" / ST, other / "beef")
    (unet / ST).unlink()
    os.symlink(other / "beef", unet / ST)
    with pytest.raises(CheckpointError, match="outside"):
        weight_files(unet)


# ----------------------------------------------------------------- preprocessing and metrics
# The other pickles a user hands over: the DensePose .pkl and OpenPose .pth of the
# preprocessing models, the metric networks' .pth files. Same contract: one line naming the
# file, nothing run, nothing written.
def _densepose_pickle(payload: object) -> bytes:
    return pickle.dumps({"model": payload, "__author__": "test"}, protocol=2)


def _object_arrays(ran: Path) -> bytes:
    return _densepose_pickle({"w": np.array([1, "text", None] * 400, dtype=object)})


def _string_arrays(ran: Path) -> bytes:
    return _densepose_pickle({"w": np.array(["weights"] * 400)})


def _numpy_pickle_runs_code(ran: Path) -> bytes:
    return _densepose_pickle({"w": np.zeros(400, np.float32), "x": RunsCode(ran)})


def _zip_runs_code(ran: Path) -> bytes:  # a torch.save file under the .pkl name
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(400)}, "x": RunsCode(ran)}, buffer)
    return buffer.getvalue()


def _truncated_densepose(ran: Path) -> bytes:
    return _densepose_pickle({"w": np.zeros(4000, np.float32)})[:6000]


def _densepose_without_a_weight(ran: Path) -> bytes:
    from ..helpers.preprocess_models import tiny_densepose_state

    state = tiny_densepose_state()
    state.pop(sorted(state)[0])
    return _densepose_pickle(state)


DENSEPOSE_FILES = {
    "object-arrays": (_object_arrays, ("object array",)),
    "a-weight-missing": (_densepose_without_a_weight, ("lacks 1 weights",)),
    "string-arrays": (_string_arrays, ("expected numbers",)),
    "numpy-pickle-runs-code": (_numpy_pickle_runs_code, ("refusing to load global",)),
    "torch-zip-runs-code": (_zip_runs_code, ("refused for safety", "_leave_marker")),
    "truncated": (_truncated_densepose, ("truncated or corrupt",)),
}


@pytest.mark.parametrize("case", list(DENSEPOSE_FILES))
def test_damaged_densepose_weights_are_one_line(cli, tmp_path, case):
    make, fragments = DENSEPOSE_FILES[case]
    weights = tmp_path / "ckpt" / "densepose" / "model_final_162be9.pkl"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(make(tmp_path / "ran"))
    before = files_under(tmp_path)
    result = cli(
        "tryon", "--model", "tiny", "--person", EXAMPLES / "person.jpg",
        "--garment", EXAMPLES / "garment.jpg", "--mask", EXAMPLES / "mask.png", "--pose", "auto",
        "--preprocess-models", tmp_path / "ckpt", "--height", "64", "--width", "48",
        "--steps", "1", "--device", "cpu", "--out", tmp_path / "out.png",
    )  # fmt: skip
    assert_user_error(result, "tryon", str(weights), *fragments)
    assert files_under(tmp_path) == before


@pytest.fixture(scope="module")
def parsers(tmp_path_factory) -> Path:
    """The two random SCHP parsers in the demo's layout (valid ONNX files)."""
    from ..helpers.preprocess_models import make_random_parsers

    return make_random_parsers(tmp_path_factory.mktemp("parsers"))


def _openpose_misshaped(ran: Path) -> dict:
    from ..helpers.preprocess_models import make_body_state_dict

    state = make_body_state_dict()
    bias = next(k for k in state if k.endswith(".bias"))
    state[bias] = torch.zeros(state[bias].numel() + 1)
    return state


OPENPOSE_FILES = {
    "runs-code": (lambda ran: {"w": torch.zeros(400), "x": RunsCode(ran)}, "refused for safety"),
    "a-list": (lambda ran: [torch.zeros(400)], "state dict of tensors"),
    "mis-shaped": (_openpose_misshaped, "do not fit the network"),
}


@pytest.mark.parametrize("case", list(OPENPOSE_FILES))
def test_damaged_openpose_weights_are_one_line(cli, tmp_path, parsers, case):
    make, fragment = OPENPOSE_FILES[case]
    models = Path(shutil.copytree(parsers, tmp_path / "ckpt"))
    weights = models / "openpose" / "ckpts" / "body_pose_model.pth"
    weights.parent.mkdir(parents=True)
    torch.save(make(tmp_path / "ran"), weights)
    before = files_under(tmp_path)
    result = cli(
        "mask", "--person", EXAMPLES / "person.jpg", "--preprocess-models", models,
        "--out", tmp_path / "mask.png",
    )  # fmt: skip
    assert_user_error(result, "mask", str(weights), fragment)
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("damage", ["runs-code", "plain-pickle"])
def test_damaged_metric_weights_are_one_line(cli, tmp_path, damage):
    weights = tmp_path / "weights" / "alexnet-owt-7be5be79.pth"
    weights.parent.mkdir()
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, weights.parent / "alex.pth")
    state = {"features.0.weight": torch.zeros(64, 3, 11, 11)}
    if damage == "runs-code":
        torch.save({**state, "x": RunsCode(tmp_path / "ran")}, weights)
    else:
        weights.write_bytes(pickle.dumps(state, protocol=2))
    before = files_under(tmp_path)
    result = cli(
        "evaluate", EXAMPLES, EXAMPLES, "--metrics", "lpips", "--weights-dir", weights.parent,
        "--no-verify-weights", "--json", tmp_path / "scores.json",
    )  # fmt: skip
    fragment = "refused for safety" if damage == "runs-code" else "plain pickle"
    assert_user_error(result, "evaluate", str(weights), fragment)
    assert files_under(tmp_path) == before


def vae_pickle_runs_code(m):
    (m / "vae" / ST).unlink()
    payload = {"w": torch.zeros(8), "x": RunsCode(m.parent / "ran")}
    torch.save(payload, m / "vae" / "diffusion_pytorch_model.bin")
    return ("vae/diffusion_pytorch_model.bin", "refused for safety", "_leave_marker")


@pytest.mark.parametrize(
    "damage",
    [pickle_runs_code, vae_pickle_runs_code, image_encoder_pickle_runs_code],
    ids=lambda f: f.__name__,
)
def test_a_refused_pickle_is_the_only_line_in_a_real_process(model, damage):
    """No library's own log line ahead of the refusal (diffusers logs an error when it looks for
    safetensors in a folder of pickles): seen only outside pytest's capture, in a process."""
    from .conftest import cli_subprocess

    fragments = damage(model)
    result = tryon(cli_subprocess, model, model.parent / "out.png")
    assert_user_error(result, "tryon", *fragments)
