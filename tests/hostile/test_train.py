"""``idm-vton train`` as a careless or hostile user runs it: typos leave nothing behind, a bad row
in the middle of a run saves the progress so far, fp16 autocast on the CPU is refused up front."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from idm_vton.training.data import EpochShardSampler

from ..helpers.datasets import vitonhd_fixture
from .conftest import assert_user_error, files_under

H, W = 64, 48
SEED = 3


vitonhd = vitonhd_fixture(n=3)


def train_args(data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "train", "--model", "tiny", "--data", str(data), "--dataset", "vitonhd",
        "--output", str(output), "--resolution", str(H), str(W), "--report-to", "none",
        "--seed", str(SEED), "--no-augment", *extra,
    ]  # fmt: skip


def test_a_typo_in_the_data_path_leaves_nothing(cli, vitonhd, tmp_path):
    result = cli(*train_args(tmp_path / "VITON-HDD", tmp_path / "runs", "--max-steps", "1"))
    assert_user_error(result, "train", "VITON-HDD")
    assert files_under(tmp_path) == {}  # no runs/, no .frozen-components, no train_config


@pytest.mark.parametrize("which", ["typo", "not-a-checkpoint"])
def test_a_wrong_resume_point_leaves_nothing(cli, vitonhd, tmp_path, which):
    resume = tmp_path / "runs" / "checkpoint-2000"
    if which == "not-a-checkpoint":
        resume.mkdir(parents=True)
    before = files_under(tmp_path)
    result = cli(*train_args(vitonhd, tmp_path / "runs", "--max-steps", "1", "--resume", resume))
    assert_user_error(result, "train", str(resume))
    assert files_under(tmp_path) == before


def test_an_empty_pairs_file_is_an_error(cli, vitonhd, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(vitonhd, data)
    (data / "train_pairs.txt").write_text("\n")
    before = files_under(tmp_path)
    result = cli(*train_args(data, tmp_path / "runs", "--max-steps", "1"))
    assert_user_error(result, "train", str(data / "train_pairs.txt"), "no pairs")
    assert files_under(tmp_path) == before


def test_fp16_autocast_on_the_cpu_is_refused_before_anything_is_written(cli, vitonhd, tmp_path):
    result = cli(*train_args(vitonhd, tmp_path / "runs", "--max-steps", "1",
                             "--mixed-precision", "fp16"))  # fmt: skip
    assert_user_error(result, "train", "--mixed-precision fp16", "bf16")
    assert files_under(tmp_path) == {}


def test_a_bad_row_mid_training_saves_the_progress_then_stops(cli, vitonhd, tmp_path):
    # Steps 1 and 2 load the first two rows of epoch 0's order (batch 1); break the second one.
    order = list(EpochShardSampler(3, 1, 1, 0, SEED, 0))
    data, out = tmp_path / "data", tmp_path / "runs"
    shutil.copytree(vitonhd, data)
    bad = data / "train" / "cloth" / f"{order[1]:05d}_00.jpg"
    good = bad.read_bytes()
    bad.write_bytes(b"\xff\xd8 not a jpeg any more")
    result = cli(*train_args(data, out, "--max-steps", "3"))
    line = assert_user_error(result, "train", f"row {order[1]}", str(bad), "checkpoint-1")
    assert "--resume" in line
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == [
        "checkpoint-1"
    ]
    state = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["global_step"] == 1
    assert not list(out.glob(".checkpoint-*"))  # no half-written checkpoint
    # Fixed, the run resumes from the saved step and finishes.
    bad.write_bytes(good)
    resumed = cli(*train_args(data, out, "--max-steps", "3", "--resume", "latest"))
    assert resumed.code == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "at step 1" in resumed.stdout
    assert (out / "checkpoint-3" / "trainer_state.json").is_file()


def test_a_bad_first_row_saves_nothing_and_leaves_nothing(cli, vitonhd, tmp_path):
    order = list(EpochShardSampler(3, 1, 1, 0, SEED, 0))
    data = tmp_path / "data"
    shutil.copytree(vitonhd, data)
    bad = data / "train" / "image" / f"{order[0]:05d}_00.jpg"
    bad.write_bytes(b"garbage")
    before = files_under(tmp_path)
    result = cli(*train_args(data, tmp_path / "runs", "--max-steps", "2"))
    assert_user_error(result, "train", f"row {order[0]}", str(bad))
    assert files_under(tmp_path) == before


# What `accelerate launch --config_file configs/accelerate/<file>` puts in the environment.
FSDP_ON_CPU = {"ACCELERATE_USE_FSDP": "true"}
DEEPSPEED_WITH_CPU_FLAG = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_USE_CPU": "true"}
ACCUMULATION_IN_CONFIG = {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}
CLIPPING_IN_CONFIG = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_GRADIENT_CLIPPING": "1.0"}


@pytest.mark.parametrize(
    ("environment", "fragments"),
    [
        (FSDP_ON_CPU, ("FSDP configuration needs GPUs", "deepspeed_zero2.yaml")),
        (DEEPSPEED_WITH_CPU_FLAG, ("ignores the DeepSpeed configuration", "ACCELERATE_USE_CPU")),
        (
            ACCUMULATION_IN_CONFIG,
            ("gradient_accumulation_steps: 4", "--gradient-accumulation-steps is 1"),
        ),
        (CLIPPING_IN_CONFIG, ("gradient_clipping: 1", "--max-grad-norm is 0.5")),
    ],
    ids=["fsdp-on-cpu", "deepspeed-with-cpu-flag", "accumulation", "clipping"],
)
def test_a_launch_that_would_train_otherwise_than_asked_is_refused_first(
    cli, vitonhd, tmp_path, monkeypatch, environment, fragments
):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    result = cli(*train_args(vitonhd, tmp_path / "runs", "--max-steps", "1",
                             "--max-grad-norm", "0.5"))  # fmt: skip
    assert_user_error(result, "train", *fragments)
    assert files_under(tmp_path) == {}
