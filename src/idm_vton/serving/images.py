"""Uploaded bytes -> verified images, and images -> PNG bytes with nothing but pixels.

An upload is never trusted by its name, its declared type or its size: the format is read from
the bytes (a short list of raster formats; no EPS/PostScript, which Pillow would hand to
Ghostscript), the pixel count is read from the header and checked *before* anything is decoded
(a decompression bomb costs a header read), the image is fully decoded to catch truncation, and
EXIF orientation is applied. Outputs are written from pixel data only, so no EXIF, ICC profile or
text chunk of an input ever reaches a client.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

from ..errors import ImageInputError
from ..images import MAX_PIXELS, load_image, load_mask, open_image

__all__ = [
    "ALLOWED_FORMATS",
    "ImageTooLargeError",
    "decode_image",
    "decode_layer",
    "image_digest",
    "image_pixels",
    "png_bytes",
]

#: Formats an upload may be in (detected from its bytes).
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


class ImageTooLargeError(ImageInputError):
    """An upload over the byte or pixel limit (HTTP 413)."""


def decode_image(
    data: bytes, what: str, mode: str = "RGB", max_pixels: int = MAX_PIXELS, as_mask: bool = False
) -> Image.Image:
    """Decode and verify an uploaded image; returns a detached image in ``mode``, or with
    ``as_mask`` the mask it paints (:func:`~idm_vton.images.load_mask`).

    The package's one image boundary (:func:`~idm_vton.images.open_image`)
    reads it, restricted to :data:`ALLOWED_FORMATS`: :class:`ImageTooLargeError` over
    ``max_pixels`` (checked from the header, before decoding), :class:`ImageInputError` for
    anything that is not a readable image, past the aspect limit or holding NaN/inf.
    """
    image = _open_upload(data, what, max_pixels)
    # The library's conversions: RGBA composited on white, 16-bit scaled, palette, CMYK...
    return load_mask(image, what) if as_mask else load_image(image, what, mode=mode)


def _open_upload(data: bytes, what: str, max_pixels: int) -> Image.Image:
    """An uploaded file opened by the package's image boundary, restricted to
    :data:`ALLOWED_FORMATS` and bounded by ``max_pixels`` (checked before decoding)."""
    if not data:
        raise ImageInputError(f"{what}: the file is empty")
    return open_image(
        io.BytesIO(data),
        what,
        formats=ALLOWED_FORMATS,
        max_pixels=max_pixels,
        too_large=ImageTooLargeError,
    )


def decode_layer(data: bytes, what: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A painted layer (the web UI's editor) as RGBA, its transparency kept: verified and
    bounded as :func:`decode_image` does."""
    image = _open_upload(data, what, max_pixels)
    try:
        return image.convert("RGBA")
    except ValueError as err:
        raise ImageInputError(f"{what}: images of mode {image.mode} are not supported") from err


def image_pixels(data: bytes, what: str, max_pixels: int = MAX_PIXELS) -> int:
    """The pixel count of an uploaded image, read from its header only (nothing is decoded).

    A file that is not an image of :data:`ALLOWED_FORMATS` (or is over ``max_pixels``) raises
    the error :func:`decode_image` raises for it, with the same message.
    """
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as opened:
            width, height = opened.size
    except Exception:  # noqa: BLE001 - decode_image says what is wrong, in its own words
        decode_image(data, what, max_pixels=max_pixels)
        raise ImageInputError(f"{what}: not a readable image") from None
    if width * height > max_pixels:
        decode_image(data, what, max_pixels=max_pixels)  # raises ImageTooLargeError
    return width * height


def image_digest(image: Image.Image) -> str:
    """SHA-256 of an image's mode, size and pixels (what batching compares garments by)."""
    digest = hashlib.sha256(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def png_bytes(image: Image.Image) -> bytes:
    """PNG of ``image``'s pixels only (a fresh image: no EXIF, ICC profile or text chunks)."""
    pixels = np.asarray(image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()
