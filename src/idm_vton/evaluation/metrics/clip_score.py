"""CLIP-I: cosine similarity of CLIP image embeddings (paper section 4).

The embedding is ``CLIPVisionModelWithProjection(...).image_embeds`` (the projected pooled
output), preprocessed by the model's own ``CLIPImageProcessor`` (resize shortest side, centre
crop, CLIP mean/std). Either load a model folder from a local path or pass an already-loaded
image encoder, such as the IDM-VTON pipeline's ``image_encoder``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...errors import MissingWeightFileError

__all__ = ["CLIPImageScorer", "clip_image_similarity"]


def _image_processor_class():
    from ...models.processors import image_processor_class

    return image_processor_class()


class CLIPImageScorer:
    """Embeds images with a CLIP vision tower and compares them by cosine similarity."""

    def __init__(self, image_encoder, image_processor, *, device: str | torch.device = "cpu"):
        self.image_encoder = image_encoder.to(device).eval()
        self.image_processor = image_processor
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> CLIPImageScorer:
        """Load model and preprocessing config from a local folder (no download is attempted)."""
        from transformers import CLIPVisionModelWithProjection

        from ...loaders.pipeline import load_component

        path = Path(path)
        if not (path / "config.json").is_file():
            raise MissingWeightFileError(
                f"no CLIP model at {path}: expected a transformers folder with config.json "
                "(e.g. `huggingface-cli download openai/clip-vit-large-patch14`, or the "
                "image_encoder/ folder of yisol/IDM-VTON)"
            )
        if not (path / "preprocessor_config.json").is_file():
            raise MissingWeightFileError(
                f"no preprocessor_config.json in {path}: CLIP-I needs the model's own "
                "CLIPImageProcessor settings"
            )
        encoder = load_component(
            CLIPVisionModelWithProjection.from_pretrained,
            path,
            "CLIP model",
            local_files_only=True,
            dtype=dtype,
        )
        processor = load_component(
            _image_processor_class().from_pretrained,
            path,
            "CLIP preprocessing config",
            local_files_only=True,
        )
        return cls(encoder, processor, device=device)

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        """Unit-norm image embeddings (N, D), float32 on the CPU."""
        pixels = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        dtype = next(self.image_encoder.parameters()).dtype
        embeds = self.image_encoder(pixel_values=pixels.to(self.device, dtype)).image_embeds
        embeds = embeds.float().cpu()
        return embeds / embeds.norm(dim=-1, keepdim=True)

    def similarity(
        self,
        images: Sequence[Image.Image | np.ndarray],
        references: Sequence[Image.Image | np.ndarray],
    ) -> np.ndarray:
        """Per-pair cosine similarity (N,) between ``images[i]`` and ``references[i]``."""
        if len(images) != len(references):
            raise ValueError(f"{len(images)} images but {len(references)} references")
        return (self.embed(images) * self.embed(references)).sum(dim=-1).double().numpy()


def clip_image_similarity(
    images: Sequence[Image.Image | np.ndarray],
    references: Sequence[Image.Image | np.ndarray],
    scorer: CLIPImageScorer,
) -> float:
    """Mean CLIP-I over pairs."""
    return float(scorer.similarity(images, references).mean())
