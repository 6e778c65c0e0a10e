"""IDM-VTON at the real SDXL shapes with random weights, for benchmarks (no download).

SDXL-inpainting UNet widened to 13 channels with IP-Adapter attention (TryonNet), SDXL base UNet
(GarmentNet), IP-Adapter Plus Resampler (1280 wide, 4 layers, 20 heads), CLIP ViT-H/14 vision
tower and the SDXL VAE; no text encoders (benchmarks pass prompt embeddings of the real shapes:
77 x 2048 tokens, 1280 pooled). Modules are built on the meta device and filled from a small
random pool, so building takes seconds instead of minutes of initialisation.
"""

from __future__ import annotations

import torch

__all__ = ["fill_random", "sdxl_pipeline", "sdxl_unet_config"]


def sdxl_unet_config(in_channels: int, tryon: bool) -> dict:
    """SDXL UNet configuration; ``tryon`` adds the text-time (pooled + time ids) conditioning."""
    config = dict(
        sample_size=128,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        norm_num_groups=32,
    )
    if tryon:
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
    return config


#: The IP-Adapter Plus Resampler of SDXL (1280 wide, 4 layers, 20 heads, 16 tokens of 2048).
IP_ADAPTER_PLUS_SDXL = dict(
    dim=1280,
    depth=4,
    dim_head=64,
    heads=20,
    num_queries=16,
    embedding_dim=1280,
    output_dim=2048,
    ff_mult=4,
)
#: CLIP ViT-H/14 vision tower (the IP-Adapter Plus image encoder).
VIT_H_14 = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=16,
    image_size=224,
    patch_size=14,
    projection_dim=1024,
    hidden_act="gelu",
)
#: The SDXL VAE.
SDXL_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.13025,
    force_upcast=True,
)


def fill_random(model: torch.nn.Module, seed: int) -> None:
    """Materialise a meta-built model with cheap random values (norms 1/0, weights ~ 1/sqrt(fan_in))."""
    pool = torch.randn(1 << 22, generator=torch.Generator().manual_seed(seed))
    offset = 0
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if isinstance(module, norms):
                    p.fill_(1.0 if name == "weight" else 0.0)
                    continue
                flat = p.view(-1)
                scale = p[0].numel() ** -0.5 if p.ndim >= 2 else 0.02
                for start in range(0, flat.numel(), pool.numel()):
                    n = min(pool.numel(), flat.numel() - start)
                    offset = (offset + 7919) % (pool.numel() - n + 1)
                    flat[start : start + n].copy_(
                        pool[offset : offset + n].to(flat.device, flat.dtype)
                    )
                flat.mul_(scale)
            for name, b in module.named_buffers(recurse=False):
                if name == "position_ids":
                    b.copy_(torch.arange(b.shape[-1]).expand_as(b))
                else:
                    raise AssertionError(f"unhandled buffer {name} in {type(module).__name__}")


def sdxl_pipeline(
    dtype: torch.dtype = torch.float32, seed: int = 0, device: str | torch.device = "cpu"
):
    """A :class:`~idm_vton.pipelines.tryon.TryOnPipeline` at SDXL shapes with random weights."""
    from ..models.processors import clip_image_processor
    from ..models.tiny import random_tryon_models
    from ..pipelines.tryon import TryOnPipeline
    from ..schedulers import reference_scheduler

    with torch.device("meta"):
        models = random_tryon_models(sdxl_unet_config, IP_ADAPTER_PLUS_SDXL, VIT_H_14, SDXL_VAE)
    for i, model in enumerate(models.values()):
        model.to(dtype).to_empty(device=device)
        fill_random(model, seed + i)
        model.eval().requires_grad_(False)
    return TryOnPipeline(
        **models, scheduler=reference_scheduler(), feature_extractor=clip_image_processor()
    )
