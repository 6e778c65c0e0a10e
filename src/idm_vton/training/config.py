"""Typed training configuration (STYLE section 7): dataclasses, closed sets as ``str`` enums.

Every option of ``idm-vton train`` is a :class:`TrainConfig` field written once, with its help;
the ``idm-vton train`` options are generated from the fields.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from ..enums import Choice, DatasetKind, GarmentCategory, MixedPrecision, parse_dataset_category
from ..errors import TrainConfigError
from ..options import option

__all__ = [
    "DatasetKind",
    "MixedPrecision",
    "OptimizerKind",
    "ReportTo",
    "SdxlSources",
    "TrainConfig",
    "TrainConfigError",
]


class OptimizerKind(Choice):
    ADAMW = "adamw"
    ADAMW8BIT = "adamw8bit"


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
    data: Path | None = option(None, "dataset root folder", group=_DATA, required=True)
    model: str | None = option(
        None,
        "starting checkpoint: hub id, folder (published or this project's layout), or 'tiny'",
        group=_MODEL,
    )
    sdxl: SdxlSources | None = option(None, flag=None)
    dataset: DatasetKind = option(DatasetKind.VITONHD, "dataset layout", group=_DATA)
    category: GarmentCategory | None = option(
        None,
        "DressCode category: upper_body, lower_body, dresses or all (default all)",
        group=_DATA,
        parse=parse_dataset_category,
        metavar="{upper_body,lower_body,dresses,all}",
    )
    resolution: tuple[int, int] = option(
        (1024, 768), "training size (default %(default)s)", group=_DATA, metavar=("H", "W")
    )
    augment: bool = option(
        True, "turn the training augmentations off (flip, colour jitter, scale, shift)", group=_DATA
    )
    skip_bad_samples: bool = option(False, "log and skip unreadable samples", group=_DATA)
    num_workers: int = option(0, "data loader workers (default 0)", group=_DATA)
    batch_size: int = option(1, "per process (default 1)", group=_OPTIM)
    gradient_accumulation_steps: int = option(1, group=_OPTIM)
    lr: float = option(1e-5, "learning rate (default %(default)s)", group=_OPTIM)
    weight_decay: float = option(1e-2, "(default %(default)s)", group=_OPTIM)
    adam_beta1: float = option(0.9, flag=None)
    adam_beta2: float = option(0.999, flag=None)
    adam_epsilon: float = option(1e-8, flag=None)
    max_grad_norm: float = option(
        1.0,
        "clip the global gradient norm (default %(default)s; <= 0: no clipping)",
        group=_OPTIM,
    )
    optimizer: OptimizerKind = option(OptimizerKind.ADAMW, group=_OPTIM)
    lr_scheduler: str = option(
        "constant",
        "diffusers schedule: constant, constant_with_warmup, linear, cosine (default %(default)s)",
        group=_OPTIM,
    )
    lr_warmup_steps: int = option(0, group=_OPTIM)
    mixed_precision: MixedPrecision | None = option(
        None,
        "autocast precision (default: the accelerate config's mixed_precision, else no)",
        group=_OPTIM,
    )
    gradient_checkpointing: bool = option(False, group=_OPTIM)
    allow_tf32: bool = option(False, "TF32 matmuls on Ampere+ GPUs", group=_OPTIM)
    snr_gamma: float | None = option(None, "min-SNR-gamma weighting (e.g. 5)", group=_OPTIM)
    noise_offset: float = option(0.0, group=_OPTIM)
    condition_dropout: float = option(
        0.0,
        "per-condition drop probability for CFG training (default 0 = off, as the paper)",
        group=_OPTIM,
    )
    seed: int = option(0, group=_OPTIM, shared="seed")
    max_steps: int | None = option(None, "optimizer steps (overrides --epochs)", group=_LENGTH)
    epochs: int | None = option(None, "epochs when --max-steps is not given", group=_LENGTH)
    stop_after: int | None = option(
        None,
        "stop (and checkpoint) after this many steps; the LR schedule still spans --max-steps "
        "(for time-limited jobs: continue with --resume latest)",
        group=_LENGTH,
    )
    checkpointing_steps: int | None = option(None, group=_LENGTH)
    checkpoints_total_limit: int | None = option(None, group=_LENGTH)
    resume: str | None = option(
        None, "'latest' (in --output) or a checkpoint-<step> folder", group=_LENGTH
    )
    validation_steps: int | None = option(None, "render every N steps", group=_LENGTH)
    num_validation_images: int = option(1, group=_LENGTH)
    validation_inference_steps: int = option(20, group=_LENGTH)
    report_to: ReportTo = option(ReportTo.AUTO, group=_LENGTH)
    text_cache_size: int = option(512, "cached prompt embeddings", group=_LENGTH)
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
        if self.lr <= 0 or self.weight_decay < 0:
            raise TrainConfigError("--lr must be > 0 and --weight-decay >= 0")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise TrainConfigError(f"--snr-gamma must be > 0, got {self.snr_gamma}")
        if not 0.0 <= self.condition_dropout <= 1.0:
            raise TrainConfigError("--condition-dropout must be in [0, 1]")
        if self.noise_offset < 0:
            raise TrainConfigError("--noise-offset must be >= 0")

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
