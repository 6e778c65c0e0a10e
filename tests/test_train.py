"""Training (paper Sec. 3, docs/training.md) on the tiny model and small synthetic datasets in both layouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from idm_vton.commands.train import config_from_args, parse_args
from idm_vton.errors import TrainConfigError
from idm_vton.pipelines.loading import tiny_pipeline
from idm_vton.pipelines.tryon import TryOnPipeline
from idm_vton.training.data import EpochShardSampler, batch_stream
from idm_vton.training.objective import (
    Conditioner,
    ObjectiveConfig,
    diffusion_loss,
    min_snr_weights,
    step_generator,
    training_noise_scheduler,
)
from idm_vton.training.trainer import Trainer

from .helpers.datasets import make_dresscode, make_vitonhd, vitonhd_fixture

H, W = 64, 48


vitonhd = vitonhd_fixture(n=3)


@pytest.fixture(scope="module")
def dresscode(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dresscode")
    make_dresscode(root)
    return root


def train_args(data: Path, output: Path, *extra: str, dataset: str = "vitonhd") -> list[str]:
    return [
        "--model", "tiny", "--data", str(data), "--dataset", dataset, "--output", str(output),
        "--resolution", str(H), str(W), "--report-to", "none", "--seed", "3", *extra,
    ]  # fmt: skip


def make_trainer(*argv: str) -> Trainer:
    return Trainer(config_from_args(parse_args(list(argv))))


def unet_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = load_file(str(checkpoint / "unet" / "diffusion_pytorch_model.safetensors"))
    state.update(
        {
            f"proj.{k}": v
            for k, v in load_file(
                str(checkpoint / "image_projection" / "diffusion_pytorch_model.safetensors")
            ).items()
        }
    )
    return state


# ------------------------------------------------------------------------------ objective
def test_min_snr_weights_are_finite_at_zero_terminal_snr():
    scheduler = training_noise_scheduler(tiny_pipeline().scheduler)
    assert scheduler.alphas_cumprod[-1] == 0  # zero terminal SNR: SNR(999) = 0 exactly
    t = torch.tensor([0, 500, 998, 999])
    w = min_snr_weights(scheduler, t, gamma=5.0)
    assert torch.isfinite(w).all()
    a = scheduler.alphas_cumprod.double()[t]
    snr = a / (1 - a)
    assert w[0] == pytest.approx(float(5.0 / snr[0]), rel=1e-5)  # high SNR: gamma / SNR < 1
    assert w[0] < 0.01
    assert w[-1] == 1.0 and w[-2] == 1.0  # low SNR (and its limit at SNR = 0): weight 1


class RecordingModel(torch.nn.Module):
    """Stands in for TryonTrainable: records its inputs, predicts zeros (loss = E[noise^2])."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, sample, timesteps, text, pooled, time_ids, clip_hidden, garment, **kw):
        self.calls.append(dict(sample=sample, t=timesteps, text=text, time_ids=time_ids, **kw))
        return torch.zeros_like(sample[:, :4]) + self.w


def tiny_batch(vitonhd, n=2):
    from idm_vton.data.datasets import VitonHDDataset, collate

    ds = VitonHDDataset(vitonhd, size=(H, W), clip_size=32)
    return collate([ds[i] for i in range(n)])


def test_model_inputs_follow_the_spec(vitonhd):
    pipe = tiny_pipeline()
    conditioner = Conditioner(pipe, torch.device("cpu"))
    scheduler = training_noise_scheduler(pipe.scheduler)
    batch = tiny_batch(vitonhd)
    model = RecordingModel()
    diffusion_loss(model, conditioner, scheduler, batch, step_generator(0, 0), ObjectiveConfig())
    call = model.calls[0]
    # SDXL time ids (H, W, 0, 0, H, W), not the official trainer's (H, H, 0, 0, H, H).
    assert call["time_ids"].tolist() == [[H, W, 0, 0, H, W]] * 2
    sample = call["sample"]
    assert sample.shape == (2, 13, H // 8, W // 8)
    # Channel 4 is the mask at H/8 x W/8 (nearest), channels 5-8 the masked person latent.
    mask = torch.nn.functional.interpolate(batch["mask"], size=(H // 8, W // 8), mode="nearest")
    assert torch.equal(sample[:, 4:5], mask)
    assert call["null_garment_rows"] == 0 and call["image_dropped"] is None
    # The same generator seed gives the same draws (noise, timesteps, VAE samples).
    model2 = RecordingModel()
    diffusion_loss(model2, conditioner, scheduler, batch, step_generator(0, 0), ObjectiveConfig())
    assert torch.equal(model2.calls[0]["sample"], sample)
    assert torch.equal(model2.calls[0]["t"], call["t"])


def test_condition_dropout_uses_the_pipelines_unconditional_inputs(vitonhd):
    pipe = tiny_pipeline()
    conditioner = Conditioner(pipe, torch.device("cpu"))
    scheduler = training_noise_scheduler(pipe.scheduler)
    batch = tiny_batch(vitonhd)
    model = RecordingModel()
    config = ObjectiveConfig(condition_dropout=1.0)
    diffusion_loss(model, conditioner, scheduler, batch, step_generator(0, 0), config)
    call = model.calls[0]
    empty, _ = pipe.encode_text([""], torch.device("cpu"))
    assert call["null_garment_rows"] == 2
    assert call["image_dropped"].all()
    assert torch.allclose(call["text"], empty.expand(2, -1, -1))
    zeros = torch.zeros_like(batch["garment_clip"][:1])
    assert torch.allclose(call["null_clip_hidden"], conditioner.clip_hidden(zeros))


# ------------------------------------------------------------------------------ data stream
def test_sampler_shards_shuffles_and_resumes():
    full = EpochShardSampler(10, 2, 2, 0, seed=1, epoch=0).permutation()
    r0 = list(EpochShardSampler(10, 2, 2, 0, seed=1, epoch=0))
    r1 = list(EpochShardSampler(10, 2, 2, 1, seed=1, epoch=0))
    assert sorted(r0 + r1) == sorted(full.tolist()) and not set(r0) & set(r1)
    assert full.tolist() != sorted(full.tolist())  # shuffled
    other_epoch = EpochShardSampler(10, 2, 2, 0, seed=1, epoch=1).permutation()
    assert other_epoch.tolist() != full.tolist()
    tail = list(EpochShardSampler(10, 2, 2, 0, seed=1, epoch=0, start_batch=1))
    assert tail == r0[2:]


def test_batch_stream_resumes_at_the_same_batch(dresscode):
    from idm_vton.data.datasets import DressCodeDataset

    ds = DressCodeDataset(dresscode, size=(32, 24), augment=True, seed=0, clip_size=16)
    stream = batch_stream(ds, 2, seed=5)
    first = [next(stream) for _ in range(5)]  # 2 batches per epoch: crosses two epochs
    resumed = batch_stream(ds, 2, seed=5, start=3)
    index, batch = next(resumed)
    assert index == 3
    assert batch["name"] == first[3][1]["name"]
    assert torch.equal(batch["person"], first[3][1]["person"])  # same augmentation draw


# ------------------------------------------------------------------------------ training
def test_overfitting_one_batch_drives_the_loss_down(tmp_path):
    root = tmp_path / "one"
    names = make_vitonhd(root, n=2)
    (root / "train_pairs.txt").write_text(f"{names[0]} {names[0]}\n")  # one sample
    trainer = make_trainer(
        *train_args(root, tmp_path / "out", "--no-augment", "--lr", "2e-3", "--max-steps", "80")
    )
    batch = next(trainer._batches())[1]
    t = torch.tensor([100, 300, 500, 700])
    batch4 = {k: v.repeat(4, 1, 1, 1) if torch.is_tensor(v) else v * 4 for k, v in batch.items()}

    def eval_loss():
        with torch.no_grad():
            return float(
                diffusion_loss(
                    trainer.model, trainer.conditioner, trainer.noise_scheduler, batch4,
                    step_generator(99, 0), ObjectiveConfig(), timesteps=t,
                )
            )  # fmt: skip

    before = eval_loss()
    for _ in range(80):
        trainer.train_step()
    after = eval_loss()
    assert after < before / 5, (before, after)


@pytest.fixture(scope="module")
def full_run(vitonhd, tmp_path_factory):
    """4 steps, batch 2 x accumulation 2 on 3 samples (epochs wrap), checkpoints every 2 steps."""
    out = tmp_path_factory.mktemp("full")
    extra = ["--max-steps", "4", "--batch-size", "2", "--gradient-accumulation-steps", "2",
             "--lr", "1e-3", "--checkpointing-steps", "2", "--lr-scheduler", "cosine"]  # fmt: skip
    # Validation renders at step 2 in this run only: the resume comparison also shows that
    # rendering does not disturb training.
    validation = ["--validation-steps", "2", "--validation-inference-steps", "2"]
    # Module fixtures run outside conftest's one-thread setting; the comparison runs need it.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = make_trainer(*train_args(vitonhd, out, *extra, *validation))
        history = trainer.train()
    finally:
        torch.set_num_threads(threads)
    return trainer, history, out, extra


def test_checkpoints_are_complete_and_counted_once_per_optimizer_step(full_run):
    trainer, history, out, _ = full_run
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not list(out.glob(".checkpoint-*"))  # no temporary folder left behind
    renders = sorted(p.name for p in (out / "validation").glob("*.png"))
    assert renders == ["step-0000002-0.png", "step-0000004-0.png"]
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["consumed_micro_batches"] == 8
    assert all(m.grad_norm is not None and m.grad_norm > 0 for m in history)
    assert history[-1].lr < history[0].lr  # the cosine schedule advanced
    before = tiny_pipeline(seed=3).unet.state_dict()
    after = unet_weights(out / "checkpoint-4")
    assert not torch.equal(after["conv_in.weight"], before["conv_in.weight"])


def test_resumed_run_matches_the_uninterrupted_run(full_run, vitonhd, tmp_path):
    _, _, out, extra = full_run
    killed = tmp_path / "killed"
    make_trainer(*train_args(vitonhd, killed, *extra, "--stop-after", "2")).train()
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-2"]
    reference2, interrupted2 = (
        unet_weights(out / "checkpoint-2"),
        unet_weights(killed / "checkpoint-2"),
    )
    assert all(torch.equal(reference2[k], interrupted2[k]) for k in reference2)
    resumed = make_trainer(*train_args(vitonhd, killed, *extra, "--resume", "latest"))
    assert resumed.global_step == 2
    resumed.train()
    reference, result = unet_weights(out / "checkpoint-4"), unet_weights(killed / "checkpoint-4")
    assert reference.keys() == result.keys()
    worst = max((reference[k] - result[k]).abs().max().item() for k in reference)
    assert worst <= 1e-6, worst
    # The state at step 2 differs from step 4: the comparison above is not vacuous.
    assert not torch.equal(reference2["conv_in.weight"], reference["conv_in.weight"])


def test_checkpoint_reloads_into_the_pipeline_and_the_cli(full_run, tmp_path):
    trainer, _, out, _ = full_run
    loaded = TryOnPipeline.from_pretrained(out / "checkpoint-4")
    pipe = trainer.pipe
    generator = torch.Generator().manual_seed(0)
    g = torch.Generator().manual_seed(1)
    inputs = dict(
        person_image=torch.rand(1, 3, H, W, generator=g),
        garment_image=torch.rand(1, 3, H, W, generator=g),
        mask_image=(torch.rand(1, 1, H, W, generator=g) > 0.5).float(),
        pose_image=torch.rand(1, 3, H, W, generator=g),
        garment_clip_pixels=torch.randn(1, 3, 32, 32, generator=g),
        garment_description="short sleeve t-shirts",
        num_inference_steps=2,
        height=H,
        width=W,
        output_type="pt",
    )
    trainer.pipe.unet.eval()
    expected = pipe(**inputs, generator=generator).images
    got = loaded(**inputs, generator=torch.Generator().manual_seed(0)).images
    assert torch.allclose(expected, got, atol=1e-5)
    base = tiny_pipeline(seed=3)(**inputs, generator=torch.Generator().manual_seed(0)).images
    assert (base - got).abs().max() > 1e-4  # the trained weights are what was saved

    from PIL import Image

    from idm_vton.commands.main import main as cli_main

    for name, tensor in (("p", inputs["person_image"]), ("g", inputs["garment_image"])):
        Image.fromarray((tensor[0].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(
            tmp_path / f"{name}.png"
        )
    Image.fromarray((inputs["mask_image"][0, 0].numpy() * 255).astype("uint8")).save(
        tmp_path / "m.png"
    )
    rc = cli_main(
        ["tryon", "--model", str(out / "checkpoint-4"), "--person", str(tmp_path / "p.png"),
         "--garment", str(tmp_path / "g.png"), "--mask", str(tmp_path / "m.png"),
         "--pose", str(tmp_path / "p.png"), "--description", "t-shirts", "--steps", "1",
         "--height", str(H), "--width", str(W), "--device", "cpu", "--out", str(tmp_path / "o.png")]
    )  # fmt: skip
    assert rc == 0 and (tmp_path / "o.png").is_file()


def test_gradient_clipping_really_clips(dresscode, tmp_path):
    trainer = make_trainer(
        *train_args(dresscode, tmp_path / "o", "--max-grad-norm", "0.5", "--max-steps", "1",
                    dataset="dresscode")
    )  # fmt: skip
    original = trainer.compute_loss
    trainer.compute_loss = lambda batch, index: original(batch, index) * 1e6
    seen = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
        seen.append(
            float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads if g is not None])))
        )

    trainer.optimizer.optimizer.register_step_pre_hook(record)
    metrics = trainer.train_step()
    assert metrics.grad_norm > 1e4  # the reported norm is the pre-clip one
    assert len(seen) == 1 and seen[0] <= 0.5 * (1 + 1e-4)  # the optimizer saw clipped gradients


def test_two_process_cpu_run_trains_and_saves_once(dresscode, tmp_path):
    out = tmp_path / "ddp"
    # accelerate 1.15 runs `launch --cpu --num_processes 2` as ONE process (its simple launcher;
    # multi-CPU there means mpirun). torchrun via --multi_gpu with ACCELERATE_USE_CPU gives two
    # gloo processes on a CPU-only machine.
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "idm_vton.train",
        *train_args(dresscode, out, "--max-steps", "2", "--lr", "1e-3", dataset="dresscode"),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", ACCELERATE_USE_CPU="true")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2"]
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["num_processes"] == 2 and state["consumed_micro_batches"] == 2
    states = sorted(p.name for p in (out / "checkpoint-2" / "training_state").iterdir())
    assert "random_states_0.pkl" in states and "random_states_1.pkl" in states
    assert proc.stdout.count("saved ") == 1  # only the main process writes
    loaded = TryOnPipeline.from_pretrained(out / "checkpoint-2")
    base = tiny_pipeline(seed=3).unet.state_dict()
    assert not torch.equal(loaded.unet.state_dict()["conv_in.weight"], base["conv_in.weight"])


# ------------------------------------------------------------------------------ options
def test_invalid_options_are_reported_clearly(vitonhd, tmp_path):
    with pytest.raises(TrainConfigError, match="either --model or --init-from-sdxl"):
        config_from_args(parse_args(["--data", str(vitonhd), "--output", str(tmp_path)]))
    with pytest.raises(TrainConfigError, match="--init-from-sdxl needs --sdxl-base"):
        config_from_args(
            parse_args(["--init-from-sdxl", "--sdxl-inpainting", "x", "--ip-adapter", "y",
                        "--image-encoder", "z", "--data", str(vitonhd), "--output", str(tmp_path)])
        )  # fmt: skip
    with pytest.raises(TrainConfigError, match="multiples of 8"):
        config_from_args(parse_args(train_args(vitonhd, tmp_path, "--resolution", "60", "48")))
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(TrainConfigError, match="needs bitsandbytes"):
            make_trainer(*train_args(vitonhd, tmp_path / "o", "--optimizer", "adamw8bit"))
    from idm_vton.commands.main import main as cli_main

    assert cli_main(["train", "--data", str(vitonhd), "--output", str(tmp_path)]) == 2


def test_the_module_entry_point_takes_verbose(vitonhd, tmp_path, monkeypatch, capsys):
    from idm_vton.commands import train as train_command

    def broken(args):
        raise RuntimeError("planted internal failure")

    monkeypatch.setattr(train_command, "run", broken)
    argv = train_args(vitonhd, tmp_path / "o", "--max-steps", "1")
    assert train_command.main(argv) == 1
    err = capsys.readouterr().err
    assert "idm_vton.train: internal error: RuntimeError: planted internal failure" in err
    assert "run with --verbose for the traceback" in err
    with pytest.raises(RuntimeError, match="planted internal failure"):  # the traceback
        train_command.main([*argv, "--verbose"])
    with pytest.raises(RuntimeError, match="planted internal failure"):
        train_command.main(["-v", *argv])
