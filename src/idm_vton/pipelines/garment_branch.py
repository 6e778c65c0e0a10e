"""When GarmentNet runs, and how its features reach TryonNet (paper Sec. 3.2).

GarmentNet's inputs (the clean garment latent, the garment caption and the timestep) never depend
on the denoising state, so its per-step features can be computed whenever suits the hardware:

* **per step** (the default): once per step *per garment*, batch 1 for a garment shared by every
  person, stopped after its last transformer block (:func:`~idm_vton.models.tryon_net.garment_features`);
* **phase 1** (two-phase mode, a :class:`~idm_vton.pipelines.garment_cache.GarmentCache`, or
  model CPU offload): for every step before the TryonNet loop, taken from the cache where it holds
  the garment; on an accelerator only one UNet needs to be resident at a time.

Both give the same features. :class:`GarmentBranch` is that choice and the pipeline's one route
to GarmentNet and to the garment-aware TryonNet pass: the pipeline calls :meth:`GarmentBranch.start`
once per call, then, at every step, :meth:`GarmentSteps.features` and
:meth:`GarmentBranch.predict_noise`. A subclass installed as ``pipe.garment_branch`` changes
the computation without touching the pipeline: the official formulation (GarmentNet at the
TryonNet batch, run to its end; zero garment tokens materialised for the unconditional rows) is
:class:`idm_vton.testing.reference.OfficialGarmentBranch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from diffusers import UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..models.tryon_net import garment_features, tryon_forward
from .garment_cache import GarmentCache, GarmentKey

__all__ = [
    "Features",
    "GarmentInputs",
    "GarmentBranch",
    "GarmentPipeline",
    "GarmentSteps",
    "PerStepGarment",
    "PrecomputedGarment",
    "TryonConditioning",
    "TwoPhaseGarment",
    "precompute_garment_features",
    "run_garment_net",
]

Features = dict[str, torch.Tensor]  # layer name -> (rows, M, C) GarmentNet self-attention input


@dataclass
class TwoPhaseGarment:
    """Settings of the two-phase mode
    (:meth:`~idm_vton.pipelines.tryon.TryOnPipeline.enable_two_phase_garment`): keep the
    features in (pinned) host memory; swap the UNets on the accelerator between the phases."""

    features_on_host: bool = False
    swap_unets: bool = True


class GarmentPipeline(Protocol):
    """What a garment branch uses of its pipeline (a
    :class:`~idm_vton.pipelines.tryon.TryOnPipeline` is one): both UNets, the sampler's config,
    the two-phase setting, the execution device and the garment's VAE encoding. Typed here, so
    this module does not import the pipeline that holds it."""

    unet: UNet2DConditionModel
    garment_unet: UNet2DConditionModel
    scheduler: SchedulerMixin
    two_phase: TwoPhaseGarment | None

    @property
    def _execution_device(self) -> torch.device: ...

    def encode_garment_latents(self, pixels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor: ...


@dataclass
class TryonConditioning:
    """What TryonNet is conditioned on besides its noisy latents, one row per TryonNet row
    (``[uncond ; cond]`` with classifier-free guidance).

    ``text``: caption tokens (R, L, C); ``pooled``: pooled caption embedding (R, P) and
    ``time_ids``: (R, 6), SDXL's added conditioning; ``image_tokens``: IP-Adapter tokens
    (R, N, C); ``condition``: the condition channels ``[mask | masked person | DensePose]``
    (R, 9, h, w) that the pipeline's loop appends to the noisy latents (not read by
    :meth:`GarmentBranch.predict_noise`, whose ``sample`` already holds them).
    """

    text: torch.Tensor
    pooled: torch.Tensor
    time_ids: torch.Tensor
    image_tokens: torch.Tensor
    condition: torch.Tensor | None = None


@dataclass
class GarmentInputs:
    """One call's garments as GarmentNet sees them (built by the pipeline).

    ``pixels``: (G, 3, H, W) in [-1, 1]; ``text``: GarmentNet caption embeddings (G, L, C);
    ``noise``: the VAE posterior noise of the garment latents (G, 4, H/8, W/8), drawn by the
    pipeline; ``row_index``: the garment of each conditional TryonNet row (B,); ``timesteps``:
    the call's timesteps. ``descriptions`` (one per garment, None when unknown),
    ``num_inference_steps`` and ``strength`` complete the cache key; ``cache`` is the call's
    garment cache, if any.
    """

    pixels: torch.Tensor
    text: torch.Tensor
    noise: torch.Tensor
    row_index: torch.Tensor
    timesteps: torch.Tensor
    descriptions: list[str | None]
    num_inference_steps: int
    strength: float
    cache: GarmentCache | None = None

    @property
    def garments(self) -> int:
        return self.pixels.shape[0]


class GarmentSteps:
    """One call's source of garment features, made by :meth:`GarmentBranch.start`."""

    def features(self, step_index: int, timestep: torch.Tensor) -> Features:
        """The features of step ``step_index``: batch 1 (shared by every row) or one per
        conditional TryonNet row."""
        raise NotImplementedError


class PerStepGarment(GarmentSteps):
    """Runs GarmentNet when a step asks, through ``branch.step_features``."""

    def __init__(
        self,
        branch: GarmentBranch,
        pipe: GarmentPipeline,
        latents: torch.Tensor,
        text: torch.Tensor,
        row_index: torch.Tensor,
    ) -> None:
        self.branch, self.pipe = branch, pipe
        self.latents, self.text, self.row_index = latents, text, row_index

    def features(self, step_index: int, timestep: torch.Tensor) -> Features:
        return self.branch.step_features(
            self.pipe, self.latents, timestep, self.text, self.row_index
        )


class PrecomputedGarment(GarmentSteps):
    """Hands out features computed in phase 1 (``steps[i]``: batch G), copied to ``device``."""

    def __init__(
        self, steps: list[Features], row_index: torch.Tensor, device: torch.device
    ) -> None:
        self.steps, self.row_index, self.device = steps, row_index, device

    def features(self, step_index: int, timestep: torch.Tensor) -> Features:
        features = {
            k: v.to(self.device, non_blocking=True) for k, v in self.steps[step_index].items()
        }
        if next(iter(features.values())).shape[0] > 1:
            index = self.row_index.to(self.device)
            features = {k: v[index] for k, v in features.items()}
        return features


def _offloaded(module: torch.nn.Module) -> bool:
    return hasattr(module, "_hf_hook")


class GarmentBranch:
    """The default garment branch: GarmentNet per step at batch G, or in phase 1 when the pipeline has
    a two-phase setting (:meth:`~idm_vton.pipelines.tryon.TryOnPipeline.enable_two_phase_garment`),
    the call has a garment cache, or GarmentNet is under model CPU offload (per step, both UNets
    would be moved in and out of the device). TryonNet's unconditional rows get the reference's
    zero garment tokens in closed form (``null_rows``, see
    :class:`~idm_vton.models.garment_attention.GarmentAttentionProcessor`).

    Subclass and set ``pipe.garment_branch`` to change the computation; override
    :meth:`start` (when GarmentNet runs), :meth:`step_features` (one step's GarmentNet pass) and
    :meth:`predict_noise` (how the features enter TryonNet).
    """

    def start(self, pipe: GarmentPipeline, garment: GarmentInputs) -> GarmentSteps:
        """Called once per call, after the condition latents; returns the per-step source."""
        if garment.cache is not None or pipe.two_phase is not None or _offloaded(pipe.garment_unet):
            steps = precompute_garment_features(pipe, garment)
            return PrecomputedGarment(steps, garment.row_index, pipe._execution_device)
        latents = pipe.encode_garment_latents(garment.pixels, garment.noise)
        return PerStepGarment(self, pipe, latents, garment.text, garment.row_index)

    def step_features(
        self,
        pipe: GarmentPipeline,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        row_index: torch.Tensor,
    ) -> Features:
        """GarmentNet features of one step at batch G; with G > 1 the rows are picked per
        TryonNet row (``row_index``), with G = 1 they stay at batch 1, shared by every row."""
        features = garment_features(pipe.garment_unet, latents, timestep, text)
        if latents.shape[0] > 1:
            features = {k: v[row_index.to(v.device)] for k, v in features.items()}
        return features

    def predict_noise(
        self,
        pipe: GarmentPipeline,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        conditioning: TryonConditioning,
        features: Features,
        null_rows: int,
    ) -> torch.Tensor:
        """One TryonNet pass on ``sample`` (13 channels); its first ``null_rows`` rows (the
        unconditional half) attend over the reference's zero garment tokens."""
        return tryon_forward(
            pipe.unet,
            sample,
            timestep,
            conditioning.text,
            conditioning.pooled,
            conditioning.time_ids,
            conditioning.image_tokens,
            garment=features,
            null_rows=null_rows,
        )


def precompute_garment_features(pipe: GarmentPipeline, garment: GarmentInputs) -> list[Features]:
    """Phase 1: every step's features at batch G, from the cache where it holds a garment.

    A garment's cache key includes the hash of its posterior noise draw, so a hit returns
    exactly what computing it would. Only the garments the cache misses are VAE-encoded and run.
    """
    g = garment.garments
    keys: list[GarmentKey | None] = [None] * g
    entries: list[list[Features] | None] = [None] * g
    if garment.cache is not None:
        for i in range(g):
            keys[i] = GarmentKey.build(
                garment.pixels[i],
                garment.text[i],
                garment.noise[i],
                garment.timesteps,
                pipe.scheduler.config,
                dtype=pipe.garment_unet.dtype,
                description=garment.descriptions[i],
                num_inference_steps=garment.num_inference_steps,
                strength=garment.strength,
            )
            entries[i] = garment.cache.get(keys[i])
    missing = [i for i in range(g) if entries[i] is None]
    if missing:
        latents = pipe.encode_garment_latents(garment.pixels[missing], garment.noise[missing])
        computed = run_garment_net(pipe, latents, garment.text[missing], garment.timesteps)
        for j, i in enumerate(missing):
            # Slices of a batch are cloned so a cached entry does not pin the whole batch.
            entries[i] = [
                {k: v[j : j + 1].clone() if len(missing) > 1 else v for k, v in step.items()}
                for step in computed
            ]
            if garment.cache is not None:
                garment.cache.put(keys[i], entries[i])
    if g == 1:
        return entries[0]
    return [
        {name: torch.cat([entries[i][s][name] for i in range(g)]) for name in entries[0][s]}
        for s in range(len(garment.timesteps))
    ]


def run_garment_net(
    pipe: GarmentPipeline, latents: torch.Tensor, text: torch.Tensor, timesteps: torch.Tensor
) -> list[Features]:
    """GarmentNet for all timesteps (phase 1); with two-phase swapping only it is on the device,
    and with ``features_on_host`` its features go to (pinned) host memory."""
    device = pipe._execution_device
    two_phase = pipe.two_phase
    swap = (
        two_phase is not None
        and two_phase.swap_unets
        and device.type != "cpu"
        and not _offloaded(pipe.garment_unet)
        and not _offloaded(pipe.unet)
    )
    on_host = two_phase is not None and two_phase.features_on_host and device.type != "cpu"
    pin = on_host and device.type == "cuda"
    if swap:
        pipe.unet.to("cpu")
        pipe.garment_unet.to(device)
    steps = []
    try:
        for t in timesteps:
            features = garment_features(pipe.garment_unet, latents, t, text)
            if on_host:
                features = {
                    k: torch.empty(v.shape, dtype=v.dtype, pin_memory=pin).copy_(v)
                    for k, v in features.items()
                }
            steps.append(features)
    finally:
        if swap:
            pipe.garment_unet.to("cpu")
            if device.type == "cuda":
                torch.cuda.empty_cache()
            pipe.unet.to(device)
    return steps
