"""Reading and writing image files: the one boundary every input image of the package crosses.

Every image a user gives (the pipeline's inputs, every command's files, dataset rows, the
server's uploads) is read here, and every refusal is an :class:`~idm_vton.errors.ImageInputError`
naming the input and its file:

- :func:`open_image`: decoded and verified in full; pixels (:data:`MAX_PIXELS`) and aspect
  ratio (:data:`MAX_ASPECT`) checked from the header, before decoding;
- :func:`load_image` (person, garment, pose): 16-bit, 32-bit and float images mapped by the
  range their values use, NaN/inf refused; transparency composited on white;
- :func:`load_mask`, :func:`binary_mask`: a mask with a (not fully opaque) alpha channel is its
  painted part, any other mask its luminance;
- :func:`check_work_size`: the work size the model renders at, bounded before anything is
  allocated;
- :func:`save_image_atomic`: an output image is written whole or not at all.

A base module (numpy and Pillow only): the pipeline's
:mod:`~idm_vton.pipelines.image_processor`, the preprocessing, datasets, evaluation, training
and serving all stand on it, and it imports nothing of theirs.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageInputError, UsageError
from .files import atomic_path

__all__ = [
    "MAX_ASPECT",
    "MAX_PIXELS",
    "MAX_WORK_SIDE",
    "binary_mask",
    "check_image_size",
    "check_work_size",
    "load_image",
    "load_mask",
    "open_image",
    "save_image_atomic",
]

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
