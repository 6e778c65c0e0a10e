"""Test helpers: write a tiny pipeline in the *published* IDM-VTON layout.

The published layout is produced here independently of the library's converter (by the inverse
renaming, written out by hand), so the loader is checked against an outside description of the
format rather than against itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file


def published_tryon_state(pipe) -> dict[str, torch.Tensor]:
    """TryonNet + Resampler weights under the published key names."""
    state = {}
    for key, value in pipe.unet.state_dict().items():
        key = re.sub(r"\.processor\.to_([kv])_ip\.0\.weight$", r".processor.to_\1_ip.weight", key)
        state[key] = value.clone()
    names = {
        "ln0": "0.norm1",
        "ln1": "0.norm2",
        "attn.to_q": "0.to_q",
        "attn.to_out.0": "0.to_out",
        "ff.0": "1.0",
        "ff.1.net.0.proj": "1.1",
        "ff.1.net.2": "1.3",
    }
    proj = pipe.image_projection.state_dict()
    for key, value in proj.items():
        short = key[len("resampler.") :]
        m = re.match(r"layers\.(\d+)\.(.+)\.(weight|bias)$", short)
        if m is None:
            state[f"encoder_hid_proj.{short}"] = value.clone()
            continue
        layer, part, kind = m.groups()
        if part == "attn.to_k":
            v = proj[f"resampler.layers.{layer}.attn.to_v.{kind}"]
            state[f"encoder_hid_proj.layers.{layer}.0.to_kv.{kind}"] = torch.cat([value, v])
        elif part == "attn.to_v":
            continue
        else:
            state[f"encoder_hid_proj.layers.{layer}.{names[part]}.{kind}"] = value.clone()
    return state


# EMA bookkeeping the published unet/config.json inherits from SDXL-inpainting (written out here
# by hand, not taken from the library, so the loader is checked against the file as published).
PUBLISHED_EMA_KEYS = {
    "decay": 0.9999,
    "inv_gamma": 1.0,
    "min_decay": 0.0,
    "optimization_step": 37000,
    "power": 0.6666666666666666,
    "update_after_step": 0,
    "use_ema_warmup": False,
}


def write_published_checkpoint(
    pipe,
    root: Path,
    fmt: str = "bin",
    dtype=torch.float32,
    garment_addition_embed_type: str | None = None,
) -> Path:
    """Write ``pipe`` as the published yisol/IDM-VTON folder would hold it.

    ``unet/config.json`` carries the EMA keys. ``unet_encoder/config.json`` has
    ``addition_embed_type: null`` as published (the official trainer sets it at run time) while
    the weights still hold SDXL's four ``add_embedding.*`` tensors; pass
    ``garment_addition_embed_type="text_time"`` for the older form that names them in the config.
    """
    root = Path(root)
    unet_dir = root / "unet"
    unet_dir.mkdir(parents=True)
    config = dict(pipe.unet.config)
    config.update(
        encoder_hid_dim_type="ip_image_proj", encoder_hid_dim=pipe.image_encoder.config.hidden_size
    )
    config.update(PUBLISHED_EMA_KEYS)
    config["_class_name"] = "UNet2DConditionModel"
    (unet_dir / "config.json").write_text(json.dumps(config))
    state = {k: v.to(dtype) for k, v in published_tryon_state(pipe).items()}
    # The tiny Resampler's head split (4 x 8) is not IDM-VTON's (20 x 64): say so as the fixtures do.
    rc = pipe.image_projection.config
    (unet_dir / "resampler_config.json").write_text(
        json.dumps({"heads": rc.heads, "dim_head": rc.dim_head})
    )
    _write(state, unet_dir, fmt)
    # The published unet_encoder is SDXL base's UNet: its config keeps the text_time sizes and
    # its weights the add_embedding MLP (time embedding width -> pooled + 6 time ids).
    garment_dir = root / "unet_encoder"
    garment_dir.mkdir()
    gconfig = dict(pipe.garment_unet.config)
    gconfig.update(
        addition_embed_type=garment_addition_embed_type,
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=64,
    )
    gconfig["_class_name"] = "UNet2DConditionModel"
    (garment_dir / "config.json").write_text(json.dumps(gconfig))
    gstate = {k: v.to(dtype).clone() for k, v in pipe.garment_unet.state_dict().items()}
    width = pipe.garment_unet.config.block_out_channels[0] * 4
    generator = torch.Generator().manual_seed(0)
    for name, shape in (("linear_1", (width, 64)), ("linear_2", (width, width))):
        gstate[f"add_embedding.{name}.weight"] = torch.randn(*shape, generator=generator).to(dtype)
        gstate[f"add_embedding.{name}.bias"] = torch.randn(shape[0], generator=generator).to(dtype)
    _write(gstate, garment_dir, "safetensors")
    pipe.vae.save_pretrained(root / "vae")
    pipe.image_encoder.save_pretrained(root / "image_encoder")
    pipe.scheduler.save_pretrained(root / "scheduler")
    for name in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
        getattr(pipe, name).save_pretrained(root / name)
    return root


def _write(state: dict, folder: Path, fmt: str) -> None:
    if fmt == "bin":
        torch.save(state, folder / "diffusion_pytorch_model.bin")
    else:
        save_file(
            {k: v.contiguous() for k, v in state.items()},
            folder / "diffusion_pytorch_model.safetensors",
        )
