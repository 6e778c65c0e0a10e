"""Speed and memory: the reference formulation for side-by-side benchmarks, and memory options.

* :func:`reference_formulation` switches a :class:`~idm_vton.pipelines.tryon.TryOnPipeline` to the
  computation exactly as the official IDM-VTON code does it (``yisol/IDM-VTON``,
  ``src/tryon_pipeline.py`` and its forked UNets): self-attention over ``[person ; garment]``
  with queries and output projection for *all* tokens, then slicing; zero garment tokens
  materialised for the unconditional half; GarmentNet run to the end at every step, at the
  TryonNet's batch (one garment copy per person); the IP-Adapter processor's per-call attention
  map (``IPAttnProcessor2_0.attn_map``). Same weights, same inputs, same result within
  floating-point tolerance: ``benchmarks/bench_pipeline.py`` times it against the default path.
* :func:`add_memory_arguments` / :func:`apply_memory_options`: the memory modes as CLI flags.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0

from ..models.garment_attention import GarmentAttentionProcessor
from ..models.tryon_net import garment_features, tryon_forward

__all__ = [
    "OfficialIPAttnProcessor",
    "add_memory_arguments",
    "apply_memory_options",
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


def _reference_garment_step(self, garment_latents, t, garment_text, garment_index):
    """Official: GarmentNet on one garment copy per TryonNet row, run to its ``conv_out``."""
    index = garment_index.to(garment_latents.device)
    if garment_latents.shape[0] == 1:
        index = torch.zeros_like(index)
    return garment_features(
        self.garment_unet,
        garment_latents[index],
        t,
        garment_text[index],
        run_to_end=True,
    )


def _reference_predict_noise(
    self, model_input, t, text, pooled, time_ids, image_tokens, features, null_rows: int
):
    """Official: ``cat([zeros_like(f), f])`` handed to the TryonNet for the unconditional half."""
    if null_rows:
        features = {k: torch.cat([torch.zeros_like(v), v]) for k, v in features.items()}
    return tryon_forward(
        self.unet,
        model_input,
        t,
        text,
        pooled,
        time_ids,
        image_tokens,
        garment=features,
        null_rows=0,
    )


@contextmanager
def reference_formulation(pipe) -> Iterator[None]:
    """Within the block, ``pipe(...)`` computes as the official implementation does (see module doc).

    Restores the pipeline's own processors and methods on exit. Not for use together with the
    two-phase mode or a garment cache (those change the schedule of GarmentNet calls).
    """
    unet = pipe.unet
    saved = dict(unet.attn_processors)
    processors = {}
    for key, proc in saved.items():
        if isinstance(proc, GarmentAttentionProcessor):
            processors[key] = GarmentAttentionProcessor(proc.name, proc.store, naive=True)
        elif isinstance(proc, IPAdapterAttnProcessor2_0):
            processors[key] = OfficialIPAttnProcessor(proc)
        else:
            processors[key] = proc
    unet.set_attn_processor(processors)
    pipe._garment_step_features = types.MethodType(_reference_garment_step, pipe)
    pipe._predict_noise = types.MethodType(_reference_predict_noise, pipe)
    saved_modes = pipe.two_phase, pipe.garment_cache
    pipe.two_phase, pipe.garment_cache = None, None
    try:
        yield
    finally:
        del pipe._garment_step_features, pipe._predict_noise
        pipe.two_phase, pipe.garment_cache = saved_modes
        unet.set_attn_processor(saved)


# ---------------------------------------------------------------------- memory options (CLI)
def add_memory_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the memory-mode flags to ``parser`` (``--offload`` only if it is not there yet)."""
    group = parser.add_argument_group("memory")
    if "--offload" not in parser._option_string_actions:
        group.add_argument(
            "--offload",
            action="store_true",
            help="model CPU offload: one model on the GPU at a time (implies --two-phase order)",
        )
    group.add_argument(
        "--two-phase",
        action="store_true",
        help="run GarmentNet for all steps first, then TryonNet: one UNet on the GPU at a time",
    )
    group.add_argument(
        "--garment-features-on-host",
        action="store_true",
        help="with --two-phase/--offload: keep GarmentNet features in pinned host memory",
    )
    group.add_argument(
        "--fp8-weights",
        action="store_true",
        help="store UNet weights in fp8 (e4m3), compute in --dtype: half the UNet memory of bf16",
    )
    group.add_argument(
        "--vae-tiling",
        action="store_true",
        help="VAE encode/decode in overlapping tiles (approximate at tile seams)",
    )
    group.add_argument(
        "--vae-tile-size", type=int, default=512, help="VAE tile size in pixels (default 512)"
    )
    group.add_argument(
        "--vae-slicing", action="store_true", help="decode a batch one image at a time (exact)"
    )


def apply_memory_options(pipe, args: argparse.Namespace, device=None):
    """Apply the flags of :func:`add_memory_arguments` to ``pipe``; returns ``pipe``.

    Call after loading (and after ``pipe.to(device)``). ``--offload`` needs a CUDA device and
    installs diffusers' model CPU offload on ``device``; it also makes GarmentNet run in phase
    1 (otherwise both UNets would be moved in and out at every step).
    """
    device = torch.device(device) if device is not None else pipe._execution_device
    if getattr(args, "fp8_weights", False):
        pipe.enable_fp8_weight_storage()
    if getattr(args, "vae_tiling", False):
        pipe.enable_vae_tiling(tile_size=args.vae_tile_size)
    if getattr(args, "vae_slicing", False):
        pipe.enable_vae_slicing()
    offload = getattr(args, "offload", False)
    if getattr(args, "two_phase", False) or offload:
        pipe.enable_two_phase_garment(
            features_on_host=getattr(args, "garment_features_on_host", False)
        )
    if offload:
        if device.type != "cuda":
            raise ValueError("--offload needs a CUDA device")
        pipe.enable_model_cpu_offload(device=device)
    return pipe
