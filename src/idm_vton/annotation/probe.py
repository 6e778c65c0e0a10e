"""The probe annotator: one small head per attribute on the try-on pipeline's own CLIP embedding.

The pipeline already runs the IP-Adapter's CLIP ViT-H/14 image encoder on every garment (paper
Sec. 3.2); the probe reads that encoder's projected image embedding with one linear head (or a
one-hidden-layer MLP) per attribute, so inside a try-on it costs a few matrix products and no
download. ``idm-vton train-annotator`` fits it on a dataset's tags
(:mod:`idm_vton.training.annotator`).

A probe file is safetensors: the heads and the embedding's standardisation (``feature_mean``,
``feature_std``) as tensors; in the metadata ``format`` (``idm-vton-garment-probe``),
``version``, ``label_sets`` (name and labels, JSON), ``hidden``, ``embedding_dim``, the encoder's
fingerprint (``encoder_fingerprint``, ``encoder_stats``; :mod:`.encoder`), ``encoder_name`` and
``training`` (JSON, informative). :meth:`ProbeAnnotator.load` refuses a file whose label sets are
not this package's label sets of that name, whose tensors do not fit them, or that was trained
on another image encoder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..data.tags import LABEL_SET_NAMES, LabelSets, load_label_sets
from ..errors import AnnotatorError
from ..files import atomic_path
from .annotator import GarmentAnnotator, GarmentImage, rgb_images
from .encoder import EncoderFingerprint, GarmentEncoder
from .tags import DEFAULT_MIN_SCORE, GarmentTags

__all__ = ["PROBE_FORMAT", "PROBE_VERSION", "ProbeAnnotator", "ProbeHeads"]

PROBE_FORMAT = "idm-vton-garment-probe"
PROBE_VERSION = "1"
_REQUIRED_METADATA = (
    "label_sets",
    "hidden",
    "embedding_dim",
    "encoder_fingerprint",
    "encoder_stats",
)


class ProbeHeads(torch.nn.Module):
    """Standardise the embedding, then one head per attribute: ``Linear(D, K)``, or with
    ``hidden`` > 0 ``Linear(D, hidden) -> GELU -> Linear(hidden, K)``. Returns logits."""

    def __init__(self, embedding_dim: int, classes: Mapping[str, int], hidden: int = 0) -> None:
        super().__init__()
        self.embedding_dim, self.hidden = int(embedding_dim), int(hidden)
        self.register_buffer("feature_mean", torch.zeros(embedding_dim))
        self.register_buffer("feature_std", torch.ones(embedding_dim))
        self.heads = torch.nn.ModuleDict(
            {attribute: self._head(count) for attribute, count in classes.items()}
        )

    def _head(self, count: int) -> torch.nn.Module:
        if self.hidden <= 0:
            return torch.nn.Linear(self.embedding_dim, count)
        return torch.nn.Sequential(
            torch.nn.Linear(self.embedding_dim, self.hidden),
            torch.nn.GELU(),
            torch.nn.Linear(self.hidden, count),
        )

    def forward(self, embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        features = (embeddings.float() - self.feature_mean) / self.feature_std
        return {attribute: head(features) for attribute, head in self.heads.items()}


class ProbeAnnotator(GarmentAnnotator):
    """The probe (see the module docstring) on ``encoder``, whose fingerprint it was made for.

    Build one with :meth:`load` (a probe file), :meth:`random` (the tiny model's) or
    :func:`~idm_vton.training.annotator.train_annotator`.
    """

    kind = "probe"

    def __init__(
        self,
        heads: ProbeHeads,
        label_sets: LabelSets,
        encoder: GarmentEncoder,
        min_score: float = DEFAULT_MIN_SCORE,
        source: str = "",
    ) -> None:
        super().__init__(label_sets, min_score)
        self.heads = heads.float().eval()
        self.encoder = encoder
        self.source = source

    # ------------------------------------------------------------------ describing
    def describe_batch(self, images: Sequence[GarmentImage]) -> list[GarmentTags]:
        return self.describe_embeddings(self.encoder.embed(rgb_images(images)))

    def reads_embeddings_of(self, image_encoder: torch.nn.Module) -> bool:
        return image_encoder is self.encoder.image_encoder

    @torch.no_grad()
    def describe_embeddings(self, embeddings: torch.Tensor) -> list[GarmentTags]:
        logits = self.heads(embeddings.detach().float().cpu())
        return self._tags({a: logit.softmax(dim=-1) for a, logit in logits.items()})

    @property
    def identity(self) -> str:
        return f"probe:{self.source}"

    # ------------------------------------------------------------------ building
    @classmethod
    def random(
        cls,
        encoder: GarmentEncoder,
        label_sets: LabelSets | None = None,
        seed: int = 0,
        min_score: float = DEFAULT_MIN_SCORE,
    ) -> ProbeAnnotator:
        """Random heads on ``encoder`` (the tiny model's probe: plumbing, not accuracy).

        The standardisation comes from the encoder's embeddings of a few seeded noise images
        and the heads are drawn wide enough that every attribute has a clear winner, so the
        tiny model describes garments with full-confidence V like a trained probe does.
        """
        label_sets = label_sets or load_label_sets("vitonhd")
        generator = torch.Generator().manual_seed(seed)
        size = encoder.image_encoder.config.image_size
        noise = torch.randn(8, 3, size, size, generator=generator)
        embeddings = encoder.embed_pixels(noise)
        classes = {a: len(labels) for a, labels in label_sets.labels.items()}
        heads = ProbeHeads(encoder.embedding_dim, classes)
        heads.feature_mean.copy_(embeddings.mean(0))
        heads.feature_std.copy_(embeddings.std(0).clamp_min(1e-6))
        scale = 8.0 / encoder.embedding_dim**0.5
        with torch.no_grad():
            for head in heads.heads.values():
                head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * scale)
                head.bias.zero_()
        return cls(heads, label_sets, encoder, min_score, source=f"random-{seed}")

    # ------------------------------------------------------------------ files
    def save(
        self, path: str | Path, encoder_name: str = "", training: Mapping[str, Any] | None = None
    ) -> Path:
        """Write the probe to ``path`` (safetensors, atomically), with its label sets and the
        fingerprint of its encoder."""
        fingerprint = self.encoder.fingerprint()
        metadata = {
            "format": PROBE_FORMAT,
            "version": PROBE_VERSION,
            "label_sets": json.dumps(self.label_sets.to_json()),
            "hidden": str(self.heads.hidden),
            "embedding_dim": str(self.heads.embedding_dim),
            "encoder_fingerprint": fingerprint.digest,
            "encoder_stats": json.dumps(fingerprint.stats),
            "encoder_name": encoder_name,
            "training": json.dumps(dict(training or {})),
        }
        tensors = {
            k: v.detach().float().cpu().contiguous() for k, v in self.heads.state_dict().items()
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return Path(path)

    @classmethod
    def load(
        cls, path: str | Path, encoder: GarmentEncoder, min_score: float = DEFAULT_MIN_SCORE
    ) -> ProbeAnnotator:
        """The probe in ``path`` on ``encoder``.

        Raises :class:`~idm_vton.errors.AnnotatorError` (one line naming the file) when the file
        is not a probe file, is damaged, holds label sets other than this package's of the same
        name, or was trained on another image encoder (the same encoder at another precision is
        accepted).
        """
        path = Path(path)
        metadata, tensors = _read_probe_file(path)
        label_sets = _label_sets(path, metadata)
        try:
            hidden, dim = int(metadata["hidden"]), int(metadata["embedding_dim"])
        except ValueError:
            raise AnnotatorError(
                f"{path}: metadata 'hidden' or 'embedding_dim' is not a number"
            ) from None
        classes = {a: len(labels) for a, labels in label_sets.labels.items()}
        heads = ProbeHeads(dim, classes, hidden)
        _check_tensors(path, tensors, {k: tuple(v.shape) for k, v in heads.state_dict().items()})
        heads.load_state_dict(tensors)
        fingerprint = EncoderFingerprint(
            digest=metadata["encoder_fingerprint"], stats=_json(path, metadata, "encoder_stats")
        )
        if dim != encoder.embedding_dim or not fingerprint.matches(encoder.image_encoder):
            made_for = metadata.get("encoder_name") or "an unnamed model"
            raise AnnotatorError(
                f"{path.name} was trained on another image encoder ({made_for}, fingerprint "
                f"{fingerprint.digest[:12]}); this model's encoder has fingerprint "
                f"{encoder.fingerprint().digest[:12]}: train a probe for it with `idm-vton "
                "train-annotator`, or use --annotator zero-shot"
            )
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        return cls(heads, label_sets, encoder, min_score, source=f"{path.name}#{digest}")


def _read_probe_file(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    if not path.is_file():
        raise AnnotatorError(f"probe file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as stored:
            metadata = stored.metadata() or {}
            if metadata.get("format") != PROBE_FORMAT:
                raise AnnotatorError(
                    f"{path} is not a probe file of `idm-vton train-annotator` (its format is "
                    f"{metadata.get('format')!r})"
                )
            tensors = {key: stored.get_tensor(key) for key in stored.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        if isinstance(err, AnnotatorError):
            raise
        raise AnnotatorError(f"{path} is not a readable safetensors file ({err})") from None
    if metadata.get("version") != PROBE_VERSION:
        raise AnnotatorError(
            f"{path}: probe file version {metadata.get('version')!r} is not supported (this "
            f"idm-vton reads version {PROBE_VERSION})"
        )
    for key in _REQUIRED_METADATA:
        if key not in metadata:
            raise AnnotatorError(f"{path}: metadata {key!r} is missing (damaged file)")
    return metadata, tensors


def _json(path: Path, metadata: dict[str, str], key: str):
    try:
        return json.loads(metadata[key])
    except ValueError:
        raise AnnotatorError(f"{path}: metadata {key!r} is not valid JSON (damaged file)") from None


def _label_sets(path: Path, metadata: dict[str, str]) -> LabelSets:
    """The package's label sets the file names, refused unless the file's labels are exactly
    them (the heads' outputs are indices into those lists)."""
    stored = _json(path, metadata, "label_sets")
    name = stored.get("name") if isinstance(stored, dict) else None
    if name not in LABEL_SET_NAMES:
        raise AnnotatorError(
            f"{path}: unknown label sets {name!r} (this idm-vton has {', '.join(LABEL_SET_NAMES)})"
        )
    label_sets = load_label_sets(name)
    if stored != label_sets.to_json():
        raise AnnotatorError(
            f"{path} was trained on other {name} label sets than this idm-vton's "
            f"(idm_vton/data/labels/{name}.json): train it again with `idm-vton train-annotator`"
        )
    return label_sets


def _check_tensors(
    path: Path, tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]
) -> None:
    """Exactly the expected tensors with exactly their shapes, finite floats."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise AnnotatorError(
            f"{path}: tensors do not fit its label sets (missing: {', '.join(missing) or '-'}; "
            f"unexpected: {', '.join(extra) or '-'}) (damaged file)"
        )
    for key, shape in expected.items():
        value = tensors[key]
        if tuple(value.shape) != shape:
            raise AnnotatorError(
                f"{path}: tensor {key} has shape {tuple(value.shape)}, its label sets need "
                f"{shape} (damaged file)"
            )
        if not value.is_floating_point() or not torch.isfinite(value).all():
            raise AnnotatorError(f"{path}: tensor {key} is not finite floats (damaged file)")
