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
from .config import AUTO, MAX_GARMENTS, ParameterError, TryOnParams
from .engine import DESCRIBE, WorkItem
from .images import ImageTooLargeError, decode_image, decode_layer, image_pixels
from .job_queue import NotReadyError, QueueFullError, RequestTooLargeError, Reservation
from .service import TryOnService

__all__ = [
    "IMAGE_FIELDS",
    "Refusal",
    "check_size",
    "editor_mask",
    "prepare_describe",
    "prepare_request",
    "refusal",
]

_OUTFIT_MASK = (
    "mask: an outfit computes each pass's mask from the current image; leave the mask out (and "
    "paint nothing), or send the garments one by one"
)

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
    files: dict[str, bytes | list[bytes] | None],
    fields: dict,
    layers: list[bytes] = (),
    layers_are: str = "mask",
    black_is_unpainted: bool = False,
) -> tuple[WorkItem, Reservation]:
    """Check and decode one request; returns its :class:`WorkItem` and its room in the queue
    (give both to :meth:`TryOnService.submit`). Raises :class:`Refusal`.

    ``files`` maps :data:`IMAGE_FIELDS` to bytes (None: absent); ``"garment"`` may be a list
    (an outfit: one pass per garment). ``layers`` are painted layers (RGBA, the web UI's
    editor): their opaque part is the ``mask`` (``layers_are="mask"``) or is added to the
    automatic one (``"extra_mask"``); ``black_is_unpainted``: their black pixels are not
    painted either (:func:`editor_mask`). An outfit's pixels count once per pass: each pass
    renders the photo (with its mask and DensePose) again.
    """
    try:
        garments = files.get("garment")
        garments = [garments] if isinstance(garments, bytes) else list(garments or [])
        params = TryOnParams.parse(service.config, **fields, garments=max(len(garments), 1))
        if files.get("person") is None or not garments:
            missing = "person" if files.get("person") is None else "garment"
            raise ParameterError(f"{missing}: an image file is required")
        if params.is_outfit and files.get("mask") is not None:
            raise ParameterError(_OUTFIT_MASK)
        present = {n: files[n] for n in ("person", "mask", "pose") if files.get(n) is not None}
        per_pass = sum(image_pixels(data, name) for name, data in present.items())
        per_pass += sum(image_pixels(data, "mask") for data in layers)
        pixels = len(garments) * per_pass
        pixels += sum(image_pixels(data, "garment") for data in garments)
        reservation = service.reserve(pixels)
    except Exception as err:
        raise _as_refusal(err) from None
    try:
        images = {name: None for name in IMAGE_FIELDS}
        for name, data in present.items():
            images[name] = decode_image(data, name, as_mask=name == "mask")
        decoded = [decode_image(data, "garment") for data in garments]
        images["garment"] = decoded[0]
        if images["mask"] is not None and not (np.asarray(images["mask"]) >= 128).any():
            raise ImageInputError("mask: it is empty (white = the area to re-generate)")
        layer_images = [decode_layer(data, "mask") for data in layers]
        painted = editor_mask(layer_images, images["person"].size, black_is_unpainted)
        if painted is not None and params.is_outfit:
            raise ParameterError(_OUTFIT_MASK)
        if painted is not None:
            if layers_are == "mask" and images["mask"] is None:
                images["mask"] = painted
            else:
                images["extra_mask"] = painted
        item = WorkItem(
            id=secrets.token_urlsafe(12),
            params=params,
            more_garments=tuple(decoded[1:]),
            **images,
        )
    except Exception as err:
        reservation.release()
        raise _as_refusal(err) from None
    return item, reservation


def prepare_describe(service: TryOnService, garments: list[bytes]) -> tuple[WorkItem, Reservation]:
    """Check and decode a request to read the description of garment photos (the annotator, on
    the model's queue: the probe reads the model's own image encoder). Raises :class:`Refusal`."""
    try:
        if not garments:
            raise ParameterError("garment: an image file is required")
        if len(garments) > MAX_GARMENTS:
            raise ParameterError(f"garment: at most {MAX_GARMENTS} garments, got {len(garments)}")
        params = TryOnParams.parse(
            service.config, description=AUTO, steps=1, garments=len(garments)
        )
        reservation = service.reserve(sum(image_pixels(data, "garment") for data in garments))
    except Exception as err:
        raise _as_refusal(err) from None
    try:
        decoded = [decode_image(data, "garment") for data in garments]
        item = WorkItem(
            id=secrets.token_urlsafe(12),
            person=None,
            garment=decoded[0],
            more_garments=tuple(decoded[1:]),
            params=params,
            task=DESCRIBE,
        )
    except Exception as err:
        reservation.release()
        raise _as_refusal(err) from None
    return item, reservation


def editor_mask(
    layers: list[Image.Image] | None, size: tuple[int, int], black_is_unpainted: bool = False
) -> Image.Image | None:
    """The painted (non-transparent) part of an editor's layers as an L mask at ``size`` (layers
    of another size are resized to it); None when nothing is painted.

    ``black_is_unpainted``: a black pixel is not painted either, whatever its opacity; this is
    how the official demo reads its layer (``gray > 0`` of its RGB), so a plain black-and-white
    mask sent as a layer marks its white part.
    """
    painted = np.zeros((size[1], size[0]), dtype=bool)
    for layer in layers or []:
        if layer is None:
            continue
        rgba = layer.convert("RGBA")
        marked = np.asarray(rgba.getchannel("A")) > 0
        if black_is_unpainted:
            marked &= np.asarray(rgba.convert("RGB").convert("L")) > 0
        if marked.shape != painted.shape:
            resized = Image.fromarray(marked).resize(size, Image.Resampling.NEAREST)
            marked = np.asarray(resized)
        painted |= marked
    if not painted.any():
        return None
    return Image.fromarray(painted.astype(np.uint8) * 255)


def _as_refusal(err: Exception) -> Exception:
    found = refusal(err)
    return found if found is not None else err
