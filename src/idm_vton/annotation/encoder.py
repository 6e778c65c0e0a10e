"""The garment image embedding the probe reads: the IP-Adapter's CLIP ViT-H/14 image encoder.

The try-on pipeline runs this encoder on every garment for the IP-Adapter image prompt (paper
Sec. 3.2); its projected image embedding (``image_embeds``, 1024 numbers for ViT-H/14) comes out
of the same forward pass. :class:`GarmentEncoder` computes it the way the pipeline does (the
checkpoint's CLIP preprocessing, then the encoder) for garments outside a try-on: to train and
evaluate the probe, and for ``idm-vton describe``. :func:`encoder_fingerprint` identifies the
encoder a probe was trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from ..errors import CheckpointError
from ..images import load_image
from ..loaders.customization import base_fingerprint, stats_match

if TYPE_CHECKING:  # transformers' image processors log at first use: imported where used
    from transformers import CLIPVisionModelWithProjection

__all__ = [
    "EncoderFingerprint",
    "GarmentEncoder",
    "encoder_fingerprint",
    "garment_batches",
    "load_garment_encoder",
]

# Config fields that fix the encoder's architecture (part of the fingerprint).
_ARCHITECTURE = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "image_size",
    "patch_size",
    "projection_dim",
)


@dataclass(frozen=True)
class EncoderFingerprint:
    """Which image encoder: ``digest`` (SHA-256 of its architecture and of a set of its weights
    in fp32) and ``stats`` (per-tensor [sum, sum |x|] of those weights), which recognise the same
    weights loaded in bf16 or fp16, whose digest differs."""

    digest: str
    stats: dict[str, list[float]]

    def matches(self, encoder: CLIPVisionModelWithProjection) -> bool:
        """Whether ``encoder`` has these weights (exactly, or at another precision)."""
        current = encoder_fingerprint(encoder)
        if current.digest == self.digest:
            return True
        return set(self.stats) == set(current.stats) and stats_match(
            self.stats, _fingerprint_tensors(encoder)
        )


def _fingerprint_tensors(encoder: CLIPVisionModelWithProjection) -> dict[str, torch.Tensor]:
    """The embeddings, both layer norms, the last block's output weights and the projection: a
    few million numbers that any retraining or other checkpoint changes."""
    last = encoder.config.num_hidden_layers - 1
    names = (
        "vision_model.embeddings.class_embedding",
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.embeddings.position_embedding.weight",
        "vision_model.pre_layrnorm.weight",
        "vision_model.post_layernorm.weight",
        f"vision_model.encoder.layers.{last}.mlp.fc2.weight",
        "visual_projection.weight",
    )
    parameters = dict(encoder.named_parameters())
    return {name: parameters[name] for name in names if name in parameters}


def encoder_fingerprint(encoder: CLIPVisionModelWithProjection) -> EncoderFingerprint:
    """The :class:`EncoderFingerprint` of ``encoder``."""
    architecture = {key: getattr(encoder.config, key, None) for key in _ARCHITECTURE}
    weights, stats = base_fingerprint(_fingerprint_tensors(encoder))
    digest = hashlib.sha256(json.dumps(architecture, sort_keys=True).encode() + weights.encode())
    return EncoderFingerprint(digest=digest.hexdigest(), stats=stats)


class GarmentEncoder:
    """A CLIP image encoder and its preprocessing, as the try-on pipeline uses them.

    ``image_encoder``: a ``CLIPVisionModelWithProjection`` (the pipeline's own, so one copy
    serves both); ``feature_extractor``: the checkpoint's ``CLIPImageProcessor`` (CLIP's
    defaults when None, as in the pipeline).
    """

    def __init__(
        self,
        image_encoder: CLIPVisionModelWithProjection,
        feature_extractor=None,
    ) -> None:
        from ..models.processors import clip_image_processor

        self.image_encoder = image_encoder
        if feature_extractor is None:  # CLIP's preprocessing at the encoder's input size
            feature_extractor = clip_image_processor(image_encoder.config.image_size)
        self.feature_extractor = feature_extractor

    @classmethod
    def from_pipeline(cls, pipe) -> GarmentEncoder:
        """The encoder of a loaded :class:`~idm_vton.pipelines.tryon.TryOnPipeline`."""
        return cls(pipe.image_encoder, pipe.feature_extractor)

    @property
    def device(self) -> torch.device:
        return self.image_encoder.device

    @property
    def embedding_dim(self) -> int:
        return int(self.image_encoder.config.projection_dim)

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """CLIP-normalised pixels of RGB images, on the encoder's device and dtype."""
        pixels = self.feature_extractor(images=list(images), return_tensors="pt").pixel_values
        return pixels.to(device=self.device, dtype=self.image_encoder.dtype)

    @torch.no_grad()
    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """The projected image embeddings (N, D) of CLIP-normalised pixels, fp32 on the CPU."""
        pixels = pixels.to(device=self.device, dtype=self.image_encoder.dtype)
        return self.image_encoder(pixels).image_embeds.float().cpu()

    def embed(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The projected image embeddings (N, D) of RGB images, fp32 on the CPU."""
        return self.embed_pixels(self.pixels(images))

    def fingerprint(self) -> EncoderFingerprint:
        return encoder_fingerprint(self.image_encoder)


def load_garment_encoder(model: str, dtype: torch.dtype, device) -> GarmentEncoder:
    """Only the image encoder (and its preprocessing) of ``model``: ``"tiny"`` (the tiny random
    model's), a checkpoint folder, or a hub id (only ``image_encoder/`` and
    ``feature_extractor/`` are downloaded, not the UNets)."""
    from ..loaders.pipeline import load_feature_extractor, load_image_encoder

    if model == "tiny":
        from ..models.tiny import tiny_components

        parts = tiny_components(text_encoders=False)
        encoder = GarmentEncoder(parts["image_encoder"], parts["feature_extractor"])
    else:
        root = _encoder_folder(model)
        encoder = GarmentEncoder(load_image_encoder(root, dtype), load_feature_extractor(root))
    encoder.image_encoder.to(device=device, dtype=dtype)
    return encoder


def _encoder_folder(model: str) -> Path:
    """A local checkpoint folder as is; a hub id's snapshot holding its image encoder."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise CheckpointError(f"checkpoint folder not found: {model}")
    from huggingface_hub import snapshot_download

    from ..loaders.hub import OFFLINE_HINT, cache_only_reason

    patterns = ["image_encoder/*", "feature_extractor/*"]
    offline = cache_only_reason()
    try:
        return Path(
            snapshot_download(model, allow_patterns=patterns, local_files_only=offline is not None)
        )
    except Exception as err:  # noqa: BLE001 - any hub failure gets the same advice
        why = offline or f"the hub failed ({type(err).__name__})"
        raise CheckpointError(
            f"the image encoder of '{model}' is not in the Hugging Face cache and {why}; run "
            f"`idm-vton download --model {model}` with network access ({OFFLINE_HINT}), or pass "
            "a local folder: --model /path/to/model"
        ) from err


def garment_batches(
    paths: Sequence[Path], batch_size: int, num_workers: int = 0
) -> Iterator[list[Image.Image]]:
    """The garment photos at ``paths`` as RGB images, ``batch_size`` at a time, decoded by
    ``num_workers`` processes (each through the package's image boundary, so a bad file fails
    with its name)."""
    loader = torch.utils.data.DataLoader(
        _GarmentFiles(list(paths)),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=list,
    )
    yield from loader


class _GarmentFiles(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Image.Image:
        return load_image(self.paths[index], "garment")
