"""Data files as a careless or hostile user hands them over: VITON-HD tag files and DressCode
captions (through ``infer-dataset``), pairs files naming files outside the dataset, training state
(through ``train --resume latest``) and customization files (through ``tryon --customization``).

Each damaged file ends in exit code 2, one line naming the file (and what is wrong with it), no
output, nothing changed on disk and no code run from a pickle; the published shapes still load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from idm_vton.data.captions import load_vitonhd_tags
from idm_vton.loaders.customization import save_customization
from idm_vton.pipelines.loading import tiny_pipeline
from idm_vton.training.customize import CustomizeConfig, customize

from ..conftest import EXAMPLES
from ..helpers.datasets import make_dresscode, vitonhd_fixture
from ..helpers.pickles import RunsCode
from .conftest import assert_user_error, files_under

H, W = 64, 48


# ------------------------------------------------------------------- tag files and captions
vitonhd = vitonhd_fixture(n=2)


@pytest.fixture
def dataset(tmp_path, vitonhd) -> Path:
    return Path(shutil.copytree(vitonhd, tmp_path / "data"))


def infer(cli, data: Path, out: Path, *extra: str):
    return cli(
        "infer-dataset", "--model", "tiny", "--data", data, "--dataset", "vitonhd",
        "--out", out, "--height", str(H), "--width", str(W), "--steps", "1", "--device", "cpu",
        "--num-workers", "0", "--no-progress", *extra,
    )  # fmt: skip


def _tags(entries) -> str:
    return json.dumps({"data": entries})


TAG_FILES = {
    "tag_info-is-a-string": (
        _tags([{"file_name": "00000_00.jpg", "tag_info": "Short Sleeve"}]),
        ("'tag_info' of 00000_00.jpg is not a list",),
    ),
    "tag_info-holds-null": (
        _tags([{"file_name": "00000_00.jpg", "tag_info": [None]}]),
        ("not a tag object",),
    ),
    "tag_category-is-a-number": (
        _tags(
            [{"file_name": "00000_00.jpg", "tag_info": [{"tag_name": "item", "tag_category": 7}]}]
        ),
        ("'tag_category'", "not a string"),
    ),  # fmt: skip
    "entry-without-file_name": (_tags([{"tag_info": []}]), ("'file_name'",)),
    "file_name-is-a-list": (_tags([{"file_name": ["a.jpg"]}]), ("'file_name'",)),
    "entries-not-a-list": (json.dumps({"data": {"file_name": "x"}}), ("list of entries",)),
    "top-level-list": ("[]", ("JSON object",)),
    "not-json": ('{"data": [', ("not valid JSON",)),
    "nan": ('{"data": [{"file_name": "a.jpg", "tag_info": NaN}]}', ("NaN",)),
}


@pytest.mark.parametrize("case", list(TAG_FILES))
def test_damaged_tag_file_is_one_line(cli, dataset, case):
    text, fragments = TAG_FILES[case]
    tags = dataset / "test" / "vitonhd_test_tagged.json"
    tags.write_text(text)
    before = files_under(dataset.parent)
    result = infer(cli, dataset, dataset.parent / "out")
    assert_user_error(result, "infer-dataset", str(tags), *fragments)
    assert files_under(dataset.parent) == before


def test_binary_tag_file_is_one_line(cli, dataset):
    tags = dataset / "test" / "vitonhd_test_tagged.json"
    tags.write_bytes(b'{"data": [\xff\xfe\x00]}')
    before = files_under(dataset.parent)
    assert_user_error(infer(cli, dataset, dataset.parent / "out"), "infer-dataset", str(tags),
                      "UTF-8")  # fmt: skip
    assert files_under(dataset.parent) == before


def test_odd_but_valid_tag_entries_give_the_official_descriptions(tmp_path):
    path = tmp_path / "tags.json"
    path.write_text(
        _tags([
            {"file_name": "a.jpg", "tag_info": None},  # no tags at all
            {"file_name": "b.jpg", "tag_info": [{"tag_name": "item", "tag_category": None}]},
            {"file_name": "c.jpg", "tag_info": [{"tag_name": None, "tag_category": "x"},
                                                {"tag_name": "item", "tag_category": "Blouse"}]},
            {"file_name": "d.jpg"},
        ])
    )  # fmt: skip
    assert load_vitonhd_tags(path) == {"a.jpg": "", "b.jpg": "", "c.jpg": "Blouse ", "d.jpg": ""}


def test_binary_dresscode_caption_file_is_one_line(cli, tmp_path):
    data = tmp_path / "dresscode"
    make_dresscode(data)
    captions = data / "dresses" / "dc_caption.txt"
    captions.write_bytes(b"020001_1.jpg \xff\xfe long dress\n")
    before = files_under(tmp_path)
    result = cli(
        "infer-dataset", "--model", "tiny", "--data", data, "--dataset", "dresscode",
        "--out", tmp_path / "out", "--device", "cpu", "--num-workers", "0",
    )  # fmt: skip
    assert_user_error(result, "infer-dataset", str(captions), "UTF-8")
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("name", ["../../../etc/passwd", "/etc/passwd", "image/../../x.jpg"])
def test_pairs_file_naming_files_outside_the_dataset_is_one_line(cli, dataset, name):
    pairs = dataset / "test_pairs.txt"
    pairs.write_text(f"00000_00.jpg 00001_00.jpg\n{name} 00000_00.jpg\n")
    before = files_under(dataset.parent)
    result = infer(cli, dataset, dataset.parent / "out")
    assert_user_error(result, "infer-dataset", f"{pairs} line 2", name)
    assert files_under(dataset.parent) == before


@pytest.mark.parametrize("text", ["[]", "{oops", '"results"'])
def test_damaged_manifest_of_an_earlier_run_is_one_line(cli, dataset, text):
    out = dataset.parent / "out"
    out.mkdir()
    (out / "manifest.json").write_text(text)
    before = files_under(dataset.parent)
    result = infer(cli, dataset, out)
    assert_user_error(result, "infer-dataset", str(out / "manifest.json"))
    assert files_under(dataset.parent) == before


def test_binary_evaluate_pairs_file_is_one_line(cli, tmp_path):
    pairs = tmp_path / "test_pairs.txt"
    pairs.write_bytes(b"person.jpg \xff\xfegarment.jpg\n")
    before = files_under(tmp_path)
    result = cli(
        "evaluate", EXAMPLES, EXAMPLES, "--metrics", "clip_i", "--pairs-file", pairs,
        "--garments-dir", EXAMPLES, "--json", tmp_path / "scores.json",
    )  # fmt: skip
    assert_user_error(result, "evaluate", str(pairs), "UTF-8")
    assert files_under(tmp_path) == before


@pytest.mark.parametrize(
    "content",
    ['{"people": "x"}', '{"people": [{"pose_keypoints_2d": ["a", "b"]}]}', "[1, 2]", "{"],
)
def test_damaged_openpose_json_is_a_dataset_error_naming_it(tmp_path, content):
    from idm_vton.errors import DatasetError
    from idm_vton.preprocess.openpose import load_openpose_json

    path = tmp_path / "00000_00_keypoints.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=str(path)) as error:
        load_openpose_json(path)
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------- training state
def train_args(data: Path, output: Path, *extra) -> list:
    return [
        "train", "--model", "tiny", "--data", data, "--dataset", "vitonhd", "--output", output,
        "--resolution", str(H), str(W), "--report-to", "none", "--no-augment", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory, vitonhd):
    """An output folder after one training step (``checkpoint-1``), written once."""
    from idm_vton.commands.main import main

    output = tmp_path_factory.mktemp("trained") / "run"
    assert main([str(a) for a in train_args(vitonhd, output, "--max-steps", "1")]) == 0
    return output


@pytest.fixture
def run(tmp_path, trained) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


STATE = "checkpoint-1/trainer_state.json"
OPTIMIZER = "checkpoint-1/training_state/optimizer.bin"


def _edit_state(**changes):
    def damage(run: Path):
        path = run / STATE
        state = json.loads(path.read_text())
        state.update(changes)
        path.write_text(json.dumps(state))

    return damage


def _truncate(relative: str):
    def damage(run: Path):
        path = run / relative
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return damage


def _pickled_code(run: Path):
    torch.save({"state": {}, "x": RunsCode(run.parent / "ran")}, run / OPTIMIZER)


RESUME_DAMAGES = {
    "state-empty-object": (lambda r: (r / STATE).write_text("{}"), (STATE, "global_step")),
    "state-a-list": (lambda r: (r / STATE).write_text("[]"), (STATE, "JSON object")),
    "state-not-json": (lambda r: (r / STATE).write_text("garbage"), (STATE, "not valid JSON")),
    "state-step-a-string": (_edit_state(global_step="1"), (STATE, "'global_step'", "integer")),
    "state-batch-size-0": (_edit_state(batch_size=0), (STATE, "'batch_size'", ">= 1")),
    "state-step-a-bool": (_edit_state(global_step=True), (STATE, "'global_step'")),
    "optimizer-runs-code": (_pickled_code, (OPTIMIZER, "refused for safety", "_leave_marker")),
    "optimizer-truncated": (_truncate(OPTIMIZER), (OPTIMIZER, "truncated or corrupt")),
    "optimizer-missing": (lambda r: (r / OPTIMIZER).unlink(), ("optimizer.bin", "missing")),
    "training-state-missing": (
        lambda r: shutil.rmtree(r / "checkpoint-1" / "training_state"),
        ("checkpoint-1", "training_state"),
    ),
    "unet-weights-truncated": (
        _truncate("checkpoint-1/unet/diffusion_pytorch_model.safetensors"),
        ("checkpoint-1/unet/diffusion_pytorch_model.safetensors", "truncated or corrupt"),
    ),
}


@pytest.mark.parametrize("case", list(RESUME_DAMAGES))
def test_damaged_training_state_is_one_line_on_resume(cli, vitonhd, run, case):
    damage, fragments = RESUME_DAMAGES[case]
    damage(run)
    before = files_under(run.parent)
    result = cli(*train_args(vitonhd, run, "--max-steps", "2", "--resume", "latest"))
    assert_user_error(result, "train", *fragments)
    assert files_under(run.parent) == before  # nothing new; no code ran from a pickle


# ------------------------------------------------------------------- customization files
@pytest.fixture(scope="module")
def deltas(tmp_path_factory) -> dict[str, Path]:
    """A full and a LoRA customization of the tiny model (``--model tiny``), one step each."""
    folder = tmp_path_factory.mktemp("deltas")
    paths = {}
    for method in ("full", "lora"):
        config = CustomizeConfig(steps=1, method=method, lora_rank=2, base_name="tiny")
        result = customize(
            tiny_pipeline(), EXAMPLES / "person.jpg", EXAMPLES / "garment.jpg",
            EXAMPLES / "mask.png", EXAMPLES / "densepose.png", "t-shirt", config,
            height=H, width=W, progress=False,
        )  # fmt: skip
        paths[method] = save_customization(result, folder / f"{method}.safetensors", "fp32")
    return paths


def tryon(cli, customization: Path, out: Path):
    return cli(
        "tryon", "--model", "tiny", "--person", EXAMPLES / "person.jpg",
        "--garment", EXAMPLES / "garment.jpg", "--mask", EXAMPLES / "mask.png",
        "--pose", EXAMPLES / "densepose.png", "--height", str(H), "--width", str(W),
        "--steps", "1", "--device", "cpu", "--customization", customization, "--out", out,
    )  # fmt: skip


def _rewrite(source: Path, target: Path, tensors=None, metadata=None) -> None:
    """``source`` written to ``target`` with ``tensors`` / ``metadata`` changed by functions."""
    with safe_open(str(source), framework="pt") as f:
        meta = dict(f.metadata())
        values = {k: f.get_tensor(k) for k in f.keys()}
    if tensors:
        tensors(values)
    if metadata:
        metadata(meta)
    save_file(values, str(target), metadata=meta)


def _first(values: dict) -> str:
    return sorted(values)[0]


def _set(key, value):
    return lambda meta: meta.update({key: value})


def _drop(key):
    return lambda meta: meta.pop(key)


def _other_base_with(stats: str):
    return lambda meta: meta.update(base_fingerprint="0" * 64, base_stats=stats)


def _lora_config(**changes):
    def change(meta):
        packed = json.loads(meta["lora_adapter_metadata"])
        packed.update({f"unet.{k}": v for k, v in changes.items()})
        meta["lora_adapter_metadata"] = json.dumps(packed)

    return change


def _tensor(change):
    return lambda values: values.update({_first(values): change(values[_first(values)])})


# case -> (file kind, tensor change, metadata change, message fragments)
CUSTOMIZATIONS = {
    "tuned_modules-missing": ("full", None, _drop("tuned_modules"), ("'tuned_modules'",)),
    "tuned_modules-garbled": ("full", None, _set("tuned_modules", "[up_bl"), ("not valid JSON",)),
    "tuned_modules-a-string": ("full", None, _set("tuned_modules", '"x"'), ("module names",)),
    "fingerprint-missing": ("full", None, _drop("base_fingerprint"), ("'base_fingerprint'",)),
    "base_stats-garbled": ("full", None, _other_base_with("{]"), ("'base_stats'",)),
    "base_stats-not-pairs": ("full", None, _other_base_with('{"a": 1}'), ("'base_stats'",)),
    "tensor-missing": ("full", lambda v: v.pop(_first(v)), None, ("is missing",)),
    "tensor-one-element": ("full", _tensor(lambda t: torch.ones(1)), None, ("has shape (1,)",)),
    "tensor-integer": ("full", _tensor(lambda t: t.to(torch.int32)), None, ("not floating",)),
    "tensor-nan": ("full", _tensor(lambda t: t * float("nan")), None, ("NaN",)),
    "lora-rank-a-bool": ("lora", None, _lora_config(r=True), ("invalid rank",)),
    "lora-alpha-infinite": ("lora", None, _lora_config(lora_alpha=1e999), ("invalid rank",)),
    "lora-metadata-garbled": ("lora", None, _set("lora_adapter_metadata", "{"), ("unreadable",)),
    "lora-factor-broadcasts": (
        "lora", _tensor(lambda t: torch.ones(1, t.shape[1])), None, ("expected",),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CUSTOMIZATIONS))
def test_tampered_customization_is_one_line(cli, deltas, tmp_path, case):
    kind, tensors, metadata, fragments = CUSTOMIZATIONS[case]
    path = tmp_path / "delta.safetensors"
    _rewrite(deltas[kind], path, tensors, metadata)
    before = files_under(tmp_path)
    result = tryon(cli, path, tmp_path / "out.png")
    assert_user_error(result, "tryon", "delta.safetensors", *fragments)
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_unreadable_customization_file_is_one_line(cli, deltas, tmp_path, damage):
    path = tmp_path / "delta.safetensors"
    data = deltas["full"].read_bytes()
    path.write_bytes({"garbage": b"\x00" * 4096, "truncated": data[: len(data) // 2],
                      "empty": b""}[damage])  # fmt: skip
    before = files_under(tmp_path)
    assert_user_error(tryon(cli, path, tmp_path / "out.png"), "tryon", str(path))
    assert files_under(tmp_path) == before
