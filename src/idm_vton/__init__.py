"""idm-vton: IDM-VTON virtual try-on (Choi et al., ECCV 2024) on current diffusers.

Quick start::

    from idm_vton import TryOnPipeline
    pipe = TryOnPipeline.from_pretrained("yisol/IDM-VTON", dtype=torch.bfloat16).to("cuda")
    image = pipe(person, garment, mask, densepose, garment_description="short sleeve t-shirts").images[0]

``TryOnPipeline.from_pretrained("tiny")`` is the built-in tiny random model (no download).
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "TryOnPipeline": "pipelines.tryon",
    "TryOnPipelineOutput": "pipelines.tryon",
    "ImageProjection": "models.tryon_net",
    "widen_conv_in": "models.tryon_net",
    "attach_ip_adapter": "models.tryon_net",
    "install_garment_attention": "models.tryon_net",
    "GarmentAttentionProcessor": "models.garment_attention",
    "GarmentCaptureProcessor": "models.garment_attention",
    "GarmentFeatureStore": "models.garment_attention",
    "tiny_pipeline": "pipelines.loading",
    "convert_checkpoint": "pipelines.convert",
    "IdmVtonError": "errors",
    "CheckpointError": "errors",
    "ImageInputError": "errors",
    "Preprocessor": "preprocess.preprocessor",
    "load_image": "images",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy: `import idm_vton` stays cheap (the CLI parses arguments before importing torch).
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'idm_vton' has no attribute '{name}'")
