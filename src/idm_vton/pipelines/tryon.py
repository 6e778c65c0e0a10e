"""The IDM-VTON try-on pipeline (paper Sec. 3, inference as in the official ``tryon_pipeline``).

Per call: encode the captions (SPEC section 3), the garment image prompt (CLIP penultimate hidden
states -> Resampler), the masked person, the DensePose image and the garment with the VAE; then
for every timestep run GarmentNet once on the clean garment latent and TryonNet on
``[uncond ; cond]`` with the garment features, apply classifier-free guidance and the scheduler
step; decode, and paste the generated region back into the original photo.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from ..data.captions import garment_prompt, tryon_prompt
from ..errors import ImageInputError, NonFiniteOutputError, UsageError
from ..models.garment_attention import GarmentAttentionProcessor
from ..models.tryon_net import (
    ImageProjection,
    garment_features,
    install_garment_attention,
    tryon_forward,
)
from .garment_cache import GarmentCache, GarmentKey
from .image_processor import (
    Region,
    binary_mask,
    crop_region,
    load_image,
    mask_region,
)
from .image_processor import paste_back as paste_into_photo

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "NonFiniteOutputError",
    "TryOnPipeline",
    "TryOnPipelineOutput",
]

DEFAULT_NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality"


@dataclass
class TwoPhaseGarment:
    """Settings of the two-phase mode (:meth:`TryOnPipeline.enable_two_phase_garment`)."""

    features_on_host: bool = False
    swap_unets: bool = True


@dataclass
class TryOnPipelineOutput(BaseOutput):
    """``images``: one per person and sample (PIL, numpy or tensor as asked)."""

    images: list[Image.Image] | np.ndarray | torch.Tensor


@dataclass
class _Prepared:
    person: torch.Tensor  # (B, 3, H, W) in [0, 1]
    mask: torch.Tensor  # (B, 1, H, W) in {0, 1}
    pose: torch.Tensor  # (B, 3, H, W) in [0, 1]
    garment: torch.Tensor  # (G, 3, H, W) in [0, 1]
    garment_images: list[Image.Image] | None
    photos: list[Image.Image] | None
    photo_masks: list[np.ndarray] | None
    regions: list[Region] | None


def _as_list(value, n: int | None = None) -> list:
    if value is None:
        return [None] * (n or 1)
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, torch.Tensor) and value.ndim == 4:
        return list(value.split(1))
    return [value]


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


class TryOnPipeline(DiffusionPipeline):
    """IDM-VTON: renders a person wearing a garment (Choi et al., ECCV 2024).

    Components: ``unet`` (TryonNet, 13 input channels, IP-Adapter cross-attention),
    ``garment_unet`` (GarmentNet), ``image_projection`` (IP-Adapter Plus Resampler),
    ``image_encoder`` (CLIP ViT-H/14 vision), ``vae``, the two SDXL text encoders and tokenizers
    (optional when prompt embeddings are passed), ``feature_extractor`` (CLIP preprocessing) and
    ``scheduler``. Load with :meth:`from_pretrained` (published ``yisol/IDM-VTON`` layout or this
    project's own) or build the tiny test model with :func:`idm_vton.testing.tiny.tiny_pipeline`.
    """

    model_cpu_offload_seq = (
        "text_encoder->text_encoder_2->image_encoder->image_projection->garment_unet->unet->vae"
    )
    _optional_components = [
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "feature_extractor",
    ]

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        garment_unet: UNet2DConditionModel,
        image_projection: ImageProjection,
        image_encoder: CLIPVisionModelWithProjection,
        scheduler: KarrasDiffusionSchedulers,
        text_encoder: CLIPTextModel | None = None,
        text_encoder_2: CLIPTextModelWithProjection | None = None,
        tokenizer: CLIPTokenizer | None = None,
        tokenizer_2: CLIPTokenizer | None = None,
        feature_extractor: CLIPImageProcessor | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            unet=unet,
            garment_unet=garment_unet,
            image_projection=image_projection,
            image_encoder=image_encoder,
            scheduler=scheduler,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            feature_extractor=feature_extractor,
        )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        procs = [
            p for p in unet.attn_processors.values() if isinstance(p, GarmentAttentionProcessor)
        ]
        if procs:
            self.garment_store = procs[0].store
        else:
            from ..models.garment_attention import GarmentFeatureStore

            self.garment_store = GarmentFeatureStore()
            install_garment_attention(unet, garment_unet, self.garment_store)
        self.two_phase: TwoPhaseGarment | None = None
        self.garment_cache: GarmentCache | None = None

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        torch_dtype: torch.dtype | None = None,
        local_files_only: bool = False,
        load_text_encoders: bool = True,
        scheduler="ddpm",
        **kwargs,
    ) -> TryOnPipeline:
        """Load from a local folder or hub id (published IDM-VTON layout or this project's).

        ``scheduler``: a :class:`~idm_vton.schedulers.SchedulerName` (``"ddpm"``, the reference's
        sampler, by default; built from the checkpoint's scheduler config whatever class it
        names) or a scheduler object.
        """
        from ..loaders.pipeline import load_pipeline

        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(kwargs)}")
        return load_pipeline(
            pretrained_model_name_or_path,
            torch_dtype=torch_dtype,
            local_files_only=local_files_only,
            load_text_encoders=load_text_encoders,
            scheduler=scheduler,
        )

    def save_pretrained(self, save_directory, safe_serialization: bool = True, **kwargs) -> None:
        """Save in this project's layout (safetensors; reload with :meth:`from_pretrained`)."""
        from ..loaders.pipeline import save_ip_adapter_config

        if not safe_serialization:
            raise ValueError("idm-vton writes safetensors only")
        super().save_pretrained(save_directory, safe_serialization=True, **kwargs)
        save_ip_adapter_config(self.unet, f"{save_directory}/unet")

    # ------------------------------------------------------------------ memory and speed options
    def enable_two_phase_garment(
        self, features_on_host: bool = False, swap_unets: bool = True
    ) -> None:
        """Run GarmentNet for every timestep first, then the TryonNet loop (same result).

        GarmentNet's inputs (clean garment latent, garment caption, timestep) do not depend on the
        denoising state, so its per-step features can be computed before the loop. On an
        accelerator, ``swap_unets`` keeps only one UNet there at a time (GarmentNet during phase
        1, TryonNet during phase 2; skipped when model CPU offload manages placement), so peak
        memory holds one UNet plus the features: about ``steps x 158 MB`` in bf16 at
        1024 x 768 for SDXL, on the device or, with ``features_on_host``, in pinned host memory
        (copied in step by step). Works on repeated calls; :meth:`disable_two_phase_garment` undoes.
        """
        self.two_phase = TwoPhaseGarment(features_on_host=features_on_host, swap_unets=swap_unets)

    def disable_two_phase_garment(self) -> None:
        self.two_phase = None

    def enable_fp8_weight_storage(
        self,
        compute_dtype: torch.dtype | None = None,
        storage_dtype: torch.dtype = torch.float8_e4m3fn,
        components: Sequence[str] = ("unet", "garment_unet"),
    ) -> None:
        """Store the UNet weights in fp8, compute in ``compute_dtype`` (default: current dtype).

        diffusers' layerwise casting: each layer's weights are upcast just before it runs, so the
        two UNets take half the memory of bf16 (norms, ``proj_in``/``proj_out`` and embeddings
        stay in the compute dtype). The weights are rounded to fp8 once: outputs differ from the
        bf16 model by that rounding, and from a model whose weights were rounded to fp8 up front
        only by floating-point noise.
        """
        for name in components:
            model = getattr(self, name)
            dtype = compute_dtype or model.dtype
            model.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=dtype)

    def enable_vae_tiling(self, tile_size: int | None = 512, overlap: float = 0.25) -> None:
        """Encode/decode with the VAE in overlapping tiles of ``tile_size`` pixels (less memory).

        Approximate: tiles are blended over their overlap, so pixels near tile seams differ
        slightly from the untiled VAE (diffusers' ``AutoencoderKL`` tiling). SDXL's VAE tiles at
        its 1024 px sample size by default, which would not tile a 1024 x 768 image at all; the
        default here is 512. ``tile_size=None`` keeps the VAE's own.
        """
        self.vae.enable_tiling()
        if tile_size is not None:
            if tile_size % self.vae_scale_factor:
                raise UsageError(f"tile_size must be a multiple of {self.vae_scale_factor}")
            self.vae.tile_sample_min_size = tile_size
            self.vae.tile_latent_min_size = tile_size // self.vae_scale_factor
        self.vae.tile_overlap_factor = overlap

    def disable_vae_tiling(self) -> None:
        self.vae.disable_tiling()

    def enable_vae_slicing(self) -> None:
        """Decode a batch one image at a time (exact; lower peak memory for batches > 1)."""
        self.vae.enable_slicing()

    def compile(self, **compile_kwargs) -> None:
        """``torch.compile`` the TryonNet (``nn.Module.compile``, in place); same results.

        The TryonNet forward, garment attention included, traces without graph breaks
        (``fullgraph=True`` is the default here; checked in ``tests/test_performance.py``).
        GarmentNet is left eager: it ends early by raising once its last feature is captured.
        Keyword arguments go to ``torch.compile`` (``mode="max-autotune"``, ``backend=...``).
        """
        compile_kwargs.setdefault("fullgraph", True)
        self.unet.compile(**compile_kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def default_height(self) -> int:
        return self.unet.config.sample_size * self.vae_scale_factor

    @property
    def default_width(self) -> int:
        return self.default_height * 3 // 4

    # ------------------------------------------------------------------ encoders
    def encode_prompt(self, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL text encoding: penultimate hidden states of both encoders, pooled from the second."""
        if self.text_encoder is None or self.text_encoder_2 is None:
            raise ValueError(
                "this pipeline has no text encoders: pass prompt_embeds, pooled_prompt_embeds, "
                "negative_prompt_embeds, negative_pooled_prompt_embeds and garment_prompt_embeds"
            )
        embeds, pooled = [], None
        for tokenizer, encoder in (
            (self.tokenizer, self.text_encoder),
            (self.tokenizer_2, self.text_encoder_2),
        ):
            ids = tokenizer(
                prompts,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(device)
            out = encoder(ids, output_hidden_states=True)
            embeds.append(out.hidden_states[-2])
            pooled = out[0]
        return torch.cat(embeds, dim=-1), pooled

    def clip_pixels(self, garments: list[Image.Image], device) -> torch.Tensor:
        processor = self.feature_extractor or CLIPImageProcessor()
        pixels = processor(images=garments, return_tensors="pt").pixel_values
        return pixels.to(device=device, dtype=self.image_encoder.dtype)

    def encode_image_prompt(self, clip_pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(uncond tokens (1, N, C), cond tokens (G, N, C)); uncond = CLIP of an all-zero image."""
        pixels = torch.cat([torch.zeros_like(clip_pixels[:1]), clip_pixels])
        hidden = self.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]
        tokens = self.image_projection(hidden.to(self.image_projection.dtype))
        return tokens[:1], tokens[1:]

    def _vae_compute_dtype(self) -> torch.dtype:
        vae = self.vae
        return (
            torch.float32 if vae.dtype == torch.float16 and vae.config.force_upcast else vae.dtype
        )

    def _vae_encode(
        self, images: torch.Tensor, generator, eps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scaled latent sample ``sf * (mean + std * eps)``, ``eps`` drawn from ``generator``
        (or given: the garment-cache path draws it before deciding whether to encode)."""
        vae = self.vae
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast
        dtype = torch.float32 if upcast else vae.dtype
        if upcast:
            vae.to(torch.float32)
        try:
            dist = vae.encode(images.to(device=vae.device, dtype=dtype)).latent_dist
        finally:
            if upcast:
                vae.to(torch.float16)
        if eps is None:
            eps = randn_tensor(
                dist.mean.shape, generator=generator, device=dist.mean.device, dtype=dist.mean.dtype
            )
        eps = eps.to(device=dist.mean.device, dtype=dist.mean.dtype)
        return (dist.mean + dist.std * eps) * vae.config.scaling_factor

    def _vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast
        if upcast:
            vae.to(torch.float32)
        try:
            dtype = torch.float32 if upcast else vae.dtype
            return vae.decode(latents.to(dtype) / vae.config.scaling_factor, return_dict=False)[0]
        finally:
            if upcast:
                vae.to(torch.float16)

    # ------------------------------------------------------------------ inputs
    def check_inputs(
        self,
        num_inference_steps,
        guidance_scale,
        strength,
        height,
        width,
        num_images_per_prompt,
        output_type,
    ):
        if output_type not in ("pil", "np", "pt", "latent"):
            raise UsageError(f"unknown output_type '{output_type}' (pil, np, pt or latent)")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise UsageError(
                f"num_inference_steps must be an integer >= 1, got {num_inference_steps}"
            )
        if not 0.0 < strength <= 1.0:
            raise UsageError(f"strength must be in (0, 1], got {strength}")
        if not np.isfinite(guidance_scale) or guidance_scale < 0:
            raise UsageError(f"guidance_scale must be a finite number >= 0, got {guidance_scale}")
        for name, value in (("height", height), ("width", width)):
            if value % self.vae_scale_factor or value < self.vae_scale_factor * 2:
                raise UsageError(
                    f"{name} must be a multiple of {self.vae_scale_factor} (>= 16), got {value}"
                )
        if num_images_per_prompt < 1:
            raise UsageError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")

    def prepare_inputs(self, person, garment, mask, pose, height, width, crop_margin) -> _Prepared:
        """Images -> tensors at H x W; PIL/array/path inputs get the work region, tensors are used as is."""
        people = _as_list(person)
        masks, poses, garments = _as_list(mask), _as_list(pose), _as_list(garment)
        n = len(people)
        if len(masks) != n or len(poses) != n:
            raise ValueError(
                f"got {n} person images but {len(masks)} masks and {len(poses)} pose images"
            )
        if len(garments) not in (1, n):
            raise ValueError(f"got {n} person images and {len(garments)} garments (give 1 or {n})")
        if all(isinstance(p, torch.Tensor) for p in people):
            return self._prepare_tensors(people, masks, poses, garments, height, width)
        photos, photo_masks, regions = [], [], []
        person_t, mask_t, pose_t = [], [], []
        for i, (p, m, q) in enumerate(zip(people, masks, poses, strict=True)):
            tag = f" {i}" if n > 1 else ""
            photo = load_image(p, f"person image{tag}")
            m_bool = binary_mask(load_image(m, f"mask{tag}", mode="L"), photo.size, f"mask{tag}")
            pose_img = load_image(q, f"pose image{tag}")
            if pose_img.size != photo.size:
                pose_img = pose_img.resize(photo.size, Image.Resampling.BICUBIC)
            region = mask_region(m_bool, height, width, crop_margin)
            size = (width, height)
            # Bicubic, like PIL's default resize in the official demo.
            person_t.append(
                _to_tensor(crop_region(photo, region).resize(size, Image.Resampling.BICUBIC))
            )
            pose_t.append(
                _to_tensor(crop_region(pose_img, region).resize(size, Image.Resampling.BICUBIC))
            )
            crop_m = crop_region(Image.fromarray(m_bool.astype(np.uint8) * 255), region)
            mask_t.append(
                torch.from_numpy(np.asarray(crop_m.resize(size, Image.Resampling.NEAREST)) >= 128)
            )
            photos.append(photo)
            photo_masks.append(m_bool)
            regions.append(region)
        garment_images = [load_image(g, "garment image") for g in garments]
        garment_t = [
            _to_tensor(g.resize((width, height), Image.Resampling.BICUBIC)) for g in garment_images
        ]
        return _Prepared(
            person=torch.stack(person_t),
            mask=torch.stack(mask_t)[:, None].float(),
            pose=torch.stack(pose_t),
            garment=torch.stack(garment_t),
            garment_images=garment_images,
            photos=photos,
            photo_masks=photo_masks,
            regions=regions,
        )

    @staticmethod
    def _prepare_tensors(people, masks, poses, garments, height, width) -> _Prepared:
        def stack(items, what, channels):
            if not all(isinstance(t, torch.Tensor) for t in items):
                raise ValueError(f"{what}: mix of tensors and images; give all inputs the same way")
            t = torch.cat([x if x.ndim == 4 else x[None] for x in items]).float()
            if t.shape[1] != channels or t.shape[-2:] != (height, width):
                raise ValueError(
                    f"{what}: expected (B, {channels}, {height}, {width}), got {tuple(t.shape)}"
                )
            return t

        mask = stack(masks, "mask", 1)
        mask = (mask >= 0.5).float()
        if not mask.flatten(1).any(dim=1).all():
            raise ImageInputError("mask is empty: mark the garment area to re-generate")
        return _Prepared(
            person=stack(people, "person image", 3),
            mask=mask,
            pose=stack(poses, "pose image", 3),
            garment=stack(garments, "garment image", 3),
            garment_images=None,
            photos=None,
            photo_masks=None,
            regions=None,
        )

    def get_timesteps(self, num_inference_steps: int, strength: float, device) -> torch.Tensor:
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        init = min(int(num_inference_steps * strength), num_inference_steps)
        start = max(num_inference_steps - init, 0)
        timesteps = self.scheduler.timesteps[start * self.scheduler.order :]
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start * self.scheduler.order)
        return timesteps

    # ------------------------------------------------------------------ denoising pieces
    def _garment_step_features(
        self,
        garment_latents: torch.Tensor,
        t: torch.Tensor,
        garment_text: torch.Tensor,
        garment_index: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """GarmentNet features of one step at batch G; with G > 1, rows picked per TryonNet row
        (``garment_index``), with G = 1 kept at batch 1 and shared by every row."""
        features = garment_features(self.garment_unet, garment_latents, t, garment_text)
        if garment_latents.shape[0] > 1:
            features = {k: v[garment_index.to(v.device)] for k, v in features.items()}
        return features

    def _predict_noise(
        self, model_input, t, text, pooled, time_ids, image_tokens, features, null_rows: int
    ) -> torch.Tensor:
        """One TryonNet pass; the first ``null_rows`` rows get the reference's zero garment tokens."""
        return tryon_forward(
            self.unet,
            model_input,
            t,
            text,
            pooled,
            time_ids,
            image_tokens,
            garment=features,
            null_rows=null_rows,
        )

    def _garment_schedule(
        self,
        garment_pixels: torch.Tensor,
        garment_text: torch.Tensor,
        timesteps: torch.Tensor,
        generator,
        cache: GarmentCache | None,
        key_fields: dict,
    ) -> list[dict[str, torch.Tensor]]:
        """Garment features for every step up front, batch G (two-phase mode / garment cache).

        The garment's VAE posterior draw is taken from ``generator`` at the same point of the
        stream as in the per-step path, so the result is the same; it is part of the cache key.
        """
        vae = self.vae
        g = garment_pixels.shape[0]
        latent_hw = (
            garment_pixels.shape[-2] // self.vae_scale_factor,
            garment_pixels.shape[-1] // self.vae_scale_factor,
        )
        eps = randn_tensor(
            (g, vae.config.latent_channels, *latent_hw),
            generator=generator,
            device=self._execution_device,
            dtype=self._vae_compute_dtype(),
        )
        keys: list[GarmentKey | None] = [None] * g
        entries: list[list[dict[str, torch.Tensor]] | None] = [None] * g
        if cache is not None:
            for i in range(g):
                keys[i] = GarmentKey.build(
                    garment_pixels[i],
                    garment_text[i],
                    eps[i],
                    timesteps,
                    self.scheduler.config,
                    dtype=self.garment_unet.dtype,
                    **{k: (v[i] if isinstance(v, list) else v) for k, v in key_fields.items()},
                )
                entries[i] = cache.get(keys[i])
        missing = [i for i in range(g) if entries[i] is None]
        if missing:
            dtype = self.garment_unet.dtype
            latents = self._vae_encode(garment_pixels[missing], None, eps=eps[missing]).to(dtype)
            computed = self._run_garment_net(latents, garment_text[missing], timesteps)
            for j, i in enumerate(missing):
                # Slices of a batch are cloned so a cached entry does not pin the whole batch.
                entries[i] = [
                    {k: v[j : j + 1].clone() if len(missing) > 1 else v for k, v in step.items()}
                    for step in computed
                ]
                if cache is not None:
                    cache.put(keys[i], entries[i])
        if g == 1:
            return entries[0]
        return [
            {name: torch.cat([entries[i][s][name] for i in range(g)]) for name in entries[0][s]}
            for s in range(len(timesteps))
        ]

    def _run_garment_net(
        self, latents: torch.Tensor, text: torch.Tensor, timesteps: torch.Tensor
    ) -> list[dict[str, torch.Tensor]]:
        """GarmentNet for all timesteps (phase 1); with two-phase swapping only it is on the device."""
        device = self._execution_device
        swap = (
            self.two_phase is not None
            and self.two_phase.swap_unets
            and device.type != "cpu"
            and not hasattr(self.garment_unet, "_hf_hook")
            and not hasattr(self.unet, "_hf_hook")
        )
        on_host = self.two_phase is not None and self.two_phase.features_on_host
        pin = on_host and device.type == "cuda"
        if swap:
            self.unet.to("cpu")
            self.garment_unet.to(device)
        steps = []
        try:
            for t in timesteps:
                features = garment_features(self.garment_unet, latents, t, text)
                if on_host and device.type != "cpu":
                    features = {
                        k: torch.empty(v.shape, dtype=v.dtype, pin_memory=pin).copy_(v)
                        for k, v in features.items()
                    }
                steps.append(features)
        finally:
            if swap:
                self.garment_unet.to("cpu")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                self.unet.to(device)
        return steps

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        person_image,
        garment_image,
        mask_image,
        pose_image,
        garment_description: str | Sequence[str] | None = None,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        num_inference_steps: int = 30,
        guidance_scale: float = 2.0,
        strength: float = 1.0,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        garment_prompt_embeds: torch.Tensor | None = None,
        garment_clip_pixels: torch.Tensor | None = None,
        paste_back: bool = True,
        crop_margin: float = 0.1,
        output_type: str = "pil",
        return_dict: bool = True,
        garment_cache: GarmentCache | None = None,
        callback_on_step_end=None,
    ):
        """Render each person wearing the garment.

        Args:
            person_image: photo(s) of the person (path, PIL, uint8 array, or a (B, 3, H, W)
                tensor in [0, 1] already at H x W). Any size and aspect for images.
            garment_image: in-shop garment photo(s): one shared by all people, or one per person.
            mask_image: inpainting mask(s), white (>= 0.5) = region to re-generate.
            pose_image: DensePose rendering(s) of the person, same framing as the photo.
            garment_description: garment text V (e.g. "short sleeve round neck t-shirts"); the
                captions are "model is wearing V" (TryonNet) and "a photo of V" (GarmentNet).
            negative_prompt: unconditional TryonNet caption.
            num_inference_steps, guidance_scale, strength: sampling settings (reference: 30, 2.0, 1.0).
            height, width: work resolution, multiples of 8 (default 1024 x 768 for SDXL).
            num_images_per_prompt: samples per person.
            generator: the only source of randomness (noise, VAE posterior samples, scheduler).
            latents: initial noise (B, 4, H/8, W/8); drawn from ``generator`` when None.
            prompt_embeds ... garment_prompt_embeds: precomputed text embeddings (skip the
                text encoders). ``garment_clip_pixels``: CLIP-normalised garment pixels.
            paste_back: return the full photo with the render pasted inside the mask (default)
                instead of the raw H x W render. Ignored for tensor inputs.
            crop_margin: margin around the mask when choosing the work region.
            output_type: "pil", "np" (float [0, 1]), "pt" (tensor in [0, 1]) or "latent".
            garment_cache: a :class:`~idm_vton.pipelines.garment_cache.GarmentCache` (default:
                ``self.garment_cache``): the garment's per-step GarmentNet features are looked
                up / stored there (one garment, many people or requests), same result.
            callback_on_step_end: called after every denoising step as
                ``callback_on_step_end(pipe, step_index, timestep, {"latents": latents})``
                (diffusers' convention); a returned dict may replace ``latents``. Progress
                reporting and cancellation (raise from the callback) hook in here.
        """
        height = height or self.default_height
        width = width or self.default_width
        self.check_inputs(
            num_inference_steps,
            guidance_scale,
            strength,
            height,
            width,
            num_images_per_prompt,
            output_type,
        )
        device = self._execution_device
        dtype = self.unet.dtype
        do_cfg = guidance_scale > 1.0

        # 1. Images at H x W.
        prep = self.prepare_inputs(
            person_image, garment_image, mask_image, pose_image, height, width, crop_margin
        )
        people, garments = prep.person.shape[0], prep.garment.shape[0]
        batch = people * num_images_per_prompt
        # garment row of each TryonNet row
        garment_index = (
            torch.arange(people).repeat_interleave(num_images_per_prompt)
            if garments > 1
            else torch.zeros(batch, dtype=torch.long)
        )

        # 2. Captions.
        descriptions = _as_list(garment_description)
        if len(descriptions) not in (1, garments):
            raise ValueError(
                f"got {len(descriptions)} garment descriptions for {garments} garments"
            )
        if (
            prompt_embeds is None
            or garment_prompt_embeds is None
            or (do_cfg and negative_prompt_embeds is None)
        ):
            if any(d is None for d in descriptions):
                raise ValueError(
                    "garment_description is required (or pass precomputed prompt embeddings)"
                )
            if len(descriptions) == 1:
                descriptions = descriptions * garments
        if prompt_embeds is None:
            prompt_embeds, pooled_prompt_embeds = self.encode_prompt(
                [tryon_prompt(d) for d in descriptions], device
            )
        if garment_prompt_embeds is None:
            garment_prompt_embeds, _ = self.encode_prompt(
                [garment_prompt(d) for d in descriptions], device
            )
        if do_cfg and negative_prompt_embeds is None:
            negative_prompt_embeds, negative_pooled_prompt_embeds = self.encode_prompt(
                [negative_prompt], device
            )
        if pooled_prompt_embeds is None or (do_cfg and negative_pooled_prompt_embeds is None):
            raise ValueError(
                "pooled prompt embeddings must be given together with prompt embeddings"
            )

        def rows(t: torch.Tensor) -> torch.Tensor:
            """Per-garment (or shared) tensor -> one row per TryonNet row."""
            t = t.to(device=device, dtype=dtype)
            return (
                t.expand(batch, *t.shape[1:]) if t.shape[0] == 1 else t[garment_index.to(t.device)]
            )

        text = rows(prompt_embeds)
        pooled = rows(pooled_prompt_embeds)
        garment_text = garment_prompt_embeds.to(device=device, dtype=dtype)
        if garment_text.shape[0] not in (1, garments):
            raise ValueError(
                f"garment_prompt_embeds has batch {garment_text.shape[0]}, expected 1 or {garments}"
            )
        if garment_text.shape[0] != garments:
            garment_text = garment_text.expand(garments, -1, -1)

        # 3. Image prompt (computed once per call).
        if garment_clip_pixels is None:
            if prep.garment_images is None:
                raise ValueError(
                    "tensor garment inputs need garment_clip_pixels (CLIP-normalised pixels)"
                )
            garment_clip_pixels = self.clip_pixels(prep.garment_images, device)
        uncond_tokens, cond_tokens = self.encode_image_prompt(
            garment_clip_pixels.to(device, self.image_encoder.dtype)
        )
        image_tokens = rows(cond_tokens)

        # 4. Timesteps and initial noise.
        timesteps = self.get_timesteps(num_inference_steps, strength, device)
        latent_shape = (batch, 4, height // self.vae_scale_factor, width // self.vae_scale_factor)
        person = prep.person.to(device).repeat_interleave(num_images_per_prompt, 0)
        mask = prep.mask.to(device).repeat_interleave(num_images_per_prompt, 0)
        pose = prep.pose.to(device).repeat_interleave(num_images_per_prompt, 0)
        init_image = 2.0 * person - 1.0
        if latents is None:
            noise = randn_tensor(
                latent_shape, generator=generator, device=device, dtype=torch.float32
            )
            if strength < 1.0:
                image_latents = self._vae_encode(init_image, generator).float()
                latents = self.scheduler.add_noise(
                    image_latents, noise, timesteps[:1].repeat(batch)
                )
            else:
                latents = noise * self.scheduler.init_noise_sigma
        else:
            if tuple(latents.shape) != latent_shape:
                raise ValueError(
                    f"latents must have shape {latent_shape}, got {tuple(latents.shape)}"
                )
            latents = latents.to(device=device, dtype=torch.float32)

        # 5. Condition latents: mask, masked person, DensePose, garment (VAE posterior samples).
        mask_latent = F.interpolate(mask, size=latent_shape[-2:], mode="nearest")
        masked_latents = self._vae_encode(init_image * (mask < 0.5), generator)
        pose_latents = self._vae_encode(2.0 * pose - 1.0, generator)
        garment_pixels = 2.0 * prep.garment.to(device) - 1.0
        cache = garment_cache if garment_cache is not None else self.garment_cache
        schedule = None
        # Under model CPU offload GarmentNet always runs in phase 1: per step, both UNets would
        # be moved in and out of the device.
        offloaded = hasattr(self.garment_unet, "_hf_hook")
        if cache is not None or self.two_phase is not None or offloaded:
            # 6a. Phase 1: GarmentNet for every step (or from the cache) before the TryonNet loop.
            key_fields = dict(
                description=descriptions
                if len(descriptions) == garments
                else descriptions * garments,
                num_inference_steps=num_inference_steps,
                strength=strength,
            )
            schedule = self._garment_schedule(
                garment_pixels, garment_text, timesteps, generator, cache, key_fields
            )
        else:
            garment_latents = self._vae_encode(garment_pixels, generator).to(dtype)
        condition = torch.cat([mask_latent, masked_latents, pose_latents], dim=1).to(dtype)

        if do_cfg:
            text = torch.cat([rows(negative_prompt_embeds), text])
            pooled = torch.cat([rows(negative_pooled_prompt_embeds), pooled])
            image_tokens = torch.cat([rows(uncond_tokens), image_tokens])
            condition = torch.cat([condition, condition])
        size = torch.tensor([height, width, 0, 0, height, width], device=device, dtype=dtype)
        time_ids = size.expand(text.shape[0], -1)

        # 6. Denoising loop: GarmentNet once per step at batch G (shared by all rows; or from the
        #    phase-1 schedule), TryonNet on [uncond ; cond].
        row_index = garment_index if garments > 1 else None
        # Stochastic samplers draw from the generator; deterministic ones (UniPC) take none.
        takes_generator = "generator" in inspect.signature(self.scheduler.step).parameters
        step_kwargs = {"generator": generator} if takes_generator else {}
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                if schedule is None:
                    features = self._garment_step_features(
                        garment_latents, t, garment_text, garment_index
                    )
                else:
                    features = {k: v.to(device, non_blocking=True) for k, v in schedule[i].items()}
                    if row_index is not None:
                        features = {k: v[row_index.to(device)] for k, v in features.items()}
                model_input = torch.cat([latents] * 2) if do_cfg else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                model_input = torch.cat([model_input.to(dtype), condition], dim=1)
                noise_pred = self._predict_noise(
                    model_input,
                    t,
                    text,
                    pooled,
                    time_ids,
                    image_tokens,
                    features,
                    null_rows=batch if do_cfg else 0,
                ).float()
                if do_cfg:
                    uncond, cond = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (cond - uncond)
                latents = self.scheduler.step(
                    noise_pred, t, latents, return_dict=False, **step_kwargs
                )[0]
                if not torch.isfinite(latents).all():
                    self.garment_store.clear()
                    raise NonFiniteOutputError(
                        f"non-finite values in the latents at timestep {int(t)} "
                        f"(dtype {dtype}): use --dtype bf16 or fp32"
                    )
                if callback_on_step_end is not None:
                    try:
                        update = callback_on_step_end(self, i, t, {"latents": latents})
                    except BaseException:
                        self.garment_store.clear()
                        raise
                    latents = (update or {}).get("latents", latents)
                progress.update()
        self.garment_store.clear()

        if output_type == "latent":
            self.maybe_free_model_hooks()
            return TryOnPipelineOutput(images=latents) if return_dict else (latents,)

        # 7. Decode and paste back.
        decoded = self._vae_decode(latents).float()
        self.maybe_free_model_hooks()
        if not torch.isfinite(decoded).all():
            raise NonFiniteOutputError(
                "non-finite values in the decoded image: use --dtype bf16 or fp32"
            )
        images = (decoded / 2 + 0.5).clamp(0, 1)
        if paste_back and prep.photos is not None:
            arrays = images.permute(0, 2, 3, 1).cpu().numpy()
            renders = [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arrays]
            k = num_images_per_prompt
            pil = [
                paste_into_photo(
                    prep.photos[i // k], render, prep.regions[i // k], prep.photo_masks[i // k]
                )
                for i, render in enumerate(renders)
            ]
            if output_type == "pil":
                result = pil
            elif output_type == "np":
                result = [np.asarray(p, dtype=np.float32) / 255.0 for p in pil]
                result = np.stack(result) if len({r.shape for r in result}) == 1 else result
            else:
                result = [_to_tensor(p) for p in pil]
                result = torch.stack(result) if len({r.shape for r in result}) == 1 else result
        elif output_type == "pt":
            result = images
        else:
            arrays = images.permute(0, 2, 3, 1).cpu().numpy()
            if output_type == "np":
                result = arrays
            else:
                result = [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arrays]
        return TryOnPipelineOutput(images=result) if return_dict else (result,)
