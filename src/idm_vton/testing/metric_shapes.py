"""Metric networks at their real sizes with random weights, for benchmarks (no download).

Speed does not depend on the weight values; every figure made with these says so.
"""

from __future__ import annotations

__all__ = ["VIT_L_14", "random_clip_scorer"]

#: openai/clip-vit-large-patch14 vision tower (a common CLIP-I model).
VIT_L_14 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=224,
    patch_size=14,
    projection_dim=768,
)


def random_clip_scorer(device: str = "cpu"):
    """A :class:`~idm_vton.evaluation.metrics.clip_score.CLIPImageScorer` with a random CLIP
    ViT-L/14 vision tower and the default CLIP preprocessing."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from ..evaluation.metrics.clip_score import CLIPImageScorer, _image_processor_class

    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_L_14))
    return CLIPImageScorer(encoder, _image_processor_class()(), device=device)
