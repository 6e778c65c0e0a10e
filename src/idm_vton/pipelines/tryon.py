"""The IDM-VTON try-on pipeline (paper Sec. 3, inference as in the official ``tryon_pipeline``).

``TryOnPipeline.__call__`` reads as the algorithm, one named stage per step:

1. :meth:`~TryOnPipeline.check_inputs`, then the images to work-size tensors and paste-back
   regions (:class:`~idm_vton.pipelines.image_processor.TryOnImageProcessor`);
2. :meth:`~TryOnPipeline.encode_image_prompt` (garment CLIP penultimate states -> Resampler),
   then, with a ``garment_annotator``, :meth:`~TryOnPipeline.describe_garments` (V read from the
   garment photo, on that same CLIP pass where the annotator can), and
   :meth:`~TryOnPipeline.encode_prompts` (the captions, paper Sec. 3.2);
3. :meth:`~TryOnPipeline.get_timesteps` and :meth:`~TryOnPipeline.prepare_latents`;
4. :meth:`~TryOnPipeline.prepare_condition_latents` (mask, masked person, DensePose) and
   :meth:`~TryOnPipeline.start_garment_branch` (the garment latent, handed to the pipeline's
   :class:`~idm_vton.pipelines.garment_branch.GarmentBranch`);
5. :meth:`~TryOnPipeline.denoise`: per step the garment features, TryonNet on ``[uncond ; cond]``,
   classifier-free guidance and the scheduler step;
6. decode, and paste the generated region back into the original photo.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import (
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from ..data.captions import garment_prompt, tryon_prompt
from ..defaults import GUIDANCE_SCALE, NEGATIVE_PROMPT, NUM_INFERENCE_STEPS
from ..errors import NonFiniteOutputError, UsageError
from ..images import check_work_size
from ..loaders.pipeline import COMPONENTS, load_components, save_ip_adapter_config
from ..models.garment_attention import (
    GarmentAttentionProcessor,
    GarmentCaptureProcessor,
    GarmentFeatureStore,
)
from ..models.processors import clip_image_processor
from ..models.tryon_net import ImageProjection, install_garment_attention
from ..schedulers import build_scheduler
from .checks import check_strength
from .garment_branch import (
    GarmentBranch,
    GarmentInputs,
    GarmentSteps,
    TryonConditioning,
    TwoPhaseGarment,
)
from .garment_cache import GarmentCache
from .image_processor import OUTPUT_TYPES, PreparedInputs, TryOnImageProcessor, _to_pil
from .memory import check_vae_tile_size

__all__ = [
    "NonFiniteOutputError",
    "BatchLayout",
    "PromptEmbeddings",
    "PromptInputs",
    "TryOnPipeline",
    "TryOnPipelineOutput",
    "check_strength",
    "vae_compute_dtype",
]

# How messages name the components (NaN/inf weights are reported by these names).
_COMPONENT_NAMES = {
    "unet": "TryonNet",
    "garment_unet": "GarmentNet",
    "vae": "VAE",
    "image_encoder": "image encoder",
    "image_projection": "IP-Adapter Resampler",
    "text_encoder": "text encoder",
    "text_encoder_2": "text encoder 2",
}
# Past this, a non-finite result in fp32/bf16 is blamed on the guidance scale.
_USEFUL_GUIDANCE = 50.0


StepCallback = Callable[["TryOnPipeline", int, torch.Tensor, dict], "dict | None"]


@dataclass
class TryOnPipelineOutput(BaseOutput):
    """``images``: one per person and sample (PIL, numpy or tensor as asked);
    ``garment_descriptions``: the V each garment was rendered with (None where only embeddings
    were given); ``garment_tags``: the annotator's tags per garment, when it read V
    (``garment_annotator``), else None."""

    images: list[Image.Image] | np.ndarray | torch.Tensor
    garment_descriptions: list[str | None] | None = None
    garment_tags: list | None = None


@dataclass(frozen=True)
class PromptInputs:
    """The text of one call as given: the garment description(s) V and the unconditional caption,
    or their embeddings precomputed (then no text encoder is needed). ``__call__`` takes these
    as keywords, as diffusers' pipelines do, and hands them on as one object.

    ``prompt_embeds``/``pooled_prompt_embeds``: TryonNet's caption; ``negative_*``: the
    unconditional caption; ``garment_prompt_embeds``: GarmentNet's caption (1 or G rows).
    """

    garment_description: str | Sequence[str | None] | None = None
    negative_prompt: str | Sequence[str] = NEGATIVE_PROMPT
    prompt_embeds: torch.Tensor | None = None
    pooled_prompt_embeds: torch.Tensor | None = None
    negative_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None
    garment_prompt_embeds: torch.Tensor | None = None


@dataclass
class PromptEmbeddings:
    """Caption embeddings of one call, one row per garment (or one shared row).

    ``prompt``/``pooled``: TryonNet's caption ("model is wearing V"); ``negative``/
    ``negative_pooled``: the unconditional caption (None without guidance); ``garment``:
    GarmentNet's caption ("a photo of V"), G rows; ``descriptions``: V per garment (None where
    only embeddings were given).
    """

    prompt: torch.Tensor
    pooled: torch.Tensor
    negative: torch.Tensor | None
    negative_pooled: torch.Tensor | None
    garment: torch.Tensor
    descriptions: list[str | None]


@dataclass(frozen=True)
class BatchLayout:
    """The call's batch layout: ``people`` x ``per_person`` rows, ``garments`` garments."""

    people: int
    garments: int
    per_person: int

    @property
    def batch(self) -> int:
        return self.people * self.per_person

    @property
    def garment_index(self) -> torch.Tensor:
        """The garment of each row."""
        if self.garments > 1:
            return torch.arange(self.people).repeat_interleave(self.per_person)
        return torch.zeros(self.batch, dtype=torch.long)

    def expand(self, t: torch.Tensor) -> torch.Tensor:
        """A per-garment (or shared) tensor -> one row per row of the batch."""
        if t.shape[0] == 1:
            return t.expand(self.batch, *t.shape[1:])
        return t[self.garment_index.to(t.device)]


def vae_compute_dtype(vae: AutoencoderKL) -> torch.dtype:
    """fp32 for an fp16 VAE whose config asks to be upcast (SDXL's overflows in fp16), else
    the VAE's own dtype."""
    if vae.dtype == torch.float16 and vae.config.force_upcast:
        return torch.float32
    return vae.dtype


@contextmanager
def _vae_in_compute_dtype(vae: AutoencoderKL) -> Iterator[torch.dtype]:
    """Run the block with ``vae`` in :func:`vae_compute_dtype` (moved back to fp16 after)."""
    dtype = vae_compute_dtype(vae)
    if dtype == vae.dtype:
        yield dtype
        return
    vae.to(dtype)
    try:
        yield dtype
    finally:
        vae.to(torch.float16)


class TryOnPipeline(DiffusionPipeline):
    """IDM-VTON: renders a person wearing a garment (Choi et al., ECCV 2024).

    Components: ``unet`` (TryonNet, 13 input channels, IP-Adapter cross-attention),
    ``garment_unet`` (GarmentNet), ``image_projection`` (IP-Adapter Plus Resampler),
    ``image_encoder`` (CLIP ViT-H/14 vision), ``vae``, the two SDXL text encoders and tokenizers
    (optional when prompt embeddings are passed), ``feature_extractor`` (CLIP preprocessing) and
    ``scheduler``. Load with :meth:`from_pretrained` (published ``yisol/IDM-VTON`` layout or this
    project's own) or build the tiny random model with
    :func:`idm_vton.pipelines.loading.tiny_pipeline`.

    Not components: ``image_processor`` (a
    :class:`~idm_vton.pipelines.image_processor.TryOnImageProcessor`), ``garment_branch`` (a
    :class:`~idm_vton.pipelines.garment_branch.GarmentBranch`: when GarmentNet runs and how
    its features enter TryonNet; replace it to change that computation), ``two_phase`` and
    ``garment_cache`` (the two-phase mode and the default garment cache, off by default).
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
    #: The tensors a step callback can read and replace (diffusers' SDXL names for TryonNet's
    #: caption, pooled caption and size conditioning).
    _callback_tensor_inputs = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids"]

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
        feature_extractor=None,
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
        # Both UNets' garment processors must share one store; components from different
        # pipelines (from_pretrained overrides) are rewired onto one.
        tryon_store = _processor_store(unet, GarmentAttentionProcessor)
        capture_store = _processor_store(garment_unet, GarmentCaptureProcessor)
        self.garment_store = tryon_store or capture_store or GarmentFeatureStore()
        if tryon_store is not self.garment_store or capture_store is not self.garment_store:
            install_garment_attention(unet, garment_unet, self.garment_store)
        self.image_processor = TryOnImageProcessor()
        self.garment_branch = GarmentBranch()
        self.two_phase: TwoPhaseGarment | None = None
        self.garment_cache: GarmentCache | None = None
        self._guidance_scale, self._num_timesteps, self._interrupt = GUIDANCE_SCALE, 0, False

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *,
        torch_dtype: torch.dtype | dict[str, torch.dtype] | None = None,
        dtype: torch.dtype | dict[str, torch.dtype] | None = None,
        device_map: str | torch.device | None = None,
        revision: str | None = None,
        variant: str | None = None,
        cache_dir=None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        force_download: bool = False,
        use_safetensors: bool | None = None,
        low_cpu_mem_usage: bool = True,
        load_text_encoders: bool = True,
        **components,
    ) -> TryOnPipeline:
        """Load from a local folder or hub id (published IDM-VTON layout or this project's), or
        ``"tiny"``: the built-in tiny random model (no download; its images are noise), as
        ``--model tiny`` on the command line.

        diffusers' keywords: ``dtype`` (or its older name ``torch_dtype``): one dtype, or a dict
        of component name -> dtype with a ``"default"`` for the rest; ``device_map``: a device
        (``"cuda"``, ``"cpu"``, ...) to put the whole pipeline on (a strategy that splits it over
        devices, such as ``"balanced"``, is refused: both UNets run at every step); ``revision``, ``cache_dir``, ``token``,
        ``force_download``, ``local_files_only`` (the hub download); ``variant`` (e.g.
        ``"fp16"``: each folder's ``*.fp16.safetensors`` / ``.bin`` where it has one);
        ``use_safetensors`` (True: safetensors only; False: pickles only; None: safetensors
        first); ``low_cpu_mem_usage`` (accepted; loading never holds two copies of a weight).
        ``load_text_encoders=False`` leaves the text encoders and tokenizers out.

        Component overrides (``unet=``, ``garment_unet=``, ``vae=``, ``image_encoder=``,
        ``image_projection=``, ``text_encoder=``, ``tokenizer=``, ...) are used as given and
        their folders are not read; ``scheduler`` is a scheduler object or a
        :class:`~idm_vton.schedulers.SchedulerName` (``"ddpm"``, the reference's sampler, by
        default; built from the checkpoint's scheduler config whatever class it names). Any
        other keyword raises ``TypeError``.
        """
        del low_cpu_mem_usage  # accepted for diffusers compatibility; nothing to choose
        if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
            raise TypeError("from_pretrained() got both dtype and torch_dtype; pass dtype only")
        dtypes = _component_dtypes(dtype if dtype is not None else torch_dtype)
        device = _device_of_map(device_map)
        if str(pretrained_model_name_or_path) == "tiny" and not Path("tiny").is_dir():
            from ..models.tiny import tiny_components

            unknown = sorted(set(components) - set(COMPONENTS))
            if unknown:
                raise TypeError(f"from_pretrained() got unexpected keyword argument(s): {unknown}")
            built = tiny_components(text_encoders=load_text_encoders)
            if isinstance(components.get("scheduler"), str):
                scheduler = components.pop("scheduler")
                built["scheduler"] = build_scheduler(scheduler, dict(built["scheduler"].config))
            pipe = cls(**{**built, **components})
            pipe._cast_components(dtypes, default=torch.float32)
            return pipe if device is None else pipe.to(device)
        components = load_components(
            pretrained_model_name_or_path,
            torch_dtype=dtypes.get("default"),
            revision=revision,
            variant=variant,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
            force_download=force_download,
            use_safetensors=use_safetensors,
            load_text_encoders=load_text_encoders,
            **components,
        )
        pipe = cls(**components)
        pipe._cast_components({k: v for k, v in dtypes.items() if k != "default"})
        return pipe if device is None else pipe.to(device)

    def _cast_components(self, dtypes: dict[str, torch.dtype], default=None) -> None:
        """Cast the named modules to their dtype (``"default"``: the others too, or to
        ``default``); the SDXL VAE stays fp32 when the rest is fp16, as it overflows there."""
        fallback = dtypes.get("default", default)
        for name, module in self.components.items():
            dtype = dtypes.get(name, fallback)
            if not isinstance(module, torch.nn.Module) or dtype is None:
                continue
            if name == "vae" and dtype == torch.float16 and name not in dtypes:
                dtype = torch.float32
            module.to(dtype=dtype)

    def save_pretrained(self, save_directory, safe_serialization: bool = True, **kwargs) -> None:
        """Save in this project's layout (safetensors; reload with :meth:`from_pretrained`)."""
        if not safe_serialization:
            raise UsageError("idm-vton writes safetensors only")
        super().save_pretrained(save_directory, safe_serialization=True, **kwargs)
        save_ip_adapter_config(self.unet, f"{save_directory}/unet")

    # ------------------------------------------------------------------ memory and speed options
    def enable_attention_slicing(self, slice_size="auto") -> None:
        """Refused in one line, leaving the pipeline as it is: diffusers' attention slicing
        replaces every attention processor, which would remove the garment attention and the
        IP-Adapter. Attention here already runs through PyTorch's
        ``scaled_dot_product_attention``, which never holds the whole score matrix; for less
        memory see :meth:`enable_two_phase_garment`, ``enable_model_cpu_offload``,
        :meth:`enable_vae_tiling`, :meth:`enable_fp8_weight_storage`."""
        del slice_size
        raise UsageError(
            "attention slicing does not apply to TryOnPipeline (it would replace the garment "
            "and IP-Adapter attention); its attention already uses memory-efficient SDPA: for "
            "less memory use enable_two_phase_garment(), enable_model_cpu_offload(), "
            "enable_vae_tiling() or enable_fp8_weight_storage()"
        )

    def disable_attention_slicing(self) -> None:
        """Nothing to undo (:meth:`enable_attention_slicing` never changes the pipeline)."""

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
        if tile_size is not None:
            check_vae_tile_size(tile_size, self.vae_scale_factor)
        self.vae.enable_tiling()
        if tile_size is not None:
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
    def encode_text(self, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL text encoding of ``texts``: penultimate hidden states of both encoders, pooled
        from the second."""
        if self.text_encoder is None or self.text_encoder_2 is None:
            raise UsageError(
                "this pipeline has no text encoders: pass prompt_embeds, pooled_prompt_embeds, "
                "negative_prompt_embeds, negative_pooled_prompt_embeds and garment_prompt_embeds"
            )
        embeds, pooled = [], None
        for tokenizer, encoder in (
            (self.tokenizer, self.text_encoder),
            (self.tokenizer_2, self.text_encoder_2),
        ):
            ids = tokenizer(
                texts,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(device)
            out = encoder(ids, output_hidden_states=True)
            embeds.append(out.hidden_states[-2])
            pooled = out[0]
        return torch.cat(embeds, dim=-1), pooled

    def clip_preprocess(self, garments: list[Image.Image], device) -> torch.Tensor:
        """Garment photos -> CLIP-normalised pixels for the image encoder (:attr:`feature_extractor`)."""
        processor = self.feature_extractor
        if processor is None:  # CLIP's preprocessing at the encoder's own input size
            processor = clip_image_processor(self.image_encoder.config.image_size)
        pixels = processor(images=garments, return_tensors="pt").pixel_values
        return pixels.to(device=device, dtype=self.image_encoder.dtype)

    def encode_image_prompt(self, clip_pixels: torch.Tensor, return_image_embeds: bool = False):
        """(uncond tokens (1, N, C), cond tokens (G, N, C)); uncond = CLIP of an all-zero image.

        ``return_image_embeds``: also return the garments' projected CLIP image embeddings
        (G, D), which the same encoder pass computes (what the annotator probe reads), as
        ``((uncond, cond), image_embeds)``.
        """
        pixels = torch.cat([torch.zeros_like(clip_pixels[:1]), clip_pixels])
        encoded = self.image_encoder(pixels, output_hidden_states=True)
        tokens = self.image_projection(encoded.hidden_states[-2].to(self.image_projection.dtype))
        if return_image_embeds:
            return (tokens[:1], tokens[1:]), encoded.image_embeds[1:]
        return tokens[:1], tokens[1:]

    # ------------------------------------------------------------------ VAE
    def _vae_encode(
        self, images: torch.Tensor, generator, eps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scaled latent sample ``sf * (mean + std * eps)``, ``eps`` drawn from ``generator``
        (or given: the garment's is drawn before deciding whether to encode it)."""
        vae = self.vae
        with _vae_in_compute_dtype(vae) as dtype:
            dist = vae.encode(images.to(device=vae.device, dtype=dtype)).latent_dist
        if eps is None:
            eps = randn_tensor(
                dist.mean.shape, generator=generator, device=dist.mean.device, dtype=dist.mean.dtype
            )
        eps = eps.to(device=dist.mean.device, dtype=dist.mean.dtype)
        return (dist.mean + dist.std * eps) * vae.config.scaling_factor

    def _vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        with _vae_in_compute_dtype(vae) as dtype:
            return vae.decode(latents.to(dtype) / vae.config.scaling_factor, return_dict=False)[0]

    def encode_garment_latents(self, pixels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Garment latents for GarmentNet: the VAE posterior sample of ``pixels`` (in [-1, 1])
        with the given ``noise`` (from :meth:`draw_garment_noise`), in GarmentNet's dtype."""
        return self._vae_encode(pixels, None, eps=noise).to(self.garment_unet.dtype)

    def draw_garment_noise(self, garments: int, height: int, width: int, generator):
        """The garment latents' VAE posterior noise, (G, C, H/8, W/8), drawn from ``generator``."""
        shape = (
            garments,
            self.vae.config.latent_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        return randn_tensor(
            shape,
            generator=generator,
            device=self._execution_device,
            dtype=vae_compute_dtype(self.vae),
        )

    # ------------------------------------------------------------------ inputs
    def check_inputs(
        self,
        num_inference_steps: int,
        guidance_scale: float,
        strength: float,
        height: int,
        width: int,
        num_images_per_prompt: int,
        output_type: str,
        text: PromptInputs,
        *,
        annotate: bool = False,
    ) -> None:
        """Refuse settings that cannot work, saying what was expected and what came in.
        ``annotate``: a garment annotator fills the descriptions that are None."""
        if output_type not in OUTPUT_TYPES:
            raise UsageError(f"unknown output_type '{output_type}' (pil, np, pt or latent)")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise UsageError(
                f"num_inference_steps must be an integer >= 1, got {num_inference_steps}"
            )
        check_strength(num_inference_steps, strength)
        if not np.isfinite(guidance_scale) or guidance_scale < 0:
            raise UsageError(f"guidance_scale must be a finite number >= 0, got {guidance_scale}")
        check_work_size(height, width, self.vae_scale_factor)
        if num_images_per_prompt < 1:
            raise UsageError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
        negatives = _descriptions(text.negative_prompt)
        if not negatives or not all(isinstance(n, str) for n in negatives):
            raise UsageError(
                "negative_prompt must be a string or a list of strings (one, or one per garment), "
                f"got {text.negative_prompt!r}"
            )
        descriptions = _descriptions(text.garment_description)
        if not descriptions or not all(d is None or isinstance(d, str) for d in descriptions):
            raise UsageError(
                "garment_description must be a string, None, or a list of them (one per "
                f"garment), got {text.garment_description!r}"
            )
        do_cfg = guidance_scale > 1.0
        if (text.prompt_embeds is not None and text.pooled_prompt_embeds is None) or (
            do_cfg
            and text.negative_prompt_embeds is not None
            and text.negative_pooled_prompt_embeds is None
        ):
            raise UsageError(
                "pooled prompt embeddings must be given together with prompt embeddings"
            )

    def prepare_inputs(
        self,
        person,
        garment,
        mask,
        pose,
        height: int,
        width: int,
        crop_margin: float = 0.1,
        auto_crop: bool = False,
    ) -> PreparedInputs:
        """Images -> tensors at H x W (:meth:`TryOnImageProcessor.preprocess
        <idm_vton.pipelines.image_processor.TryOnImageProcessor.preprocess>`)."""
        return self.image_processor.preprocess(
            person, garment, mask, pose, height, width, crop_margin, auto_crop
        )

    def get_timesteps(self, num_inference_steps: int, strength: float, device) -> torch.Tensor:
        """The last ``int(num_inference_steps * strength)`` timesteps of the schedule."""
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        init = min(int(num_inference_steps * strength), num_inference_steps)
        start = max(num_inference_steps - init, 0)
        timesteps = self.scheduler.timesteps[start * self.scheduler.order :]
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start * self.scheduler.order)
        return timesteps

    # ------------------------------------------------------------------ call stages
    def encode_prompts(
        self, text: PromptInputs, garments: int, do_classifier_free_guidance: bool, device
    ) -> PromptEmbeddings:
        """The captions of each garment's description V, encoded (:meth:`encode_text`;
        precomputed embeddings as given)."""
        # No description (None, and no annotator to read one) is the empty text, as the
        # official demo allows and the command line's default.
        descriptions = ["" if d is None else d for d in _descriptions(text.garment_description)]
        if len(descriptions) not in (1, garments):
            raise UsageError(
                f"got {len(descriptions)} garment descriptions for {garments} garments"
            )
        descriptions = descriptions * garments if len(descriptions) == 1 else descriptions
        negatives = _descriptions(text.negative_prompt)
        if len(negatives) not in (1, garments):
            raise UsageError(f"got {len(negatives)} negative prompts for {garments} garments")
        prompt_embeds, pooled_prompt_embeds = text.prompt_embeds, text.pooled_prompt_embeds
        negative_prompt_embeds = text.negative_prompt_embeds
        negative_pooled_prompt_embeds = text.negative_pooled_prompt_embeds
        garment_prompt_embeds = text.garment_prompt_embeds
        if prompt_embeds is None:
            prompt_embeds, pooled_prompt_embeds = self.encode_text(
                [tryon_prompt(d) for d in descriptions], device
            )
        if garment_prompt_embeds is None:
            garment_prompt_embeds, _ = self.encode_text(
                [garment_prompt(d) for d in descriptions], device
            )
        if garment_prompt_embeds.shape[0] not in (1, garments):
            raise UsageError(
                f"garment_prompt_embeds has batch {garment_prompt_embeds.shape[0]}, "
                f"expected 1 or {garments}"
            )
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt_embeds, negative_pooled_prompt_embeds = self.encode_text(
                negatives, device
            )
        return PromptEmbeddings(
            prompt=prompt_embeds,
            pooled=pooled_prompt_embeds,
            negative=negative_prompt_embeds,
            negative_pooled=negative_pooled_prompt_embeds,
            garment=garment_prompt_embeds,
            descriptions=descriptions,
        )

    def prepare_clip_pixels(
        self, prepared: PreparedInputs, garment_clip_pixels: torch.Tensor | None, device
    ) -> torch.Tensor:
        """CLIP-normalised garment pixels: as given, or computed from the garment photos
        (:meth:`clip_preprocess`)."""
        if garment_clip_pixels is None:
            if prepared.garment_images is None:
                raise UsageError(
                    "tensor garment inputs need garment_clip_pixels (CLIP-normalised pixels)"
                )
            garment_clip_pixels = self.clip_preprocess(prepared.garment_images, device)
        return garment_clip_pixels.to(device, self.image_encoder.dtype)

    def describe_garments(
        self,
        annotator,
        garment_description: str | Sequence[str | None] | None,
        prepared: PreparedInputs,
        image_embeds: torch.Tensor,
    ) -> tuple[list[str | None], list]:
        """(V per garment, the annotator's tags per garment): the descriptions given, with each
        None read from its garment photo by ``annotator`` (a
        :class:`~idm_vton.annotation.GarmentAnnotator`). An annotator that reads this
        pipeline's image encoder (the probe) uses ``image_embeds``, the garments' CLIP
        embeddings of :meth:`encode_image_prompt`; another one reads the photos."""
        descriptions = _descriptions(garment_description)
        if len(descriptions) == 1:
            descriptions = descriptions * prepared.garments
        if len(descriptions) != prepared.garments:
            raise UsageError(
                f"got {len(descriptions)} garment descriptions for {prepared.garments} garments"
            )
        wanted = [i for i, d in enumerate(descriptions) if d is None]
        tags: list = [None] * prepared.garments
        if wanted:
            if annotator.reads_embeddings_of(self.image_encoder):
                read = annotator.describe_embeddings(image_embeds[wanted])
            else:
                images = prepared.garment_images or _to_pil(prepared.garment)
                read = annotator.describe_batch([images[i] for i in wanted])
            for i, garment_tags in zip(wanted, read, strict=True):
                descriptions[i], tags[i] = garment_tags.description, garment_tags
        return descriptions, tags

    def tryon_conditioning(
        self,
        prompts: PromptEmbeddings,
        image_prompt: tuple[torch.Tensor, torch.Tensor],
        condition: torch.Tensor,
        rows: BatchLayout,
        height: int,
        width: int,
        do_classifier_free_guidance: bool,
    ) -> TryonConditioning:
        """TryonNet's caption, added (pooled text + size), IP-Adapter and condition-channel
        inputs, one row per TryonNet row: ``[uncond ; cond]`` with guidance."""
        device, dtype = self._execution_device, self.unet.dtype

        def per_row(t: torch.Tensor) -> torch.Tensor:
            return rows.expand(t.to(device=device, dtype=dtype))

        uncond_tokens, cond_tokens = image_prompt
        text, pooled, tokens = (
            per_row(prompts.prompt),
            per_row(prompts.pooled),
            per_row(cond_tokens),
        )
        if do_classifier_free_guidance:
            text = torch.cat([per_row(prompts.negative), text])
            pooled = torch.cat([per_row(prompts.negative_pooled), pooled])
            tokens = torch.cat([per_row(uncond_tokens), tokens])
            condition = torch.cat([condition, condition])
        size = torch.tensor([height, width, 0, 0, height, width], device=device, dtype=dtype)
        return TryonConditioning(text, pooled, size.expand(text.shape[0], -1), tokens, condition)

    def _rows_on_device(
        self, prepared: PreparedInputs, rows: BatchLayout
    ) -> tuple[torch.Tensor, ...]:
        """Person in [-1, 1], mask and pose, one row per sample, on the execution device."""
        person, mask, pose = (
            t.to(self._execution_device).repeat_interleave(rows.per_person, 0)
            for t in (prepared.person, prepared.mask, prepared.pose)
        )
        return 2.0 * person - 1.0, mask, pose

    def prepare_latents(
        self,
        prepared: PreparedInputs,
        rows: BatchLayout,
        timesteps: torch.Tensor,
        strength: float,
        generator,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The initial latents: given, pure noise (strength 1), or the encoded person noised to
        the first timestep (``scheduler.add_noise``; strength < 1)."""
        device = self._execution_device
        height, width = prepared.person.shape[-2:]
        f = self.vae_scale_factor
        shape = (rows.batch, self.vae.config.latent_channels, height // f, width // f)
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise UsageError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
            if not torch.isfinite(latents).all():
                raise UsageError("latents hold non-finite values (NaN or inf)")
            return latents.to(device=device, dtype=torch.float32)
        noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        if strength >= 1.0:
            return noise * self.scheduler.init_noise_sigma
        init_image, _, _ = self._rows_on_device(prepared, rows)
        image_latents = self._vae_encode(init_image, generator).float()
        return self.scheduler.add_noise(image_latents, noise, timesteps[:1].repeat(shape[0]))

    def prepare_condition_latents(
        self, prepared: PreparedInputs, rows: BatchLayout, generator
    ) -> torch.Tensor:
        """TryonNet's condition channels ``[mask 1 | masked person 4 | DensePose 4]`` (paper
        Sec. 3.2), one row per sample, VAE posterior samples drawn from ``generator``."""
        init_image, mask, pose = self._rows_on_device(prepared, rows)
        size = (mask.shape[-2] // self.vae_scale_factor, mask.shape[-1] // self.vae_scale_factor)
        mask_latent = F.interpolate(mask, size=size, mode="nearest")
        masked_latents = self._vae_encode(init_image * (mask < 0.5), generator)
        pose_latents = self._vae_encode(2.0 * pose - 1.0, generator)
        return torch.cat([mask_latent, masked_latents, pose_latents], dim=1).to(self.unet.dtype)

    def start_garment_branch(
        self,
        prepared: PreparedInputs,
        prompts: PromptEmbeddings,
        rows: BatchLayout,
        timesteps: torch.Tensor,
        generator,
        cache: GarmentCache | None,
        strength: float,
    ) -> GarmentSteps:
        """Draw the garment latents' posterior noise from ``generator`` and start the
        :attr:`garment_branch` (which encodes the garment and runs GarmentNet as it decides).
        ``cache`` defaults to :attr:`garment_cache`."""
        device = self._execution_device
        garment_text = prompts.garment.to(device=device, dtype=self.unet.dtype)
        pixels = 2.0 * prepared.garment.to(device) - 1.0
        garment = GarmentInputs(
            pixels=pixels,
            text=garment_text.expand(rows.garments, -1, -1),
            noise=self.draw_garment_noise(rows.garments, *pixels.shape[-2:], generator),
            row_index=rows.garment_index,
            timesteps=timesteps,
            descriptions=prompts.descriptions,
            num_inference_steps=self.scheduler.num_inference_steps,
            strength=strength,
            cache=cache if cache is not None else self.garment_cache,
        )
        return self.garment_branch.start(self, garment)

    def denoise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        conditioning: TryonConditioning,
        garment: GarmentSteps,
        guidance_scale: float,
        generator=None,
        callback_on_step_end: StepCallback | None = None,
        callback_tensor_inputs: Sequence[str] = ("latents",),
    ) -> torch.Tensor:
        """The denoising loop: per step the garment features, one TryonNet pass on
        ``[uncond ; cond]`` (through :attr:`garment_branch`), classifier-free guidance and
        the scheduler step, then ``callback_on_step_end`` with the tensors
        ``callback_tensor_inputs`` names (diffusers' convention). Raises
        :class:`NonFiniteOutputError` on NaN/inf latents."""
        self._guidance_scale = guidance_scale
        self._num_timesteps = len(timesteps)
        tensor_inputs = list(callback_tensor_inputs)
        dtype = self.unet.dtype
        # Stochastic samplers draw from the generator; deterministic ones (UniPC) take none.
        takes_generator = "generator" in inspect.signature(self.scheduler.step).parameters
        step_kwargs = {"generator": generator} if takes_generator else {}
        try:
            with self.progress_bar(total=len(timesteps)) as progress:
                for i, t in enumerate(timesteps):
                    if self.interrupt:  # diffusers' convention: the remaining steps are skipped
                        progress.update()
                        continue
                    # Read every step: a callback may turn guidance off (diffusers' CFG cut-off).
                    do_cfg = self.do_classifier_free_guidance
                    conditioning = _conditioning_rows(conditioning, latents.shape[0], do_cfg)
                    null_rows = latents.shape[0] if do_cfg else 0
                    features = garment.features(i, t)
                    model_input = torch.cat([latents] * 2) if do_cfg else latents
                    model_input = self.scheduler.scale_model_input(model_input, t)
                    model_input = torch.cat([model_input.to(dtype), conditioning.condition], dim=1)
                    noise_pred = self.garment_branch.predict_noise(
                        self, model_input, t, conditioning, features, null_rows
                    ).float()
                    if do_cfg:
                        uncond, cond = noise_pred.chunk(2)
                        noise_pred = uncond + self.guidance_scale * (cond - uncond)
                    latents = self.scheduler.step(
                        noise_pred, t, latents, return_dict=False, **step_kwargs
                    )[0]
                    if not torch.isfinite(latents).all():
                        raise NonFiniteOutputError(
                            f"non-finite values in the latents at timestep {int(t)}: "
                            f"{self.non_finite_cause()}"
                        )
                    if callback_on_step_end is not None:
                        latents, conditioning = self._run_step_callback(
                            callback_on_step_end, tensor_inputs, i, t, latents, conditioning
                        )
                    progress.update()
        finally:
            self.garment_store.clear()
        return latents

    def _run_step_callback(self, callback, names, i, t, latents, conditioning):
        """Call ``callback(self, i, t, {name: tensor})`` and take back what it returns:
        ``latents``, and the TryonNet caption (``prompt_embeds``), pooled caption
        (``add_text_embeds``) and size conditioning (``add_time_ids``) under the names of
        diffusers' SDXL pipelines, so its callbacks (e.g. the CFG cut-off) work here."""
        values = {
            "latents": latents,
            "prompt_embeds": conditioning.text,
            "add_text_embeds": conditioning.pooled,
            "add_time_ids": conditioning.time_ids,
        }
        update = callback(self, i, t, {name: values[name] for name in names}) or {}
        latents = update.get("latents", latents)
        conditioning = dataclasses.replace(
            conditioning,
            text=update.get("prompt_embeds", conditioning.text),
            pooled=update.get("add_text_embeds", conditioning.pooled),
            time_ids=update.get("add_time_ids", conditioning.time_ids),
        )
        return latents, conditioning

    @property
    def guidance_scale(self) -> float:
        """The current call's guidance scale (a step callback may change it)."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether guidance runs: a scale above 1."""
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        """The denoising steps of the current call (after ``strength``)."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` (e.g. in a step callback) to skip the remaining steps;
        the call then decodes the latents as they are."""
        return self._interrupt

    def decode_latents(
        self,
        latents: torch.Tensor,
        prepared: PreparedInputs,
        rows: BatchLayout,
        output_type: str = "pil",
        paste_back: bool = True,
    ) -> list[Image.Image] | np.ndarray | torch.Tensor:
        """The final latents as ``output_type`` (``"latent"``: as they are), decoded and pasted
        back into the photos; frees offloaded models. Raises :class:`NonFiniteOutputError`."""
        if output_type == "latent":
            self.maybe_free_model_hooks()
            return latents
        decoded = self._vae_decode(latents).float()
        self.maybe_free_model_hooks()
        if not torch.isfinite(decoded).all():
            raise NonFiniteOutputError(
                f"non-finite values in the decoded image: {self.non_finite_cause()}"
            )
        return self.image_processor.postprocess(
            decoded, prepared, output_type, paste_back, rows.per_person
        )

    def non_finite_cause(self) -> str:
        """What made the computation overflow, as far as can be told once it has: weights that
        are NaN/inf themselves (a damaged checkpoint), fp16's narrow range, or a guidance scale
        far outside its useful range (the difference of two noise predictions amplified past
        fp32). Only the fp16 case is helped by another ``--dtype``, so only it says so."""
        damaged = [
            _COMPONENT_NAMES.get(name, name)
            for name, module in self.components.items()
            if isinstance(module, torch.nn.Module)
            and any(not torch.isfinite(p).all() for p in module.parameters())
        ]
        if damaged:
            return (
                f"the model's weights hold NaN/inf values ({', '.join(damaged)}): the checkpoint "
                "is damaged; download or convert it again"
            )
        if self.unet.dtype == torch.float16 or self.vae.dtype == torch.float16:
            return "fp16 overflowed (its range ends at 65504): use --dtype bf16 or fp32"
        guidance_scale = getattr(self, "_guidance_scale", None)
        if guidance_scale is not None and guidance_scale > _USEFUL_GUIDANCE:
            return (
                f"guidance scale {guidance_scale:g} is far too large (the model is used at 1 to "
                "10; the reference uses 2)"
            )
        return f"in {str(self.unet.dtype).removeprefix('torch.')}: check the inputs and model"

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        person_image,
        garment_image,
        mask_image,
        pose_image,
        garment_description: str | Sequence[str] | None = None,
        negative_prompt: str = NEGATIVE_PROMPT,
        num_inference_steps: int = NUM_INFERENCE_STEPS,
        guidance_scale: float = GUIDANCE_SCALE,
        strength: float = 1.0,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        garment_generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        garment_prompt_embeds: torch.Tensor | None = None,
        garment_clip_pixels: torch.Tensor | None = None,
        paste_back: bool = True,
        crop_margin: float = 0.1,
        auto_crop: bool = False,
        output_type: str = "pil",
        return_dict: bool = True,
        garment_cache: GarmentCache | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        garment_annotator=None,
    ) -> TryOnPipelineOutput | tuple:
        """Render each person wearing the garment (the stages: see the module docstring).

        Args:
            person_image, garment_image, mask_image, pose_image: photo(s) of the person (path,
                PIL, uint8 array; any size and aspect), the in-shop garment photo(s) (one shared
                by all people or one per person), inpainting mask(s) (white = re-generate) and
                DensePose rendering(s) (the photo's framing); or tensors in [0, 1] at H x W.
            garment_description, negative_prompt: the garment text V (captions "model is wearing
                V" for TryonNet, "a photo of V" for GarmentNet) and the unconditional caption;
                ``prompt_embeds`` ... ``garment_prompt_embeds`` give them precomputed (no text
                encoders needed) and ``garment_clip_pixels`` the CLIP-normalised garment pixels.
            num_inference_steps, guidance_scale, strength: sampling (the reference's 30, 2.0 and
                1.0 by default: :mod:`idm_vton.defaults`);
                ``height`` x ``width``: the work size, multiples of 8 (default 1024 x 768 for
                SDXL); ``num_images_per_prompt``: samples per person.
            generator: the only source of randomness; ``latents``: initial noise (B, 4, H/8, W/8).
            garment_generator: when given, the garment latents' VAE posterior noise is drawn from
                it (a list: one per garment) and ``generator`` is not advanced by that draw, so a
                garment's latent does not depend on the people it is batched with.
            paste_back, crop_margin: the full photo with the render pasted inside the mask
                (default; image inputs only) or the raw H x W render; margin around the mask.
            auto_crop: render the largest H:W box centred in the photo and paste the whole box
                back, as the official demo's auto-crop does (``is_checked_crop``), instead of a
                box around the mask pasted back inside the mask
                (:func:`~idm_vton.pipelines.image_processor.centred_region`).
            output_type: "pil", "np" or "pt" (floats in [0, 1]), or "latent".
            garment_cache: a :class:`~idm_vton.pipelines.garment_cache.GarmentCache` of GarmentNet
                features (default ``self.garment_cache``); same result.
            callback_on_step_end, callback_on_step_end_tensor_inputs: diffusers' convention:
                ``callback_on_step_end(pipe, step_index, timestep, callback_kwargs)`` after every
                step, ``callback_kwargs`` holding the tensors named (any of
                :attr:`_callback_tensor_inputs`, default ``latents``); a returned dict replaces
                them. A diffusers ``PipelineCallback`` (e.g. ``SDXLCFGCutoffCallback``) names its
                own. Setting ``pipe._guidance_scale`` there changes guidance from the next step
                on; ``pipe._interrupt = True`` skips the remaining steps; raising stops the call.
            garment_annotator: a :class:`~idm_vton.annotation.GarmentAnnotator` that reads V
                from the garment photo for every garment whose description is None (the
                paper's image annotator); the probe reuses this call's CLIP image embedding.
                The V used is in the output's ``garment_descriptions`` (and the tags in
                ``garment_tags``).
        """
        height = self.default_height if height is None else height
        width = self.default_width if width is None else width
        callback_inputs = _callback_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        self._interrupt = False
        text = PromptInputs(
            garment_description=garment_description,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            garment_prompt_embeds=garment_prompt_embeds,
        )
        self.check_inputs(
            num_inference_steps,
            guidance_scale,
            strength,
            height,
            width,
            num_images_per_prompt,
            output_type,
            text,
            annotate=garment_annotator is not None,
        )
        device, do_cfg = self._execution_device, guidance_scale > 1.0
        self._guidance_scale = guidance_scale  # for the messages of non_finite_cause

        # 1. Images -> tensors at H x W, and the regions to paste back into.
        prepared = self.prepare_inputs(
            person_image,
            garment_image,
            mask_image,
            pose_image,
            height,
            width,
            crop_margin,
            auto_crop,
        )
        rows = BatchLayout(prepared.people, prepared.garments, num_images_per_prompt)

        # 2. The garment image prompt, V read from the garment where asked, the captions.
        clip_pixels = self.prepare_clip_pixels(prepared, garment_clip_pixels, device)
        image_prompt, image_embeds = self.encode_image_prompt(clip_pixels, return_image_embeds=True)
        garment_tags = None
        if garment_annotator is not None:
            descriptions, garment_tags = self.describe_garments(
                garment_annotator, garment_description, prepared, image_embeds
            )
            text = dataclasses.replace(text, garment_description=descriptions)
        prompts = self.encode_prompts(text, rows.garments, do_cfg, device)

        # 3. Timesteps and initial latents.
        timesteps = self.get_timesteps(num_inference_steps, strength, device)
        latents = self.prepare_latents(prepared, rows, timesteps, strength, generator, latents)

        # 4. Condition latents, then the garment (VAE posterior draws in the reference's order).
        condition = self.prepare_condition_latents(prepared, rows, generator)
        garment_generator = generator if garment_generator is None else garment_generator
        garment = self.start_garment_branch(
            prepared, prompts, rows, timesteps, garment_generator, garment_cache, strength
        )
        conditioning = self.tryon_conditioning(
            prompts, image_prompt, condition, rows, height, width, do_cfg
        )

        # 5. Denoising loop.
        latents = self.denoise(
            latents,
            timesteps,
            conditioning,
            garment,
            guidance_scale,
            generator,
            callback_on_step_end,
            callback_inputs,
        )

        # 6. Decode and paste back.
        images = self.decode_latents(latents, prepared, rows, output_type, paste_back)
        if not return_dict:
            return (images,)
        return TryOnPipelineOutput(images, prompts.descriptions, garment_tags)


def _callback_inputs(callback, names) -> list[str]:
    """The tensor names a step callback is given: a diffusers ``PipelineCallback``'s own, else
    ``names``, each one of :attr:`TryOnPipeline._callback_tensor_inputs`."""
    names = list(getattr(callback, "tensor_inputs", None) or names or ())
    unknown = [n for n in names if n not in TryOnPipeline._callback_tensor_inputs]
    if unknown:
        raise UsageError(
            f"callback_on_step_end_tensor_inputs: {', '.join(map(repr, unknown))} not available; "
            f"choose from {', '.join(TryOnPipeline._callback_tensor_inputs)}"
        )
    return names


def _conditioning_rows(conditioning, batch: int, do_cfg: bool):
    """``conditioning`` with the rows one step needs: all ``[uncond ; cond]`` rows with guidance,
    else the ``cond`` half (guidance turned off during the call)."""
    if do_cfg:
        return conditioning

    def cond_half(t: torch.Tensor | None) -> torch.Tensor | None:
        return t[-batch:] if t is not None and t.shape[0] == 2 * batch else t

    return dataclasses.replace(
        conditioning,
        text=cond_half(conditioning.text),
        pooled=cond_half(conditioning.pooled),
        time_ids=cond_half(conditioning.time_ids),
        image_tokens=cond_half(conditioning.image_tokens),
        condition=cond_half(conditioning.condition),
    )


def _component_dtypes(dtype) -> dict[str, torch.dtype]:
    """``from_pretrained``'s dtype as ``{component or "default": dtype}``."""
    if dtype is None:
        return {}
    if isinstance(dtype, torch.dtype):
        return {"default": dtype}
    if isinstance(dtype, dict):
        unknown = sorted(set(dtype) - set(_COMPONENT_NAMES) - {"default"})
        bad = [k for k, v in dtype.items() if not isinstance(v, torch.dtype)]
        if unknown or bad:
            raise TypeError(
                f"dtype dict: unknown component(s) {unknown} or non-dtype value(s) for {bad}; "
                f"keys are 'default' and {', '.join(_COMPONENT_NAMES)}"
            )
        return dict(dtype)
    raise TypeError(f"dtype must be a torch.dtype or a dict of them, got {type(dtype).__name__}")


def _device_of_map(device_map) -> torch.device | None:
    """The one device ``device_map`` names, or None; splitting strategies are refused."""
    if device_map is None:
        return None
    try:
        return torch.device(device_map)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(
            f"device_map {device_map!r} is not supported: TryOnPipeline runs both UNets at "
            "every step, so it is placed on one device (device_map='cuda', or .to(device)); "
            "for less memory use enable_model_cpu_offload() or enable_two_phase_garment()"
        ) from None


def _processor_store(unet: UNet2DConditionModel, kind: type) -> GarmentFeatureStore | None:
    """The store of ``unet``'s garment processors of class ``kind``, if it has any."""
    stores = [p.store for p in unet.attn_processors.values() if isinstance(p, kind)]
    return stores[0] if stores else None


def _descriptions(garment_description) -> list[str | None]:
    if isinstance(garment_description, (list, tuple)):
        return list(garment_description)
    return [garment_description]
