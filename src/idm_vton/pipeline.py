"""The IDM-VTON try-on pipeline (paper Sec. 3, inference as in the official ``tryon_pipeline``).

Per call: encode the captions (SPEC section 3), the garment image prompt (CLIP penultimate hidden
states -> Resampler), the masked person, the DensePose image and the garment with the VAE; then
for every timestep run GarmentNet once on the clean garment latent and TryonNet on
``[uncond ; cond]`` with the garment features, apply classifier-free guidance and the scheduler
step; decode, and paste the generated region back into the original photo.
"""

from __future__ import annotations

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

from .garment_attention import GarmentAttentionProcessor
from .images import (
    ImageInputError,
    Region,
    binary_mask,
    crop_region,
    load_image,
    mask_region,
)
from .images import paste_back as paste_into_photo
from .tryon_net import ImageProjection, garment_features, install_garment_attention, tryon_forward

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "NonFiniteOutputError",
    "TryOnPipeline",
    "TryOnPipelineOutput",
]

DEFAULT_NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality"


class NonFiniteOutputError(RuntimeError):
    """The denoising produced NaN/inf values (typically fp16 overflow)."""


@dataclass
class TryOnPipelineOutput(BaseOutput):
    """``images``: one per person and sample (PIL, numpy or tensor as asked)."""

    images: list[Image.Image] | np.ndarray | torch.Tensor


def tryon_prompt(description: str) -> str:
    """TryonNet caption (SPEC section 3, training form)."""
    return "model is wearing " + description


def garment_prompt(description: str) -> str:
    """GarmentNet caption (SPEC section 3)."""
    return "a photo of " + description


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
    project's own) or build the tiny test model with :func:`idm_vton.tiny.tiny_pipeline`.
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
            from .garment_attention import GarmentFeatureStore

            self.garment_store = GarmentFeatureStore()
            install_garment_attention(unet, garment_unet, self.garment_store)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        torch_dtype: torch.dtype | None = None,
        local_files_only: bool = False,
        load_text_encoders: bool = True,
        **kwargs,
    ) -> TryOnPipeline:
        """Load from a local folder or hub id (published IDM-VTON layout or this project's)."""
        from .loading import load_pipeline

        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(kwargs)}")
        return load_pipeline(
            pretrained_model_name_or_path,
            torch_dtype=torch_dtype,
            local_files_only=local_files_only,
            load_text_encoders=load_text_encoders,
        )

    def save_pretrained(self, save_directory, safe_serialization: bool = True, **kwargs) -> None:
        """Save in this project's layout (safetensors; reload with :meth:`from_pretrained`)."""
        from .loading import save_ip_adapter_config

        if not safe_serialization:
            raise ValueError("idm-vton writes safetensors only")
        super().save_pretrained(save_directory, safe_serialization=True, **kwargs)
        save_ip_adapter_config(self.unet, f"{save_directory}/unet")

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

    def _vae_encode(self, images: torch.Tensor, generator) -> torch.Tensor:
        """Scaled latent sample ``sf * (mean + std * eps)``, ``eps`` drawn from ``generator``."""
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
        eps = randn_tensor(
            dist.mean.shape, generator=generator, device=dist.mean.device, dtype=dist.mean.dtype
        )
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
            raise ValueError(f"unknown output_type '{output_type}' (pil, np, pt or latent)")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(
                f"num_inference_steps must be an integer >= 1, got {num_inference_steps}"
            )
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        if not np.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale}")
        for name, value in (("height", height), ("width", width)):
            if value % self.vae_scale_factor or value < self.vae_scale_factor * 2:
                raise ValueError(
                    f"{name} must be a multiple of {self.vae_scale_factor} (>= 16), got {value}"
                )
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")

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
            person_t.append(
                _to_tensor(crop_region(photo, region).resize(size, Image.Resampling.LANCZOS))
            )
            pose_t.append(
                _to_tensor(crop_region(pose_img, region).resize(size, Image.Resampling.LANCZOS))
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
            _to_tensor(g.resize((width, height), Image.Resampling.LANCZOS)) for g in garment_images
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
        garment_latents = self._vae_encode(2.0 * prep.garment.to(device) - 1.0, generator).to(dtype)
        condition = torch.cat([mask_latent, masked_latents, pose_latents], dim=1).to(dtype)

        if do_cfg:
            text = torch.cat([rows(negative_prompt_embeds), text])
            pooled = torch.cat([rows(negative_pooled_prompt_embeds), pooled])
            image_tokens = torch.cat([rows(uncond_tokens), image_tokens])
            condition = torch.cat([condition, condition])
        size = torch.tensor([height, width, 0, 0, height, width], device=device, dtype=dtype)
        time_ids = size.expand(text.shape[0], -1)

        # 6. Denoising loop.
        with self.progress_bar(total=len(timesteps)) as progress:
            for t in timesteps:
                features = garment_features(self.garment_unet, garment_latents, t, garment_text)
                if garments > 1:
                    features = {k: v[garment_index.to(v.device)] for k, v in features.items()}
                model_input = torch.cat([latents] * 2) if do_cfg else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                model_input = torch.cat([model_input.to(dtype), condition], dim=1)
                noise_pred = tryon_forward(
                    self.unet,
                    model_input,
                    t,
                    text,
                    pooled,
                    time_ids,
                    image_tokens,
                    garment=features,
                    null_rows=batch if do_cfg else 0,
                ).float()
                if do_cfg:
                    uncond, cond = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (cond - uncond)
                latents = self.scheduler.step(
                    noise_pred, t, latents, generator=generator, return_dict=False
                )[0]
                if not torch.isfinite(latents).all():
                    self.garment_store.clear()
                    raise NonFiniteOutputError(
                        f"non-finite values in the latents at timestep {int(t)} "
                        f"(dtype {dtype}): use --dtype bf16 or fp32"
                    )
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
