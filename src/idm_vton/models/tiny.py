"""The tiny random IDM-VTON: the model every command runs with ``--model tiny`` (no download).

Every component has the real architecture (SDXL-style UNets with cross-attention, IP-Adapter Plus
Resampler, CLIP text and vision towers, an 8x VAE) at a few thousand channels in total, and the
tokenizers are byte-level CLIP tokenizers written on the fly, so the whole path runs offline on a
CPU in seconds. Its images are noise: it checks plumbing, not quality.

A product feature (the embedded default of every command, the server's demo mode), so it lives
in the library; :func:`idm_vton.pipelines.loading.tiny_pipeline` builds the pipeline from these
components. Test-only reference code and the SDXL shape presets live in :mod:`idm_vton.testing`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from ..schedulers import reference_scheduler
from .processors import clip_image_processor
from .tryon_net import ImageProjection, attach_ip_adapter

__all__ = ["TINY_MODEL_NOTE", "random_tryon_models", "tiny_components", "tiny_unet_config"]

TINY_MODEL_NOTE = "tiny random model: its output is noise (for testing the plumbing only)"

# SDXL time ids are 6 numbers embedded with addition_time_embed_dim each, after the pooled text.
_POOLED_DIM = 16
_TIME_DIM = 8


def tiny_unet_config(in_channels: int, tryon: bool) -> dict:
    """The tiny UNet configuration; ``tryon`` adds the text-time (pooled + time ids) conditioning."""
    config = dict(
        sample_size=32,  # default resolution 256 x 192
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 48),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        cross_attention_dim=32,
        use_linear_projection=True,
        norm_num_groups=16,
    )
    if tryon:
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=_TIME_DIM,
            projection_class_embeddings_input_dim=_POOLED_DIM + 6 * _TIME_DIM,
        )
    return config


_TINY_PROJECTION = dict(
    dim=32,
    depth=2,
    dim_head=8,
    heads=4,
    num_queries=16,
    embedding_dim=32,
    output_dim=32,
    ff_mult=4,
)
_TINY_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
    projection_dim=16,
)
_TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 32, 32),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=256,
    scaling_factor=0.13025,
)
_TINY_TEXT = dict(
    vocab_size=514,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=77,
    projection_dim=_POOLED_DIM,
    bos_token_id=512,
    eos_token_id=513,
    pad_token_id=513,
)


def _byte_level_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer over single bytes (no merges): any text, no download."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable + [256 + i for i, b in enumerate(b for b in range(256) if b not in printable)]
    chars = [chr(c) for c in codes]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(
            str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=77
        )


def random_tryon_models(
    unet_config: Callable[..., dict], projection: dict, vision: dict, vae: dict
) -> dict[str, torch.nn.Module]:
    """The pipeline's five networks with random weights, built in this order on the current
    default device: TryonNet (``unet_config(13, tryon=True)``: 13 input channels, IP-Adapter
    attention over 16 image tokens), GarmentNet (``unet_config(4, tryon=False)``), the Resampler
    (``ImageProjection(**projection)``), the CLIP vision tower and the VAE.

    The tiny model (:func:`tiny_components`) and the SDXL-shaped one
    (:func:`idm_vton.testing.sdxl_shapes.sdxl_pipeline`, for benchmarks) differ only in the
    configurations."""
    unet = UNet2DConditionModel(**unet_config(13, tryon=True))
    attach_ip_adapter(unet, num_tokens=16, scale=1.0)
    garment_unet = UNet2DConditionModel(**unet_config(4, tryon=False))
    return {
        "unet": unet,
        "garment_unet": garment_unet,
        "image_projection": ImageProjection(**projection),
        "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**vision)),
        "vae": AutoencoderKL(**vae),
    }


def tiny_components(seed: int = 0, text_encoders: bool = True) -> dict:
    """The tiny pipeline's components, initialised from ``seed`` (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        models = random_tryon_models(tiny_unet_config, _TINY_PROJECTION, _TINY_VISION, _TINY_VAE)
        components = {
            **{name: model.eval() for name, model in models.items()},
            "scheduler": reference_scheduler(),
            "feature_extractor": clip_image_processor(32),
        }
        if text_encoders:
            components.update(
                text_encoder=CLIPTextModel(CLIPTextConfig(**_TINY_TEXT)).eval(),
                text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**_TINY_TEXT)).eval(),
                tokenizer=_byte_level_tokenizer(),
                tokenizer_2=_byte_level_tokenizer(),
            )
    return components
