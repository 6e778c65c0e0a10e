"""Whole outfits in one call: one try-on pass per garment, each pass on the previous one's result.

IDM-VTON renders one garment at a time (paper Sec. 3): the mask marks the region of one garment
category and TryonNet re-generates it. An outfit (a top and trousers) is therefore a chain of
passes, and :func:`run_outfit` runs that chain as a person would by hand, with these rules:

* the garments' categories must make an outfit (:func:`plan_outfit`): at most one upper-body
  and one lower-body garment, or a dress alone;
* the passes run lower body first, then upper body: a top hangs over the waistband, so the top's
  pass comes last and its (dilated) mask may cover the new trousers' waist, never the reverse;
* each pass computes its mask (and DensePose picture) from the *current* image, through the
  ``inputs_for`` callable the caller gives (the preprocessing models live beside this module);
* each pass draws from a generator seeded with the same ``seed``, so an outfit equals its single
  passes chained by hand through lossless files, bit for bit;
* each pass pastes only inside its own mask, so every pixel outside the union of the masks is
  the original photo's (with auto-crop, outside the union of the crop boxes);
* the garment features go through the pipeline's per-garment cache
  (:class:`~idm_vton.pipelines.garment_cache.GarmentCache`, keyed by the garment, never by the
  outfit), so a garment already rendered with the same seed and settings costs no GarmentNet pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..enums import GarmentCategory
from ..errors import UsageError
from ..images import binary_mask, load_image
from .image_processor import centred_region, region_mask

__all__ = [
    "PASS_ORDER",
    "InputsFor",
    "OutfitGarment",
    "OutfitPass",
    "OutfitResult",
    "plan_outfit",
    "read_categories",
    "run_outfit",
]

#: The order the passes run in, by category (a dress is always alone).
PASS_ORDER: tuple[GarmentCategory, ...] = (
    GarmentCategory.LOWER_BODY,
    GarmentCategory.DRESSES,
    GarmentCategory.UPPER_BODY,
)
_WORDS = {
    GarmentCategory.UPPER_BODY: "upper-body garment",
    GarmentCategory.LOWER_BODY: "lower-body garment",
    GarmentCategory.DRESSES: "dress",
}
#: The pipeline arguments :func:`run_outfit` sets itself, per pass.
_RESERVED = frozenset(
    {
        "person_image",
        "garment_image",
        "mask_image",
        "pose_image",
        "garment_description",
        "garment_annotator",
        "generator",
        "garment_generator",
        "latents",
        "num_images_per_prompt",
        "output_type",
        "return_dict",
        "auto_crop",
    }
)

#: ``inputs_for(current_image, category) -> (mask_image, pose_image)`` for one pass.
InputsFor = Callable[[Image.Image, GarmentCategory], tuple[Any, Any]]


@dataclass(frozen=True)
class OutfitGarment:
    """One garment of an outfit: its photo (path, PIL image or array), its category (None: read
    by the annotator from the photo), its description V ("" by default, as the official demo;
    None: read by the annotator) and a name for messages (e.g. its file name)."""

    image: Any
    category: GarmentCategory | str | None = None
    description: str | None = ""
    name: str = ""

    def label(self, index: int) -> str:
        return self.name or f"garment {index + 1}"


@dataclass
class OutfitPass:
    """What one pass did: the garment (its position in the list given, its category), the V it
    was rendered with, the annotator's tags when it read them, and ``changed``: the pixels the
    pass may have changed (its mask, or its crop box with auto-crop), at the photo's size."""

    index: int
    garment: OutfitGarment
    description: str | None
    tags: Any
    changed: np.ndarray


@dataclass
class OutfitResult:
    """The finished image and the passes, in the order they ran."""

    image: Image.Image
    passes: list[OutfitPass]

    @property
    def changed(self) -> np.ndarray:
        """The union of the passes' changed pixels: outside it the image is the photo."""
        return np.logical_or.reduce([p.changed for p in self.passes])


def plan_outfit(
    categories: Sequence[GarmentCategory | str], names: Sequence[str] | None = None
) -> list[int]:
    """The garments' indices in the order their passes run (:data:`PASS_ORDER`; the order given
    between garments of one category, which is refused anyway).

    Raises a one-line :class:`~idm_vton.errors.UsageError` for what is not an outfit: no garment,
    two garments of one category (two tops, two pairs of trousers), or a dress with anything.
    """
    parsed = [GarmentCategory.parse(c, "garment category") for c in categories]
    names = list(names) if names is not None else [f"garment {i + 1}" for i in range(len(parsed))]
    if not parsed:
        raise UsageError("an outfit needs at least one garment")

    def listed(indices: list[int]) -> str:
        return ", ".join(names[i] for i in indices)

    dresses = [i for i, c in enumerate(parsed) if c is GarmentCategory.DRESSES]
    if dresses and len(parsed) > 1:
        others = [i for i in range(len(parsed)) if i != dresses[0]]
        what = " and ".join(sorted({_WORDS[parsed[i]] for i in others}))
        raise UsageError(
            f"a dress is worn alone, got it with a {what} ({listed([dresses[0], *others])}): "
            "a dress covers the upper and the lower body"
        )
    for category in (GarmentCategory.UPPER_BODY, GarmentCategory.LOWER_BODY):
        same = [i for i, c in enumerate(parsed) if c is category]
        if len(same) > 1:
            raise UsageError(
                f"{len(same)} {_WORDS[category]}s in one outfit ({listed(same)}): give at most "
                "one upper-body and one lower-body garment, or a dress alone"
            )
    return sorted(range(len(parsed)), key=lambda i: PASS_ORDER.index(parsed[i]))


def read_categories(
    garments: Sequence[OutfitGarment], annotator=None
) -> tuple[list[OutfitGarment], list]:
    """The garments with every category filled in, and the annotator's tags per garment (None
    where it was not asked).

    A garment without a category is read by ``annotator`` (a
    :class:`~idm_vton.annotation.GarmentAnnotator`): the category of its item label; its
    description, if also None, becomes the V of the same reading, so the try-on does not read
    the garment a second time. Without an annotator such a garment is refused in one line.
    """
    completed, tags = [], []
    for index, garment in enumerate(garments):
        if garment.category is not None:
            category = GarmentCategory.parse(garment.category, "garment category")
            completed.append(replace(garment, category=category))
            tags.append(None)
            continue
        if annotator is None:
            raise UsageError(
                f"the category of {garment.label(index)} is not given and no annotator is there "
                "to read it from the photo: give its category (upper_body, lower_body, dresses)"
            )
        read = annotator.describe(garment.image)
        description = read.description if garment.description is None else garment.description
        completed.append(
            replace(garment, category=annotator.category(read), description=description)
        )
        tags.append(read)
    return completed, tags


def run_outfit(
    pipe,
    person_image,
    garments: Sequence[OutfitGarment],
    inputs_for: InputsFor,
    *,
    seed: int,
    generator_device: str | torch.device = "cpu",
    garment_seed: int | None = None,
    garment_annotator=None,
    auto_crop: bool = False,
    on_pass: Callable[[int, int, OutfitGarment], None] | None = None,
    **call_kwargs,
) -> OutfitResult:
    """Render ``person_image`` wearing every garment of an outfit (the rules: module docstring).

    Args:
        pipe: a :class:`~idm_vton.pipelines.tryon.TryOnPipeline`.
        person_image: the photo (path, PIL image or array), of any size.
        garments: the outfit's garments (:class:`OutfitGarment`), in any order.
        inputs_for: ``inputs_for(image, category) -> (mask_image, pose_image)``, the mask and
            DensePose picture of the current image for one pass (e.g. from
            :meth:`~idm_vton.preprocess.preprocessor.Preprocessor.tryon_inputs`).
        seed, generator_device: every pass draws from ``torch.Generator(generator_device)``
            seeded with ``seed``.
        garment_seed: when given, every pass draws the garment latent's noise from its own
            generator seeded with this (the pipeline's ``garment_generator``), as a server that
            batches people does; None: from the pass's generator, as a single try-on does.
        garment_annotator: reads the category of garments that have none, and the V of garments
            whose description is None (:func:`read_categories`, then inside the pass).
        auto_crop: the official demo's auto-crop for every pass (see ``TryOnPipeline``).
        on_pass: called as ``on_pass(step, passes, garment)`` before each pass (progress).
        call_kwargs: the pipeline's other arguments (steps, guidance, size, garment_cache,
            callback_on_step_end, ...); ``paste_back=False`` only for a single garment.
    """
    reserved = sorted(_RESERVED & set(call_kwargs))
    if reserved:
        raise TypeError(f"run_outfit sets these pipeline arguments itself: {', '.join(reserved)}")
    if not call_kwargs.get("paste_back", True) and len(garments) > 1:
        raise UsageError(
            "an outfit pastes each pass back into the photo (the next pass starts from it): "
            "paste-back cannot be turned off for several garments"
        )
    garments, tags = read_categories(garments, garment_annotator)
    order = plan_outfit(
        [g.category for g in garments], [g.label(i) for i, g in enumerate(garments)]
    )
    current = load_image(person_image, "person image")
    height = call_kwargs.get("height") or pipe.default_height
    width = call_kwargs.get("width") or pipe.default_width
    passes: list[OutfitPass] = []
    for step, index in enumerate(order):
        garment = garments[index]
        if on_pass is not None:
            on_pass(step, len(order), garment)
        mask, pose = inputs_for(current, GarmentCategory(garment.category))
        generator = torch.Generator(device=generator_device).manual_seed(seed)
        if garment_seed is not None:
            call_kwargs["garment_generator"] = torch.Generator().manual_seed(garment_seed)
        read = garment.description is None
        output = pipe(
            person_image=current,
            garment_image=garment.image,
            mask_image=mask,
            pose_image=pose,
            garment_description=garment.description,
            garment_annotator=garment_annotator if read else None,
            generator=generator,
            auto_crop=auto_crop,
            output_type="pil",
            **call_kwargs,
        )
        if auto_crop:
            changed = region_mask(
                (current.height, current.width), centred_region(current.size, height, width)
            )
        else:
            changed = binary_mask(mask, current.size, "mask")
        passes.append(
            OutfitPass(
                index=index,
                garment=garment,
                description=output.garment_descriptions[0],
                tags=output.garment_tags[0] if read and output.garment_tags else tags[index],
                changed=changed,
            )
        )
        current = output.images[0]
    return OutfitResult(image=current, passes=passes)
