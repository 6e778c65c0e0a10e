"""The official IDM-VTON computation, for parity tests and side-by-side benchmarks.

The official code (``yisol/IDM-VTON``, ``src/tryon_pipeline.py`` and its forked UNets) computes
what the default pipeline does, with more work: self-attention over ``[person ; garment]`` with
queries and output projection for *all* tokens, then slicing; zero garment tokens materialised
for the unconditional half; GarmentNet run to its end at every step, at the TryonNet's batch (one
garment copy per person); the IP-Adapter processor's per-call attention map
(``IPAttnProcessor2_0.attn_map``). Here that is a *configuration* of the stock pipeline, through
its two public seams:

* attention processors (``unet.set_attn_processor``): :class:`NaiveGarmentAttentionProcessor` on
  every TryonNet ``attn1`` and :class:`OfficialIPAttnProcessor` on every ``attn2``
  (:func:`official_attention_processors`);
* the garment branch (``pipe.garment_branch``): :class:`OfficialGarmentBranch`.

:func:`reference_formulation` installs both for the duration of a ``with`` block. Same weights,
same inputs, same result within floating-point tolerance (``tests/test_performance.py``);
``benchmarks/bench_pipeline.py`` times it against the default path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0

from ..models.garment_attention import GarmentAttentionProcessor, GarmentTokens
from ..models.tryon_net import garment_features, tryon_forward
from ..pipelines.garment_branch import (
    Features,
    GarmentBranch,
    GarmentInputs,
    GarmentSteps,
    PerStepGarment,
    TryonConditioning,
)

__all__ = [
    "NaiveGarmentAttentionProcessor",
    "OfficialGarmentBranch",
    "OfficialIPAttnProcessor",
    "official_attention_processors",
    "reference_formulation",
]


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


class OfficialIPAttnProcessor:
    """The official IP-Adapter cross-attention (``ip_adapter/attention_processor.py``,
    ``IPAttnProcessor2_0``), on the weights of a diffusers ``IPAdapterAttnProcessor2_0``.

    Same output as the diffusers processor; it also computes the attention map the official
    processor stores on every call (``attn_map``, never read at inference), as the official code
    pays for it.
    """

    def __init__(self, ip: IPAdapterAttnProcessor2_0) -> None:
        self.ip = ip

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        text, ip_tokens = encoder_hidden_states
        ip_tokens = ip_tokens[0]
        heads = attn.heads
        q = _split_heads(attn.to_q(hidden_states), heads)
        k = _split_heads(attn.to_k(text), heads)
        v = _split_heads(attn.to_v(text), heads)
        out = F.scaled_dot_product_attention(q, k, v)
        ip_k = _split_heads(self.ip.to_k_ip[0](ip_tokens), heads)
        ip_v = _split_heads(self.ip.to_v_ip[0](ip_tokens), heads)
        ip_out = F.scaled_dot_product_attention(q, ip_k, ip_v)
        # The official processor's debug map, with its operator precedence, on every call.
        self.attn_map = q @ ip_k.transpose(-2, -1).softmax(dim=-1)
        out = out + self.ip.scale[0] * ip_out
        out = out.transpose(1, 2).flatten(2).to(q.dtype)
        return attn.to_out[1](attn.to_out[0](out))


class NaiveGarmentAttentionProcessor(GarmentAttentionProcessor):
    """TryonNet ``attn1`` computed as the reference does: materialised zero tokens for the
    unconditional rows, queries, attention and output projection for every row of
    ``[person ; garment]``, then the person rows kept. Same result as
    :class:`~idm_vton.models.garment_attention.GarmentAttentionProcessor`, at the reference's cost.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        tokens = self.store.get(self.name)
        if tokens is None:
            return super().__call__(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb
            )
        assert hidden_states.ndim == 3, "garment attention expects (batch, tokens, channels) inputs"
        assert attention_mask is None and encoder_hidden_states is None
        assert attn.residual_connection is False and attn.rescale_output_factor == 1.0
        # The reference projects every row of the concatenation, then keeps the person rows.
        out = attn.to_out[1](attn.to_out[0](self._naive(attn, hidden_states, tokens)))
        return out[:, : hidden_states.shape[1]]

    def _naive(self, attn: Attention, h: torch.Tensor, tokens: GarmentTokens) -> torch.Tensor:
        null_rows, feats = self._rows(tokens, h.shape[0])
        feats = feats.to(h.dtype).expand(h.shape[0] - null_rows, -1, -1)
        garment = torch.cat([feats.new_zeros(null_rows, *feats.shape[1:]), feats])
        z = torch.cat([h, garment], dim=1)
        q, k, v = (_split_heads(f(z), attn.heads) for f in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).flatten(2)


class OfficialGarmentBranch(GarmentBranch):
    """The official garment branch: GarmentNet at every step on one garment copy per TryonNet row, run
    to its ``conv_out``; its features handed to TryonNet as ``cat([zeros_like(f), f])`` for the
    unconditional half (materialised zero tokens). Never runs a phase 1 (two-phase mode and
    garment caches are not part of the reference and are ignored)."""

    def start(self, pipe, garment: GarmentInputs) -> GarmentSteps:
        latents = pipe.encode_garment_latents(garment.pixels, garment.noise)
        return PerStepGarment(self, pipe, latents, garment.text, garment.row_index)

    def step_features(
        self,
        pipe,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        row_index: torch.Tensor,
    ) -> Features:
        index = row_index.to(latents.device)
        if latents.shape[0] == 1:
            index = torch.zeros_like(index)
        return garment_features(
            pipe.garment_unet, latents[index], timestep, text[index], run_to_end=True
        )

    def predict_noise(
        self,
        pipe,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        conditioning: TryonConditioning,
        features: Features,
        null_rows: int,
    ) -> torch.Tensor:
        if null_rows:
            features = {k: torch.cat([torch.zeros_like(v), v]) for k, v in features.items()}
        return tryon_forward(
            pipe.unet,
            sample,
            timestep,
            conditioning.text,
            conditioning.pooled,
            conditioning.time_ids,
            conditioning.image_tokens,
            garment=features,
            null_rows=0,
        )


def official_attention_processors(unet: UNet2DConditionModel) -> dict:
    """``unet``'s processors with the garment and IP-Adapter ones replaced by their official
    formulations (:class:`NaiveGarmentAttentionProcessor`, :class:`OfficialIPAttnProcessor`),
    ready for ``unet.set_attn_processor``."""
    processors = {}
    for key, proc in unet.attn_processors.items():
        if isinstance(proc, GarmentAttentionProcessor):
            processors[key] = NaiveGarmentAttentionProcessor(proc.name, proc.store)
        elif isinstance(proc, IPAdapterAttnProcessor2_0):
            processors[key] = OfficialIPAttnProcessor(proc)
        else:
            processors[key] = proc
    return processors


@contextmanager
def reference_formulation(pipe) -> Iterator[None]:
    """Within the block, ``pipe(...)`` computes as the official implementation does (see the
    module doc): the official attention processors on TryonNet and
    :class:`OfficialGarmentBranch` as ``pipe.garment_branch``; the two-phase mode and the
    pipeline's garment cache are off. Everything is restored on exit."""
    unet = pipe.unet
    saved = dict(unet.attn_processors)
    saved_modes = pipe.garment_branch, pipe.two_phase, pipe.garment_cache
    unet.set_attn_processor(official_attention_processors(unet))
    pipe.garment_branch, pipe.two_phase, pipe.garment_cache = (
        OfficialGarmentBranch(),
        None,
        None,
    )
    try:
        yield
    finally:
        pipe.garment_branch, pipe.two_phase, pipe.garment_cache = saved_modes
        unet.set_attn_processor(saved)
