"""The IDM-VTON training objective (paper Sec. 3), shared by training and customization.

One training example is a person photo, its inpainting mask, its DensePose image and the garment.
The loss is the epsilon-prediction MSE of TryonNet at a timestep drawn uniformly from the DDPM
schedule (``rescale_betas_zero_snr=True``), optionally min-SNR-gamma weighted:

* TryonNet input = ``[noisy person latent | mask at H/8 x W/8 | masked-person latent | pose latent]``;
* GarmentNet (frozen, no grad) sees the *clean* garment latent at the same timestep and hands its
  self-attention inputs to TryonNet;
* the Resampler (trainable) turns CLIP ``hidden_states[-2]`` of the garment into image tokens;
* SDXL time ids are ``(H, W, 0, 0, H, W)`` as at inference (the official trainer's
  ``(H, H, 0, 0, H, H)`` is a bug, docs/training.md);
* the VAE runs in fp32 (the official trainer's fp16 VAE overflows).

Every random draw of a step (VAE posterior samples, noise, timesteps, condition dropout) comes from
one ``torch.Generator`` the caller passes, so a step is reproducible from its seed alone: a resumed
run draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, SchedulerMixin, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor

from ..models.tryon_net import ImageProjection, garment_features, tryon_forward

__all__ = [
    "Conditioner",
    "ObjectiveConfig",
    "TrainingStep",
    "TryonTrainable",
    "diffusion_loss",
    "min_snr_weights",
    "step_generator",
    "training_noise_scheduler",
]


@dataclass(frozen=True)
class ObjectiveConfig:
    """Loss options (paper Sec. 3; docs/training.md).

    ``snr_gamma``: min-SNR-gamma weighting (Hang et al. 2023), ``None`` = plain MSE.
    ``noise_offset``: per-channel offset noise scale (0 = off).
    ``condition_dropout``: probability, per example and per condition, of replacing the text
    (empty prompt), the image prompt (tokens of an all-zero CLIP image, as the pipeline's
    unconditional branch) and the garment features (zero garment tokens, as the pipeline's
    unconditional branch) for classifier-free guidance training. 0 = off, as in the paper.
    """

    snr_gamma: float | None = None
    noise_offset: float = 0.0
    condition_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.snr_gamma is not None and not self.snr_gamma > 0:
            raise ValueError(f"snr_gamma must be > 0, got {self.snr_gamma}")
        if self.noise_offset < 0:
            raise ValueError(f"noise_offset must be >= 0, got {self.noise_offset}")
        if not 0.0 <= self.condition_dropout <= 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1], got {self.condition_dropout}")


def training_noise_scheduler(scheduler: SchedulerMixin) -> DDPMScheduler:
    """The training DDPM schedule: the pipeline's betas with ``rescale_betas_zero_snr=True``.

    The pipeline's own (inference) scheduler is left as it is, so checkpoints sample exactly as
    the published model does.
    """
    trained = DDPMScheduler.from_config(
        scheduler.config, rescale_betas_zero_snr=True, prediction_type="epsilon"
    )
    assert trained.alphas_cumprod[-1] == 0, "zero terminal SNR expected"
    return trained


def min_snr_weights(
    scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction: ``min(SNR, gamma) / SNR``.

    With zero terminal SNR the last timestep has SNR = 0 exactly; the weight's limit there is 1
    (for SNR < gamma it is 1 everywhere), and ``clamp(gamma / SNR, max=1)`` gives that limit
    without a 0/0 (``gamma / 0 = inf`` clamps to 1).
    """
    alphas_cumprod = scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float64)
    a = alphas_cumprod[timesteps]
    snr = a / (1.0 - a)
    return (gamma / snr).clamp(max=1.0).float()


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The CPU generator of one micro-batch: a pure function of (seed, micro-batch index, rank)."""
    state = np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


class TryonTrainable(torch.nn.Module):
    """The trainable parts in one module (for ``accelerator.prepare``): TryonNet + Resampler.

    Its forward turns CLIP hidden states into image tokens and runs TryonNet with the garment
    features; going through this module is what lets DDP/DeepSpeed/FSDP see every trainable use.
    """

    #: The units FSDP shards one by one (accelerate's ``TRANSFORMER_BASED_WRAP`` policy reads this
    #: attribute): every TryonNet transformer block (self-attention over person + garment tokens,
    #: text and IP-Adapter cross-attention, feed-forward) and every ResNet block. The rest
    #: (conv_in/conv_out, time and text-time embeddings, up/down sampling, the Resampler) forms the
    #: root unit.
    _no_split_modules = ("BasicTransformerBlock", "ResnetBlock2D")

    def __init__(self, unet: UNet2DConditionModel, image_projection: ImageProjection) -> None:
        super().__init__()
        self.unet = unet
        self.image_projection = image_projection

    def forward(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor,
        text: torch.Tensor,
        pooled: torch.Tensor,
        time_ids: torch.Tensor,
        clip_hidden: torch.Tensor,
        garment: dict[str, torch.Tensor],
        null_garment_rows: int = 0,
        image_dropped: torch.Tensor | None = None,
        null_clip_hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        dtype = self.unet.conv_in.weight.dtype
        if dtype != torch.float32:
            # DeepSpeed's bf16/fp16 mode holds the weights themselves in low precision and, unlike
            # autocast, leaves the inputs as they come: give them the weights' dtype.
            sample, text, pooled, time_ids, clip_hidden = (
                t.to(dtype) for t in (sample, text, pooled, time_ids, clip_hidden)
            )
            garment = {name: t.to(dtype) for name, t in garment.items()}
            if null_clip_hidden is not None:
                null_clip_hidden = null_clip_hidden.to(dtype)
        tokens = self.image_projection(clip_hidden)
        if image_dropped is not None:
            null_tokens = self.image_projection(null_clip_hidden)
            tokens = torch.where(image_dropped[:, None, None], null_tokens, tokens)
        return tryon_forward(
            self.unet,
            sample,
            timesteps,
            text,
            pooled,
            time_ids,
            tokens,
            garment=garment,
            null_rows=null_garment_rows,
        )


class Conditioner:
    """The frozen parts (VAE in fp32, text encoders, image encoder, GarmentNet), all under no-grad.

    Text embeddings are cached per caption (least recently used first out): datasets repeat a
    small set of garment descriptions, so the text encoders rarely run after the first steps.
    """

    def __init__(self, pipe, device: torch.device, text_cache_size: int = 512) -> None:
        self.pipe = pipe
        self.device = torch.device(device)
        self.text_cache_size = int(text_cache_size)
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._null_clip: torch.Tensor | None = None

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.pipe.garment_unet.dtype

    @torch.no_grad()
    def text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL prompt embeddings (B, 77, C) and pooled embeddings (B, P) of ``captions``."""
        missing = list(dict.fromkeys(c for c in captions if c not in self._cache))
        if missing:
            embeds, pooled = self.pipe.encode_text(missing, self.device)
            for caption, e, p in zip(missing, embeds, pooled, strict=True):
                self._cache[caption] = (e, p)
        rows = []
        for caption in captions:
            self._cache.move_to_end(caption)
            rows.append(self._cache[caption])
        embeds = torch.stack([r[0] for r in rows])
        pooled = torch.stack([r[1] for r in rows])
        while len(self._cache) > max(self.text_cache_size, len(set(captions))):
            self._cache.popitem(last=False)
        return embeds, pooled

    @torch.no_grad()
    def clip_hidden(self, clip_pixels: torch.Tensor) -> torch.Tensor:
        """Penultimate CLIP hidden states of the garment (the Resampler's input)."""
        encoder = self.pipe.image_encoder
        pixels = clip_pixels.to(device=self.device, dtype=encoder.dtype)
        return encoder(pixels, output_hidden_states=True).hidden_states[-2]

    def null_clip_hidden(self, clip_pixels: torch.Tensor) -> torch.Tensor:
        """CLIP hidden states of an all-zero image (the pipeline's unconditional image prompt)."""
        if self._null_clip is None:
            self._null_clip = self.clip_hidden(torch.zeros_like(clip_pixels[:1]))
        return self._null_clip

    @torch.no_grad()
    def vae_encode(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Scaled VAE posterior samples of images in [-1, 1], in fp32 (the VAE is kept in fp32)."""
        vae = self.pipe.vae
        assert vae.dtype == torch.float32, "the VAE must stay in fp32 for training"
        dist = vae.encode(images.to(device=vae.device, dtype=torch.float32)).latent_dist
        eps = randn_tensor(dist.mean.shape, generator=generator, device=dist.mean.device)
        return (dist.mean + dist.std * eps) * vae.config.scaling_factor

    @torch.no_grad()
    def garment_features(
        self, garment_latents: torch.Tensor, timesteps: torch.Tensor, garment_text: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        dtype = self.weight_dtype
        return garment_features(
            self.pipe.garment_unet, garment_latents.to(dtype), timesteps, garment_text.to(dtype)
        )


@dataclass
class _Encoded:
    """A batch through the frozen encoders: latents at H/8 x W/8, text and CLIP embeddings."""

    latents: torch.Tensor  # the clean person (the diffusion target's x0)
    mask: torch.Tensor  # the inpainting mask at latent size (nearest)
    masked: torch.Tensor  # the masked person, grey (0) inside the mask as at inference
    pose: torch.Tensor
    garment: torch.Tensor  # GarmentNet's input
    text: torch.Tensor
    pooled: torch.Tensor
    garment_text: torch.Tensor
    clip_hidden: torch.Tensor
    size: tuple[int, int]  # (H, W) in pixels, for the SDXL time ids


@dataclass
class _TryonNetRows:
    """TryonNet's inputs and target, one row per example (every field is indexed by row)."""

    noisy: torch.Tensor
    mask: torch.Tensor
    masked: torch.Tensor
    pose: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    text: torch.Tensor
    pooled: torch.Tensor
    clip_hidden: torch.Tensor
    image_dropped: torch.Tensor | None = None

    def reordered(self, order: torch.Tensor) -> _TryonNetRows:
        return _TryonNetRows(**{f.name: _take(getattr(self, f.name), order) for f in fields(self)})


def _take(value: torch.Tensor | None, order: torch.Tensor) -> torch.Tensor | None:
    return None if value is None else value[order]


def _to(batch: dict, key: str, device) -> torch.Tensor:
    return batch[key].to(device=device, dtype=torch.float32)


def diffusion_loss(
    model: torch.nn.Module,
    conditioner: Conditioner,
    scheduler: DDPMScheduler,
    batch: dict,
    generator: torch.Generator,
    config: ObjectiveConfig,
    timesteps: torch.Tensor | None = None,
) -> torch.Tensor:
    """The IDM-VTON loss of one batch (see the module docstring); ``model`` is a TryonTrainable.

    ``batch`` holds dataset items (``person``, ``garment``, ``pose`` in [0, 1], ``mask`` in
    {0, 1}, ``garment_clip``, ``caption``, ``garment_caption``). ``timesteps`` overrides the
    uniform draw (for evaluation at fixed timesteps); every other draw comes from ``generator``,
    in a fixed order: VAE posterior samples, noise, offset noise, timesteps, condition dropout.
    """
    encoded = _encode(conditioner, batch, generator)
    rows, dropped = _draw_noisy_rows(encoded, scheduler, generator, config, timesteps)
    garment = conditioner.garment_features(encoded.garment, rows.timesteps, encoded.garment_text)
    null_rows, null_clip = 0, None
    if config.condition_dropout > 0:
        rows, garment, null_rows = _drop_conditions(conditioner, rows, garment, dropped)
        null_clip = conditioner.null_clip_hidden(batch["garment_clip"])
    dtype = conditioner.weight_dtype
    height, width = encoded.size
    time_ids = torch.tensor(
        [height, width, 0, 0, height, width], device=conditioner.device, dtype=torch.float32
    ).expand(rows.noisy.shape[0], -1)
    pred = model(
        torch.cat([rows.noisy, rows.mask, rows.masked, rows.pose], dim=1),
        rows.timesteps,
        rows.text.to(dtype),
        rows.pooled.to(dtype),
        time_ids,
        rows.clip_hidden,
        garment,
        null_garment_rows=null_rows,
        image_dropped=rows.image_dropped,
        null_clip_hidden=null_clip,
    )
    per_example = F.mse_loss(pred.float(), rows.noise.float(), reduction="none").mean(dim=(1, 2, 3))
    if config.snr_gamma is not None:
        per_example = per_example * min_snr_weights(scheduler, rows.timesteps, config.snr_gamma)
    return per_example.mean()


def _encode(conditioner: Conditioner, batch: dict, generator: torch.Generator) -> _Encoded:
    """The frozen encoders: four VAE encodes in one call (posterior samples from ``generator``),
    the two captions' text embeddings and the garment's CLIP hidden states."""
    device = conditioner.device
    person = _to(batch, "person", device)
    mask = (_to(batch, "mask", device) >= 0.5).float()
    pose = _to(batch, "pose", device)
    garment = _to(batch, "garment", device)
    person_pm = 2.0 * person - 1.0
    latents, masked, pose_latents, garment_latents = conditioner.vae_encode(
        torch.cat([person_pm, person_pm * (mask < 0.5), 2.0 * pose - 1.0, 2.0 * garment - 1.0]),
        generator,
    ).chunk(4)
    text, pooled = conditioner.text(list(batch["caption"]))
    garment_text, _ = conditioner.text(list(batch["garment_caption"]))
    return _Encoded(
        latents=latents,
        mask=F.interpolate(mask, size=latents.shape[-2:], mode="nearest"),
        masked=masked,
        pose=pose_latents,
        garment=garment_latents,
        text=text,
        pooled=pooled,
        garment_text=garment_text,
        clip_hidden=conditioner.clip_hidden(batch["garment_clip"]),
        size=(person.shape[2], person.shape[3]),
    )


def _draw_noisy_rows(
    encoded: _Encoded,
    scheduler: DDPMScheduler,
    generator: torch.Generator,
    config: ObjectiveConfig,
    timesteps: torch.Tensor | None,
) -> tuple[_TryonNetRows, torch.Tensor]:
    """Noise (plus offset noise), timesteps and the (3, B) condition-dropout draws (text, image
    prompt, garment), all from ``generator``; returns the noised rows and the dropout draws."""
    latents = encoded.latents
    device, bsz = latents.device, latents.shape[0]
    noise = randn_tensor(latents.shape, generator=generator, device=device)
    if config.noise_offset:
        offset = randn_tensor((bsz, latents.shape[1], 1, 1), generator=generator, device=device)
        noise = noise + config.noise_offset * offset
    drawn = torch.randint(0, scheduler.config.num_train_timesteps, (bsz,), generator=generator)
    timesteps = (drawn if timesteps is None else timesteps.cpu()).to(device=device).long()
    dropped = torch.rand((3, bsz), generator=generator) < config.condition_dropout
    rows = _TryonNetRows(
        noisy=scheduler.add_noise(latents, noise, timesteps),
        mask=encoded.mask,
        masked=encoded.masked,
        pose=encoded.pose,
        noise=noise,
        timesteps=timesteps,
        text=encoded.text,
        pooled=encoded.pooled,
        clip_hidden=encoded.clip_hidden,
    )
    return rows, dropped


def _drop_conditions(
    conditioner: Conditioner,
    rows: _TryonNetRows,
    garment: dict[str, torch.Tensor],
    dropped: torch.Tensor,
) -> tuple[_TryonNetRows, dict[str, torch.Tensor], int]:
    """Classifier-free guidance training: the pipeline's unconditional inputs where dropped.

    Text: the empty prompt; image prompt: flagged in ``image_dropped`` (the model swaps in the
    tokens of an all-zero CLIP image); garment: rows without garment come first, since TryonNet's
    garment attention serves its first ``null_rows`` rows with the pipeline's zero garment tokens.
    The loss is a mean over rows, so the order does not matter. Returns (rows, garment features
    of the rows that keep theirs, null_rows).
    """
    text_dropped, image_dropped, garment_dropped = (d.to(conditioner.device) for d in dropped)
    empty_text, empty_pooled = conditioner.text([""])
    rows.text = torch.where(text_dropped[:, None, None], empty_text.to(rows.text.dtype), rows.text)
    rows.pooled = torch.where(
        text_dropped[:, None], empty_pooled.to(rows.pooled.dtype), rows.pooled
    )
    rows.image_dropped = image_dropped
    order = torch.argsort((~garment_dropped).int(), stable=True)
    null_rows = int(garment_dropped.sum())
    bsz = garment_dropped.shape[0]
    # (All rows without garment: the features are not read, one row satisfies the check.)
    keep = slice(null_rows, None) if null_rows < bsz else slice(0, 1)
    return rows.reordered(order), {k: v[order][keep] for k, v in garment.items()}, null_rows


class TrainingStep:
    """One micro-batch of training: the step :class:`~.trainer.Trainer` and
    :func:`~.customize.customize` share.

    :meth:`loss` is :func:`diffusion_loss` with the micro-batch's own generator
    (:func:`step_generator` of ``(seed, micro-batch index, rank)``), so a step is reproducible
    from its index alone; :meth:`update` backpropagates, clips, steps the optimizer and drops the
    garment features the step stored. The frozen parts (:class:`Conditioner`) and the training
    noise schedule are built once here.
    """

    def __init__(
        self,
        pipe,
        model: torch.nn.Module,
        device: torch.device,
        objective: ObjectiveConfig,
        seed: int,
        text_cache_size: int = 512,
    ) -> None:
        self.pipe = pipe
        self.model = model
        self.objective = objective
        self.seed = int(seed)
        self.conditioner = Conditioner(pipe, device, text_cache_size=text_cache_size)
        self.noise_scheduler = training_noise_scheduler(pipe.scheduler)

    def loss(self, batch: dict, micro_batch: int, rank: int = 0) -> torch.Tensor:
        """The objective of one micro-batch; its randomness depends only on (seed, index, rank)."""
        generator = step_generator(self.seed, micro_batch, rank)
        return diffusion_loss(
            self.model, self.conditioner, self.noise_scheduler, batch, generator, self.objective
        )

    def update(
        self,
        loss: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
        clip_gradients: Callable[[], float | None] | None = None,
    ) -> float | None:
        """Backpropagate ``loss``, clip (when ``clip_gradients`` is given; it returns the
        pre-clip norm), step and zero the optimizer, clear the garment store.

        ``backward`` and ``clip_gradients`` are accelerate's in training (gradient accumulation,
        mixed-precision scaling, sharded clipping), plain torch in customization. Returns the
        pre-clip gradient norm, or None when nothing was clipped.
        """
        backward(loss)
        grad_norm = clip_gradients() if clip_gradients is not None else None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.pipe.garment_store.clear()
        return grad_norm
