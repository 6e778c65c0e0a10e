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

The file's metadata names the base: the ``--model`` string and a fingerprint (SHA-256 of the base
values of the tuned tensors in fp32) plus per-tensor sums, so :func:`apply_customization` refuses
another base with a clear message and still accepts the same base loaded in bf16/fp16.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = [
    "CustomizationError",
    "CustomizationInfo",
    "CustomizeConfig",
    "add_arguments",
    "apply_customization",
    "base_fingerprint",
    "customization_targets",
    "customize",
    "run",
    "save_customization",
]

FORMAT = "idm-vton-customization"
VERSION = "1"
_ATTN = re.compile(
    r"^up_blocks\.\d+\.attentions\.\d+\.transformer_blocks\.\d+\."
    r"(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)$"
)
_IP = re.compile(
    r"^up_blocks\.\d+\.attentions\.\d+\.transformer_blocks\.\d+\.attn2\.processor\.to_[kv]_ip\.\d+$"
)
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class CustomizationError(ValueError):
    """A customization file that is unreadable or made for another base model."""


@dataclass
class CustomizeConfig:
    """Options of a customization run (defaults: the full variant, 100 steps)."""

    steps: int = 100
    lr: float | None = None  # 1e-5 (full) / 1e-4 (lora) when None
    method: str = "full"
    lora_rank: int = 8
    lora_alpha: float | None = None  # = rank when None
    tune_ip_adapter: bool = False
    batch_size: int = 1
    weight_decay: float = 0.0  # decay would pull untouched directions of the base towards 0
    max_grad_norm: float = 1.0
    snr_gamma: float | None = None
    seed: int = 0
    delta_dtype: str = "fp16"
    base_name: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in ("full", "lora"):
            raise CustomizationError(f"method must be full or lora, got {self.method!r}")
        if self.steps < 1 or self.batch_size < 1 or self.lora_rank < 1:
            raise CustomizationError("steps, batch size and LoRA rank must be >= 1")
        if self.delta_dtype not in _DTYPES:
            raise CustomizationError(f"delta dtype must be one of {', '.join(_DTYPES)}")
        if self.lr is None:
            self.lr = 1e-5 if self.method == "full" else 1e-4

    @property
    def lora_scale(self) -> float:
        return (self.lora_alpha or self.lora_rank) / self.lora_rank


@dataclass
class CustomizationInfo:
    """What a customization file holds and what applying it did."""

    method: str
    base_name: str
    fingerprint: str
    tensors: int
    parameters: int
    exact_base: bool


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


def _target_tensors(unet: torch.nn.Module, modules: Iterable[str]) -> dict[str, torch.Tensor]:
    out = {}
    for name in modules:
        linear = unet.get_submodule(name)
        out[f"{name}.weight"] = linear.weight
        if linear.bias is not None:
            out[f"{name}.bias"] = linear.bias
    return out


def base_fingerprint(tensors: dict[str, torch.Tensor]) -> tuple[str, dict[str, list[float]]]:
    """(SHA-256 of the fp32 values with names and shapes, per-tensor [sum, sum |x|] in fp64)."""
    digest = hashlib.sha256()
    stats = {}
    for name in sorted(tensors):
        value = tensors[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(value.shape)};".encode())
        digest.update(value.numpy().tobytes())
        v64 = value.double()
        stats[name] = [float(v64.sum()), float(v64.abs().sum())]
    return digest.hexdigest(), stats


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
    base = _target_tensors(unet, modules)
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
    if config.method == "full":
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
    if config.method == "full":
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
        "method": config.method,
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


def save_customization(customization: dict, path: str | Path, dtype: str = "fp16") -> Path:
    """Write a customization to ``path`` (safetensors, atomically)."""
    path = Path(path)
    if dtype not in _DTYPES:
        raise CustomizationError(f"delta dtype must be one of {', '.join(_DTYPES)}")
    tensors = {k: v.to(_DTYPES[dtype]).contiguous() for k, v in customization["tensors"].items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=customization["metadata"])
    tmp.replace(path)
    return path


def _stats_match(expected: dict[str, list[float]], tensors: dict[str, torch.Tensor]) -> bool:
    """Same base at another precision: per-tensor sums within bf16-rounding tolerance."""
    _, actual = base_fingerprint(tensors)
    for name, (s, a) in expected.items():
        s2, a2 = actual[name]
        tol = 1e-2 * a + 1e-6
        if abs(a - a2) > tol or abs(s - s2) > tol:
            return False
    return True


def apply_customization(pipe, path: str | Path, *, check_base: bool = True) -> CustomizationInfo:
    """Load a customization file onto ``pipe.unet`` (in place); refuse one made for another base.

    The base check compares the fingerprint stored in the file with the pipeline's current values
    of the tuned tensors (exact, or per-tensor sums within 1 % when the base was loaded in
    bf16/fp16). Apply to an unmodified base, once.
    """
    path = Path(path)
    if not path.is_file():
        raise CustomizationError(f"customization file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 - safetensors raises several kinds
        raise CustomizationError(f"{path} is not a readable safetensors file ({err})") from err
    if metadata.get("format") != FORMAT:
        raise CustomizationError(f"{path} is not an idm-vton customization file")
    method = metadata["method"]
    modules = json.loads(metadata["tuned_modules"])
    unet = pipe.unet
    try:
        current = _target_tensors(unet, modules)
    except AttributeError as err:
        raise CustomizationError(
            f"{path} tunes layers this model does not have ({err}): it was made for another base"
        ) from err
    fingerprint, _ = base_fingerprint(current)
    exact = fingerprint == metadata["base_fingerprint"]
    if check_base and not exact:
        expected = json.loads(metadata["base_stats"])
        shapes_ok = set(expected) == set(current)
        if not (shapes_ok and _stats_match(expected, current)):
            base = metadata.get("base_name") or "an unnamed model"
            raise CustomizationError(
                f"{path.name} was made for another base model ({base}, fingerprint "
                f"{metadata['base_fingerprint'][:12]}); this model's TryonNet attention weights "
                f"have fingerprint {fingerprint[:12]}. Load the base it was made for."
            )
    with torch.no_grad():
        if method == "full":
            for name, value in current.items():
                value.add_(
                    tensors[name].to(device=value.device, dtype=torch.float32).to(value.dtype)
                )
            parameters = sum(t.numel() for t in tensors.values())
        elif method == "lora":
            scale = float(metadata["lora_scale"])
            for name in modules:
                weight = current[f"{name}.weight"]
                a = tensors[f"{name}.lora_A"].to(device=weight.device, dtype=torch.float32)
                b = tensors[f"{name}.lora_B"].to(device=weight.device, dtype=torch.float32)
                weight.copy_((weight.float() + scale * (b @ a)).to(weight.dtype))
            parameters = sum(t.numel() for t in tensors.values())
        else:
            raise CustomizationError(f"{path}: unknown customization method {method!r}")
    return CustomizationInfo(
        method=method,
        base_name=metadata.get("base_name", ""),
        fingerprint=metadata["base_fingerprint"],
        tensors=len(tensors),
        parameters=parameters,
        exact_base=exact,
    )


# ---------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``idm-vton customize``."""
    parser.add_argument("--model", default="yisol/IDM-VTON", help="base: hub id, folder or 'tiny'")
    parser.add_argument("--person", required=True, help="photo of the person wearing the garment")
    parser.add_argument("--garment", required=True, help="in-shop photo of the garment")
    parser.add_argument("--mask", required=True, help="inpaint mask, white = garment area")
    parser.add_argument("--pose", required=True, help="DensePose image of the person")
    parser.add_argument("--description", required=True, help="garment text V")
    parser.add_argument("--out", required=True, type=Path, help="delta file (.safetensors)")
    parser.add_argument("--method", default="full", choices=["full", "lora"])
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-alpha", type=float, default=None, help="default: the rank")
    parser.add_argument(
        "--tune-ip-adapter", action="store_true", help="also tune attn2's IP key/value projections"
    )
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=None, help="default 1e-5 (full), 1e-4 (lora)")
    parser.add_argument("--batch-size", type=int, default=1, help="noise draws per step")
    parser.add_argument("--snr-gamma", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--delta-dtype", default="fp16", choices=list(_DTYPES))
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument(
        "--mixed-precision",
        default=None,
        choices=["no", "bf16", "fp16"],
        help="autocast dtype (default bf16 on GPU, no on CPU); weights stay fp32",
    )


def run(args: argparse.Namespace) -> int:
    """``idm-vton customize``: tune, write the delta, print a summary."""
    from ..testing.tiny import tiny_pipeline

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = args.mixed_precision or ("bf16" if device.type == "cuda" else "no")
    for flag in ("person", "garment", "mask", "pose"):
        if not Path(getattr(args, flag)).is_file():
            raise CustomizationError(f"--{flag}: file not found: {getattr(args, flag)}")
    if args.out.suffix != ".safetensors":
        raise CustomizationError(f"--out must end in .safetensors, got {args.out.name}")
    if args.model == "tiny":
        pipe = tiny_pipeline()
    else:
        from ..pipelines.tryon import TryOnPipeline

        pipe = TryOnPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    autocast_dtype = None
    if precision != "no":
        autocast_dtype = _DTYPES[precision]
        for module in (
            pipe.garment_unet,
            pipe.image_encoder,
            pipe.text_encoder,
            pipe.text_encoder_2,
        ):
            if module is not None:
                module.to(autocast_dtype)
    pipe.to(device)
    config = CustomizeConfig(
        steps=args.steps,
        lr=args.lr,
        method=args.method,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        tune_ip_adapter=args.tune_ip_adapter,
        batch_size=args.batch_size,
        snr_gamma=args.snr_gamma,
        seed=args.seed,
        delta_dtype=args.delta_dtype,
        base_name=args.model,
    )
    result = customize(
        pipe,
        args.person,
        args.garment,
        args.mask,
        args.pose,
        args.description,
        config,
        height=args.height,
        width=args.width,
        autocast_dtype=autocast_dtype,
    )
    path = save_customization(result, args.out, dtype=args.delta_dtype)
    n = sum(t.numel() for t in result["tensors"].values())
    total = sum(p.numel() for p in pipe.unet.parameters())
    print(
        f"wrote {path}: {len(result['tensors'])} tensors, {n} values "
        f"({100 * n / total:.2f} % of TryonNet), loss {result['losses'][0]:.4f} -> "
        f"{result['losses'][-1]:.4f}"
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="idm_vton.training.customize")
    add_arguments(parser)
    try:
        sys.exit(run(parser.parse_args()))
    except ValueError as err:
        print(f"idm_vton.training.customize: error: {err}", file=sys.stderr)
        sys.exit(2)
