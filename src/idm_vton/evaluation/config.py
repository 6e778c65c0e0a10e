"""The options of ``idm-vton evaluate`` and ``idm-vton evaluate-annotator``, as config dataclasses.

Plain values only: this module imports neither torch nor the metric networks, so the command
line builds its ``--help`` from these fields without loading them. Each option is checked here,
where it is built (one :class:`~idm_vton.errors.UsageError` line for a bad value).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..annotation.datasets import AnnotatorDataOptions
from ..annotation.tags import DEFAULT_MIN_SCORE
from ..enums import Choice
from ..errors import UsageError
from ..options import check_seed, option

__all__ = [
    "DEFAULT_METRICS",
    "DEFAULT_RESOLUTION",
    "AnnotatorEvaluationConfig",
    "EvaluationConfig",
    "Metric",
    "parse_metrics",
    "parse_resolution",
]

#: (height, width) of VITON-HD's and DressCode's test images.
DEFAULT_RESOLUTION = (1024, 768)


class Metric(Choice):
    """Metrics :func:`~idm_vton.evaluation.evaluate.evaluate_folders` can compute."""

    LPIPS = "lpips"
    SSIM = "ssim"
    FID = "fid"
    KID = "kid"
    CLIP_I = "clip_i"


DEFAULT_METRICS = tuple(m.value for m in Metric)


def parse_metrics(text: str) -> tuple[str, ...]:
    """``"fid,kid"`` -> ``("fid", "kid")``; refuses unknown names."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in DEFAULT_METRICS]
    if unknown:
        raise UsageError(
            f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(DEFAULT_METRICS)}"
        )
    return names


def parse_resolution(text: str) -> tuple[int, int]:
    """``"1024x768"`` -> ``(1024, 768)`` (height, width)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(
            f"resolution must be HEIGHTxWIDTH such as 1024x768, got {text!r}"
        ) from None
    return height, width


@dataclass(frozen=True)
class EvaluationConfig:
    """What :func:`~idm_vton.evaluation.evaluate.evaluate` computes and how (the options of
    ``idm-vton evaluate``)."""

    pred_dir: Path = option(help="folder of generated try-on images", positional=True)
    gt_dir: Path = option(
        help="folder of ground-truth photos, paired with PRED_DIR by file name",
        positional=True,
    )
    garments_dir: Path | None = option(
        None,
        "folder of the in-shop garment images, for CLIP-I (without it CLIP-I is skipped, and "
        "the result says so)",
    )
    pairs_file: Path | None = option(
        None,
        "VITON-HD style 'person.jpg garment.jpg' lines naming each output's garment (unpaired "
        "setting); by default the garment is read from the output's name",
    )
    metrics: tuple[str, ...] = option(
        DEFAULT_METRICS,
        f"comma-separated subset of {','.join(DEFAULT_METRICS)} (default: all)",
        parse=parse_metrics,
    )
    weights_dir: Path = option(
        Path("weights"),
        "folder with the metric weight files, see docs/evaluation.md (default: ./weights)",
    )
    resolution: tuple[int, int] = option(
        DEFAULT_RESOLUTION,
        "HEIGHTxWIDTH every image is brought to first, PIL bicubic (default: 1024x768)",
        parse=parse_resolution,
    )
    batch_size: int = option(4, "images per forward pass; lower it if memory runs out (default 4)")
    device: str | None = option(None, shared="device")
    lpips_net: str = option(
        "alex", "LPIPS backbone: alex (the paper's) or vgg (default alex)", choices=["alex", "vgg"]
    )
    clip_model: Path | None = option(
        None, "CLIP vision model folder for CLIP-I (default: WEIGHTS_DIR/clip)"
    )
    kid_subsets: int = option(100, "KID: number of random subsets averaged (default 100)")
    kid_subset_size: int = option(
        1000, "KID: images per subset, at most the number of images (default 1000)"
    )
    seed: int = option(0, "seed of the KID subsets (default 0)", shared="seed")
    verify_weights: bool = option(
        True,
        "do not check the weight files against their published SHA-256 (the result records it)",
    )
    progress: bool = option(True, "hide the progress bar")

    def __post_init__(self) -> None:
        if self.kid_subsets < 1:
            raise UsageError(f"--kid-subsets must be >= 1, got {self.kid_subsets}")
        if self.kid_subset_size < 2:
            raise UsageError(f"--kid-subset-size must be >= 2, got {self.kid_subset_size}")
        check_seed(self.seed)


@dataclass(frozen=True, kw_only=True)
class AnnotatorEvaluationConfig(AnnotatorDataOptions):
    """The options of ``idm-vton evaluate-annotator``."""

    annotator: str | None = option(None, shared="annotator")
    min_score: float = option(DEFAULT_MIN_SCORE, shared="min_score")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.min_score <= 1.0:
            raise UsageError(f"--min-score must be in [0, 1], got {self.min_score}")
