"""The image annotator: the garment description V read from the garment photo (paper Sec. 3.2).

IDM-VTON conditions both UNets on captions built from V = sleeve length + neckline + item
("model is wearing V", "a photo of V"); the paper reads V from the garment image with an
attribute classifier. Two annotators share one interface (:class:`GarmentAnnotator`:
``describe(image) -> GarmentTags``):

* :class:`ProbeAnnotator`: a head per attribute on the try-on pipeline's own CLIP image
  embedding (trained by ``idm-vton train-annotator``; nothing extra to download or run);
* :class:`ZeroShotAnnotator`: a fashion image-text model scoring one prompt per label.

:func:`load_annotator` picks and loads one (``"probe"``, ``"zero-shot"``, a probe file, or the
default: the model's probe if it has one, else zero-shot). Typical use with a loaded pipeline::

    annotator = load_annotator(pipe=pipe, model="yisol/IDM-VTON")
    tags = annotator.describe("shirt.jpg")        # GarmentTags
    tags.description                              # "Short Sleeve Round Neck T-shirts"
    pipe(..., garment_description=None, garment_annotator=annotator)  # V read in the try-on
"""

from __future__ import annotations

_EXPORTS = {
    "GarmentAnnotator": "annotator",
    "GarmentImage": "annotator",
    "GarmentEncoder": "encoder",
    "encoder_fingerprint": "encoder",
    "load_garment_encoder": "encoder",
    "ANNOTATOR_KINDS": "loading",
    "MODEL_PROBE_FILE": "loading",
    "AnnotatorChoice": "loading",
    "find_model_probe": "loading",
    "load_annotator": "loading",
    "resolve_annotator": "loading",
    "ProbeAnnotator": "probe",
    "ProbeHeads": "probe",
    "DEFAULT_MIN_SCORE": "tags",
    "AttributeTag": "tags",
    "GarmentTags": "tags",
    "compose_description": "tags",
    "DEFAULT_ZERO_SHOT_MODEL": "zero_shot",
    "ZeroShotAnnotator": "zero_shot",
    "ZeroShotModel": "zero_shot",
}

__all__ = [
    "ANNOTATOR_KINDS",
    "DEFAULT_MIN_SCORE",
    "DEFAULT_ZERO_SHOT_MODEL",
    "MODEL_PROBE_FILE",
    "AnnotatorChoice",
    "AttributeTag",
    "GarmentAnnotator",
    "GarmentEncoder",
    "GarmentImage",
    "GarmentTags",
    "ProbeAnnotator",
    "ProbeHeads",
    "ZeroShotAnnotator",
    "ZeroShotModel",
    "compose_description",
    "encoder_fingerprint",
    "find_model_probe",
    "load_annotator",
    "load_garment_encoder",
    "resolve_annotator",
]


def __getattr__(name: str):
    # Lazy, so that the command line's option parsing does not load transformers' classes.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
