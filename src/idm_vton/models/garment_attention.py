"""Garment-aware self-attention (IDM-VTON paper, Sec. 3.2, "GarmentNet").

IDM-VTON runs a frozen SDXL UNet (GarmentNet) on the garment latent and hands the input of every
transformer block's self-attention (``norm1(hidden_states)``) to the matching TryonNet block, whose
self-attention then attends over ``[person tokens ; garment tokens]`` and keeps the person half.

Here that is two attention processors on unmodified ``diffusers.UNet2DConditionModel``s:

* :class:`GarmentCaptureProcessor` on every GarmentNet ``attn1`` records its input under the
  processor's layer name in a shared :class:`GarmentFeatureStore`, then attends normally;
* :class:`GarmentAttentionProcessor` on every TryonNet ``attn1`` reads the feature with the same
  layer name and computes queries from the person tokens only, keys/values from person + garment
  tokens. Because attention rows are independent this equals "concatenate, self-attend, keep the
  first half" exactly, without the work for the garment queries.

Classifier-free guidance in the reference feeds the unconditional half *zero* garment tokens that
are still concatenated. With bias-free ``to_k``/``to_v`` a zero token has key 0 and value 0, so M of
them only add ``M * exp(0)`` to the softmax denominator. The processor reproduces that exactly with
one extra key (``to_k(0)``, value ``to_v(0)``) carrying an additive logit bias of ``log(M)``: the
same softmax mass, without materialising M tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

__all__ = [
    "GarmentAttentionProcessor",
    "GarmentCaptureProcessor",
    "GarmentFeatureStore",
    "GarmentFeaturesReady",
    "GarmentTokens",
    "garment_attention_layers",
]


@dataclass
class GarmentTokens:
    """Garment tokens for one TryonNet self-attention layer.

    ``features`` has shape ``(Bg, M, C)``. The TryonNet batch is ``[null rows ; garment rows]``:
    the first ``null_rows`` rows attend over M zero tokens (the reference's unconditional branch),
    the remaining rows attend over ``features``; ``Bg`` is 1 (one garment shared by every row) or
    the number of garment rows.
    """

    features: torch.Tensor
    null_rows: int = 0


class GarmentFeaturesReady(Exception):
    """Raised by the last capture processor: GarmentNet's remaining work is never needed."""


class GarmentFeatureStore:
    """Garment features keyed by layer name (GarmentNet and TryonNet share layer names).

    The GarmentNet capture processors write into ``recording`` (when set); the TryonNet processors
    only read ``tokens``, so a re-run of the TryonNet forward (gradient checkpointing) sees the same
    features. ``stop_after`` names the layer after whose capture GarmentNet stops.
    """

    def __init__(self) -> None:
        self.tokens: dict[str, GarmentTokens] = {}
        self.recording: dict[str, torch.Tensor] | None = None
        self.stop_after: str | None = None

    def clear(self) -> None:
        self.tokens = {}

    def set_features(self, features: dict[str, torch.Tensor], null_rows: int = 0) -> None:
        """Make ``features`` (layer name -> ``(Bg, M, C)``) the garment tokens of the next passes."""
        self.tokens = {name: GarmentTokens(f, null_rows) for name, f in features.items()}

    def get(self, name: str) -> GarmentTokens | None:
        return self.tokens.get(name)


def _layer_name(processor_key: str) -> str:
    """``down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor`` -> block path."""
    suffix = ".attn1.processor"
    assert processor_key.endswith(suffix), processor_key
    return processor_key[: -len(suffix)]


def garment_attention_layers(unet) -> list[str]:
    """Names of the transformer blocks whose self-attention takes part, in execution order.

    ``attn_processors`` follows module registration order (down, up, mid); the UNet runs down,
    mid, up, and that is the order in which the reference hands features over.
    """
    rank = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    names = [_layer_name(k) for k in unet.attn_processors if k.endswith(".attn1.processor")]
    return sorted(names, key=lambda n: rank.get(n.split(".")[0], 3))


class GarmentCaptureProcessor(AttnProcessor2_0):
    """GarmentNet ``attn1``: record the self-attention input, then attend as usual."""

    def __init__(self, name: str, store: GarmentFeatureStore) -> None:
        super().__init__()
        self.name = name
        self.store = store

    def __call__(
        self, attn: Attention, hidden_states: torch.Tensor, *args, **kwargs
    ) -> torch.Tensor:
        if self.store.recording is not None:
            self.store.recording[self.name] = hidden_states
            if self.store.stop_after == self.name:
                raise GarmentFeaturesReady
        return super().__call__(attn, hidden_states, *args, **kwargs)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


class GarmentAttentionProcessor:
    """TryonNet ``attn1``: person-token queries over ``[person tokens ; garment tokens]``.

    Without garment tokens in the store it is plain self-attention. (The reference formulation,
    computed literally, is :class:`idm_vton.testing.reference.NaiveGarmentAttentionProcessor`.)
    """

    def __init__(self, name: str, store: GarmentFeatureStore) -> None:
        self.name = name
        self.store = store

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
            return AttnProcessor2_0()(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb
            )
        assert hidden_states.ndim == 3, "garment attention expects (batch, tokens, channels) inputs"
        assert attention_mask is None and encoder_hidden_states is None
        assert attn.residual_connection is False and attn.rescale_output_factor == 1.0
        out = self._exact(attn, hidden_states, tokens)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)

    @staticmethod
    def _rows(tokens: GarmentTokens, batch: int) -> tuple[int, torch.Tensor]:
        null_rows, feats = tokens.null_rows, tokens.features
        garment_rows = batch - null_rows
        if feats.shape[0] not in (1, garment_rows):
            raise ValueError(
                f"garment features of batch {feats.shape[0]} cannot serve {garment_rows} TryonNet rows"
            )
        return null_rows, feats

    def _exact(self, attn: Attention, h: torch.Tensor, tokens: GarmentTokens) -> torch.Tensor:
        batch = h.shape[0]
        null_rows, feats = self._rows(tokens, batch)
        feats = feats.to(h.dtype)
        heads = attn.heads
        q = _split_heads(attn.to_q(h), heads)
        k_person = _split_heads(attn.to_k(h), heads)
        v_person = _split_heads(attn.to_v(h), heads)
        k_garment = _split_heads(attn.to_k(feats), heads)
        v_garment = _split_heads(attn.to_v(feats), heads)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
            k_person, k_garment = attn.norm_k(k_person), attn.norm_k(k_garment)
        outs = []
        if null_rows:
            # M zero tokens == one token (key to_k(0), value to_v(0)) with logit bias log(M).
            zero = h.new_zeros(1, 1, h.shape[-1])
            k_null = _split_heads(attn.to_k(zero), heads)
            v_null = _split_heads(attn.to_v(zero), heads)
            if attn.norm_k is not None:
                k_null = attn.norm_k(k_null)
            n = null_rows
            k = torch.cat([k_person[:n], k_null.expand(n, -1, -1, -1)], dim=2)
            v = torch.cat([v_person[:n], v_null.expand(n, -1, -1, -1)], dim=2)
            bias = torch.zeros(k.shape[2], dtype=q.dtype, device=q.device)
            bias[-1] = math.log(feats.shape[1])
            outs.append(
                F.scaled_dot_product_attention(q[:n], k, v, attn_mask=bias.view(1, 1, 1, -1))
            )
        if null_rows < batch:
            rows = batch - null_rows
            k = torch.cat([k_person[null_rows:], k_garment.expand(rows, -1, -1, -1)], dim=2)
            v = torch.cat([v_person[null_rows:], v_garment.expand(rows, -1, -1, -1)], dim=2)
            outs.append(F.scaled_dot_product_attention(q[null_rows:], k, v))
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
        return out.transpose(1, 2).flatten(2)
