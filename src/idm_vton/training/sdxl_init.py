"""Build an untrained IDM-VTON from its ingredients, as the paper starts training (Sec. 3.2).

* TryonNet = SDXL-inpainting-0.1 UNet with ``conv_in`` widened 9 -> 13 (new pose channels zero,
  :func:`~idm_vton.models.tryon_net.widen_conv_in`), IP-Adapter attention on every ``attn2`` filled with
  the IP-Adapter Plus SDXL ViT-H key/value weights;
* Resampler = IP-Adapter Plus ``image_proj`` weights (:func:`convert_resampler_state_dict`);
* GarmentNet = SDXL base UNet; VAE, text encoders, tokenizers from SDXL-inpainting; image encoder
  = the IP-Adapter's CLIP ViT-H/14.

Every foreign key is consumed and every shape checked (STYLE section 4).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from ..loaders.checkpoint import (
    CheckpointError,
    check_state_dict,
    convert_resampler_state_dict,
    read_state_dict,
)
from ..loaders.pipeline import load_component, load_garment_unet
from ..loaders.weights import building_from, load_torch_pickle
from ..models.tryon_net import ImageProjection, attach_ip_adapter, widen_conv_in

logger = logging.getLogger(__name__)

__all__ = ["build_from_sdxl", "convert_ip_adapter_attn_state_dict", "read_ip_adapter"]


def read_ip_adapter(path: str | Path) -> tuple[dict, dict]:
    """``(image_proj, ip_adapter)`` state dicts of an IP-Adapter file (``.bin`` or ``.safetensors``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"IP-Adapter weight file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            flat = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{path} is truncated or corrupt ({first})") from err
        state: dict = {"image_proj": {}, "ip_adapter": {}}
        for key, value in flat.items():
            group, _, rest = key.partition(".")
            if group not in state:
                raise CheckpointError(f"{path}: unexpected key {key}")
            state[group][rest] = value
    else:
        state = load_torch_pickle(
            path, "the IP-Adapter repository (h94/IP-Adapter)", CheckpointError
        )
    if not isinstance(state, dict) or set(state) != {"image_proj", "ip_adapter"}:
        raise CheckpointError(
            f"{path}: expected the groups image_proj and ip_adapter, found "
            f"{sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__}"
        )
    return state["image_proj"], state["ip_adapter"]


def convert_ip_adapter_attn_state_dict(
    unet: UNet2DConditionModel, ip_state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Original IP-Adapter ``ip_adapter`` keys -> this UNet's IP processor keys.

    The original file numbers every attention processor of the UNet in ``attn_processors`` order
    and stores key/value weights for the cross-attention ones: the k-th ``attn2`` is ``2k + 1``
    (``"1.to_k_ip.weight"``, ``"3.to_k_ip.weight"``, ...), as diffusers' own converter reads it.
    """
    out: dict[str, torch.Tensor] = {}
    cross = [n for n in unet.attn_processors if n.endswith("attn2.processor")]
    expected = {}
    for k, name in enumerate(cross):
        for kv in ("k", "v"):
            expected[f"{2 * k + 1}.to_{kv}_ip.weight"] = f"{name}.to_{kv}_ip.0.weight"
    missing = sorted(set(expected) - set(ip_state))
    unexpected = sorted(set(ip_state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"IP-Adapter attention weights do not fit this UNet: {len(missing)} missing "
            f"({', '.join(missing[:3])}), {len(unexpected)} unexpected ({', '.join(unexpected[:3])})"
        )
    model_state = unet.state_dict()
    for src, dst in expected.items():
        if tuple(ip_state[src].shape) != tuple(model_state[dst].shape):
            raise CheckpointError(
                f"IP-Adapter weight {src}: shape {tuple(ip_state[src].shape)}, "
                f"the UNet's {dst} is {tuple(model_state[dst].shape)}"
            )
        out[dst] = ip_state[src]
    return out


def _resampler_from_weights(state: dict[str, torch.Tensor]) -> ImageProjection:
    latents = state["resampler.latents"]
    depth = len({k.split(".")[2] for k in state if k.startswith("resampler.layers.")})
    inner = state["resampler.layers.0.attn.to_q.weight"].shape[0]
    dim_head = 64 if inner % 64 == 0 else inner
    projection = ImageProjection(
        dim=latents.shape[2],
        depth=depth,
        dim_head=dim_head,
        heads=inner // dim_head,
        num_queries=latents.shape[1],
        embedding_dim=state["resampler.proj_in.weight"].shape[1],
        output_dim=state["resampler.proj_out.weight"].shape[0],
        ff_mult=state["resampler.layers.0.ff.1.net.0.proj.weight"].shape[0] // latents.shape[2],
    )
    check_state_dict(projection, state, "IP-Adapter Resampler")
    projection.load_state_dict(state, strict=True)
    return projection


def build_from_sdxl(
    sdxl_inpainting: str | Path,
    sdxl_base: str | Path,
    ip_adapter: str | Path,
    image_encoder: str | Path,
):
    """A :class:`~idm_vton.pipelines.tryon.TryOnPipeline` initialised as for training from scratch."""
    from transformers import (
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionModelWithProjection,
    )

    from ..pipelines.tryon import TryOnPipeline

    inpaint, base = Path(sdxl_inpainting), Path(sdxl_base)
    for folder, what in (
        (inpaint / "unet", "SDXL-inpainting UNet"),
        (base / "unet", "SDXL base UNet"),
    ):
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{what} not found: {folder}/config.json")
    unet = load_component(_empty_unet, inpaint / "unet", "SDXL-inpainting UNet")
    state = read_state_dict(inpaint / "unet")
    check_state_dict(unet, state, f"SDXL-inpainting UNet ({inpaint / 'unet'})")
    unet.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    if unet.config.in_channels != 9:
        raise CheckpointError(
            f"{inpaint}/unet has {unet.config.in_channels} input channels, SDXL-inpainting has 9"
        )
    widen_conv_in(unet, 13)

    proj_state, attn_state = read_ip_adapter(ip_adapter)
    with building_from(ip_adapter, CheckpointError):
        projection = _resampler_from_weights(convert_resampler_state_dict(proj_state))
        attach_ip_adapter(unet, num_tokens=projection.config.num_queries, scale=1.0)
        ip = convert_ip_adapter_attn_state_dict(unet, attn_state)
        result = unet.load_state_dict(ip, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys

    garment_unet = load_garment_unet(base / "unet")
    encoder = load_component(
        CLIPVisionModelWithProjection.from_pretrained, Path(image_encoder), "image encoder"
    )
    if encoder.config.hidden_size != projection.config.embedding_dim:
        raise CheckpointError(
            f"image encoder width {encoder.config.hidden_size} does not match the Resampler's "
            f"input width {projection.config.embedding_dim}"
        )
    scheduler = load_component(
        lambda folder: DDPMScheduler.from_config(DDPMScheduler.load_config(folder)),
        inpaint / "scheduler",
        "scheduler",
    )
    return TryOnPipeline(
        vae=load_component(AutoencoderKL.from_pretrained, inpaint / "vae", "VAE"),
        unet=unet,
        garment_unet=garment_unet,
        image_projection=projection,
        image_encoder=encoder.eval(),
        scheduler=scheduler,
        text_encoder=load_component(
            CLIPTextModel.from_pretrained, inpaint / "text_encoder", "text encoder"
        ),
        text_encoder_2=load_component(
            CLIPTextModelWithProjection.from_pretrained,
            inpaint / "text_encoder_2",
            "text encoder 2",
        ),
        tokenizer=load_component(CLIPTokenizer.from_pretrained, inpaint / "tokenizer", "tokenizer"),
        tokenizer_2=load_component(
            CLIPTokenizer.from_pretrained, inpaint / "tokenizer_2", "tokenizer 2"
        ),
        feature_extractor=_clip_processor(Path(image_encoder), encoder.config.image_size),
    )


def _empty_unet(folder: Path) -> UNet2DConditionModel:
    """The UNet ``folder``'s config describes, without weights (meta tensors)."""
    with init_empty_weights():
        return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder))


def _clip_processor(folder: Path, size: int):
    """The encoder folder's CLIP preprocessing if it has one, else CLIP's at the encoder's size."""
    from ..models.processors import clip_image_processor, image_processor_class

    if (folder / "preprocessor_config.json").is_file():
        return load_component(image_processor_class().from_pretrained, folder, "CLIP preprocessing")
    return clip_image_processor(size)
