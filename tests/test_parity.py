"""Parity with the reference IDM-VTON on the golden fixture folder.

The folder is ``$IDM_VTON_GOLDEN`` (default ``tests/fixtures/golden``). Everything case-specific
(model shapes, step count, guidance, strength, size, scheduler, feature layers, noise draws) is
read from the folder, so the same test runs on any folder of the same layout. Every case runs
twice: on the folder as it is, and with its scheduler config naming ``EulerDiscreteScheduler``
(as SDXL-inpainting's, and so the published checkpoint's, does): the reference builds DDPM from
that config whatever class it names, and so must the loader.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import idm_vton.pipelines.garment_branch as pipeline_module
from idm_vton.models.tryon_net import garment_features, tryon_forward
from idm_vton.pipelines.tryon import TryOnPipeline

from .conftest import GOLDEN
from .helpers.golden import golden_pipe_call, replay_recorded_noise

MODULE_RTOL = 2e-5
PIPE_RTOL = 2e-4


@pytest.fixture(scope="module", autouse=True)
def _golden_present():
    """The cases ship with the tests: a missing folder is an error, never a skip."""
    assert (GOLDEN / "cases.json").is_file(), f"no golden cases in {GOLDEN} (IDM_VTON_GOLDEN)"


def assert_close(out: torch.Tensor, ref: torch.Tensor, name: str, rtol: float) -> None:
    assert tuple(out.shape) == tuple(ref.shape), (
        f"{name}: shape {tuple(out.shape)} vs {tuple(ref.shape)}"
    )
    ref = ref.float()
    tol = rtol * max(1.0, ref.abs().max().item())
    err = (out.detach().float() - ref).abs().max().item()
    assert err <= tol, f"{name}: max abs error {err:.3g} > {tol:.3g}"


@pytest.fixture(scope="module")
def golden():
    meta = json.loads((GOLDEN / "cases.json").read_text())
    tensors = load_file(str(GOLDEN / "cases.safetensors"))
    return meta, tensors


def euler_named_copy(folder: Path, root: Path) -> Path:
    """``folder`` with its scheduler config naming ``EulerDiscreteScheduler`` (other parts linked)."""
    root.mkdir()
    for entry in folder.iterdir():
        if entry.name != "scheduler":
            (root / entry.name).symlink_to(entry.resolve())
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    config.update(_class_name="EulerDiscreteScheduler", interpolation_type="linear")
    config.update(use_karras_sigmas=False)
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    return root


@pytest.fixture(scope="module", params=["as_shipped", "euler_named_config"])
def pipe(request, tmp_path_factory):
    folder = GOLDEN
    if request.param == "euler_named_config":
        folder = euler_named_copy(GOLDEN, tmp_path_factory.mktemp("euler") / "golden")
    return TryOnPipeline.from_pretrained(folder, load_text_encoders=False)


def feature_layers(meta: dict, key: str) -> list[str]:
    return [entry["block"] for entry in sorted(meta[key], key=lambda e: e["index"])]


def test_feature_layers_match_model(golden, pipe):
    meta, _ = golden
    from idm_vton.models.garment_attention import garment_attention_layers

    assert garment_attention_layers(pipe.garment_unet) == feature_layers(
        meta, "garment_feature_sources"
    )
    assert garment_attention_layers(pipe.unet) == feature_layers(meta, "tryon_feature_consumers")


def test_image_encoder(golden, pipe):
    _, t = golden
    out = pipe.image_encoder(t["clip.in.pixel_values"], output_hidden_states=True)
    assert_close(
        torch.stack(out.hidden_states),
        t["clip.out.hidden_states"],
        "clip hidden states",
        MODULE_RTOL,
    )
    assert_close(out.hidden_states[-2], t["clip.out.penultimate"], "clip penultimate", MODULE_RTOL)
    assert_close(out.image_embeds, t["clip.out.image_embeds"], "clip image_embeds", MODULE_RTOL)
    zeros = pipe.image_encoder(
        torch.zeros_like(t["clip.in.pixel_values"]), output_hidden_states=True
    )
    assert_close(
        zeros.hidden_states[-2], t["clip.out.penultimate_zeros"], "clip zeros", MODULE_RTOL
    )


def test_vae(golden, pipe):
    _, t = golden
    dist = pipe.vae.encode(t["vae.in.image"]).latent_dist
    assert_close(dist.mean, t["vae.out.posterior_mean"], "posterior mean", MODULE_RTOL)
    assert_close(dist.std, t["vae.out.posterior_std"], "posterior std", MODULE_RTOL)
    decoded = pipe.vae.decode(t["vae.in.latents"]).sample
    assert_close(decoded, t["vae.out.decoded"], "decoded", MODULE_RTOL)


def test_garment_net_features(golden, pipe):
    meta, t = golden
    layers = feature_layers(meta, "garment_feature_sources")
    assert len(layers) == meta["num_garment_features"]
    feats = garment_features(
        pipe.garment_unet,
        t["garment.in.sample"],
        t["garment.in.timestep"],
        t["garment.in.encoder_hidden_states"],
    )
    assert list(feats) == layers
    for i, name in enumerate(layers):
        assert_close(
            feats[name],
            t[f"garment.out.feature.{i:02d}"],
            f"garment feature {i} ({name})",
            MODULE_RTOL,
        )


@pytest.mark.parametrize("case", ["tryon_single", "tryon_cfg"])
def test_tryon_net(golden, pipe, case):
    meta, t = golden

    def inp(name):
        return t[f"{case}.in.{name}"]

    tokens = pipe.image_projection(inp("clip_hidden_states"))
    assert_close(tokens, inp("image_embeds"), f"{case} Resampler", MODULE_RTOL)
    layers = feature_layers(meta, "tryon_feature_consumers")
    garment = {name: inp(f"garment_feature.{i:02d}") for i, name in enumerate(layers)}
    args = (
        inp("sample"),
        inp("timestep"),
        inp("encoder_hidden_states"),
        inp("text_embeds"),
        inp("time_ids"),
    )
    out = tryon_forward(pipe.unet, *args, inp("image_embeds"), garment=garment)
    assert_close(out, t[f"{case}.out.noise_pred"], f"{case} noise_pred", MODULE_RTOL)
    if case == "tryon_cfg":
        # The same pass with the unconditional half's zero garment tokens in closed form.
        half = out.shape[0] // 2
        for feats in garment.values():
            assert feats[:half].abs().max() == 0, (
                "the unconditional half of the fixture must be zeros"
            )
        cond_only = {name: feats[half:] for name, feats in garment.items()}
        out = tryon_forward(
            pipe.unet, *args, inp("image_embeds"), garment=cond_only, null_rows=half
        )
        assert_close(
            out, t[f"{case}.out.noise_pred"], "tryon_cfg (closed-form null tokens)", MODULE_RTOL
        )
        guidance = meta["spec"]["guidance_scale"]
        uncond, cond = out.chunk(2)
        guided = uncond + guidance * (cond - uncond)
        assert_close(guided, t[f"{case}.out.noise_pred_guided"], "tryon_cfg guided", MODULE_RTOL)


def test_end_to_end_pipeline(golden, pipe, monkeypatch):
    """The whole pipeline, driven by the recorded noise draws, against every recorded tensor."""
    meta, t = golden
    spec = meta["spec"]
    steps = sorted(
        int(k.split(".")[1][4:]) for k in t if k.startswith("pipe.step") and k.endswith(".timestep")
    )
    assert len(steps) == spec["num_inference_steps"]
    draws = replay_recorded_noise(monkeypatch, t, steps)

    record: dict[str, list] = {
        "features": [],
        "inputs": [],
        "raw": [],
        "guided": [],
        "latents": [],
        "t": [],
    }
    real_features, real_forward, real_step = (
        pipeline_module.garment_features,
        pipeline_module.tryon_forward,
        None,
    )

    def spy_features(*args, **kwargs):
        out = real_features(*args, **kwargs)
        record["features"].append(out)
        return out

    def spy_forward(unet, sample, timestep, *args, **kwargs):
        record["inputs"].append(sample)
        record["t"].append(timestep)
        out = real_forward(unet, sample, timestep, *args, **kwargs)
        record["raw"].append(out)
        return out

    real_step = pipe.scheduler.step

    def spy_step(model_output, timestep, sample, *args, **kwargs):
        record["guided"].append(model_output)
        out = real_step(model_output, timestep, sample, *args, **kwargs)
        record["latents"].append(out[0])
        return out

    monkeypatch.setattr(pipeline_module, "garment_features", spy_features)
    monkeypatch.setattr(pipeline_module, "tryon_forward", spy_forward)
    monkeypatch.setattr(pipe.scheduler, "step", spy_step)
    decoded = []
    real_decode = pipe._vae_decode
    monkeypatch.setattr(
        pipe, "_vae_decode", lambda latents: decoded.append(real_decode(latents)) or decoded[-1]
    )

    # The reference takes the pose and garment in [-1, 1]; this pipeline takes every image in [0, 1].
    out = pipe(**golden_pipe_call(t, spec)).images
    assert not draws, f"{len(draws)} recorded noise draws were not used"
    sched = pipe.scheduler
    assert_close(sched.alphas_cumprod, t["pipe.mid.alphas_cumprod"], "alphas_cumprod", MODULE_RTOL)
    assert [int(x) for x in record["t"]] == [int(x) for x in t["pipe.mid.timesteps"]]
    layers = feature_layers(meta, "garment_feature_sources")
    for k in steps:
        assert int(record["t"][k]) == int(t[f"pipe.step{k}.timestep"].item())
        assert_close(
            record["inputs"][k], t[f"pipe.step{k}.latent_model_input"], f"step {k} input", PIPE_RTOL
        )
        for i, name in enumerate(layers):
            ref = t[f"pipe.step{k}.garment_feature.{i:02d}"]
            assert_close(
                record["features"][k][name], ref, f"step {k} garment feature {i}", PIPE_RTOL
            )
        assert_close(
            record["raw"][k],
            t[f"pipe.step{k}.noise_pred_raw"],
            f"step {k} noise_pred_raw",
            PIPE_RTOL,
        )
        assert_close(
            record["guided"][k], t[f"pipe.step{k}.noise_pred"], f"step {k} noise_pred", PIPE_RTOL
        )
        assert_close(
            record["latents"][k], t[f"pipe.step{k}.latents_out"], f"step {k} latents", PIPE_RTOL
        )
    assert_close(record["latents"][-1], t["pipe.out.latents"], "final latents", PIPE_RTOL)
    assert_close(decoded[0], t["pipe.out.decoded_raw"], "decoded", PIPE_RTOL)
    assert_close(out, t["pipe.out.image"], "image", PIPE_RTOL)
