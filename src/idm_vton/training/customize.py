"""``idm-vton customize``: fine-tune TryonNet's decoder attention on one photo (paper Sec. 3.3).

For an in-the-wild photo of a person *already wearing* the garment, the paper fine-tunes only the
attention layers of TryonNet's up-blocks (the decoder) on that single person-garment pair with the
training objective, then generates. Here the result is a small weight delta that loads on top of
the base checkpoint (paper Sec. 3.3):

* **which tensors**: in every ``up_blocks.*.attentions.*.transformer_blocks.*`` the self-attention
  ``attn1`` (which also attends over the garment tokens) and the cross-attention ``attn2``:
  ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` (weights and biases). The IP-Adapter key/value
  projections ``attn2.processor.to_k_ip/to_v_ip`` are left out by default
  (``--tune-ip-adapter`` adds them): they map the constant image tokens of the one garment, whose
  effect the tuned ``attn2.to_q`` (shared by the text and image branches) already adapts, and on
  SDXL they would add 173 M parameters to the delta's 483 M.
* **full** (default): the delta stores ``tuned - base`` for each tuned tensor (``--delta-dtype``,
  fp16 by default: differences are small, so their rounding error is far below the weights');
* **lora** (``--method lora --lora-rank r``): a PEFT LoRA adapter on each tuned linear layer,
  ``W + (alpha/r) B A`` (``B`` zero-initialised); the file is a diffusers/PEFT LoRA file
  (``unet.<module>.lora_A.weight`` / ``lora_B.weight``) that diffusers' ``load_lora_weights`` also
  reads.

Both variants run the training step of :class:`~idm_vton.training.objective.TrainingStep`, the
one :class:`~idm_vton.training.trainer.Trainer` runs (noise, timesteps, min-SNR weighting).

The file format, the base fingerprint and applying a delta to a pipeline are loading, in
:mod:`idm_vton.loaders.customization`; this module is the tuning loop.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from functools import partial

import torch

from ..enums import CustomizationMethod, MixedPrecision
from ..errors import CustomizationError
from ..images import check_work_size
from ..loaders.customization import (
    FORMAT,
    LORA_PREFIX,
    VERSION,
    base_fingerprint,
    lora_config,
    lora_file_metadata,
    lora_key,
    merge_lora,
    target_tensors,
)
from .config import CustomizeConfig

__all__ = ["CustomizeConfig", "customization_targets", "customize", "load_base"]

_ATTN = re.compile(
    r"^up_blocks\.\d+\.attentions\.\d+\.transformer_blocks\.\d+\."
    r"(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)$"
)
_IP = re.compile(
    r"^up_blocks\.\d+\.attentions\.\d+\.transformer_blocks\.\d+\.attn2\.processor\.to_[kv]_ip\.\d+$"
)
#: PEFT adapter name while tuning (the adapter is merged and removed afterwards).
_ADAPTER = "idm_vton_customization"


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


# ---------------------------------------------------------------------------------- tuning
def load_base(model: str, precision: MixedPrecision | str, device):
    """The base pipeline to tune: TryonNet in fp32 (it is trained), the frozen networks in the
    autocast dtype of ``precision`` (fp32 for ``no``), everything on ``device``. ``model`` is a
    hub id, a folder or ``"tiny"``."""
    precision = MixedPrecision.parse(precision, "mixed precision", CustomizationError)
    if model == "tiny":
        from ..pipelines.loading import tiny_pipeline

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


def _example_batch(
    pipe, person, garment, mask, pose, description: str, height: int, width: int, repeat: int
) -> dict:
    """The one training example, prepared as at inference (same crop and work size), repeated
    ``repeat`` times (noise draws per step)."""
    from ..data.captions import garment_prompt, tryon_prompt

    prep = pipe.prepare_inputs(person, garment, mask, pose, height, width, 0.1)
    if prep.garment_images is None:
        raise CustomizationError("give the customization inputs as images (paths or PIL)")
    clip = pipe.clip_preprocess(prep.garment_images[:1], pipe._execution_device).float().cpu()
    tensors = {"person": prep.person[:1], "garment": prep.garment[:1], "mask": prep.mask[:1],
               "pose": prep.pose[:1], "garment_clip": clip}  # fmt: skip
    batch = {k: v.repeat(repeat, *[1] * (v.ndim - 1)) for k, v in tensors.items()}
    batch["caption"] = [tryon_prompt(description)] * repeat
    batch["garment_caption"] = [garment_prompt(description)] * repeat
    return batch


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
    """Tune ``pipe.unet`` in place on one person photo; returns the customization
    (``{"tensors", "metadata", "losses"}``, written by
    :func:`~idm_vton.loaders.customization.save_customization`).

    ``person`` shows the person already wearing ``garment``; ``mask`` marks the garment area,
    ``pose`` is the DensePose image, ``description`` the garment text V. Inputs are prepared as
    at inference (same crop and work size), so the tuned model sees what it will generate.
    Afterwards ``pipe.unet`` is a plain UNet with the tuned weights (a LoRA is merged).
    """
    config = config or CustomizeConfig()
    unet = pipe.unet
    if unet.dtype != torch.float32:
        raise CustomizationError(
            "customization trains in fp32: load the pipeline in fp32 (autocast does the rest)"
        )
    modules = customization_targets(unet, config.tune_ip_adapter)
    fingerprint, stats = base_fingerprint(target_tensors(unet, modules))
    height = pipe.default_height if height is None else height
    width = pipe.default_width if width is None else width
    check_work_size(height, width, pipe.vae_scale_factor)
    batch = _example_batch(
        pipe, person, garment, mask, pose, description, height, width, config.batch_size
    )
    for module in (pipe.unet, pipe.garment_unet, pipe.image_projection, pipe.image_encoder,
                   pipe.vae, pipe.text_encoder, pipe.text_encoder_2):  # fmt: skip
        if module is not None:
            module.requires_grad_(False)
    run = partial(_tune, pipe, batch=batch, config=config, autocast_dtype=autocast_dtype,
                  progress=progress)  # fmt: skip
    if config.method is CustomizationMethod.FULL:
        tensors, losses = _tune_full(unet, modules, run)
        metadata = _full_metadata(config, modules)
    else:
        lora = lora_config(modules, config.lora_rank, config.lora_alpha or config.lora_rank)
        tensors, losses = _tune_lora(unet, lora, config.seed, run)
        metadata = lora_file_metadata(lora)
    metadata |= {
        "method": config.method.value,
        "base_name": config.base_name,
        "base_fingerprint": fingerprint,
        "base_stats": json.dumps(stats),
        "steps": str(config.steps),
        "lr": repr(config.lr),
        "seed": str(config.seed),
        "final_loss": repr(losses[-1]),
    }
    return {"tensors": tensors, "metadata": metadata, "losses": losses}


def _full_metadata(config: CustomizeConfig, modules: list[str]) -> dict[str, str]:
    """The full delta's own metadata (format version 1; the LoRA fields are informational)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "lora_scale": repr(config.lora_scale),
        "lora_rank": str(config.lora_rank),
        "tuned_modules": json.dumps(modules),
    }


def _tune_full(
    unet: torch.nn.Module, modules: list[str], run: Callable[[list], list[float]]
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Tune the target weights and biases themselves; the delta is ``tuned - base``."""
    tuned = target_tensors(unet, modules)
    base = {name: value.detach().clone() for name, value in tuned.items()}
    losses = run(list(tuned.values()))
    return {name: (value.detach() - base[name]).cpu() for name, value in tuned.items()}, losses


def _tune_lora(
    unet: torch.nn.Module, lora: dict, seed: int, run: Callable[[list], list[float]]
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Tune a PEFT LoRA adapter on the target layers; returns its factors in the file's keys.

    ``lora_A`` starts from ``randn / sqrt(in_features)`` drawn from ``seed`` (PEFT's own init
    would draw from torch's global RNG), ``lora_B`` at zero, so the tuned UNet starts as the base.
    Afterwards the adapter is removed and ``W + (alpha / r) B A`` merged into the plain weights by
    the loader's own :func:`~idm_vton.loaders.customization.merge_lora`, as ``tryon`` applies it.
    """
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    assert not getattr(unet, "peft_config", None), "the UNet already carries a PEFT adapter"
    with torch.random.fork_rng(devices=[]):
        unet.add_adapter(LoraConfig(**lora), adapter_name=_ADAPTER)
    try:
        generator = torch.Generator().manual_seed(seed)
        params = []
        for module in lora["target_modules"]:
            layer = unet.get_submodule(module)
            a, b = layer.lora_A[_ADAPTER].weight, layer.lora_B[_ADAPTER].weight
            with torch.no_grad():
                a.copy_(torch.randn(a.shape, generator=generator) / math.sqrt(a.shape[1]))
            assert not b.any(), "PEFT initialises lora_B at zero"
            params += [a, b]
        losses = run(params)
        state = get_peft_model_state_dict(unet, adapter_name=_ADAPTER)
    finally:
        unet.unload_lora()  # the original nn.Linear layers, base weights untouched
    tensors = {f"{LORA_PREFIX}.{key}": value.detach().cpu() for key, value in state.items()}
    assert set(tensors) == {lora_key(m, f) for m in lora["target_modules"] for f in "AB"}
    merge_lora(unet, tensors, lora)
    return tensors, losses


def _tune(
    pipe,
    params: list[torch.nn.Parameter],
    *,
    batch: dict,
    config: CustomizeConfig,
    autocast_dtype: torch.dtype | None,
    progress: bool,
) -> list[float]:
    """``config.steps`` optimizer steps of the training objective (the training step
    :class:`~.objective.TrainingStep` that ``Trainer`` runs) on the one example; returns the
    losses. Only ``params`` are trained; the UNet's train/eval mode is restored afterwards."""
    from ..progress import progress_bar
    from .objective import ObjectiveConfig, TrainingStep, TryonTrainable

    unet = pipe.unet
    device = pipe._execution_device
    model = TryonTrainable(unet, pipe.image_projection)
    step = TrainingStep(
        pipe, model, device, ObjectiveConfig(snr_gamma=config.snr_gamma), config.seed
    )
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    clip = None
    if config.max_grad_norm > 0:
        clip = partial(torch.nn.utils.clip_grad_norm_, params, config.max_grad_norm)
    autocast = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    losses = []
    was_training = unet.training
    unet.train()
    for p in params:
        p.requires_grad_(True)
    try:
        for index in progress_bar(range(config.steps), desc="customize", show=progress):
            with autocast:
                loss = step.loss(batch, index)
            step.update(loss, optimizer, clip_gradients=clip)
            losses.append(float(loss.detach()))
    finally:
        unet.train(was_training)
        for p in params:
            p.requires_grad_(False)
    return losses
