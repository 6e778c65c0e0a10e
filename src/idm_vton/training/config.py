"""Typed training configuration (STYLE section 7): dataclasses, closed sets as ``str`` enums.

Every option of ``idm-vton train`` is a :class:`TrainConfig` field written once, with its help;
the ``idm-vton train`` options are generated from the fields.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from ..annotation.datasets import AnnotatorDataOptions
from ..enums import (
    Choice,
    CustomizationMethod,
    DatasetKind,
    DType,
    GarmentCategory,
    MixedPrecision,
    Split,
    parse_dataset_category,
)
from ..errors import CustomizationError, TrainConfigError, UsageError
from ..options import check_seed, option

__all__ = [
    "AnnotatorTrainingConfig",
    "CustomizeConfig",
    "DatasetKind",
    "LrSchedule",
    "MixedPrecision",
    "OptimizerKind",
    "ReportTo",
    "SdxlSources",
    "TrainConfig",
    "TrainConfigError",
]


class OptimizerKind(Choice):
    """The optimizer of ``idm-vton train``: AdamW, or bitsandbytes' 8-bit AdamW."""

    ADAMW = "adamw"
    ADAMW8BIT = "adamw8bit"


class LrSchedule(Choice):
    """Learning-rate schedules (diffusers' ``get_scheduler`` names that need no extra rule)."""

    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"
    LINEAR = "linear"
    COSINE = "cosine"
    COSINE_WITH_RESTARTS = "cosine_with_restarts"
    POLYNOMIAL = "polynomial"


class ReportTo(Choice):
    """Where training metrics go; ``auto`` = tensorboard when installed."""

    AUTO = "auto"
    TENSORBOARD = "tensorboard"
    NONE = "none"


_MODEL, _DATA, _OPTIM, _LENGTH = "model", "data", "optimisation", "length, checkpoints, logging"
_PATHS = "(with --init-from-sdxl)"


@dataclass(frozen=True)
class SdxlSources:
    """Where the ingredients of a from-scratch TryonNet are (paper Sec. 3.2)."""

    sdxl_inpainting: Path = option(help=f"diffusers folder of SDXL-inpainting-0.1 {_PATHS}")
    sdxl_base: Path = option(help=f"diffusers folder of SDXL base 1.0 {_PATHS}")
    ip_adapter: Path = option(help=f"ip-adapter-plus_sdxl_vit-h .bin/.safetensors {_PATHS}")
    image_encoder: Path = option(help=f"folder of the IP-Adapter CLIP ViT-H/14 {_PATHS}")


@dataclass
class TrainConfig:
    """Every option of ``idm-vton train``; defaults follow the paper's recipe (paper Sec. 3,
    docs/training.md)."""

    output: Path = option(help="output folder (checkpoints, logs)", group=_OPTIM)
    data: Path | None = option(
        None,
        "dataset root folder (VITON-HD or DressCode layout, see docs/training.md)",
        group=_DATA,
        required=True,
    )
    model: str | None = option(
        None,
        "starting checkpoint: hub id, folder (published or this project's layout), or 'tiny'",
        group=_MODEL,
    )
    sdxl: SdxlSources | None = option(None, flag=None)
    dataset: DatasetKind = option(
        DatasetKind.VITONHD, "dataset layout (default vitonhd)", group=_DATA
    )
    category: GarmentCategory | None = option(
        None,
        "DressCode category: upper_body, lower_body, dresses or all (default all)",
        group=_DATA,
        parse=parse_dataset_category,
        metavar="{upper_body,lower_body,dresses,all}",
    )
    resolution: tuple[int, int] = option(
        (1024, 768),
        "training size H W, multiples of 8 (default 1024 768)",
        group=_DATA,
        metavar=("H", "W"),
    )
    augment: bool = option(
        True,
        "turn the training augmentations off (random flip, colour jitter, scale and shift)",
        group=_DATA,
    )
    skip_bad_samples: bool = option(
        False, "log and skip unreadable samples instead of stopping", group=_DATA
    )
    num_workers: int = option(0, "data loader worker processes (default 0: none)", group=_DATA)
    batch_size: int = option(1, "samples per process and step (default 1)", group=_OPTIM)
    gradient_accumulation_steps: int = option(
        1, "micro-batches summed per optimizer step (default 1)", group=_OPTIM
    )
    lr: float = option(1e-5, "learning rate (default %(default)s)", group=_OPTIM)
    weight_decay: float = option(1e-2, "AdamW weight decay (default %(default)s)", group=_OPTIM)
    adam_beta1: float = option(0.9, flag=None)
    adam_beta2: float = option(0.999, flag=None)
    adam_epsilon: float = option(1e-8, flag=None)
    max_grad_norm: float = option(
        1.0,
        "clip the global gradient norm (default %(default)s; <= 0: no clipping)",
        group=_OPTIM,
    )
    optimizer: OptimizerKind = option(
        OptimizerKind.ADAMW,
        "adamw, or adamw8bit (needs bitsandbytes: pip install bitsandbytes) (default adamw)",
        group=_OPTIM,
    )
    lr_scheduler: LrSchedule = option(
        LrSchedule.CONSTANT, "learning-rate schedule (default constant)", group=_OPTIM
    )
    lr_warmup_steps: int = option(
        0,
        "steps of linear warm-up, for the *_with_warmup and decaying schedules (default 0)",
        group=_OPTIM,
    )
    mixed_precision: MixedPrecision | None = option(
        None,
        "autocast precision (default: the accelerate config's mixed_precision, else no)",
        group=_OPTIM,
    )
    gradient_checkpointing: bool = option(
        False,
        "recompute activations in the backward pass: much less memory, about a third slower",
        group=_OPTIM,
    )
    allow_tf32: bool = option(False, "TF32 matmuls on Ampere+ GPUs", group=_OPTIM)
    snr_gamma: float | None = option(
        None, "min-SNR-gamma loss weighting, e.g. 5 (default: off)", group=_OPTIM
    )
    noise_offset: float = option(
        0.0, "offset noise strength, e.g. 0.05 (default 0: off)", group=_OPTIM
    )
    condition_dropout: float = option(
        0.0,
        "per-condition drop probability for CFG training (default 0 = off, as the paper)",
        group=_OPTIM,
    )
    seed: int = option(0, group=_OPTIM, shared="seed")
    max_steps: int | None = option(None, "optimizer steps (overrides --epochs)", group=_LENGTH)
    epochs: int | None = option(
        None, "epochs when --max-steps is not given (default 1)", group=_LENGTH
    )
    stop_after: int | None = option(
        None,
        "stop (and checkpoint) after this many steps; the LR schedule still spans --max-steps "
        "(for time-limited jobs: continue with --resume latest)",
        group=_LENGTH,
    )
    checkpointing_steps: int | None = option(
        None, "write a checkpoint every N steps (default: at the end only)", group=_LENGTH
    )
    checkpoints_total_limit: int | None = option(
        None, "keep only the newest N checkpoints (default: keep all)", group=_LENGTH
    )
    resume: str | None = option(
        None, "'latest' (in --output) or a checkpoint-<step> folder", group=_LENGTH
    )
    validation_steps: int | None = option(
        None, "render validation images every N steps (default: never)", group=_LENGTH
    )
    num_validation_images: int = option(1, "images per validation (default 1)", group=_LENGTH)
    validation_inference_steps: int = option(
        20, "denoising steps of a validation image (default 20)", group=_LENGTH
    )
    report_to: ReportTo = option(
        ReportTo.AUTO,
        "where metrics go: auto (TensorBoard when installed), tensorboard or none (default auto)",
        group=_LENGTH,
    )
    text_cache_size: int = option(
        512, "prompt embeddings kept in memory, by caption (default 512; 0: none)", group=_LENGTH
    )
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        self.data = None if self.data is None else Path(self.data)
        self.dataset = DatasetKind.parse(self.dataset, "dataset", TrainConfigError)
        self.category = parse_dataset_category(self.category)
        self.optimizer = OptimizerKind.parse(self.optimizer, "optimizer", TrainConfigError)
        if self.mixed_precision is None:  # as `accelerate launch` was configured
            self.mixed_precision = os.environ.get("ACCELERATE_MIXED_PRECISION") or "no"
        self.mixed_precision = MixedPrecision.parse(
            self.mixed_precision, "mixed precision", TrainConfigError
        )
        self.report_to = ReportTo.parse(self.report_to, "--report-to", TrainConfigError)
        self.resolution = tuple(int(v) for v in self.resolution)
        if (self.model is None) == (self.sdxl is None):
            raise TrainConfigError("give either --model or --init-from-sdxl (with its four paths)")
        if self.data is None:
            raise TrainConfigError("--data is required")
        from ..images import MAX_WORK_SIDE  # the work-size rule of inference

        if len(self.resolution) != 2 or any(
            v < 16 or v % 8 or v > MAX_WORK_SIDE for v in self.resolution
        ):
            raise TrainConfigError(
                f"--resolution must be H W, multiples of 8 from 16 to {MAX_WORK_SIDE}, got "
                f"{self.resolution}"
            )
        positive = ("batch_size", "gradient_accumulation_steps", "num_validation_images")
        for name in positive:
            if getattr(self, name) < 1:
                raise TrainConfigError(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("max_steps", "epochs", "stop_after", "checkpointing_steps",
                     "checkpoints_total_limit", "validation_steps"):  # fmt: skip
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TrainConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        for name in ("num_workers", "lr_warmup_steps", "text_cache_size"):
            if getattr(self, name) < 0:
                raise TrainConfigError(f"--{name.replace('_', '-')} must be >= 0")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise TrainConfigError(f"--lr must be a number > 0, got {self.lr}")
        for name in ("weight_decay", "noise_offset"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise TrainConfigError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        if not math.isfinite(self.max_grad_norm):
            raise TrainConfigError(f"--max-grad-norm must be a number, got {self.max_grad_norm}")
        if self.snr_gamma is not None and not (
            math.isfinite(self.snr_gamma) and self.snr_gamma > 0
        ):
            raise TrainConfigError(f"--snr-gamma must be > 0, got {self.snr_gamma}")
        if not 0.0 <= self.condition_dropout <= 1.0:
            raise TrainConfigError("--condition-dropout must be in [0, 1]")
        self.lr_scheduler = LrSchedule.parse(self.lr_scheduler, "--lr-scheduler", TrainConfigError)
        check_seed(self.seed, error=TrainConfigError)

    def to_json(self) -> dict:
        """A JSON-able record of the run's options (written next to the checkpoints)."""

        def plain(v):
            if isinstance(v, Enum):
                return v.value
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            return v

        record = plain(asdict(self))
        record["category"] = record["category"] or "all"
        return record


@dataclass
class CustomizeConfig:
    """Options of a customization run, ``idm-vton customize`` (paper Sec. 3.3; defaults: the
    full variant, 100 steps)."""

    steps: int = option(100, "optimizer steps on the one photo (default %(default)s)")
    lr: float | None = option(None, "learning rate (default 1e-5 for full, 1e-4 for lora)")
    method: CustomizationMethod = option(
        CustomizationMethod.FULL,
        "what the file stores: full (the tuned weights' difference) or lora (low-rank factors, "
        "a diffusers LoRA file) (default full)",
    )
    lora_rank: int = option(8, "rank of the LoRA factors, with --method lora (default 8)")
    lora_alpha: float | None = option(
        None, "LoRA scale numerator: W + (alpha / rank) B A (default: the rank)"
    )
    tune_ip_adapter: bool = option(
        False, "also tune the IP-Adapter key/value projections of the cross-attention"
    )
    batch_size: int = option(1, "noise draws per step (default 1)")
    # Decay would pull untouched directions of the base towards 0.
    weight_decay: float = option(0.0, flag=None)
    max_grad_norm: float = option(1.0, flag=None)
    snr_gamma: float | None = option(None, "min-SNR-gamma loss weighting, e.g. 5 (default: off)")
    seed: int = option(0, shared="seed")
    delta_dtype: DType = option(
        DType.FP16, "precision of the stored difference or factors (default fp16)"
    )
    base_name: str = option("", flag=None)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.method = CustomizationMethod.parse(self.method, "method", CustomizationError)
        self.delta_dtype = DType.parse(self.delta_dtype, "delta dtype", CustomizationError)
        if self.steps < 1 or self.batch_size < 1 or self.lora_rank < 1:
            raise CustomizationError("steps, batch size and LoRA rank must be >= 1")
        if self.lr is None:
            self.lr = 1e-5 if self.method is CustomizationMethod.FULL else 1e-4
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise CustomizationError(f"--lr must be a number > 0, got {self.lr}")
        if self.lora_alpha is not None and not (
            math.isfinite(self.lora_alpha) and self.lora_alpha > 0
        ):
            raise CustomizationError(f"--lora-alpha must be a number > 0, got {self.lora_alpha}")
        if self.snr_gamma is not None and not (
            math.isfinite(self.snr_gamma) and self.snr_gamma > 0
        ):
            raise CustomizationError(f"--snr-gamma must be > 0, got {self.snr_gamma}")
        check_seed(self.seed, error=CustomizationError)

    @property
    def lora_scale(self) -> float:
        """``alpha / rank``, the factor of ``B A`` in ``W + (alpha / rank) B A``."""
        return (self.lora_alpha or self.lora_rank) / self.lora_rank


_FIT = "fitting"


@dataclass(frozen=True, kw_only=True)
class AnnotatorTrainingConfig(AnnotatorDataOptions):
    """The options of ``idm-vton train-annotator`` (the data options, then the fit's)."""

    split: Split = option(Split.TRAIN, "dataset split (default %(default)s)")
    out: Path = option(help="probe file to write (.safetensors)")
    iterations: int = option(300, "L-BFGS iterations (default %(default)s)", group=_FIT)
    weight_decay: float = option(
        1e-3, "L2 penalty on the heads' weights (default %(default)s)", group=_FIT
    )
    hidden: int = option(0, "hidden width of an MLP head; 0 (default): linear heads", group=_FIT)
    seed: int = option(
        0, "seed of an MLP head's initialisation (default 0)", group=_FIT, shared="seed"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iterations < 1:
            raise UsageError(f"--iterations must be >= 1, got {self.iterations}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UsageError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.hidden < 0:
            raise UsageError(f"--hidden must be >= 0, got {self.hidden}")
        check_seed(self.seed)
        if Path(self.out).suffix != ".safetensors":
            raise UsageError(f"--out must end in .safetensors, got '{Path(self.out).name}'")
