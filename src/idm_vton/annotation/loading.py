"""Which annotator to use (``--annotator probe|zero-shot|PATH``, or the default) and loading it.

The default is the model's probe when the model has one, else the zero-shot annotator:

* the probe reuses the CLIP embedding the try-on computes anyway (no download, near-zero cost)
  and is trained on the dataset's own tag vocabulary, but it exists only for a model someone
  trained one for: ``MODEL/annotator/probe.safetensors`` (a folder or hub repository; the tiny
  model has a random one built in);
* the zero-shot annotator works with any model, at the price of a ~600 MB download on first use
  and one forward pass of its own image-text model per garment.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.tags import LabelSets
from ..errors import AnnotatorError, UsageError
from .annotator import GarmentAnnotator
from .encoder import GarmentEncoder, load_garment_encoder
from .probe import ProbeAnnotator
from .tags import DEFAULT_MIN_SCORE
from .zero_shot import DEFAULT_ZERO_SHOT_MODEL, ZERO_SHOT_MODEL_ENV, ZeroShotAnnotator

__all__ = [
    "ANNOTATOR_KINDS",
    "MODEL_PROBE_FILE",
    "AnnotatorChoice",
    "find_model_probe",
    "load_annotator",
    "resolve_annotator",
]

ANNOTATOR_KINDS = ("probe", "zero-shot")
#: Where a model folder or hub repository keeps its probe.
MODEL_PROBE_FILE = "annotator/probe.safetensors"
_TINY_PROBE_SEED = 0


@dataclass(frozen=True)
class AnnotatorChoice:
    """The annotator to load: ``kind`` ``"probe"`` (from ``probe_file``, or the tiny model's
    random probe when that is None) or ``"zero-shot"``."""

    kind: str
    probe_file: Path | None = None

    @property
    def identity(self) -> str:
        """What the loaded annotator's ``identity`` will be (for records made before loading)."""
        if self.kind == "zero-shot":
            import os

            folder = os.environ.get(ZERO_SHOT_MODEL_ENV)
            model = DEFAULT_ZERO_SHOT_MODEL
            if folder:
                return f"zero-shot:{Path(folder).expanduser()}"
            return f"zero-shot:{model.repo_id}@{model.revision[:8]}"
        if self.probe_file is None:
            return f"probe:random-{_TINY_PROBE_SEED}"
        digest = hashlib.sha256(self.probe_file.read_bytes()).hexdigest()[:12]
        return f"probe:{self.probe_file.name}#{digest}"


def find_model_probe(model: str) -> Path | None:
    """``MODEL/annotator/probe.safetensors`` of a checkpoint folder or hub repository, if it has
    one (a hub repository that cannot be asked, offline and not cached, counts as none)."""
    path = Path(model).expanduser()
    if path.is_dir():
        probe = path / MODEL_PROBE_FILE
        return probe if probe.is_file() else None
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        return None
    from huggingface_hub import hf_hub_download

    from ..loaders.hub import cache_only_reason

    offline = cache_only_reason() is not None  # then the cache only, without retries
    try:
        return Path(hf_hub_download(model, MODEL_PROBE_FILE, local_files_only=offline))
    except Exception:  # noqa: BLE001 - not there, or not reachable: no probe to use
        return None


def resolve_annotator(annotator: str | Path | None, model: str) -> AnnotatorChoice:
    """The annotator ``--annotator`` names for ``model`` (see the module docstring).

    ``"probe"``: the model's probe (refused when it has none); ``"zero-shot"``; a path: that
    probe file; None: the model's probe if it has one, else zero-shot.
    """
    if annotator == "zero-shot":
        return AnnotatorChoice("zero-shot")
    if annotator in ("probe", None):
        if model == "tiny":
            return AnnotatorChoice("probe")
        probe = find_model_probe(model)
        if probe is not None:
            return AnnotatorChoice("probe", probe)
        if annotator is None:
            return AnnotatorChoice("zero-shot")
        raise AnnotatorError(
            f"model {model} has no probe ({MODEL_PROBE_FILE}): train one with `idm-vton "
            "train-annotator --model ... --out FILE` and pass --annotator FILE, or use "
            "--annotator zero-shot"
        )
    path = Path(annotator).expanduser()
    if not path.is_file():
        raise UsageError(
            f"--annotator: {annotator!r} is not one of {', '.join(ANNOTATOR_KINDS)} nor a probe "
            "file"
        )
    return AnnotatorChoice("probe", path)


def load_annotator(
    annotator: str | Path | AnnotatorChoice | None = None,
    *,
    model: str = "yisol/IDM-VTON",
    pipe=None,
    encoder: GarmentEncoder | None = None,
    label_sets: LabelSets | None = None,
    min_score: float = DEFAULT_MIN_SCORE,
    device=None,
    dtype: torch.dtype | None = None,
) -> GarmentAnnotator:
    """The annotator ``annotator`` (:func:`resolve_annotator`) for ``model``, ready to describe.

    The probe runs on ``encoder``, else on the image encoder of ``pipe`` (a loaded
    :class:`~idm_vton.pipelines.tryon.TryOnPipeline`: one copy of the encoder serves both, and a
    try-on reuses the embedding it computes), else on ``model``'s image encoder loaded alone.
    The zero-shot model goes to ``device`` in ``dtype`` (default: ``pipe``'s device, fp32 on a
    CPU and the pipeline's dtype elsewhere). ``label_sets`` (default VITON-HD's) are the zero-shot
    and tiny probe's classes; a probe file brings its own.
    """
    choice = (
        annotator if isinstance(annotator, AnnotatorChoice) else resolve_annotator(annotator, model)
    )
    if pipe is not None:
        device = device or pipe._execution_device
        dtype = dtype or (pipe.image_encoder.dtype if torch.device(device).type != "cpu" else None)
    if choice.kind == "zero-shot":
        return ZeroShotAnnotator.from_pretrained(
            label_sets=label_sets, min_score=min_score, device=device, dtype=dtype
        )
    if encoder is None:
        if pipe is not None:
            encoder = GarmentEncoder.from_pipeline(pipe)
        else:
            encoder = load_garment_encoder(model, dtype or torch.float32, device or "cpu")
    if choice.probe_file is None:
        return ProbeAnnotator.random(encoder, label_sets, _TINY_PROBE_SEED, min_score)
    return ProbeAnnotator.load(choice.probe_file, encoder, min_score)
