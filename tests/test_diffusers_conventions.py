"""What a diffusers user reaches for works on TryOnPipeline, or is refused in one line without
breaking the pipeline; and the Python API agrees with the command line (``"tiny"``, an optional
description)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from idm_vton.errors import UsageError
from idm_vton.pipelines.loading import tiny_pipeline
from idm_vton.pipelines.tryon import TryOnPipeline

from .conftest import EXAMPLES
from .helpers.pipeline_inputs import H, W, box_mask, random_photo, tryon_images


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------ the API as the CLI
def test_from_pretrained_tiny_is_the_tiny_model(pipe):
    loaded = TryOnPipeline.from_pretrained("tiny")
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(tryon_images(loaded), tryon_images(pipe))
    half = TryOnPipeline.from_pretrained("tiny", dtype=torch.bfloat16)
    assert half.unet.dtype == torch.bfloat16 and half.garment_unet.dtype == torch.bfloat16


def test_a_call_without_a_description_uses_the_empty_text(pipe):
    without = tryon_images(pipe, garment_description=None)
    assert np.array_equal(without, tryon_images(pipe, garment_description=""))
    assert not np.array_equal(without, tryon_images(pipe))  # the description does matter
    args = dict(person_image=random_photo(0), garment_image=random_photo(1))
    result = pipe(
        **args, mask_image=box_mask(), pose_image=random_photo(2), num_inference_steps=1,
        height=H, width=W, output_type="np",
    )  # fmt: skip
    assert result.garment_descriptions == [""]


# ------------------------------------------------------------------ from_pretrained keywords
def test_dtype_the_old_torch_dtype_and_a_per_component_dict(tmp_path, pipe):
    pipe.save_pretrained(tmp_path / "ckpt")
    new = TryOnPipeline.from_pretrained(tmp_path / "ckpt", dtype=torch.bfloat16)
    old = TryOnPipeline.from_pretrained(tmp_path / "ckpt", torch_dtype=torch.bfloat16)
    assert new.unet.dtype == old.unet.dtype == torch.bfloat16
    mixed = TryOnPipeline.from_pretrained(
        tmp_path / "ckpt", dtype={"unet": torch.bfloat16, "default": torch.float32}
    )
    assert mixed.unet.dtype == torch.bfloat16
    assert mixed.garment_unet.dtype == mixed.vae.dtype == torch.float32
    with pytest.raises(TypeError, match="dtype dict"):
        TryOnPipeline.from_pretrained(tmp_path / "ckpt", dtype={"unett": torch.float16})
    with pytest.raises(TypeError, match="both dtype and torch_dtype"):
        TryOnPipeline.from_pretrained("tiny", dtype=torch.float16, torch_dtype=torch.float32)


def test_device_map_puts_the_pipeline_on_one_device_or_is_refused():
    on_cpu = TryOnPipeline.from_pretrained("tiny", device_map="cpu")
    assert on_cpu.device == torch.device("cpu")
    with pytest.raises(UsageError, match="device_map 'balanced' is not supported") as info:
        TryOnPipeline.from_pretrained("tiny", device_map="balanced")
    assert "\n" not in str(info.value)


def test_a_pipeline_saved_without_text_encoders_reloads_plainly(tmp_path):
    tiny_pipeline(text_encoders=False).save_pretrained(tmp_path / "ckpt")
    reloaded = TryOnPipeline.from_pretrained(tmp_path / "ckpt")
    assert reloaded.text_encoder is None and reloaded.tokenizer is None
    assert reloaded.unet is not None


# ------------------------------------------------------------------ step callbacks
def test_callbacks_get_the_tensors_they_ask_for_and_can_change_latents(pipe):
    seen = []

    def record(p, i, t, kwargs):
        seen.append(sorted(kwargs))
        assert p.num_timesteps == 2 and p.do_classifier_free_guidance
        return kwargs

    inputs = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids"]
    same = tryon_images(
        pipe, callback_on_step_end=record, callback_on_step_end_tensor_inputs=inputs
    )
    assert seen == [sorted(inputs)] * 2
    assert np.array_equal(same, tryon_images(pipe))  # handing tensors back changes nothing

    def zero_latents(p, i, t, kwargs):
        return {"latents": torch.zeros_like(kwargs["latents"])}

    changed = tryon_images(pipe, callback_on_step_end=zero_latents)
    assert not np.array_equal(changed, same)
    with pytest.raises(UsageError, match="'noise_pred' not available"):
        tryon_images(
            pipe, callback_on_step_end=record, callback_on_step_end_tensor_inputs=["noise_pred"]
        )


def test_a_callback_can_interrupt_the_run(pipe):
    calls = []

    def stop(p, i, t, kwargs):
        calls.append(i)
        p._interrupt = True
        return kwargs

    stopped = tryon_images(pipe, callback_on_step_end=stop, num_inference_steps=3)
    assert calls == [0]  # steps 1 and 2 were skipped
    assert not np.array_equal(stopped, tryon_images(pipe, num_inference_steps=3))
    assert tryon_images(pipe).shape == stopped.shape  # and the next call runs in full


def test_diffusers_sdxl_cfg_cutoff_callback_turns_guidance_off_midway(pipe):
    from diffusers.callbacks import SDXLCFGCutoffCallback

    guidance_seen = []

    class Recording(SDXLCFGCutoffCallback):
        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            out = super().callback_fn(pipeline, step_index, timestep, callback_kwargs)
            guidance_seen.append(pipeline.do_classifier_free_guidance)
            return out

    cut = tryon_images(pipe, num_inference_steps=4, callback_on_step_end=Recording(0.5))
    assert guidance_seen == [True, True, False, False]  # off from step int(4 x 0.5) on
    full = tryon_images(pipe, num_inference_steps=4)
    assert cut.shape == full.shape and np.isfinite(cut).all()
    assert not np.array_equal(cut, full)


# ------------------------------------------------------------------ attention slicing
def test_attention_slicing_is_refused_and_leaves_the_processors(pipe):
    before = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    garment_before = {k: type(v) for k, v in pipe.garment_unet.attn_processors.items()}
    reference = tryon_images(pipe)
    with pytest.raises(UsageError, match="attention slicing does not apply") as info:
        pipe.enable_attention_slicing()
    assert "\n" not in str(info.value)
    pipe.disable_attention_slicing()
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == before
    assert {k: type(v) for k, v in pipe.garment_unet.attn_processors.items()} == garment_before
    assert np.array_equal(tryon_images(pipe), reference)


# ------------------------------------------------------------------ prompts and preprocessing
def test_a_list_of_negative_prompts(pipe):
    one = tryon_images(pipe, negative_prompt="blurry")
    assert np.array_equal(tryon_images(pipe, negative_prompt=["blurry"]), one)
    assert not np.array_equal(tryon_images(pipe, negative_prompt=["sharp"]), one)
    people, garments = [random_photo(0), random_photo(3)], [random_photo(1), random_photo(4)]
    both = pipe(
        person_image=people, garment_image=garments, mask_image=[box_mask()] * 2,
        pose_image=[random_photo(2)] * 2, garment_description="t-shirts", num_inference_steps=1,
        negative_prompt=["blurry", "sharp"], height=H, width=W, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images  # fmt: skip
    assert both.shape[0] == 2
    with pytest.raises(UsageError, match="3 negative prompts for 1 garments"):
        tryon_images(pipe, negative_prompt=["a", "b", "c"])


def test_without_a_feature_extractor_clip_input_has_the_encoders_size():
    pipe = tiny_pipeline()
    pipe.feature_extractor = None
    size = pipe.image_encoder.config.image_size
    pixels = pipe.clip_preprocess([random_photo(1)], "cpu")
    assert pixels.shape[-2:] == (size, size) and size != 224


# ------------------------------------------------------------------ nothing printed
_LIBRARY_CALL = """
import torch
from PIL import Image
from idm_vton import TryOnPipeline
pipe = TryOnPipeline.from_pretrained("tiny")
pipe.set_progress_bar_config(disable=True)
pipe.to(torch.float32)
photo = Image.open(sys.argv[1] + "/person.jpg")
image = pipe(photo, Image.open(sys.argv[1] + "/garment.jpg"), Image.open(sys.argv[1] + "/mask.png"),
             Image.open(sys.argv[1] + "/densepose.png"), num_inference_steps=1).images[0]
"""


def test_a_library_call_prints_nothing():
    run = subprocess.run(
        [sys.executable, "-c", "import sys\n" + _LIBRARY_CALL, str(EXAMPLES)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert (run.stdout, run.stderr) == ("", "")


def test_a_cli_run_prints_no_warning(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "idm_vton",
            "tryon",
            "--model",
            "tiny",
            "--person",
            str(EXAMPLES / "person.jpg"),
            "--garment",
            str(EXAMPLES / "garment.jpg"),
            "--mask",
            str(EXAMPLES / "mask.png"),
            "--pose",
            str(EXAMPLES / "densepose.png"),
            "--steps",
            "1",
            "--out",
            str(tmp_path / "out.png"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert run.stdout.splitlines()[-1] == f"wrote {tmp_path / 'out.png'}"
    assert all(line.startswith(("note:", "wrote")) for line in run.stdout.splitlines())
