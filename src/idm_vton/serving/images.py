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
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageInputError
from ..pipelines.image_processor import MAX_PIXELS, load_image

__all__ = [
    "ALLOWED_FORMATS",
    "ImageTooLargeError",
    "decode_image",
    "image_digest",
    "png_bytes",
]

#: Formats an upload may be in (detected from its bytes).
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


class ImageTooLargeError(ImageInputError):
    """An upload over the byte or pixel limit (HTTP 413)."""


def decode_image(
    data: bytes, what: str, mode: str = "RGB", max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """Decode and verify an uploaded image; returns a detached image in ``mode``.

    Raises :class:`ImageTooLargeError` over ``max_pixels`` (checked from the header, before
    decoding) and :class:`ImageInputError` for anything that is not a readable image.
    """
    if not data:
        raise ImageInputError(f"{what}: the file is empty")
    try:
        with warnings.catch_warnings():
            # Pillow warns past its own limit and raises past twice that; both are refusals here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as opened:
                width, height = opened.size
                if width * height > max_pixels:
                    raise ImageTooLargeError(
                        f"{what}: {width}x{height} pixels is over the limit of {max_pixels} pixels"
                    )
                opened.load()
                image = ImageOps.exif_transpose(opened)
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageTooLargeError(f"{what}: over the pixel limit ({err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageInputError(
            f"{what}: not a readable image (expected {', '.join(ALLOWED_FORMATS)}): "
            f"{type(err).__name__}"
        ) from None
    # The library's conversions: RGBA composited on white, 16-bit scaled, palette, CMYK...
    return load_image(image, what, mode=mode)


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
