"""The try-on pipeline's image boundary: the 3:4 work region, work-size tensors, paste-back.

IDM-VTON works on an H x W (default 1024 x 768) view of the person. The official demo stretches
any photo to that size and returns the stretched render; here the person photo keeps its size
and aspect: the pipeline renders an H:W region around the mask and pastes the generated pixels
back inside the mask only, so every pixel outside it is returned unchanged.

The demo's other mode, its auto-crop (``is_checked_crop``), is :func:`centred_region` with
``auto_crop=True``: the largest H:W box centred in the photo is rendered and the whole box is
pasted back, so every pixel outside the box is unchanged (and every pixel inside it is the
render's).

:class:`TryOnImageProcessor` is the pipeline's boundary, as diffusers' ``VaeImageProcessor`` is
for its pipelines: :meth:`~TryOnImageProcessor.preprocess` turns the user's images (or tensors)
into work-size tensors plus the regions to paste into, :meth:`~TryOnImageProcessor.postprocess`
turns decoded renders into PIL images, arrays or tensors, pasted back into the photos.

Files and arrays are read by :mod:`idm_vton.images` (the one way the package reads an image);
:func:`mask_region`, :func:`crop_resize` and :func:`paste_back` keep every intermediate image
within :data:`~idm_vton.images.MAX_PIXELS`, whatever the photo and mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import ImageInputError, UsageError
from ..images import MAX_PIXELS, binary_mask, load_image

__all__ = [
    "OUTPUT_TYPES",
    "PreparedInputs",
    "Region",
    "TryOnImageProcessor",
    "centred_region",
    "crop_region",
    "crop_resize",
    "mask_region",
    "paste_back",
]

#: What ``TryOnPipeline(output_type=...)`` returns: PIL images, float arrays in [0, 1], float
#: tensors in [0, 1], or the final latents (no decode).
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass(frozen=True)
class Region:
    """A box ``(left, top, right, bottom)`` in photo pixels; may extend past the photo edges."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def size(self) -> tuple[int, int]:
        return self.right - self.left, self.bottom - self.top


def mask_region(mask: np.ndarray, height: int, width: int, margin: float = 0.1) -> Region:
    """The H:W box the pipeline renders for a photo and its mask.

    A photo that already has the H:W aspect (within 1 %) is used whole, as the official demo
    does. Otherwise the box is the largest H:W box that fits in the photo (so the person keeps
    the scale the model was trained at), placed around the mask; if the mask's bounding box
    grown by ``margin`` on every side does not fit in that, the box grows to hold it, centred on
    the mask, and its parts outside the photo are padded (and never pasted back).
    """
    photo_h, photo_w = mask.shape
    target = width / height
    if abs(photo_w / photo_h - target) <= 0.01 * target:
        return Region(0, 0, photo_w, photo_h)
    # The mask's bounding box from its row and column projections: memory of a row and a column,
    # not of every marked pixel's coordinates.
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    box_h, box_w = bottom - top, right - left
    box_h, box_w = box_h * (1 + 2 * margin), box_w * (1 + 2 * margin)
    if box_w / box_h < target:
        box_w = box_h * target
    else:
        box_h = box_w / target
    # Prefer covering the photo's full extent along the axis where the box is already close to it.
    box_h = max(box_h, min(photo_h, photo_w / target))
    box_w = box_h * target
    rh, rw = int(round(box_h)), int(round(box_w))
    cy, cx = (top + bottom) / 2, (left + right) / 2
    y0 = _axis_start(cy - rh / 2, rh, photo_h)
    x0 = _axis_start(cx - rw / 2, rw, photo_w)
    return Region(x0, y0, x0 + rw, y0 + rh)


def centred_region(photo_size: tuple[int, int], height: int, width: int) -> Region:
    """The official demo's auto-crop box (``is_checked_crop``): the largest H:W box centred in
    a photo of ``photo_size`` (W, H), in whole pixels.

    The demo crops the photo's centre whatever the mask, so the person must stand in the middle;
    :func:`mask_region` (the default) places the box around the mask instead.
    """
    photo_w, photo_h = photo_size
    box_w = min(photo_w, photo_h * width // height)
    box_h = min(photo_h, photo_w * height // width)
    left, top = (photo_w - box_w) // 2, (photo_h - box_h) // 2
    return Region(left, top, left + box_w, top + box_h)


def region_mask(shape: tuple[int, int], region: Region) -> np.ndarray:
    """(H, W) bool array, True on the part of ``region`` inside a photo of ``shape``."""
    marked = np.zeros(shape, bool)
    marked[
        max(region.top, 0) : max(region.bottom, 0), max(region.left, 0) : max(region.right, 0)
    ] = True
    return marked


def _axis_start(start: float, length: int, limit: int) -> int:
    """Where a box side of ``length`` starts on an axis of ``limit`` pixels, wanted at ``start``:
    moved inside the photo, or centred on it when the side is longer than the photo."""
    if length >= limit:
        return int(round((limit - length) / 2))
    return int(min(max(round(start), 0), limit - length))


def crop_region(image: Image.Image, region: Region) -> Image.Image:
    """Crop ``region`` from ``image`` at full resolution; parts outside the photo are filled by
    edge replication. The crop is ``region``'s size: use :func:`crop_resize` for the work size,
    which bounds the memory whatever the region."""
    w, h = image.size
    if region.left >= 0 and region.top >= 0 and region.right <= w and region.bottom <= h:
        return image.crop((region.left, region.top, region.right, region.bottom))
    array = np.asarray(image)
    pad_top, pad_left = max(0, -region.top), max(0, -region.left)
    pad_bottom, pad_right = max(0, region.bottom - h), max(0, region.right - w)
    widths = [(pad_top, pad_bottom), (pad_left, pad_right)] + [(0, 0)] * (array.ndim - 2)
    padded = np.pad(array, widths, mode="edge")
    y0, x0 = region.top + pad_top, region.left + pad_left
    return Image.fromarray(padded[y0 : y0 + region.size[1], x0 : x0 + region.size[0]])


def crop_resize(
    image: Image.Image,
    region: Region,
    size: tuple[int, int],
    resample: Image.Resampling = Image.Resampling.BICUBIC,
) -> Image.Image:
    """``region`` of ``image`` (:func:`crop_region`) resized to ``size`` (W, H), in bounded memory.

    A region inside the photo is a crop. A region past the photo's edges is padded at full
    resolution when that canvas is at most :data:`MAX_PIXELS`; a larger one (a mask spanning a
    very wide photo needs a region much taller than the photo) is built from the photo first
    reduced by the smallest integer factor that brings the canvas under the limit, and the exact
    fractional region is then resized from it. No intermediate image exceeds the largest photo
    accepted, whatever the region.
    """
    w, h = image.size
    inside = region.left >= 0 and region.top >= 0 and region.right <= w and region.bottom <= h
    factor = math.ceil(math.sqrt(region.size[0] * region.size[1] / MAX_PIXELS))
    if inside or factor <= 1:
        return crop_region(image, region).resize(size, resample)
    small = image.reduce(factor)
    left, top = region.left / factor, region.top / factor
    right, bottom = region.right / factor, region.bottom / factor
    cover = Region(math.floor(left), math.floor(top), math.ceil(right), math.ceil(bottom))
    canvas = crop_region(small, cover)
    box = (left - cover.left, top - cover.top, right - cover.left, bottom - cover.top)
    return canvas.resize(size, resample, box=box)


def paste_back(
    photo: Image.Image, render: Image.Image, region: Region, mask: np.ndarray
) -> Image.Image:
    """Copy ``render``, stretched over ``region``, into ``photo`` where ``mask`` is True only.

    Only the part of the region inside the photo is resampled (Lanczos, from the same source
    positions as resizing the whole render to the region), so the memory is bounded by the
    photo's size however far the region reaches past it.
    """
    out = np.asarray(photo.convert("RGB")).copy()
    h, w = mask.shape
    x0, y0 = max(region.left, 0), max(region.top, 0)
    x1, y1 = min(region.right, w), min(region.bottom, h)
    if x1 <= x0 or y1 <= y0:
        return Image.fromarray(out)
    render = render.convert("RGB")
    sx, sy = render.width / region.size[0], render.height / region.size[1]
    box = (
        max((x0 - region.left) * sx, 0.0),
        max((y0 - region.top) * sy, 0.0),
        min((x1 - region.left) * sx, render.width),
        min((y1 - region.top) * sy, render.height),
    )
    patch = np.asarray(render.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS, box=box))
    window = mask[y0:y1, x0:x1]
    out[y0:y1, x0:x1][window] = patch[window]
    return Image.fromarray(out)


@dataclass
class PreparedInputs:
    """The pipeline's inputs at the work size H x W, and what paste-back needs.

    ``person``, ``pose``: (B, 3, H, W) in [0, 1]; ``mask``: (B, 1, H, W) in {0, 1};
    ``garment``: (G, 3, H, W) in [0, 1] with G = 1 (shared) or B. For image inputs,
    ``garment_images`` are the decoded garment photos (for the CLIP image prompt) and
    ``photos``, ``photo_masks``, ``regions`` the full photos, the pixels to paste back into
    (the masks, or the whole region with auto-crop) and the rendered regions; for tensor inputs
    all four are None.
    """

    person: torch.Tensor
    mask: torch.Tensor
    pose: torch.Tensor
    garment: torch.Tensor
    garment_images: list[Image.Image] | None = None
    photos: list[Image.Image] | None = None
    photo_masks: list[np.ndarray] | None = None
    regions: list[Region] | None = None

    @property
    def people(self) -> int:
        return self.person.shape[0]

    @property
    def garments(self) -> int:
        return self.garment.shape[0]


def _as_list(value) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, torch.Tensor) and value.ndim == 4:
        return list(value.split(1))
    return [value]


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _to_pil(images: torch.Tensor) -> list[Image.Image]:
    arrays = images.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arrays]


def _stack_if_same_shape(items: list, stack):
    return stack(items) if len({tuple(item.shape) for item in items}) == 1 else items


class TryOnImageProcessor:
    """Pre- and postprocessing of :class:`~idm_vton.pipelines.tryon.TryOnPipeline` images.

    Images (paths, PIL, uint8 or float arrays) get the work region of :func:`mask_region`:
    person and pose are cropped to it and resized to H x W (bicubic, like PIL's default in the
    official demo), the mask likewise (nearest); the garment is resized whole. With
    ``auto_crop`` the region is the demo's centred box (:func:`centred_region`) and the whole
    box is pasted back. Tensors must already be at H x W in [0, 1] and are used as they are (no
    region, no paste-back).
    """

    def preprocess(
        self,
        person: object,
        garment: object,
        mask: object,
        pose: object,
        height: int,
        width: int,
        crop_margin: float = 0.1,
        auto_crop: bool = False,
    ) -> PreparedInputs:
        """The inputs as work-size tensors; ``ValueError`` / ``ImageInputError`` say what is wrong."""
        people = _as_list(person)
        masks, poses, garments = _as_list(mask), _as_list(pose), _as_list(garment)
        n = len(people)
        if len(masks) != n or len(poses) != n:
            raise ImageInputError(
                f"got {n} person images but {len(masks)} masks and {len(poses)} pose images"
            )
        if len(garments) not in (1, n):
            raise ImageInputError(
                f"got {n} person images and {len(garments)} garments (give 1 or {n})"
            )
        if all(isinstance(p, torch.Tensor) for p in people):
            if auto_crop:
                raise UsageError("auto_crop applies to photos; tensor inputs are already cropped")
            return self._tensors(people, masks, poses, garments, height, width)
        photos, photo_masks, regions = [], [], []
        person_t, mask_t, pose_t = [], [], []
        size = (width, height)
        for i, (p, m, q) in enumerate(zip(people, masks, poses, strict=True)):
            tag = f" {i}" if n > 1 else ""
            photo = load_image(p, f"person image{tag}")
            m_bool = binary_mask(m, photo.size, f"mask{tag}")
            pose_img = load_image(q, f"pose image{tag}")
            if pose_img.size != photo.size:
                pose_img = pose_img.resize(photo.size, Image.Resampling.BICUBIC)
            if auto_crop:
                region = centred_region(photo.size, height, width)
                pasted = region_mask(m_bool.shape, region)
            else:
                region, pasted = mask_region(m_bool, height, width, crop_margin), m_bool
            person_t.append(_to_tensor(crop_resize(photo, region, size)))
            pose_t.append(_to_tensor(crop_resize(pose_img, region, size)))
            mask_image = Image.fromarray(m_bool.astype(np.uint8) * 255)
            crop_m = np.asarray(crop_resize(mask_image, region, size, Image.Resampling.NEAREST))
            if auto_crop and not (crop_m >= 128).any():
                raise ImageInputError(
                    f"mask{tag}: nothing of the marked area lies in the auto-crop box "
                    f"{region.left},{region.top} to {region.right},{region.bottom} (the centre "
                    "of the photo); turn auto-crop off or mark the garment area inside it"
                )
            mask_t.append(torch.from_numpy(crop_m >= 128))
            photos.append(photo)
            photo_masks.append(pasted)
            regions.append(region)
        garment_images = [load_image(g, "garment image") for g in garments]
        return PreparedInputs(
            person=torch.stack(person_t),
            mask=torch.stack(mask_t)[:, None].float(),
            pose=torch.stack(pose_t),
            garment=torch.stack(
                [_to_tensor(g.resize(size, Image.Resampling.BICUBIC)) for g in garment_images]
            ),
            garment_images=garment_images,
            photos=photos,
            photo_masks=photo_masks,
            regions=regions,
        )

    @staticmethod
    def _tensors(people, masks, poses, garments, height, width) -> PreparedInputs:
        def stack(items, what, channels):
            if not all(isinstance(t, torch.Tensor) for t in items):
                raise ImageInputError(
                    f"{what}: mix of tensors and images; give all inputs the same way"
                )
            t = torch.cat([x if x.ndim == 4 else x[None] for x in items]).float()
            if t.shape[1] != channels or t.shape[-2:] != (height, width):
                raise ImageInputError(
                    f"{what}: expected (B, {channels}, {height}, {width}), got {tuple(t.shape)}"
                )
            return t

        mask = (stack(masks, "mask", 1) >= 0.5).float()
        if not mask.flatten(1).any(dim=1).all():
            raise ImageInputError("mask is empty: mark the garment area to re-generate")
        return PreparedInputs(
            person=stack(people, "person image", 3),
            mask=mask,
            pose=stack(poses, "pose image", 3),
            garment=stack(garments, "garment image", 3),
        )

    def postprocess(
        self,
        decoded: torch.Tensor,
        prepared: PreparedInputs,
        output_type: str = "pil",
        paste: bool = True,
        num_images_per_prompt: int = 1,
    ) -> list[Image.Image] | np.ndarray | torch.Tensor | list:
        """Decoded renders (B, 3, H, W) in [-1, 1] -> ``output_type`` (not ``"latent"``).

        With ``paste`` and image inputs each render goes back into its photo (row ``i``
        belongs to person ``i // num_images_per_prompt``), rounded to 8 bits as the photo is;
        arrays and tensors of photos of different sizes come as lists.
        """
        if output_type not in OUTPUT_TYPES[:3]:
            raise UsageError(f"unknown output_type '{output_type}' (pil, np or pt)")
        images = (decoded / 2 + 0.5).clamp(0, 1)
        if not paste or prepared.photos is None:
            if output_type == "pt":
                return images
            if output_type == "np":
                return images.permute(0, 2, 3, 1).cpu().numpy()
            return _to_pil(images)
        k = num_images_per_prompt
        pasted = [
            paste_back(
                prepared.photos[i // k],
                render,
                prepared.regions[i // k],
                prepared.photo_masks[i // k],
            )
            for i, render in enumerate(_to_pil(images))
        ]
        if output_type == "pil":
            return pasted
        if output_type == "np":
            arrays = [np.asarray(p, dtype=np.float32) / 255.0 for p in pasted]
            return _stack_if_same_shape(arrays, np.stack)
        return _stack_if_same_shape([_to_tensor(p) for p in pasted], torch.stack)
