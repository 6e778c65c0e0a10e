"""Driving the pipeline through the golden end-to-end case (tests/fixtures/golden)."""

from __future__ import annotations

import torch

import idm_vton.pipelines.tryon as pipeline_module


def replay_recorded_noise(monkeypatch, t: dict, steps: list[int]) -> list[torch.Tensor]:
    """Make the pipeline's and the DDPM scheduler's noise draws return the recorded ones, in order.

    Returns the list of draws still to come (empty when the pipeline used every one).
    """
    draws = [t["pipe.rng.masked_image_eps"], t["pipe.rng.pose_eps"], t["pipe.rng.cloth_eps"]]
    draws += [t[f"pipe.rng.step{k}_eps"] for k in steps if f"pipe.rng.step{k}_eps" in t]

    def replay(shape, generator=None, device=None, dtype=None, layout=None):
        assert draws, "the pipeline drew more noise than the reference"
        eps = draws.pop(0)
        assert tuple(eps.shape) == tuple(shape), (
            f"noise draw of shape {tuple(shape)}, reference {tuple(eps.shape)}"
        )
        return eps.to(device=device, dtype=dtype)

    import diffusers.schedulers.scheduling_ddpm as ddpm

    monkeypatch.setattr(pipeline_module, "randn_tensor", replay)
    monkeypatch.setattr(ddpm, "randn_tensor", replay)
    return draws


def golden_pipe_call(t: dict, spec: dict) -> dict:
    """Pipeline arguments of the end-to-end golden case (reference pose/garment in [-1, 1] -> [0, 1])."""
    return dict(
        person_image=t["pipe.in.image"],
        garment_image=(t["pipe.in.cloth"] + 1) / 2,
        mask_image=t["pipe.in.mask_image"],
        pose_image=(t["pipe.in.pose_img"] + 1) / 2,
        garment_clip_pixels=t["pipe.in.ip_adapter_image"],
        latents=t["pipe.in.latents"],
        prompt_embeds=t["pipe.in.prompt_embeds"],
        pooled_prompt_embeds=t["pipe.in.pooled_prompt_embeds"],
        negative_prompt_embeds=t["pipe.in.negative_prompt_embeds"],
        negative_pooled_prompt_embeds=t["pipe.in.negative_pooled_prompt_embeds"],
        garment_prompt_embeds=t["pipe.in.text_embeds_cloth"],
        num_inference_steps=spec["num_inference_steps"],
        guidance_scale=spec["guidance_scale"],
        strength=spec["strength"],
        height=spec["height"],
        width=spec["width"],
        output_type="pt",
    )
