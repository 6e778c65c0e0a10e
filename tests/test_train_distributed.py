"""Training through the shipped accelerate configurations (configs/accelerate/*.yaml, used as the
files they are), on the CPU with the tiny model: DeepSpeed ZeRO-2 and ZeRO-3 with one process run,
checkpoint, resume bit for bit, load for try-on and match single-process training; the FSDP path
(GPU-only in accelerate) piece by piece in two gloo processes; launches that would collide are
refused before anything is written."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from idm_vton.pipelines.loading import tiny_pipeline
from idm_vton.pipelines.tryon import TryOnPipeline
from idm_vton.training.distributed import load_deepspeed_file

from .helpers.datasets import vitonhd_fixture
from .helpers.pickles import RunsCode
from .test_train import make_trainer, train_args, unet_weights

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "accelerate"
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(
    not HAS_DEEPSPEED,
    reason="DeepSpeed is not installed (pip install '.[deepspeed]' in the clone); .ci/run installs it",
)

#: 4 optimizer steps of batch 2 x accumulation 2 (3 samples: epochs wrap), clipping at 0.5 (it
#: clips: the pre-clip norms are 1.8 to 3), a cosine schedule, a checkpoint every 2 steps.
RUN = ["--max-steps", "4", "--batch-size", "2", "--gradient-accumulation-steps", "2",
       "--lr", "1e-3", "--max-grad-norm", "0.5", "--lr-scheduler", "cosine",
       "--checkpointing-steps", "2"]  # fmt: skip
#: DeepSpeed (fp32) against one process: the same arithmetic, summed and clipped in another order.
MATCH_TOLERANCE = 1e-5  # measured: ZeRO-2 0 (identical), ZeRO-3 2.6e-6


vitonhd = vitonhd_fixture(n=3)


def launch(config: str, *argv: str, processes: int = 1, fp32: bool = True):
    """``accelerate launch --config_file configs/accelerate/<config> -m idm_vton.train ARGV`` as a
    user runs it on this CPU-only machine; ``fp32``: ``--mixed_precision no`` (else the file's)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(CONFIGS / config), "--num_processes", str(processes), "--main_process_port", "0",
           *(["--mixed_precision", "no"] if fp32 else []), "-m", "idm_vton.train", *argv]  # fmt: skip
    environ = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    environ.pop("ACCELERATE_USE_CPU", None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=environ)


def own_lines(stderr: str) -> list[str]:
    """The lines the training processes themselves wrote (not torchrun's report of the exit)."""
    return [line for line in stderr.splitlines() if line.startswith("idm_vton.train:")]


@pytest.fixture(scope="module")
def one_process(vitonhd, tmp_path_factory):
    """The reference: the same run in one plain process (this one)."""
    out = tmp_path_factory.mktemp("single")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        make_trainer(*train_args(vitonhd, out, *RUN, "--mixed-precision", "no")).train()
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def zero(request, vitonhd, tmp_path_factory):
    """A ZeRO-2 / ZeRO-3 run through the shipped file (fp32: --mixed_precision no), and a second
    one resumed from its checkpoint-2 in a new process."""
    if not HAS_DEEPSPEED:
        pytest.skip('DeepSpeed is not installed (pip install ".[deepspeed]" in the clone)')
    stage = request.param
    config = f"deepspeed_zero{stage}.yaml"
    out = tmp_path_factory.mktemp(f"zero{stage}")
    full = launch(config, *train_args(vitonhd, out / "full", *RUN))
    assert full.returncode == 0, full.stderr[-3000:]
    resumed = launch(
        config,
        *train_args(vitonhd, out / "resumed", *RUN, "--resume", str(out / "full/checkpoint-2")),
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return stage, out, full, resumed


@needs_deepspeed
def test_zero_runs_deepspeed_and_checkpoints_in_the_pipeline_layout(zero):
    stage, out, full, _ = zero
    run = out / "full"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    state = json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["strategy"] == f"deepspeed-zero{stage}"
    assert state["global_step"] == 4 and state["consumed_micro_batches"] == 8
    # DeepSpeed's own state (optimizer partitions) is what resumes; the pipeline layout is beside.
    engine_files = {p.name for p in (run / "checkpoint-4" / "training_state").rglob("*.pt")}
    assert any("optim_states" in name for name in engine_files), engine_files
    weights = unet_weights(run / "checkpoint-4")
    assert all(v.dtype == torch.float32 and v.numel() for v in weights.values())
    assert not (out / "full" / ".checkpoint-4.tmp").exists()


@needs_deepspeed
def test_zero_matches_single_process_training(zero, one_process):
    _, out, _, _ = zero
    reference, result = (
        unet_weights(one_process / "checkpoint-4"),
        unet_weights(out / "full" / "checkpoint-4"),
    )
    assert reference.keys() == result.keys()
    worst = max((reference[k] - result[k]).abs().max().item() for k in reference)
    assert worst <= MATCH_TOLERANCE, worst
    base = tiny_pipeline(seed=3).unet.state_dict()
    moved = (reference["conv_in.weight"] - base["conv_in.weight"]).abs().max().item()
    assert moved > 100 * MATCH_TOLERANCE  # training moved the weights far more than the tolerance


@needs_deepspeed
def test_zero_resumes_bit_for_bit(zero):
    _, out, _, resumed = zero
    assert "resumed from" in resumed.stdout and "at step 2" in resumed.stdout
    reference, result = (
        unet_weights(out / "full/checkpoint-4"),
        unet_weights(out / "resumed/checkpoint-4"),
    )
    assert reference.keys() == result.keys()
    assert all(torch.equal(reference[k], result[k]) for k in reference)
    step2 = unet_weights(out / "full/checkpoint-2")
    assert not torch.equal(step2["conv_in.weight"], reference["conv_in.weight"])


@needs_deepspeed
def test_zero_checkpoint_loads_for_tryon(zero):
    _, out, _, _ = zero
    checkpoint = out / "full" / "checkpoint-4"
    pipe = TryOnPipeline.from_pretrained(checkpoint)
    saved = unet_weights(checkpoint)
    loaded = pipe.unet.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in loaded)
    g = torch.Generator().manual_seed(1)
    image = pipe(
        person_image=torch.rand(1, 3, 64, 48, generator=g),
        garment_image=torch.rand(1, 3, 64, 48, generator=g),
        mask_image=torch.ones(1, 1, 64, 48),
        pose_image=torch.rand(1, 3, 64, 48, generator=g),
        garment_clip_pixels=torch.randn(1, 3, 32, 32, generator=g),
        garment_description="short sleeve t-shirts",
        num_inference_steps=1, height=64, width=48, output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images  # fmt: skip
    assert image.shape == (1, 3, 64, 48) and torch.isfinite(image).all()


@needs_deepspeed
def test_a_deepspeed_checkpoint_does_not_resume_in_another_strategy(zero, vitonhd, tmp_path):
    from idm_vton.errors import CheckpointError

    stage, out, _, _ = zero
    with pytest.raises(
        CheckpointError, match=f"deepspeed-zero{stage} training, this run is single"
    ):
        make_trainer(
            *train_args(vitonhd, tmp_path / "o", *RUN, "--resume", str(out / "full/checkpoint-2"))
        )
    assert not (tmp_path / "o").exists()


@needs_deepspeed
def test_zero2_in_the_shipped_bf16_trains_and_saves_fp32_master_weights(
    vitonhd, one_process, tmp_path
):
    # The file's own precision (bf16): DeepSpeed holds the module in bf16 and the fp32 master
    # weights in its optimizer; the checkpoint must carry the latter.
    result = launch(
        "deepspeed_zero2.yaml", *train_args(vitonhd, tmp_path, *RUN, "--max-steps", "2"), fp32=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "train_config.json").read_text())["mixed_precision"] == "bf16"
    weights = unet_weights(tmp_path / "checkpoint-2")
    reference = unet_weights(one_process / "checkpoint-2")
    assert all(v.dtype == torch.float32 for v in weights.values())
    bf16_rounded = sum(torch.equal(v, v.bfloat16().float()) for v in weights.values())
    assert bf16_rounded < len(weights) / 2  # not a bf16 copy widened to fp32
    worst = max((reference[k] - weights[k]).abs().max().item() for k in reference)
    assert worst < 2e-2, worst  # bf16 compute of 2 steps at lr 1e-3


@needs_deepspeed
def test_deepspeed_checkpoints_are_read_weights_only(zero, vitonhd, tmp_path):
    stage, out, _, _ = zero
    if stage != 2:
        pytest.skip("one stage is enough")
    checkpoint = tmp_path / "checkpoint-2"
    shutil.copytree(out / "full" / "checkpoint-2", checkpoint)
    for path in (checkpoint / "training_state").rglob("*.pt"):
        load_deepspeed_file(path)  # every file of a real checkpoint reads weights-only
    marker = tmp_path / "pwned"
    model_states = next((checkpoint / "training_state").rglob("mp_rank_00_model_states.pt"))
    torch.save({"module": RunsCode(marker)}, model_states)
    result = launch(
        "deepspeed_zero2.yaml",
        *train_args(vitonhd, tmp_path / "o", *RUN, "--resume", str(checkpoint)),
    )
    assert result.returncode != 0
    lines = own_lines(result.stderr)
    assert len(lines) == 1 and "error:" in lines[0] and "training state" in lines[0], lines
    assert not marker.exists()
    assert not (tmp_path / "o").exists()


def test_the_launchers_world_size_and_accelerates_must_agree(vitonhd, tmp_path):
    # The collision: no GPU, no ACCELERATE_USE_CPU, two processes from ddp.yaml; each
    # believed it was alone and both wrote into one folder.
    out = tmp_path / "runs"
    result = launch("ddp.yaml", *train_args(vitonhd, out, "--max-steps", "1"), processes=2)
    assert result.returncode != 0
    lines = own_lines(result.stderr)
    # One whole line from each process that got as far as the check (torchrun stops the other
    # process when the first one exits, so under load only one may have spoken).
    assert 1 <= len(lines) <= 2, result.stderr[-3000:]
    for line in lines:
        assert line.startswith("idm_vton.train: error: the launcher started 2 processes"), line
        assert "ACCELERATE_USE_CPU=true" in line
    assert not out.exists()


def test_fsdp_pieces_in_two_processes(vitonhd, tmp_path):
    """What fsdp.yaml builds, with torch's FSDP on the CPU (see tests/helpers/fsdp_pieces.py)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests/helpers/fsdp_pieces.py"), str(vitonhd), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    # One unit per TryonNet transformer block and ResNet block, nothing of the frozen networks.
    assert report["unit_classes"] == ["BasicTransformerBlock", "ResnetBlock2D"]
    assert report["units"] == report["blocks_in_unet"] > 0
    assert report["frozen_wrapped"] == 0
    # Really sharded: each of the 2 processes holds half of the trainable values.
    assert report["local_numel"] * 2 == pytest.approx(report["total_numel"], rel=1e-3)
    # The step equals the unsharded step; the gathered state dict is complete and is that step.
    assert report["losses"][0] == pytest.approx(report["losses"][1], abs=1e-6)
    assert report["state_keys_match"] and report["changed"]
    assert report["max_abs_diff"] <= 1e-6
    # Written in the pipeline's layout: it loads for try-on with those weights.
    pipe = TryOnPipeline.from_pretrained(tmp_path / "checkpoint")
    base = tiny_pipeline(seed=3).unet.state_dict()
    assert not torch.equal(pipe.unet.state_dict()["conv_in.weight"], base["conv_in.weight"])
