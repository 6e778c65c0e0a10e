"""TryOnPipeline behaviour on the tiny random model."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image
from safetensors.torch import load_file, save_file

from idm_vton.errors import CheckpointError, ImageInputError, NonFiniteOutputError
from idm_vton.pipelines.loading import tiny_pipeline
from idm_vton.pipelines.tryon import TryOnPipeline

from .helpers.pipeline_inputs import H, W, box_mask, random_photo, tryon_images


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(seed=0)


def generators(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def assert_equal_up_to_batch_rounding(a: Image.Image, b: Image.Image, what: str = "") -> None:
    """Batched kernels round differently from batch 1 (about 1e-6 in the float render): at most
    one 8-bit level, on < 0.1 % of the pixels (the tolerance measured for the server, see
    docs/serving.md)."""
    x, y = np.asarray(a).astype(np.int16), np.asarray(b).astype(np.int16)
    assert x.shape == y.shape, what
    diff = np.abs(x - y).max(axis=-1)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (what, diff.max(), (diff > 0).mean())


def levels_apart(a: Image.Image, b: Image.Image) -> int:
    """The largest 8-bit difference between two images."""
    return int(np.abs(np.asarray(a).astype(np.int16) - np.asarray(b).astype(np.int16)).max())


def test_result_depends_only_on_the_generator(pipe):
    torch.manual_seed(123)
    a = tryon_images(pipe, seed=5)
    torch.manual_seed(999)  # the global RNG must not matter
    b = tryon_images(pipe, seed=5)
    c = tryon_images(pipe, seed=6)
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_inputs_change_the_output(pipe):
    base = tryon_images(pipe, paste_back=False)
    for change in (
        dict(garment_image=random_photo(7)),
        dict(pose_image=random_photo(8)),
        dict(garment_description="long sleeve v-neck dresses"),
        dict(guidance_scale=1.0),
    ):
        other = tryon_images(pipe, paste_back=False, **change)
        assert np.abs(other - base).max() > 1e-4, change


def test_batch_of_people_matches_single_calls(pipe):
    # One generator per person and one garment entry per person: each row draws exactly the
    # noise a single call would (a shared garment draws its VAE sample from the first generator).
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    batch = tryon_images(
        pipe,
        person_image=[random_photo(0), random_photo(3)],
        mask_image=[box_mask(), box_mask()],
        pose_image=[random_photo(2), random_photo(4)],
        garment_image=[random_photo(1), random_photo(1)],
        generator=gens,
        paste_back=False,
    )
    single0 = tryon_images(pipe, seed=1, paste_back=False)
    single1 = tryon_images(
        pipe, seed=2, person_image=random_photo(3), pose_image=random_photo(4), paste_back=False
    )
    assert batch.shape == (2, H, W, 3)
    np.testing.assert_allclose(batch[0], single0[0], atol=1e-4)
    np.testing.assert_allclose(batch[1], single1[0], atol=1e-4)


def test_one_garment_per_person_and_images_per_prompt(pipe):
    """Each person is rendered with its own garment and description: every row of the batched
    call is the solo call of that person with that garment, not with the other one."""
    people, poses = [random_photo(0), random_photo(3)], [random_photo(2), random_photo(4)]
    garments, descriptions = (
        [random_photo(1), random_photo(5)],
        ["short sleeve t-shirts", "long sleeve shirts"],
    )
    samples = {0: (11, 12), 1: (21, 22)}  # one generator per sample of each person

    def call(who, garment, **kwargs):
        return tryon_images(
            pipe,
            mask_image=[box_mask()] * len(who),
            person_image=[people[p] for p in who],
            pose_image=[poses[p] for p in who],
            garment_image=[garments[g] for g in garment],
            garment_description=[descriptions[g] for g in garment],
            generator=generators(*[s for p in who for s in samples[p]]),
            # one garment-noise generator per garment: its latent is the same alone or batched
            garment_generator=generators(*[70 + g for g in garment]),
            num_images_per_prompt=2,
            paste_back=False,
            output_type="pil",
            **kwargs,
        )

    batch = call([0, 1], [0, 1])
    assert len(batch) == 4 and batch[0].size == (W, H)
    for p in (0, 1):
        own, other = call([p], [p]), call([p], [1 - p])
        for j in (0, 1):
            assert_equal_up_to_batch_rounding(batch[2 * p + j], own[j], f"person {p} sample {j}")
            assert levels_apart(batch[2 * p + j], other[j]) > 10, f"person {p} got garment {1 - p}"
    assert levels_apart(batch[0], batch[1]) > 10  # two samples of one person differ


def test_garment_generator_makes_a_batch_equal_its_solo_calls(pipe):
    """A shared garment has one latent; with ``garment_generator`` its posterior noise no longer
    comes from the first person's generator, so each batched row is that person's solo call."""
    people, poses = [random_photo(0), random_photo(3)], [random_photo(2), random_photo(4)]

    def call(who, seeds, **kwargs):
        return tryon_images(
            pipe,
            person_image=[people[p] for p in who],
            pose_image=[poses[p] for p in who],
            mask_image=[box_mask()] * len(who),
            generator=generators(*seeds),
            paste_back=False,
            output_type="pil",
            **kwargs,
        )

    batch = call([0, 1], [1, 2], garment_generator=torch.Generator().manual_seed(7))
    for p, seed in ((0, 1), (1, 2)):
        solo = call([p], [seed], garment_generator=torch.Generator().manual_seed(7))
        assert_equal_up_to_batch_rounding(batch[p], solo[0], f"person {p}")
    # Without it the second person's garment latent came from the first person's generator.
    assert levels_apart(call([0, 1], [1, 2])[1], call([1], [2])[0]) > 10
    # The garment draw comes from garment_generator only: generator ends in the same state
    # whatever the garment seed, and in another one when it makes the garment draw itself.
    states, images = [], []
    for garment_seed in (7, 8, None):
        g = torch.Generator().manual_seed(5)
        garment_generator = None if garment_seed is None else generators(garment_seed)[0]
        images.append(tryon_images(pipe, generator=g, garment_generator=garment_generator))
        states.append(g.get_state())
    assert torch.equal(states[0], states[1]) and not torch.equal(states[0], states[2])
    assert np.abs(images[0] - images[1]).max() > 1e-3  # the garment noise is used


def test_paste_back_keeps_pixels_outside_the_mask_on_odd_sizes(pipe):
    size = (61, 97)  # odd, not 3:4
    photo, mask = random_photo(0, size), box_mask(size)
    out = tryon_images(
        pipe,
        person_image=photo,
        mask_image=mask,
        pose_image=random_photo(2, (30, 40)),
        output_type="pil",
    )[0]
    assert out.size == size
    keep = np.asarray(mask) < 128
    assert np.array_equal(np.asarray(out)[keep], np.asarray(photo)[keep])
    assert (np.asarray(out)[~keep] != np.asarray(photo)[~keep]).any()
    raw = tryon_images(
        pipe, person_image=photo, mask_image=mask, paste_back=False, output_type="pil"
    )[0]
    assert raw.size == (W, H)


def test_precomputed_embeddings_run_without_text_encoders(pipe):
    no_text = TryOnPipeline(
        **{
            **pipe.components,
            "text_encoder": None,
            "text_encoder_2": None,
            "tokenizer": None,
            "tokenizer_2": None,
        }
    )
    device = torch.device("cpu")
    prompt, pooled = pipe.encode_text(["model is wearing shirts"], device)
    negative, negative_pooled = pipe.encode_text(
        ["monochrome, lowres, bad anatomy, worst quality, low quality"], device
    )
    garment, _ = pipe.encode_text(["a photo of shirts"], device)
    with_embeds = tryon_images(
        no_text,
        garment_description=None,
        prompt_embeds=prompt,
        pooled_prompt_embeds=pooled,
        negative_prompt_embeds=negative,
        negative_pooled_prompt_embeds=negative_pooled,
        garment_prompt_embeds=garment,
    )
    with_text = tryon_images(pipe, garment_description="shirts")
    np.testing.assert_allclose(with_embeds, with_text, atol=1e-5)
    with pytest.raises(ValueError, match="no text encoders"):
        tryon_images(no_text)


def test_save_and_reload_give_the_same_image(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    assert not list((tmp_path / "saved").rglob("*.bin"))
    reloaded = TryOnPipeline.from_pretrained(tmp_path / "saved")
    # safetensors maps tensors at unaligned offsets; CPU kernels then round differently, so the
    # loader must hand every component aligned memory for the reload to be bit-exact.
    unaligned = [
        f"{name}.{key}"
        for name, component in reloaded.components.items()
        if isinstance(component, torch.nn.Module)
        for key, tensor in [*component.named_parameters(), *component.named_buffers()]
        if tensor.data_ptr() % 64
    ]
    assert unaligned == []
    assert np.array_equal(tryon_images(reloaded), tryon_images(pipe))


def test_strength_below_one(pipe, monkeypatch):
    """SDEdit-style start: only the last strength x n timesteps run, from the encoded photo
    noised to the first of them, so the render stays near the photo."""
    steps, strength, seed = 8, 0.25, 3
    reference = DDPMScheduler.from_config(pipe.scheduler.config)
    reference.set_timesteps(steps)
    expected = [int(t) for t in reference.timesteps[steps - round(strength * steps) :]]
    initial = []
    real_step = pipe.scheduler.step

    def spy_step(model_output, timestep, sample, *args, **kwargs):
        if not initial:
            initial.append(sample.clone())
        return real_step(model_output, timestep, sample, *args, **kwargs)

    monkeypatch.setattr(pipe.scheduler, "step", spy_step)
    seen = []
    low = tryon_images(
        pipe,
        seed=seed,
        strength=strength,
        num_inference_steps=steps,
        output_type="latent",
        callback_on_step_end=lambda p, i, t, kw: seen.append(int(t)),
    )
    assert seen == expected and len(seen) == 2
    # The person photo is 3:4 at the work size, so the pipeline encodes it as it is. Draws from
    # the generator: the initial noise, then the photo's VAE posterior sample.
    photo = torch.from_numpy(np.asarray(random_photo(0), np.float32) / 255).permute(2, 0, 1)[None]
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 4, H // 8, W // 8, generator=g)
    with torch.no_grad():
        posterior = pipe.vae.encode(2 * photo - 1).latent_dist
    eps = torch.randn(posterior.mean.shape, generator=g)
    photo_latents = (posterior.mean + posterior.std * eps) * pipe.vae.config.scaling_factor
    alpha_bar = reference.alphas_cumprod[expected[0]]
    noised = alpha_bar.sqrt() * photo_latents + (1 - alpha_bar).sqrt() * noise
    torch.testing.assert_close(initial[0], noised, rtol=1e-5, atol=1e-5)
    # Closer to the photo than a full-strength render with the same seed. (Measured on the
    # latents: the tiny random VAE does not reconstruct images, the latents are what the
    # sampler works on.)
    full = tryon_images(pipe, seed=seed, num_inference_steps=steps, output_type="latent")
    photo_mean = posterior.mean * pipe.vae.config.scaling_factor
    near, far = ((x - photo_mean).abs().mean().item() for x in (low, full))
    assert near < 0.25 * far, (near, far)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(strength=0.0), "strength"),
        (dict(height=60), "multiple of 8"),
        (dict(output_type="jpeg"), "output_type"),
        (dict(garment_description=3), "garment_description must be"),
        (dict(negative_prompt=[]), "negative_prompt must be"),
        (dict(mask_image=Image.new("L", (W, H), 0)), "empty"),
        (dict(person_image=[random_photo(0), random_photo(1)]), "2 person images but 1 masks"),
    ],
)
def test_bad_arguments(pipe, kwargs, match):
    with pytest.raises((ValueError, ImageInputError), match=match):
        tryon_images(pipe, **kwargs)


def test_mask_and_pose_of_other_sizes_are_resized(pipe):
    small_mask = box_mask((W // 2, H // 2))
    out = tryon_images(
        pipe, mask_image=small_mask, pose_image=random_photo(2, (17, 29)), output_type="pil"
    )[0]
    keep = np.asarray(box_mask()) < 128
    assert np.array_equal(np.asarray(out)[keep], np.asarray(random_photo(0))[keep])


def test_non_finite_values_are_detected(tmp_path):
    broken = tiny_pipeline(seed=0)
    with torch.no_grad():
        broken.unet.conv_out.weight.fill_(float("inf"))
    # fp32 weights that are inf themselves: another dtype would not help, the checkpoint is bad.
    with pytest.raises(NonFiniteOutputError, match=r"weights hold NaN/inf values \(TryonNet\)"):
        tryon_images(broken)


def test_fp16_vae_that_asks_for_upcasting_computes_in_fp32():
    """SDXL's VAE overflows in fp16: with ``force_upcast`` it encodes and decodes in fp32 (the
    image of an fp32 VAE holding the fp16-rounded weights) and is fp16 again afterwards."""
    half, rounded = tiny_pipeline(seed=0), tiny_pipeline(seed=0)
    half.vae.to(torch.float16)
    rounded.vae.to(torch.float16).to(torch.float32)
    assert half.vae.config.force_upcast
    steps = []

    def record(p, i, t, kwargs):
        steps.append(p.vae.dtype)

    out = tryon_images(half, callback_on_step_end=record)
    assert half.vae.dtype == torch.float16 and steps == [torch.float16] * 2
    np.testing.assert_array_equal(out, tryon_images(rounded))


def test_missing_and_placeholder_checkpoints(pipe, tmp_path):
    with pytest.raises(CheckpointError, match="no TryonNet folder"):
        TryOnPipeline.from_pretrained(tmp_path)
    pipe.save_pretrained(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\n")
    with pytest.raises(CheckpointError, match="git-lfs pointer"):
        TryOnPipeline.from_pretrained(tmp_path / "ckpt")
    weights.write_bytes(b"placeholder")
    with pytest.raises(CheckpointError, match="placeholder"):
        TryOnPipeline.from_pretrained(tmp_path / "ckpt")
    pipe.save_pretrained(tmp_path / "ckpt2")
    vae = tmp_path / "ckpt2" / "vae" / "diffusion_pytorch_model.safetensors"
    good = vae.read_bytes()
    vae.write_bytes(good[:5000])
    with pytest.raises(CheckpointError, match="vae"):
        TryOnPipeline.from_pretrained(tmp_path / "ckpt2")
    vae.write_bytes(good)
    import shutil

    shutil.rmtree(tmp_path / "ckpt2" / "image_encoder")
    with pytest.raises(CheckpointError, match="image_encoder"):
        TryOnPipeline.from_pretrained(tmp_path / "ckpt2")


def test_hub_id_without_network_says_how_to_pass_a_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match="pass a local folder"):
        TryOnPipeline.from_pretrained("someone/not-here")


def test_step_callback_sees_every_step_and_can_cancel(pipe):
    seen = []

    def record(p, i, t, kwargs):
        assert p is pipe
        seen.append((i, int(t), kwargs["latents"].shape))
        return None

    plain = tryon_images(pipe, num_inference_steps=3)
    observed = tryon_images(pipe, num_inference_steps=3, callback_on_step_end=record)
    assert np.array_equal(plain, observed)  # a callback that returns nothing changes nothing
    assert [i for i, _, _ in seen] == [0, 1, 2]
    assert [t for _, t, _ in seen] == [int(t) for t in pipe.scheduler.timesteps]
    assert seen[0][2] == (1, 4, H // 8, W // 8)

    class Cancelled(Exception):
        pass

    def cancel(p, i, t, kwargs):
        if i == 1:
            raise Cancelled

    with pytest.raises(Cancelled):
        tryon_images(pipe, num_inference_steps=3, callback_on_step_end=cancel)
    assert np.array_equal(
        tryon_images(pipe, num_inference_steps=3), plain
    )  # the next call is clean
    # Returned latents replace the pipeline's.
    zeroed = tryon_images(
        pipe,
        num_inference_steps=3,
        callback_on_step_end=lambda p, i, t, kw: {"latents": kw["latents"] * 0},
    )
    assert not np.array_equal(zeroed, plain)


# ----------------------------------------------------------------------------- from_pretrained
def test_from_pretrained_uses_given_components_and_skips_their_folders(pipe, tmp_path):
    folder = tmp_path / "ckpt"
    pipe.save_pretrained(folder)
    donor = tiny_pipeline(seed=1)
    donor.set_progress_bar_config(disable=True)
    scheduler = DDPMScheduler.from_config(donor.scheduler.config)
    overrides = {
        name: component
        for name, component in donor.components.items()
        if name not in ("scheduler", "feature_extractor")
    }
    for name in [*overrides, "scheduler"]:
        shutil.rmtree(folder / name)  # a folder that is read would now fail to load
    loaded = TryOnPipeline.from_pretrained(folder, scheduler=scheduler, **overrides)
    assert loaded.scheduler is scheduler
    for name, component in overrides.items():
        assert getattr(loaded, name) is component, name
    assert np.array_equal(
        tryon_images(loaded), tryon_images(donor)
    )  # the donor's model, not the saved one
    assert not np.array_equal(tryon_images(loaded), tryon_images(pipe))
    # One override among loaded components: GarmentNet from the donor, the rest from disk.
    folder = tmp_path / "ckpt2"
    pipe.save_pretrained(folder)
    shutil.rmtree(folder / "garment_unet")
    mixed = TryOnPipeline.from_pretrained(folder, garment_unet=donor.garment_unet)
    assert mixed.garment_unet is donor.garment_unet
    assert torch.equal(mixed.unet.conv_in.weight, pipe.unet.conv_in.weight)
    assert tryon_images(mixed).shape == (1, H, W, 3)


def _write_variant(folder, base_name: str, marked: str) -> str:
    """A ``{base}.fp16.safetensors`` beside ``{base}.safetensors``: the same weights in fp16,
    with tensor ``marked`` (or the first float tensor ending so) set to 0.25."""
    state = load_file(str(folder / f"{base_name}.safetensors"))
    key = next(k for k in state if k.endswith(marked))
    state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    state[key] = torch.full_like(state[key], 0.25)
    save_file(state, str(folder / f"{base_name}.fp16.safetensors"), metadata={"format": "pt"})
    return key


def test_from_pretrained_variant_picks_the_variant_files(pipe, tmp_path):
    folder = tmp_path / "ckpt"
    pipe.save_pretrained(folder)
    _write_variant(folder / "unet", "diffusion_pytorch_model", "conv_in.weight")
    _write_variant(folder / "vae", "diffusion_pytorch_model", "encoder.conv_in.weight")
    text_key = _write_variant(folder / "text_encoder", "model", "final_layer_norm.weight")
    variant = TryOnPipeline.from_pretrained(folder, variant="fp16")
    plain = TryOnPipeline.from_pretrained(folder)
    for loaded, expected in ((variant, 0.25), (plain, None)):
        weights = (
            loaded.unet.conv_in.weight,
            loaded.vae.encoder.conv_in.weight,
            loaded.text_encoder.state_dict()[text_key],
        )
        for weight in weights:
            assert weight.dtype == torch.float32  # torch_dtype, not the file's
            assert torch.all(weight == 0.25) == (expected is not None)
    # Folders without a variant file (GarmentNet, image encoder...) load their plain weights.
    assert torch.equal(variant.garment_unet.conv_in.weight, pipe.garment_unet.conv_in.weight)
    with pytest.raises(CheckpointError, match="no weight file"):
        TryOnPipeline.from_pretrained(folder, use_safetensors=False)  # no pickles here


def test_from_pretrained_hub_keywords_reach_snapshot_download(pipe, tmp_path, monkeypatch):
    import huggingface_hub

    folder = tmp_path / "snapshot"
    pipe.save_pretrained(folder)
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    hub = dict(revision="v2", cache_dir=tmp_path / "cache", token="hf_secret", force_download=True)
    loaded = TryOnPipeline.from_pretrained(
        "someone/idm-vton", variant="fp16", low_cpu_mem_usage=False, **hub
    )
    repo_id, kwargs = calls[0]
    assert repo_id == "someone/idm-vton"
    assert {k: kwargs[k] for k in hub} == hub and kwargs["local_files_only"] is False
    assert "*/diffusion_pytorch_model.fp16.bin" in kwargs["allow_patterns"]
    assert np.array_equal(
        tryon_images(loaded), tryon_images(pipe)
    )  # built from the folder the hub returned
    TryOnPipeline.from_pretrained("someone/idm-vton", use_safetensors=True, local_files_only=True)
    assert calls[1][1]["local_files_only"] is True
    assert not [p for p in calls[1][1]["allow_patterns"] if p.endswith(".bin")]


def test_from_pretrained_unknown_keyword_is_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="device_mapp"):
        TryOnPipeline.from_pretrained(tmp_path, device_mapp="auto")


def test_the_denoising_bar_is_the_pipelines_own_setting(capsys):
    """diffusers' per-pipeline setting alone decides the bar: the command line's switch
    (:func:`idm_vton.progress.progress_bars`) does not reach into a pipeline."""
    from idm_vton.progress import progress_bars

    shown = tiny_pipeline(seed=0)
    shown.set_progress_bar_config(disable=False)
    with progress_bars(False):
        tryon_images(shown, num_inference_steps=3)
    assert "3/3" in capsys.readouterr().err
    shown.set_progress_bar_config(disable=True)
    tryon_images(shown, num_inference_steps=3)
    assert capsys.readouterr().err == ""
