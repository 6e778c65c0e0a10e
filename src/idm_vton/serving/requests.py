"""From what a client sent to a queued job: the one path the HTTP API and the web UI share.

So every refusal is the same sentence in both (:func:`refusal`): the fields are checked by
:meth:`~.config.TryOnParams.parse`; each file's size before it is read (:func:`check_size`);
the pixels of all images from their headers, before anything is decoded, against the request's
and the queue's budgets (:meth:`~.job_queue.JobQueue.reserve`); then the images are decoded and
verified (:func:`~.images.decode_image`). Runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import secrets

import numpy as np
from PIL import Image

from ..errors import ImageInputError
from .config import ParameterError, TryOnParams
from .engine import WorkItem
from .images import ImageTooLargeError, decode_image, decode_layer, image_pixels
from .job_queue import NotReadyError, QueueFullError, RequestTooLargeError, Reservation
from .service import TryOnService

__all__ = [
    "IMAGE_FIELDS",
    "Refusal",
    "check_size",
    "editor_mask",
    "prepare_request",
    "refusal",
]

#: The image fields of a request, in the order they are read.
IMAGE_FIELDS = ("person", "garment", "mask", "pose")


class Refusal(Exception):
    """A request refused: an HTTP status and one line for the client (API and UI alike)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def refusal(err: Exception) -> Refusal | None:
    """The :class:`Refusal` for an error a client caused (None for anything else)."""
    if isinstance(err, Refusal):
        return err
    if isinstance(err, (ImageTooLargeError, RequestTooLargeError)):
        return Refusal(413, str(err))
    if isinstance(err, (ParameterError, ImageInputError)):
        return Refusal(400, str(err))
    if isinstance(err, QueueFullError):
        return Refusal(429, str(err))
    if isinstance(err, NotReadyError):
        return Refusal(503, str(err))
    return None


def check_size(what: str, size: int, max_bytes: int) -> None:
    """Refuse a file of ``size`` bytes over ``max_bytes`` (413) before reading it."""
    if size > max_bytes:
        raise Refusal(413, f"{what}: {size} bytes is over the limit of {max_bytes} bytes")


def prepare_request(
    service: TryOnService,
    files: dict[str, bytes | None],
    fields: dict,
    layers: list[bytes] = (),
    layers_are: str = "mask",
) -> tuple[WorkItem, Reservation]:
    """Check and decode one request; returns its :class:`WorkItem` and its room in the queue
    (give both to :meth:`TryOnService.submit`). Raises :class:`Refusal`.

    ``files`` maps :data:`IMAGE_FIELDS` to bytes (None: absent). ``layers`` are painted layers
    (RGBA, the web UI's editor): their opaque part is the ``mask`` (``layers_are="mask"``) or is
    added to the automatic one (``"extra_mask"``).
    """
    try:
        params = TryOnParams.parse(service.config, **fields)
        for required in ("person", "garment"):
            if files.get(required) is None:
                raise ParameterError(f"{required}: an image file is required")
        present = {name: data for name, data in files.items() if data is not None}
        pixels = sum(image_pixels(data, name) for name, data in present.items())
        pixels += sum(image_pixels(data, "mask") for data in layers)
        reservation = service.reserve(pixels)
    except Exception as err:
        raise _as_refusal(err) from None
    try:
        images = {name: None for name in IMAGE_FIELDS}
        for name, data in present.items():
            images[name] = decode_image(data, name, as_mask=name == "mask")
        if images["mask"] is not None and not (np.asarray(images["mask"]) >= 128).any():
            raise ImageInputError("mask: it is empty (white = the area to re-generate)")
        layer_images = [decode_layer(data, "mask") for data in layers]
        painted = editor_mask(layer_images, images["person"].size)
        if painted is not None:
            if layers_are == "mask" and images["mask"] is None:
                images["mask"] = painted
            else:
                images["extra_mask"] = painted
        item = WorkItem(id=secrets.token_urlsafe(12), params=params, **images)
    except Exception as err:
        reservation.release()
        raise _as_refusal(err) from None
    return item, reservation


def editor_mask(layers: list[Image.Image] | None, size: tuple[int, int]) -> Image.Image | None:
    """The painted (non-transparent) part of an editor's layers as an L mask at ``size`` (layers
    of another size are resized to it); None when nothing is painted."""
    painted = np.zeros((size[1], size[0]), dtype=bool)
    for layer in layers or []:
        if layer is None:
            continue
        alpha = np.asarray(layer.convert("RGBA").getchannel("A"))
        if alpha.shape != painted.shape:
            resized = Image.fromarray(alpha).resize(size, Image.Resampling.NEAREST)
            alpha = np.asarray(resized)
        painted |= alpha > 0
    if not painted.any():
        return None
    return Image.fromarray(painted.astype(np.uint8) * 255)


def _as_refusal(err: Exception) -> Exception:
    found = refusal(err)
    return found if found is not None else err
