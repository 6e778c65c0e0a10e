"""The model side of the server: one pipeline, the automatic mask/pose, and batched calls.

:class:`TryOnEngine` is used by exactly one thread (the GPU worker of :mod:`.job_queue`, or a
Ray replica). It receives a batch of requests that share the garment and the settings
(:func:`batch_key`), computes the automatic mask and DensePose of each person that needs them,
and renders all of them in pipeline calls of at most ``max_batch`` people with ONE shared garment
(one GarmentNet pass per step for all). Each image has its own ``torch.Generator`` seeded by its
request's seed and the garment latent's draw comes from a fixed generator, so a request gives the
same image whether it ran alone or in a batch (up to floating-point rounding of batched kernels).

A request that fails (unreadable input, no person found, out of memory, non-finite output) fails
alone: when a batched call raises, its requests are retried one by one. The engine never changes
the :class:`WorkItem` s it is given (the automatic mask and DensePose live beside them), and
returns results as PNG bytes: what a finished job keeps is compact.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..errors import IdmVtonError, ImageInputError, NonFiniteOutputError, PreprocessModelError
from ..pipelines.garment_cache import GarmentCache
from ..pipelines.tryon import TryOnPipeline
from ..preprocess.preprocessor import Preprocessor
from .config import ServeConfig, TryOnParams
from .images import ImageTooLargeError, image_digest, png_bytes

__all__ = [
    "GARMENT_SEED",
    "BatchStopped",
    "Outcome",
    "ProgressFn",
    "StoppedFn",
    "TryOnEngine",
    "WorkItem",
    "batch_key",
    "error_status",
    "load_engine",
]

logger = logging.getLogger("idm_vton.serving")

#: Seed of the garment latent's VAE posterior draw. A batch of people shares ONE garment latent;
#: by default the pipeline draws its noise from the first person's generator, which would make a
#: request's image depend on which request came first in its batch. Every call passes
#: ``garment_generator`` seeded with this instead (the same for every request).
GARMENT_SEED = 0

#: (step done, steps in total) for the jobs ``ids`` of the current call.
ProgressFn = Callable[[Sequence[str], int, int], None]
#: True when every job of ``ids`` was cancelled or timed out: the call stops at the next step.
StoppedFn = Callable[[Sequence[str]], bool]


class BatchStopped(Exception):
    """Raised from the step callback when every request of a pipeline call was cancelled."""


@dataclass(eq=False)
class WorkItem:
    """One request as the engine sees it: decoded images and validated parameters."""

    id: str
    person: Image.Image
    garment: Image.Image
    params: TryOnParams
    mask: Image.Image | None = None  # None: automatic
    pose: Image.Image | None = None  # None: automatic
    extra_mask: Image.Image | None = None  # painted in the UI: added to the automatic mask
    garment_hash: str = ""

    def __post_init__(self) -> None:
        if not self.garment_hash:
            self.garment_hash = image_digest(self.garment)

    @property
    def pixels(self) -> int:
        """Pixels of the request's images (what its place in the queue costs)."""
        images = (self.person, self.garment, self.mask, self.pose, self.extra_mask)
        return sum(image.width * image.height for image in images if image is not None)


@dataclass
class Outcome:
    """A request's result: PNG images (or an HTTP status and a one-line error) and what was used.

    ``images``, ``mask`` and ``pose`` are PNG bytes (pixels only, :func:`~.images.png_bytes`);
    ``size`` is the images' (width, height).
    """

    id: str
    images: list[bytes] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)
    mask: bytes | None = None
    pose: bytes | None = None
    status: int = 200
    error: str | None = None
    seconds: float = 0.0
    worker: str = ""  # which replica rendered it (Ray), for the X-Worker header

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def nbytes(self) -> int:
        """Bytes this result holds."""
        return sum(map(len, self.images)) + len(self.mask or b"") + len(self.pose or b"")


@dataclass
class _Inputs:
    """The mask and DensePose a request is rendered with (its own, or computed)."""

    mask: Image.Image
    pose: Image.Image


def batch_key(item: WorkItem) -> tuple:
    """What requests must share to be rendered in one pipeline call.

    The garment (content hash), its description and the sampling settings. The category is not
    part of it: it only chooses the automatic mask, which is computed per person.
    """
    p = item.params
    return (item.garment_hash, p.description, p.steps, p.guidance, p.paste_back)


def error_status(err: BaseException) -> tuple[int, str]:
    """HTTP status and one-line message for an exception raised while serving a request."""
    if isinstance(err, ImageTooLargeError):
        return 413, str(err)
    if isinstance(err, PreprocessModelError):
        return 503, f"automatic mask/pose unavailable: {err}"
    if isinstance(err, NonFiniteOutputError):
        return 500, str(err)
    if isinstance(err, (IdmVtonError, ImageInputError)):
        return 400, str(err)
    if isinstance(err, torch.OutOfMemoryError):
        return 503, "out of memory on the device; try again later or with fewer images"
    return 500, "internal error (details are in the server log)"


class TryOnEngine:
    """Runs batches of same-garment requests on one pipeline (one device).

    Args:
        pipe: the loaded pipeline, on its device.
        max_batch: most people in one pipeline call.
        preprocess_models: weights folder for the automatic mask/pose (None: environment/hub);
            the preprocessing models are loaded on the first request that needs them.
        preprocess_device: device for OpenPose/DensePose.
        garment_cache_bytes: budget of a GarmentNet feature cache shared by all requests (0:
            none). Garment latents use a fixed seed, so a repeated garment is a cache hit.
    """

    def __init__(
        self,
        pipe: TryOnPipeline,
        max_batch: int = 4,
        preprocess_models: str | None = None,
        preprocess_device: str = "cpu",
        garment_cache_bytes: int = 0,
    ) -> None:
        self.pipe = pipe
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)  # progress goes to the job, not stderr
        if hasattr(pipe, "enable_vae_slicing"):
            # One image at a time through the VAE: exact, less peak memory for batches, and a
            # batched request's VAE work is then bit-identical to the same request alone.
            pipe.enable_vae_slicing()
        self.max_batch = max(1, int(max_batch))
        self.preprocess_models = preprocess_models
        self.preprocess_device = preprocess_device
        self._preprocessor: Preprocessor | None = None
        self.garment_cache = (
            GarmentCache(garment_cache_bytes, device="cpu") if garment_cache_bytes > 0 else None
        )
        self.pipeline_calls = 0

    @property
    def work_size(self) -> tuple[int, int]:
        """(height, width) the model renders at."""
        return self.pipe.default_height, self.pipe.default_width

    @property
    def preprocessor(self) -> Preprocessor:
        if self._preprocessor is None:
            self._preprocessor = Preprocessor(self.preprocess_models, device=self.preprocess_device)
        return self._preprocessor

    def warm_up(self) -> None:
        """One small call so the first request does not pay for lazy initialisation."""
        h, w = self.work_size
        person = Image.new("RGB", (w, h), (128, 128, 128))
        mask = Image.new("L", (w, h), 0)
        mask.paste(255, (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
        self.pipe(
            garment_generator=torch.Generator().manual_seed(GARMENT_SEED),
            person_image=person,
            garment_image=person,
            mask_image=mask,
            pose_image=person,
            garment_description="",
            num_inference_steps=1,
            generator=torch.Generator().manual_seed(0),
        )

    # ------------------------------------------------------------------ batches
    def run(
        self,
        items: Sequence[WorkItem],
        progress: ProgressFn | None = None,
        stopped: StoppedFn | None = None,
    ) -> list[Outcome]:
        """Render ``items`` (same :func:`batch_key`); one :class:`Outcome` per item, in order."""
        assert len({batch_key(i) for i in items}) <= 1, "a batch shares garment and settings"
        progress = progress or (lambda ids, done, total: None)
        stopped = stopped or (lambda ids: False)
        started = time.perf_counter()
        outcomes = {item.id: Outcome(item.id, seeds=item.params.seeds) for item in items}
        inputs: dict[str, _Inputs] = {}
        ready: list[WorkItem] = []
        for item in items:
            if stopped([item.id]):
                outcomes[item.id].status, outcomes[item.id].error = 499, "cancelled"
                continue
            try:
                inputs[item.id] = self._complete_inputs(item, outcomes[item.id])
                ready.append(item)
            except Exception as err:  # noqa: BLE001 - one request fails alone
                self._fail(outcomes[item.id], err)
        rows = [(item, j) for item in ready for j in range(item.params.num_images)]
        chunks = [rows[i : i + self.max_batch] for i in range(0, len(rows), self.max_batch)]
        steps = items[0].params.steps if items else 0
        for index, chunk in enumerate(chunks):
            ids = list(dict.fromkeys(item.id for item, _ in chunk))
            live = [row for row in chunk if outcomes[row[0].id].ok]
            if not live or stopped(ids):
                for item_id in ids:
                    if outcomes[item_id].ok:
                        outcomes[item_id].status, outcomes[item_id].error = 499, "cancelled"
                continue

            def report(done: int, ids=ids, index=index) -> None:
                progress(ids, index * steps + done, len(chunks) * steps)

            self._render_rows(live, inputs, outcomes, report, lambda ids=ids: stopped(ids))
        elapsed = time.perf_counter() - started
        for outcome in outcomes.values():
            outcome.seconds = elapsed
            if not outcome.ok:
                outcome.images, outcome.mask, outcome.pose = [], None, None
        return [outcomes[item.id] for item in items]

    def _complete_inputs(self, item: WorkItem, outcome: Outcome) -> _Inputs:
        """The mask and DensePose ``item`` is rendered with: automatic where it has none, its
        painted ``extra_mask`` added; records them (as PNG) in ``outcome``. ``item`` is left as
        it came."""
        if item.mask is None:
            mask = self.preprocessor.mask(item.person, item.params.category)
            binary = np.asarray(mask, dtype=bool)
        else:
            mask = item.mask
            if mask.size != item.person.size:
                mask = mask.resize(item.person.size, Image.Resampling.NEAREST)
            binary = np.asarray(mask.convert("L")) >= 128
        if item.extra_mask is not None:
            extra = item.extra_mask.convert("L").resize(item.person.size, Image.Resampling.NEAREST)
            binary = binary | (np.asarray(extra) >= 128)
        if not binary.any():
            raise ImageInputError("the mask is empty: mark the garment area to re-generate")
        pose = item.pose if item.pose is not None else self.preprocessor.densepose(item.person)
        used = _Inputs(mask=Image.fromarray(binary.astype(np.uint8) * 255), pose=pose)
        outcome.mask, outcome.pose = png_bytes(used.mask), png_bytes(used.pose)
        return used

    def _render_rows(self, rows, inputs, outcomes, report, is_stopped) -> None:
        """One pipeline call for ``rows`` ((item, image index) pairs); on failure, per item."""
        try:
            images = self._call(rows, inputs, report, is_stopped)
        except BatchStopped:
            for item_id in dict.fromkeys(item.id for item, _ in rows):
                outcomes[item_id].status, outcomes[item_id].error = 499, "cancelled"
            return
        except Exception as err:  # noqa: BLE001 - isolate the request that failed
            items = list(dict.fromkeys(item for item, _ in rows))
            if len(items) == 1:
                self._fail(outcomes[items[0].id], err)
                return
            logger.warning(
                "batched call of %d requests failed (%s); retrying one by one",
                len(items),
                type(err).__name__,
            )
            for item in items:
                rest = [r for r in rows if r[0] is item]
                self._render_rows(rest, inputs, outcomes, report, is_stopped)
            return
        for (item, j), image in zip(rows, images, strict=True):
            outcome = outcomes[item.id]
            while len(outcome.images) <= j:
                outcome.images.append(b"")
            outcome.images[j] = png_bytes(image)
            outcome.size = image.size

    def _call(self, rows, inputs, report, is_stopped) -> list[Image.Image]:
        first = rows[0][0]
        params = first.params

        def on_step_end(pipe, step_index, timestep, tensors):
            report(step_index + 1)
            if is_stopped():
                raise BatchStopped()
            return tensors

        self.pipeline_calls += 1
        result = self.pipe(
            garment_generator=torch.Generator().manual_seed(GARMENT_SEED),
            person_image=[item.person for item, _ in rows],
            garment_image=first.garment,
            mask_image=[inputs[item.id].mask for item, _ in rows],
            pose_image=[inputs[item.id].pose for item, _ in rows],
            garment_description=params.description,
            num_inference_steps=params.steps,
            guidance_scale=params.guidance,
            generator=[torch.Generator().manual_seed(item.params.seeds[j]) for item, j in rows],
            paste_back=params.paste_back,
            output_type="pil",
            garment_cache=self.garment_cache,
            callback_on_step_end=on_step_end,
        )
        return list(result.images)

    @staticmethod
    def _fail(outcome: Outcome, err: BaseException) -> None:
        outcome.status, outcome.error = error_status(err)
        if outcome.status >= 500:
            logger.error("request %s failed", outcome.id, exc_info=err)
        else:
            logger.info("request %s refused: %s", outcome.id, outcome.error)


def load_engine(config: ServeConfig) -> TryOnEngine:
    """Load ``config.model`` on ``config.device`` in ``config.dtype`` with its memory modes, as
    an engine with the server's batch size, preprocessing and garment cache; warmed up."""
    from ..devices import check_dtype_on_device
    from ..enums import DType
    from ..pipelines.loading import load_model
    from ..pipelines.memory import apply_memory_options

    dtype = DType(config.dtype).torch_dtype
    check_dtype_on_device(dtype, config.device)
    pipe = load_model(config.model, dtype, config.device)
    apply_memory_options(pipe, config.memory_options, config.device)
    engine = TryOnEngine(
        pipe,
        max_batch=config.max_batch,
        preprocess_models=config.preprocess_models,
        preprocess_device=config.device,
        garment_cache_bytes=config.garment_cache_bytes,
    )
    engine.warm_up()
    return engine
