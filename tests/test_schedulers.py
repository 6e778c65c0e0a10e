"""Samplers: DDPM from the checkpoint's config whatever class it names; the faster alternatives."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from diffusers import (
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from PIL import Image

from idm_vton.commands.main import main
from idm_vton.pipelines.loading import tiny_pipeline
from idm_vton.pipelines.tryon import TryOnPipeline
from idm_vton.schedulers import SchedulerName, build_scheduler

from .conftest import EXAMPLES, GOLDEN

# SDXL-inpainting's scheduler config (what the published checkpoint's scheduler/ folder holds):
# it names Euler, yet the reference samples with DDPM built from it.
SDXL_INPAINT_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.21.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


def test_ddpm_is_built_from_a_config_naming_euler(tmp_path, caplog):
    (tmp_path / "scheduler_config.json").write_text(json.dumps(SDXL_INPAINT_CONFIG))
    # What the official code does: DDPMScheduler.from_pretrained on that folder.
    reference = DDPMScheduler.from_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        ours = build_scheduler("ddpm", SDXL_INPAINT_CONFIG)
    assert type(ours) is DDPMScheduler
    assert not [r for r in caplog.records if "scheduler" in r.name.lower()]
    for key in ("beta_start", "beta_end", "beta_schedule", "steps_offset", "timestep_spacing"):
        assert ours.config[key] == reference.config[key] == SDXL_INPAINT_CONFIG[key]
    assert ours.config.clip_sample is False and ours.config.variance_type == "fixed_small"
    torch.testing.assert_close(ours.alphas_cumprod, reference.alphas_cumprod, rtol=0, atol=0)
    ours.set_timesteps(30)
    reference.set_timesteps(30)
    assert torch.equal(ours.timesteps, reference.timesteps)
    # "leading" spacing: (30 - 1) * (1000 // 30) + steps_offset 1, as the reference.
    assert int(ours.timesteps[0]) == 29 * 33 + 1


@pytest.mark.parametrize(
    "name,cls,settings",
    [
        ("euler", EulerDiscreteScheduler, {}),
        ("euler_a", EulerAncestralDiscreteScheduler, {}),
        ("dpmpp_2m", DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
        (
            "dpmpp_2m_karras",
            DPMSolverMultistepScheduler,
            {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        ),
        ("unipc", UniPCMultistepScheduler, {}),
    ],
)
def test_each_sampler_keeps_the_trained_schedule(name, cls, settings):
    config = dict(SDXL_INPAINT_CONFIG, _class_name="DDPMScheduler", beta_end=0.02)
    scheduler = build_scheduler(name, config)
    assert type(scheduler) is cls
    for key, value in settings.items():
        assert scheduler.config[key] == value
    assert scheduler.config.beta_end == 0.02 and scheduler.config.steps_offset == 1
    ddpm = build_scheduler("ddpm", config)
    torch.testing.assert_close(scheduler.alphas_cumprod, ddpm.alphas_cumprod, rtol=0, atol=0)


def test_unknown_sampler_is_named():
    with pytest.raises(ValueError, match="unknown scheduler 'heun'.*ddpm, euler"):
        build_scheduler("heun", SDXL_INPAINT_CONFIG)


def _run(pipe: TryOnPipeline, steps: int = 8) -> np.ndarray:
    photo = Image.open(EXAMPLES / "person.jpg").convert("RGB").resize((48, 64))
    return pipe(
        person_image=photo,
        garment_image=EXAMPLES / "garment.jpg",
        mask_image=Image.open(EXAMPLES / "mask.png").resize((48, 64)),
        pose_image=EXAMPLES / "densepose.png",
        garment_description="striped t-shirt",
        num_inference_steps=steps,
        height=64,
        width=48,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        paste_back=False,
    ).images


def test_golden_folder_loads_ddpm_by_default_and_others_on_request():
    assert type(TryOnPipeline.from_pretrained(GOLDEN, load_text_encoders=False).scheduler) is (
        DDPMScheduler
    )
    pipe = TryOnPipeline.from_pretrained(GOLDEN, load_text_encoders=False, scheduler="unipc")
    assert type(pipe.scheduler) is UniPCMultistepScheduler
    ready = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe = TryOnPipeline.from_pretrained(GOLDEN, load_text_encoders=False, scheduler=ready)
    assert pipe.scheduler is ready


def test_samplers_are_departures_from_the_reference():
    """Every sampler renders (finite, deterministic); only euler_a reproduces DDPM's image.

    Euler-ancestral is DDPM's ancestral step written in sigma form: with the same noise draws
    from the generator it gives DDPM's image up to float rounding. The deterministic samplers
    (Euler, DPM++ 2M, UniPC) follow the probability-flow ODE and land elsewhere.
    """
    pipe = tiny_pipeline(seed=0)
    config = dict(pipe.scheduler.config)
    reference = _run(pipe)
    for name in SchedulerName:
        pipe.scheduler = build_scheduler(name, config)
        image = _run(pipe)
        assert np.isfinite(image).all() and image.shape == reference.shape
        np.testing.assert_array_equal(image, _run(pipe))
        gap = np.abs(image - reference).mean()
        if name is SchedulerName.DDPM:
            assert gap == 0
        elif name is SchedulerName.EULER_ANCESTRAL:
            np.testing.assert_allclose(image, reference, atol=1e-5)
        else:
            assert gap > 0.02, name


def test_cli_scheduler_flag(tmp_path, capsys):
    args = [
        "tryon", "--model", "tiny", "--person", str(EXAMPLES / "person.jpg"),
        "--garment", str(EXAMPLES / "garment.jpg"), "--mask", str(EXAMPLES / "mask.png"),
        "--pose", str(EXAMPLES / "densepose.png"), "--steps", "3", "--height", "64",
        "--width", "48", "--device", "cpu", "--no-paste-back",
    ]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "ddpm.png")]) == 0
    assert main([*args, "--out", str(tmp_path / "explicit.png"), "--scheduler", "ddpm"]) == 0
    assert main([*args, "--out", str(tmp_path / "euler.png"), "--scheduler", "euler"]) == 0
    ddpm, explicit, euler = (
        np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("ddpm", "explicit", "euler")
    )
    assert np.array_equal(ddpm, explicit)
    assert not np.array_equal(ddpm, euler)
