"""``idm-vton customize``: fine-tune TryonNet's decoder attention on one photo (paper Sec. 3.3).

For an in-the-wild photo of a person *already wearing* the garment, the paper fine-tunes only the
attention layers of TryonNet's up-blocks (the decoder) on that single person-garment pair with the
training objective, then generates. Here the result is a small weight delta that loads on top of
the base checkpoint (SPEC section 5):

* **which tensors**: in every ``up_blocks.*.attentions.*.transformer_blocks.*`` the self-attention
  ``attn1`` (which also attends over the garment tokens) and the cross-attention ``attn2``:
  ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` (weights and biases). The IP-Adapter key/value
  projections ``attn2.processor.to_k_ip/to_v_ip`` are left out by default
  (``--tune-ip-adapter`` adds them): they map the constant image tokens of the one garment, whose
  effect the tuned ``attn2.to_q`` (shared by the text and image branches) already adapts, and on
  SDXL they would add 173 M parameters to the delta's 483 M.
* **full** (default): the delta stores ``tuned - base`` for each tuned tensor (``--delta-dtype``,
  fp16 by default: differences are small, so their rounding error is far below the weights');
* **lora** (``--method lora --lora-rank r``): each tuned linear layer gets ``W + (alpha/r) B A``
  (``B`` zero-initialised) through ``torch.nn.utils.parametrize``; the delta stores ``A`` and ``B``.
  No extra dependency.

The file format, the base fingerprint and applying a delta to a pipeline are loading, in
:mod:`idm_vton.loaders.customization`; this module is the tuning loop.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import torch

from ..enums import CustomizationMethod, DType, MixedPrecision
from ..errors import CustomizationError
from ..loaders.customization import FORMAT, VERSION, base_fingerprint, target_tensors
from ..options import option

__all__ = ["CustomizeConfig", "LoraDelta", "customization_targets", "customize", "load_base"]

_ATTN = re.compile(
    r"^up_blocks\.\d+\.attentions\.\d+\.transformer_blocks\.\d+\."
    r"(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)$"
)
_IP = re.compile(
    r"^up_blocks\.\d+\.attentions\.\d+\.transformer_blocks\.\d+\.attn2\.processor\.to_[kv]_ip\.\d+$"
)


@dataclass
class CustomizeConfig:
    """Options of a customization run (defaults: the full variant, 100 steps)."""

    steps: int = option(100, "optimizer steps on the one photo (default %(default)s)")
    lr: float | None = option(None, "default 1e-5 (full), 1e-4 (lora)")
    method: CustomizationMethod = option(CustomizationMethod.FULL, "what the delta stores")
    lora_rank: int = option(8)
    lora_alpha: float | None = option(None, "default: the rank")
    tune_ip_adapter: bool = option(False, "also tune attn2's IP key/value projections")
    batch_size: int = option(1, "noise draws per step")
    # Decay would pull untouched directions of the base towards 0.
    weight_decay: float = option(0.0, flag=None)
    max_grad_norm: float = option(1.0, flag=None)
    snr_gamma: float | None = option(None)
    seed: int = option(0, shared="seed")
    delta_dtype: DType = option(DType.FP16, "precision of the stored delta")
    base_name: str = option("", flag=None)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.method = CustomizationMethod.parse(self.method, "method", CustomizationError)
        self.delta_dtype = DType.parse(self.delta_dtype, "delta dtype", CustomizationError)
        if self.steps < 1 or self.batch_size < 1 or self.lora_rank < 1:
            raise CustomizationError("steps, batch size and LoRA rank must be >= 1")
        if self.lr is None:
            self.lr = 1e-5 if self.method is CustomizationMethod.FULL else 1e-4

    @property
    def lora_scale(self) -> float:
        return (self.lora_alpha or self.lora_rank) / self.lora_rank


# ---------------------------------------------------------------------------------- targets
def customization_targets(unet: torch.nn.Module, tune_ip_adapter: bool = False) -> list[str]:
    """Names of the tuned ``nn.Linear`` modules of TryonNet's up-block attention, in order."""
    names = []
    for name, module in unet.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if _ATTN.match(name) or (tune_ip_adapter and _IP.match(name)):
            names.append(name)
    if not names:
        raise CustomizationError("this UNet has no up-block attention layers to customize")
    return names


# ---------------------------------------------------------------------------------- LoRA
class LoraDelta(torch.nn.Module):
    """``weight -> weight + scale * B @ A`` (Hu et al. 2021), as a ``parametrize`` hook."""

    def __init__(self, out_features: int, in_features: int, rank: int, scale: float, generator):
        super().__init__()
        a = torch.randn(rank, in_features, generator=generator) / math.sqrt(in_features)
        self.lora_A = torch.nn.Parameter(a)
        self.lora_B = torch.nn.Parameter(torch.zeros(out_features, rank))
        self.scale = scale

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        delta = self.lora_B @ self.lora_A
        return weight + (self.scale * delta).to(weight.dtype)


# ---------------------------------------------------------------------------------- tuning
def load_base(model: str, precision: MixedPrecision | str, device):
    """The base pipeline to tune: TryonNet in fp32 (it is trained), the frozen networks in the
    autocast dtype of ``precision`` (fp32 for ``no``), everything on ``device``. ``model`` is a
    hub id, a folder or ``"tiny"``."""
    precision = MixedPrecision.parse(precision, "mixed precision", CustomizationError)
    if model == "tiny":
        from ..testing.tiny import tiny_pipeline

        pipe = tiny_pipeline()
    else:
        from ..pipelines.tryon import TryOnPipeline

        pipe = TryOnPipeline.from_pretrained(model, torch_dtype=torch.float32)
    if precision is not MixedPrecision.NO:
        frozen = (pipe.garment_unet, pipe.image_encoder, pipe.text_encoder, pipe.text_encoder_2)
        for module in frozen:
            if module is not None:
                module.to(precision.torch_dtype)
    return pipe.to(device)


def _example_batch(pipe, person, garment, mask, pose, description, height, width, device):
    from ..data.captions import garment_prompt, tryon_prompt

    prep = pipe.prepare_inputs(person, garment, mask, pose, height, width, 0.1)
    if prep.garment_images is None:
        raise CustomizationError("give the customization inputs as images (paths or PIL)")
    return {
        "person": prep.person[:1],
        "garment": prep.garment[:1],
        "mask": prep.mask[:1],
        "pose": prep.pose[:1],
        "garment_clip": pipe.clip_pixels(prep.garment_images[:1], device).float().cpu(),
        "caption": [tryon_prompt(description)],
        "garment_caption": [garment_prompt(description)],
    }


def customize(
    pipe,
    person,
    garment,
    mask,
    pose,
    description: str,
    config: CustomizeConfig | None = None,
    height: int | None = None,
    width: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> dict:
    """Tune ``pipe.unet`` in place on one person photo; returns the customization (see
    :func:`save_customization`).

    ``person`` shows the person already wearing ``garment``; ``mask`` marks the garment area,
    ``pose`` is the DensePose image, ``description`` the garment text V. Inputs are prepared as
    at inference (same crop and work size), so the tuned model sees what it will generate.
    """
    from tqdm.auto import tqdm

    from .objective import (
        Conditioner,
        ObjectiveConfig,
        TryonTrainable,
        diffusion_loss,
        step_generator,
        training_noise_scheduler,
    )

    config = config or CustomizeConfig()
    unet = pipe.unet
    device = pipe._execution_device
    height = height or pipe.default_height
    width = width or pipe.default_width
    if unet.dtype != torch.float32:
        raise CustomizationError(
            "customization trains in fp32: load the pipeline in fp32 (autocast does the rest)"
        )
    modules = customization_targets(unet, config.tune_ip_adapter)
    base = target_tensors(unet, modules)
    fingerprint, stats = base_fingerprint(base)
    base_values = {k: v.detach().clone() for k, v in base.items()}

    batch = _example_batch(pipe, person, garment, mask, pose, description, height, width, device)
    batch = {k: v * config.batch_size if isinstance(v, list) else v.repeat(
        config.batch_size, *[1] * (v.ndim - 1)) for k, v in batch.items()}  # fmt: skip

    for module in (pipe.unet, pipe.garment_unet, pipe.image_projection, pipe.image_encoder,
                   pipe.vae, pipe.text_encoder, pipe.text_encoder_2):  # fmt: skip
        if module is not None:
            module.requires_grad_(False)
    lora: dict[str, LoraDelta] = {}
    if config.method is CustomizationMethod.FULL:
        params = list(base.values())
        for p in params:
            p.requires_grad_(True)
    else:
        from torch.nn.utils import parametrize

        generator = torch.Generator().manual_seed(config.seed)
        for name in modules:
            linear = unet.get_submodule(name)
            hook = LoraDelta(
                linear.out_features, linear.in_features, config.lora_rank, config.lora_scale,
                generator,
            ).to(device)  # fmt: skip
            parametrize.register_parametrization(linear, "weight", hook)
            lora[name] = hook
        params = [p for hook in lora.values() for p in hook.parameters()]

    model = TryonTrainable(unet, pipe.image_projection)
    was_training = unet.training
    unet.train()
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    conditioner = Conditioner(pipe, device)
    scheduler = training_noise_scheduler(pipe.scheduler)
    objective = ObjectiveConfig(snr_gamma=config.snr_gamma)
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else torch.autocast(device.type, enabled=False)
    )
    losses = []
    try:
        for step in tqdm(range(config.steps), desc="customize", disable=not progress):
            with autocast:
                loss = diffusion_loss(
                    model, conditioner, scheduler, batch, step_generator(config.seed, step),
                    objective,
                )  # fmt: skip
            loss.backward()
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            pipe.garment_store.clear()
            losses.append(float(loss.detach()))
    finally:
        unet.train(was_training)
        for p in params:
            p.requires_grad_(False)

    tensors: dict[str, torch.Tensor] = {}
    if config.method is CustomizationMethod.FULL:
        for name, value in base.items():
            tensors[name] = (value.detach() - base_values[name]).cpu()
    else:
        from torch.nn.utils import parametrize

        for name, hook in lora.items():
            tensors[f"{name}.lora_A"] = hook.lora_A.detach().cpu()
            tensors[f"{name}.lora_B"] = hook.lora_B.detach().cpu()
            # Merge W + s B A into the plain weight: the tuned pipeline is an ordinary UNet again.
            parametrize.remove_parametrizations(
                unet.get_submodule(name), "weight", leave_parametrized=True
            )
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "method": config.method.value,
        "base_name": config.base_name,
        "base_fingerprint": fingerprint,
        "base_stats": json.dumps(stats),
        "lora_scale": repr(config.lora_scale),
        "lora_rank": str(config.lora_rank),
        "steps": str(config.steps),
        "lr": repr(config.lr),
        "seed": str(config.seed),
        "tuned_modules": json.dumps(modules),
        "final_loss": repr(losses[-1]),
    }
    return {"tensors": tensors, "metadata": metadata, "losses": losses}
