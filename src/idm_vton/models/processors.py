"""The CLIP image preprocessing class, named so that transformers never warns about it.

transformers 5 made ``CLIPImageProcessor`` the torchvision-backed processor and, without
torchvision (which this project does not install), swaps in ``CLIPImageProcessorPil`` with a
warning on first use. The PIL processor is the preprocessing the published model was trained
and evaluated with (transformers 4's ``CLIPImageProcessor``), so it is named directly here, with
or without torchvision.
"""

from __future__ import annotations

__all__ = ["clip_image_processor", "image_processor_class"]


def image_processor_class(name: str = "CLIPImageProcessor"):
    """transformers' PIL image processor ``<name>Pil`` where it exists (transformers 5), else
    ``<name>`` (transformers 4, where that one is PIL-based)."""
    import transformers

    try:
        return getattr(transformers, f"{name}Pil")
    except (AttributeError, ImportError):
        return getattr(transformers, name)


def clip_image_processor(image_size: int | None = None):
    """CLIP's preprocessing (resize the short side, centre crop, normalise) for an image encoder
    whose input is ``image_size`` pixels square (default 224, CLIP's)."""
    processor_class = image_processor_class()
    if image_size is None:
        return processor_class()
    return processor_class(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
