"""TryonNet and GarmentNet assembly (IDM-VTON paper, Sec. 3.2) on stock diffusers UNets.

* TryonNet = SDXL inpainting UNet with ``conv_in`` widened 9 -> 13 channels
  (``[noisy latent 4 | mask 1 | masked-person latent 4 | DensePose latent 4]``,
  :func:`widen_conv_in`), IP-Adapter Plus decoupled cross-attention on every ``attn2``
  (:func:`attach_ip_adapter`, diffusers' own ``IPAdapterAttnProcessor2_0``) fed by the Resampler
  (:class:`ImageProjection`, diffusers' ``IPAdapterPlusImageProjection``), and garment-aware
  self-attention on every ``attn1`` (:func:`install_garment_attention`).
* GarmentNet = frozen SDXL base UNet; :func:`garment_features` runs it only up to its last
  transformer block and returns the self-attention inputs keyed by layer name.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import IPAdapterPlusImageProjection

from .garment_attention import (
    GarmentAttentionProcessor,
    GarmentCaptureProcessor,
    GarmentFeaturesReady,
    GarmentFeatureStore,
    garment_attention_layers,
)

__all__ = [
    "ImageProjection",
    "attach_ip_adapter",
    "garment_features",
    "install_garment_attention",
    "tryon_forward",
    "widen_conv_in",
]


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int = 13) -> UNet2DConditionModel:
    """Widen ``unet.conv_in`` to ``in_channels`` inputs; the new channels start at zero.

    With zero weights on the new channels the widened UNet computes exactly what the original
    did, whatever those channels hold (paper Sec. 3.2: the pose latent is appended to the
    9-channel SDXL inpainting input). The change is recorded in the config so that
    ``save_pretrained`` writes a config that reloads.
    """
    old = unet.conv_in
    if in_channels < old.in_channels:
        raise ValueError(f"cannot narrow conv_in from {old.in_channels} to {in_channels} channels")
    new = torch.nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


class ImageProjection(ModelMixin, ConfigMixin):
    """IP-Adapter Plus Resampler: CLIP penultimate hidden states -> ``num_queries`` image tokens.

    A thin ``ModelMixin`` around diffusers' ``IPAdapterPlusImageProjection`` so it is a pipeline
    component of its own (saved, loaded, offloaded and cast like the others). Argument names follow
    the original Resampler (``dim``, ``embedding_dim``, ``output_dim``, ``ff_mult``).
    """

    @register_to_config
    def __init__(
        self,
        dim: int = 1280,
        depth: int = 4,
        dim_head: int = 64,
        heads: int = 20,
        num_queries: int = 16,
        embedding_dim: int = 1280,
        output_dim: int = 2048,
        ff_mult: int = 4,
    ) -> None:
        super().__init__()
        self.resampler = IPAdapterPlusImageProjection(
            embed_dims=embedding_dim,
            output_dims=output_dim,
            hidden_dims=dim,
            depth=depth,
            dim_head=dim_head,
            heads=heads,
            num_queries=num_queries,
            ffn_ratio=ff_mult,
        )

    def forward(self, clip_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.resampler(clip_hidden_states)


def attach_ip_adapter(unet: UNet2DConditionModel, num_tokens: int = 16, scale: float = 1.0) -> None:
    """Put diffusers' ``IPAdapterAttnProcessor2_0`` on every ``attn2`` (decoupled cross-attention).

    Self-attention processors are left as they are. The IP key/value projections are created
    fresh (zero-free random init from ``nn.Linear``); a checkpoint load fills them.
    """
    processors = {}
    for name, processor in unet.attn_processors.items():
        if name.endswith("attn2.processor"):
            attn = unet.get_submodule(name[: -len(".processor")])
            processors[name] = IPAdapterAttnProcessor2_0(
                hidden_size=attn.to_q.out_features,
                cross_attention_dim=unet.config.cross_attention_dim,
                num_tokens=(num_tokens,),
                scale=scale,
            ).to(device=attn.to_q.weight.device, dtype=attn.to_q.weight.dtype)
        else:
            processors[name] = processor
    unet.set_attn_processor(processors)


def install_garment_attention(
    tryon_unet: UNet2DConditionModel,
    garment_unet: UNet2DConditionModel,
    store: GarmentFeatureStore,
) -> None:
    """Install the garment capture/attention processors on both UNets' ``attn1`` (keeps ``attn2``).

    Call after :func:`attach_ip_adapter`. Both UNets must have the same transformer blocks.
    """
    tryon_layers = garment_attention_layers(tryon_unet)
    garment_layers = garment_attention_layers(garment_unet)
    if tryon_layers != garment_layers:
        raise ValueError(
            "TryonNet and GarmentNet transformer blocks differ: "
            f"{len(tryon_layers)} vs {len(garment_layers)} self-attention layers"
        )
    for unet, make in (
        (tryon_unet, lambda n: GarmentAttentionProcessor(n, store)),
        (garment_unet, lambda n: GarmentCaptureProcessor(n, store)),
    ):
        processors = {
            key: make(key[: -len(".attn1.processor")]) if key.endswith(".attn1.processor") else proc
            for key, proc in unet.attn_processors.items()
        }
        unet.set_attn_processor(processors)


def garment_store(unet: UNet2DConditionModel) -> GarmentFeatureStore:
    """The store the garment processors of ``unet`` share (TryonNet or GarmentNet)."""
    for proc in unet.attn_processors.values():
        if isinstance(proc, (GarmentAttentionProcessor, GarmentCaptureProcessor)):
            return proc.store
    raise ValueError("no garment attention processors installed on this UNet")


def garment_features(
    garment_unet: UNet2DConditionModel,
    sample: torch.Tensor,
    timestep: torch.Tensor | int,
    encoder_hidden_states: torch.Tensor,
    run_to_end: bool = False,
) -> dict[str, torch.Tensor]:
    """Run GarmentNet up to its last self-attention; return ``{layer name: attn1 input}``.

    The stock UNet forward runs (so offload hooks and compilation see an ordinary call) and the
    capture processor of the last transformer block ends it once that block's input is recorded:
    the rest of the up path, ``conv_norm_out`` and ``conv_out`` never influence IDM-VTON's output.
    GarmentNet has no added (text-time) conditioning. Requires :func:`install_garment_attention`.
    ``run_to_end=True`` runs the whole network as the reference does (same features, more work;
    used by the benchmark's reference path).
    """
    store = garment_store(garment_unet)
    layers = garment_attention_layers(garment_unet)
    recording: dict[str, torch.Tensor] = {}
    store.recording, store.stop_after = recording, None if run_to_end else layers[-1]
    try:
        garment_unet(
            sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False
        )
    except GarmentFeaturesReady:
        pass
    finally:
        store.recording, store.stop_after = None, None
    missing = [name for name in layers if name not in recording]
    assert not missing, f"GarmentNet layers not reached: {missing}"
    return {name: recording[name] for name in layers}


def tryon_forward(
    unet: UNet2DConditionModel,
    sample: torch.Tensor,
    timestep: torch.Tensor | int,
    encoder_hidden_states: torch.Tensor,
    text_embeds: torch.Tensor,
    time_ids: torch.Tensor,
    image_tokens: torch.Tensor,
    garment: dict[str, torch.Tensor] | None = None,
    null_rows: int = 0,
) -> torch.Tensor:
    """One TryonNet pass; returns the predicted noise.

    ``encoder_hidden_states`` are the text tokens, ``image_tokens`` the Resampler output (IP-Adapter
    tokens), ``text_embeds``/``time_ids`` the SDXL added conditioning. ``garment`` maps layer names to
    GarmentNet features (batch 1 or one per garment row); the first ``null_rows`` rows get the
    reference's zero garment tokens (the unconditional CFG branch). ``garment=None`` keeps whatever
    the store already holds (set once per step by the pipeline).
    """
    store = garment_store(unet)
    if garment is not None:
        store.set_features(garment, null_rows=null_rows)
    return unet(
        sample,
        timestep,
        encoder_hidden_states=(encoder_hidden_states, [image_tokens]),
        added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids},
        return_dict=False,
    )[0]


def plain_attention_processors(unet: UNet2DConditionModel) -> None:
    """Reset every processor to ``AttnProcessor2_0`` (drops IP-Adapter and garment processors)."""
    unet.set_attn_processor(AttnProcessor2_0())
