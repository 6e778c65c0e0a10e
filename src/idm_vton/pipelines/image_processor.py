"""Image input/output for the try-on pipeline: validation, the 3:4 work region, paste-back.

IDM-VTON works on an H x W (default 1024 x 768) view of the person. The official demo stretches
any photo to that size and returns the stretched render; here the person photo keeps its size
and aspect: the pipeline renders an H:W region around the mask and pastes the generated pixels
back inside the mask only, so every pixel outside it is returned unchanged.

:class:`TryOnImageProcessor` is the pipeline's boundary, as diffusers' ``VaeImageProcessor`` is
for its pipelines: :meth:`~TryOnImageProcessor.preprocess` turns the user's images (or tensors)
into work-size tensors plus the regions to paste into, :meth:`~TryOnImageProcessor.postprocess`
turns decoded renders into PIL images, arrays or tensors, pasted back into the photos.

Every input image of the package (the pipeline, every command, dataset rows, the server's
uploads) goes through one boundary here, and every refusal is an :class:`ImageInputError`
naming the input and its file:

- :func:`open_image`: decoded and verified in full; pixels (:data:`MAX_PIXELS`) and aspect
  ratio (:data:`MAX_ASPECT`) checked from the header, before decoding;
- :func:`load_image` (person, garment, pose): 16-bit, 32-bit and float images mapped by the
  range their values use, NaN/inf refused; transparency composited on white;
- :func:`load_mask`: a mask with a (not fully opaque) alpha channel is its painted part, any
  other mask its luminance;
- :func:`check_work_size`, :func:`crop_resize`, :func:`paste_back`: the work size is bounded
  and no intermediate image exceeds :data:`MAX_PIXELS`, whatever the photo and mask.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageInputError, UsageError
from ..files import atomic_path

__all__ = [
    "OUTPUT_TYPES",
    "ImageInputError",
    "PreparedInputs",
    "Region",
    "TryOnImageProcessor",
    "MAX_ASPECT",
    "MAX_PIXELS",
    "MAX_WORK_SIDE",
    "binary_mask",
    "check_image_size",
    "check_work_size",
    "crop_region",
    "crop_resize",
    "load_image",
    "load_mask",
    "mask_region",
    "open_image",
    "paste_back",
    "save_image_atomic",
]

#: What ``TryOnPipeline(output_type=...)`` returns: PIL images, float arrays in [0, 1], float
#: tensors in [0, 1], or the final latents (no decode).
OUTPUT_TYPES = ("pil", "np", "pt", "latent")

#: The largest image accepted, in pixels: Pillow's own decompression-bomb threshold (a
#: 12000 x 7450 photo; every camera photo is below it). Read from the file's header and checked
#: before anything is decoded. No intermediate image of the pipeline is larger either.
MAX_PIXELS = 89_478_485
#: The most elongated image accepted, long side : short side. Every real photo, phone panoramas
#: included, is within 16:1; past it an image is a strip or a hostile file, and the H:W work
#: region around a mask on it would be far larger than the photo.
MAX_ASPECT = 16
#: The largest work size (``height``/``width``): SDXL is trained at 1024; 4096 is four times that
#: on each side, already far beyond what the model renders well.
MAX_WORK_SIDE = 4096

# The 16-bit single-channel modes (scaled from 0-65535).
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa")


def check_work_size(
    height: int | None, width: int | None, multiple: int = 8, flag: str = ""
) -> None:
    """Refuse a work size the model cannot render: each side a multiple of ``multiple`` (the VAE
    factor) from ``2 * multiple`` to :data:`MAX_WORK_SIDE`. ``flag`` ("--") prefixes the names.

    Called before anything is loaded or allocated. ``None`` is a side not given (the model's
    default, which the pipeline checks when it knows it); 0 is refused like any other bad value.
    """
    for name, value in (("height", height), ("width", width)):
        if value is not None and (
            not isinstance(value, numbers.Integral)
            or isinstance(value, bool)
            or value % multiple
            or not 2 * multiple <= value <= MAX_WORK_SIDE
        ):
            raise UsageError(
                f"{flag}{name} must be a multiple of {multiple} from {2 * multiple} to "
                f"{MAX_WORK_SIDE}, got {value!r}"
            )


def open_image(
    source: str | Path | BinaryIO,
    what: str,
    *,
    formats: Sequence[str] | None = None,
    max_pixels: int | None = None,
    too_large: type[ImageInputError] = ImageInputError,
) -> Image.Image:
    """Decode an image file (a path or a binary stream) in full: the one way files are read.

    The size is read from the header and checked (:func:`check_image_size`; ``too_large`` is the
    error raised over ``max_pixels``, default :data:`MAX_PIXELS`) before any pixel is decoded, so a decompression bomb costs
    a header read; the whole image is then decoded, so a truncated or corrupt file fails here and
    not half way through a run; EXIF orientation is applied. Pillow's own bomb check becomes the
    same error without touching the process's warning filters: its error, and its warning where
    a caller made warnings errors, are caught. ``formats`` restricts the accepted formats (read
    from the bytes). Returns the image in its own mode (:func:`load_image` and :func:`load_mask`
    convert it); every message names ``what`` and the file.
    """
    label = _label(source, what)
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise ImageInputError(f"{what}: file not found: {source}")
    try:
        with Image.open(source, formats=formats) as opened:
            check_image_size(opened.size, label, max_pixels, too_large)
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        limit = MAX_PIXELS if max_pixels is None else max_pixels
        raise too_large(
            f"{label}: over the limit of {limit} pixels (possible decompression bomb)"
        ) from err
    except UnidentifiedImageError:
        expected = f"; expected {', '.join(formats)}" if formats else ""
        raise ImageInputError(
            f"{label}: not a readable image (not a known image format{expected})"
        ) from None
    except Exception as err:  # noqa: BLE001 - a decoder fed a hostile file fails in many ways
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ImageInputError(f"{label}: not a readable image ({detail})") from None
    check_image_size(image.size, label, max_pixels, too_large)
    return image


def check_image_size(
    size: tuple[int, int],
    what: str,
    max_pixels: int | None = None,
    too_large: type[ImageInputError] = ImageInputError,
) -> None:
    """Refuse an image without pixels, over ``max_pixels`` (default :data:`MAX_PIXELS`) or past
    :data:`MAX_ASPECT`."""
    width, height = size
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    if width < 1 or height < 1:
        raise ImageInputError(f"{what}: {width}x{height}, an image without pixels")
    if width * height > max_pixels:
        raise too_large(
            f"{what}: {width}x{height} is over the limit of {max_pixels} pixels "
            "(possible decompression bomb)"
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageInputError(
            f"{what}: {width}x{height} has an aspect ratio past {MAX_ASPECT}:1 (the limit for a "
            "photo of a person or garment)"
        )


def _label(source: object, what: str) -> str:
    """``what`` and, for a file, its path: how messages name an input."""
    return f"{what} {source}" if isinstance(source, (str, Path)) else what


def _decoded(source: str | Path | Image.Image | np.ndarray, what: str) -> Image.Image:
    """A path opened with :func:`open_image`, a PIL image checked, an array made an image."""
    if isinstance(source, Image.Image):
        check_image_size(source.size, what)
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source, what)
    if isinstance(source, (str, Path)):
        return open_image(source, what)
    raise ImageInputError(
        f"{what}: expected a path, PIL image or array, got {type(source).__name__}"
    )


def _from_array(array: np.ndarray, what: str) -> Image.Image:
    """uint8 arrays as they are, bool as 0/255, float arrays in [0, 1] (non-finite refused)."""
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ImageInputError(
            f"{what}: expected an (H, W), (H, W, 3) or (H, W, 4) array, got shape {array.shape}"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    check_image_size((array.shape[1], array.shape[0]), what)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ImageInputError(f"{what}: the array holds non-finite values (NaN or inf)")
        array = np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageInputError(f"{what}: unsupported array dtype {array.dtype}")
    return Image.fromarray(array)


def _eight_bit(image: Image.Image, what: str) -> Image.Image:
    """Integer and float single-channel images -> 8-bit "L", by the range their values use.

    16-bit modes are scaled from 0-65535. A 32-bit integer image ("I") is read as 8-bit levels
    if every value is within 0-255, else as 16-bit (the two ways such files are written); a
    float image ("F", float TIFFs) as [0, 1] if every value is within it, else as 0-255 levels.
    Values outside both ranges and NaN/inf are refused: no choice of scale would show them.
    """
    if image.mode not in (*_SIXTEEN_BIT_MODES, "I", "F"):
        return image
    array = np.asarray(image, dtype=np.float32 if image.mode == "F" else np.int64)
    if image.mode == "F" and not np.isfinite(array).all():
        raise ImageInputError(
            f"{what}: the image holds non-finite pixel values (NaN or inf); export it again"
        )
    low, high = float(array.min()), float(array.max())
    if image.mode in _SIXTEEN_BIT_MODES:
        peak = 65535.0
    elif image.mode == "I":
        if low < 0 or high > 65535:
            raise ImageInputError(
                f"{what}: integer pixel values span {low:g} to {high:g}; expected 0-255 or 0-65535"
            )
        peak = 255.0 if high <= 255 else 65535.0
    else:
        if low < 0 or high > 255:
            raise ImageInputError(
                f"{what}: float pixel values span {low:g} to {high:g}; expected [0, 1] or [0, 255]"
            )
        peak = 1.0 if high <= 1.0 else 255.0
    scaled = array.astype(np.float32) * np.float32(255.0 / peak) + np.float32(0.5)
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def load_image(
    source: str | Path | Image.Image | np.ndarray, what: str, mode: str = "RGB"
) -> Image.Image:
    """A person, garment or pose image from a path, PIL image or array, converted to ``mode``.

    Files go through :func:`open_image` (decoded, verified, size and aspect bounded, EXIF
    orientation); every source through the same conversions: 16-bit, 32-bit and float images by
    their value range (:func:`_eight_bit`: NaN/inf refused), transparent pixels composited on
    white (a cut-out photo shows a white background, as on a shop page), palette, CMYK and
    grayscale converted. Anything unusable raises :class:`ImageInputError` naming ``what``.
    """
    image = _eight_bit(_decoded(source, what), _label(source, what))
    try:
        if _has_alpha(image):
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        return image.convert(mode)
    except ValueError as err:  # a mode Pillow cannot convert (LAB to L, La...)
        raise ImageInputError(
            f"{_label(source, what)}: images of mode {image.mode} are not supported"
        ) from err


def load_mask(source: str | Path | Image.Image | np.ndarray, what: str = "mask") -> Image.Image:
    """An inpainting mask as an "L" image, 255 = re-generate, read the way it was painted.

    A mask with an alpha channel that is not fully opaque is a paint layer: the mask is its
    painted part, alpha >= 50 %, whatever the colour (as paint tools and Gradio's ImageEditor
    layers produce it; compositing it on a background would turn the unpainted part white). Any
    other mask is read by its luminance (a fully opaque RGBA or LA mask included); 16-bit and
    float masks by their range (:func:`_eight_bit`), NaN/inf refused. Binarise with
    :func:`binary_mask`.
    """
    image = _eight_bit(_decoded(source, what), _label(source, what))
    try:
        if _has_alpha(image):
            alpha = image.convert("RGBA").getchannel("A")
            if alpha.getextrema()[0] < 255:
                return alpha.point(lambda a: 255 if a >= 128 else 0)
        return image.convert("L")
    except ValueError as err:
        raise ImageInputError(
            f"{_label(source, what)}: images of mode {image.mode} are not supported"
        ) from err


def binary_mask(
    mask: str | Path | Image.Image | np.ndarray, size: tuple[int, int], what: str = "mask"
) -> np.ndarray:
    """A mask (:func:`load_mask`) -> boolean (H, W) array at ``size`` (W, H): nearest resize,
    threshold 0.5. An empty mask is refused."""
    gray = load_mask(mask, what)
    if gray.size != size:
        gray = gray.resize(size, Image.Resampling.NEAREST)
    array = np.asarray(gray) >= 128
    if not array.any():
        raise ImageInputError(
            f"{_label(mask, what)} is empty: mark the garment area to re-generate (white, or "
            "painted on a transparent layer)"
        )
    return array


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
    y0 = _place(cy - rh / 2, rh, photo_h)
    x0 = _place(cx - rw / 2, rw, photo_w)
    return Region(x0, y0, x0 + rw, y0 + rh)


def _place(start: float, length: int, limit: int) -> int:
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


def save_image_atomic(image: Image.Image, path: str | Path) -> Path:
    """Write ``image`` to ``path`` through a temporary file and a rename (never half-written;
    :func:`idm_vton.files.atomic_path` creates the folder, and takes it back on failure)."""
    path = Path(path)
    suffix = path.suffix.lower() or ".png"
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None:
        raise ImageInputError(f"unknown output image extension '{path.suffix}' (use .png or .jpg)")
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


@dataclass
class PreparedInputs:
    """The pipeline's inputs at the work size H x W, and what paste-back needs.

    ``person``, ``pose``: (B, 3, H, W) in [0, 1]; ``mask``: (B, 1, H, W) in {0, 1};
    ``garment``: (G, 3, H, W) in [0, 1] with G = 1 (shared) or B. For image inputs,
    ``garment_images`` are the decoded garment photos (for the CLIP image prompt) and
    ``photos``, ``photo_masks``, ``regions`` the full photos, their masks and the rendered
    regions; for tensor inputs all four are None.
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
    official demo), the mask likewise (nearest); the garment is resized whole. Tensors must
    already be at H x W in [0, 1] and are used as they are (no region, no paste-back).
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
            region = mask_region(m_bool, height, width, crop_margin)
            person_t.append(_to_tensor(crop_resize(photo, region, size)))
            pose_t.append(_to_tensor(crop_resize(pose_img, region, size)))
            mask_image = Image.fromarray(m_bool.astype(np.uint8) * 255)
            crop_m = crop_resize(mask_image, region, size, Image.Resampling.NEAREST)
            mask_t.append(torch.from_numpy(np.asarray(crop_m) >= 128))
            photos.append(photo)
            photo_masks.append(m_bool)
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
