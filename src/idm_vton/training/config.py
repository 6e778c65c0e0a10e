"""Typed training configuration (STYLE section 7): dataclasses, closed sets as ``str`` enums."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

__all__ = [
    "DatasetKind",
    "MixedPrecision",
    "OptimizerKind",
    "SdxlSources",
    "TrainConfig",
    "TrainConfigError",
]


class TrainConfigError(ValueError):
    """An invalid training option (reported on one line by the CLI)."""


class _Choice(str, Enum):
    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value, what: str):
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise TrainConfigError(f"unknown {what} {value!r}; expected one of: {valid}") from None


class DatasetKind(_Choice):
    VITONHD = "vitonhd"
    DRESSCODE = "dresscode"


class OptimizerKind(_Choice):
    ADAMW = "adamw"
    ADAMW8BIT = "adamw8bit"


class MixedPrecision(_Choice):
    NO = "no"
    FP16 = "fp16"
    BF16 = "bf16"


@dataclass(frozen=True)
class SdxlSources:
    """Where the ingredients of a from-scratch TryonNet are (paper Sec. 3.2)."""

    sdxl_inpainting: Path
    sdxl_base: Path
    ip_adapter: Path
    image_encoder: Path


@dataclass
class TrainConfig:
    """Every option of ``idm-vton train``; defaults follow the paper's recipe (SPEC section 4)."""

    output: Path
    data: Path | None = None
    model: str | None = None
    sdxl: SdxlSources | None = None
    dataset: DatasetKind = DatasetKind.VITONHD
    category: str = "all"
    resolution: tuple[int, int] = (1024, 768)
    augment: bool = True
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    lr: float = 1e-5
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    optimizer: OptimizerKind = OptimizerKind.ADAMW
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    mixed_precision: MixedPrecision = MixedPrecision.NO
    gradient_checkpointing: bool = False
    snr_gamma: float | None = None
    noise_offset: float = 0.0
    condition_dropout: float = 0.0
    max_steps: int | None = None
    epochs: int | None = None
    stop_after: int | None = None
    checkpointing_steps: int | None = None
    checkpoints_total_limit: int | None = None
    resume: str | None = None
    validation_steps: int | None = None
    num_validation_images: int = 1
    validation_inference_steps: int = 20
    report_to: str = "auto"
    skip_bad_samples: bool = False
    seed: int = 0
    num_workers: int = 0
    text_cache_size: int = 512
    allow_tf32: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        self.data = None if self.data is None else Path(self.data)
        self.dataset = DatasetKind.parse(self.dataset, "dataset")
        self.optimizer = OptimizerKind.parse(self.optimizer, "optimizer")
        self.mixed_precision = MixedPrecision.parse(self.mixed_precision, "mixed precision")
        self.resolution = tuple(int(v) for v in self.resolution)
        if (self.model is None) == (self.sdxl is None):
            raise TrainConfigError("give either --model or --init-from-sdxl (with its four paths)")
        if self.data is None:
            raise TrainConfigError("--data is required")
        if len(self.resolution) != 2 or any(v < 16 or v % 8 for v in self.resolution):
            raise TrainConfigError(
                f"--resolution must be H W, multiples of 8 and >= 16, got {self.resolution}"
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
        if self.report_to not in ("auto", "tensorboard", "none"):
            raise TrainConfigError("--report-to must be auto, tensorboard or none")

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

        return plain(asdict(self))
