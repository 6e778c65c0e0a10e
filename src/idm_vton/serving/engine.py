"""The model side of the server: one pipeline, the automatic mask/pose, and batched calls.

:class:`TryOnEngine` is used by exactly one thread (the GPU worker of :mod:`.job_queue`, or a
Ray replica). It receives a batch of requests that share the garment and the settings
(:func:`batch_key`), computes the automatic mask and DensePose of each person that needs them,
and renders all of them in pipeline calls of at most ``max_batch`` people with ONE shared garment
(one GarmentNet pass per step for all). Each image has its own ``torch.Generator`` seeded by its
request's seed and the garment latent's draw comes from a fixed generator, so a request gives the
same image whether it ran alone or in a batch (up to floating-point rounding of batched kernels).

Beyond that: a request may read its garment's description V (``description=auto``) and
category from the photo with the garment annotator (on this same pipeline's image encoder, which
is why describing runs on this queue too: :data:`DESCRIBE` items), use the official demo's
auto-crop, or be an outfit: several garments, rendered alone (never batched) by
:func:`~idm_vton.pipelines.outfit.run_outfit`, one pass per garment with the mask of each pass
computed from the current image.

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
from ..pipelines.image_processor import centred_region
from ..pipelines.outfit import OutfitGarment, run_outfit
from ..pipelines.tryon import TryOnPipeline
from ..preprocess.preprocessor import Preprocessor
from .config import ServeConfig, TryOnParams
from .images import ImageTooLargeError, image_digest, png_bytes

__all__ = [
    "DESCRIBE",
    "GARMENT_SEED",
    "TRYON",
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

#: What a :class:`WorkItem` asks for: a try-on, or only the garments' descriptions.
TRYON, DESCRIBE = "tryon", "describe"

#: (step done, steps in total) for the jobs ``ids`` of the current call.
ProgressFn = Callable[[Sequence[str], int, int], None]
#: True when every job of ``ids`` was cancelled or timed out: the call stops at the next step.
StoppedFn = Callable[[Sequence[str]], bool]


class BatchStopped(Exception):
    """Raised from the step callback when every request of a pipeline call was cancelled."""


@dataclass(eq=False)
class WorkItem:
    """One request as the engine sees it: decoded images and validated parameters.

    ``garment`` is the first garment, ``more_garments`` the others of an outfit (one per
    ``params.garments`` entry after the first). ``task`` :data:`DESCRIBE`: only read the
    garments' descriptions (no person).
    """

    id: str
    person: Image.Image | None
    garment: Image.Image
    params: TryOnParams
    mask: Image.Image | None = None  # None: automatic
    pose: Image.Image | None = None  # None: automatic
    extra_mask: Image.Image | None = None  # painted in the UI: added to the automatic mask
    garment_hash: str = ""
    more_garments: tuple[Image.Image, ...] = ()
    task: str = TRYON

    def __post_init__(self) -> None:
        if not self.garment_hash:
            self.garment_hash = image_digest(self.garment)
        assert len(self.garments) == len(self.params.garments), "one garment per garment field"

    @property
    def garments(self) -> tuple[Image.Image, ...]:
        return (self.garment, *self.more_garments)

    @property
    def pixels(self) -> int:
        """Pixels of the request's images (what its place in the queue costs): an outfit's
        photo, mask and DensePose count once per pass."""

        def count(images) -> int:
            return sum(image.width * image.height for image in images if image is not None)

        per_pass = count((self.person, self.mask, self.pose, self.extra_mask))
        return len(self.garments) * per_pass + count(self.garments)


@dataclass
class Outcome:
    """A request's result: PNG images (or an HTTP status and a one-line error) and what was used.

    ``images``, ``mask`` and ``pose`` are PNG bytes (pixels only, :func:`~.images.png_bytes`);
    ``size`` is the images' (width, height). ``descriptions`` and ``categories``: per garment, in
    the order given, the V and the category it was rendered with (read from the photo where the
    request asked); ``tags``: the annotator's reading per garment (its ``to_json()``) where it
    read one, else None.
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
    descriptions: list[str | None] = field(default_factory=list)
    categories: list[str | None] = field(default_factory=list)
    tags: list[dict | None] = field(default_factory=list)

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
    description: str


def batch_key(item: WorkItem) -> tuple:
    """What requests must share to be rendered in one pipeline call.

    The garment (content hash), its description and the sampling settings. The category is not
    part of it: it only chooses the automatic mask, which is computed per person. An outfit is
    never batched (its key holds its id); describe requests for the same garments share one.
    """
    p = item.params
    if item.task == DESCRIBE:
        return (DESCRIBE, *(image_digest(g) for g in item.more_garments), item.garment_hash)
    if p.is_outfit:
        return ("outfit", item.id)
    return (item.garment_hash, p.description, p.steps, p.guidance, p.paste_back, p.auto_crop)


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
        model, annotator: the model's name and the ``--annotator`` choice, for the garment
            annotator (loaded on the first request that reads a garment photo; see
            :func:`~idm_vton.annotation.load_annotator`).
    """

    def __init__(
        self,
        pipe: TryOnPipeline,
        max_batch: int = 4,
        preprocess_models: str | None = None,
        preprocess_device: str = "cpu",
        garment_cache_bytes: int = 0,
        model: str = "tiny",
        annotator: str | None = None,
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
        self.model = model
        self.annotator_choice = annotator
        self._annotator = None

    @property
    def annotator(self):
        """The garment annotator (:func:`~idm_vton.annotation.load_annotator`, on this
        pipeline's image encoder), loaded on first use."""
        if self._annotator is None:
            from ..annotation import load_annotator

            self._annotator = load_annotator(
                self.annotator_choice, model=self.model, pipe=self.pipe
            )
        return self._annotator

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
        if items and items[0].task == DESCRIBE:
            self._describe(items, outcomes, stopped)
        elif items and items[0].params.is_outfit:
            self._render_outfit(items[0], outcomes[items[0].id], progress, stopped)
        else:
            self._render_batch(items, outcomes, progress, stopped)
        elapsed = time.perf_counter() - started
        for outcome in outcomes.values():
            outcome.seconds = elapsed
            if not outcome.ok:
                outcome.images, outcome.mask, outcome.pose = [], None, None
        return [outcomes[item.id] for item in items]

    def _render_batch(self, items, outcomes, progress, stopped) -> None:
        """Same-garment requests: their automatic inputs, then pipeline calls of at most
        ``max_batch`` people."""
        inputs: dict[str, _Inputs] = {}
        ready: list[WorkItem] = []
        reading = None  # the garment read from its photo, once for the batch
        for item in items:
            if stopped([item.id]):
                outcomes[item.id].status, outcomes[item.id].error = 499, "cancelled"
                continue
            try:
                garment = item.params.garments[0]
                if reading is None and (garment.reads_description or garment.category is None):
                    reading = self.annotator.describe(item.garment)
                inputs[item.id] = self._complete_inputs(item, outcomes[item.id], reading)
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

    def _complete_inputs(self, item: WorkItem, outcome: Outcome, reading=None) -> _Inputs:
        """The mask and DensePose ``item`` is rendered with: automatic where it has none (for
        its category, or the one ``reading`` gives), its painted ``extra_mask`` added; records
        them (as PNG) in ``outcome``, with the description and category used. ``item`` is left
        as it came."""
        garment = item.params.garments[0]
        category = garment.category
        if category is None:
            category = self.annotator.category(reading).value
        description = reading.description if garment.reads_description else garment.description
        outcome.descriptions, outcome.categories = [description], [category]
        outcome.tags = [reading.to_json() if reading is not None else None]
        mask, pose = self._automatic(
            item.person, category, item.mask is None, item.pose is None, item.params.auto_crop
        )
        if mask is None:
            mask = item.mask
            if mask.size != item.person.size:
                mask = mask.resize(item.person.size, Image.Resampling.NEAREST)
            mask = np.asarray(mask.convert("L")) >= 128
        binary = mask
        if item.extra_mask is not None:
            extra = item.extra_mask.convert("L").resize(item.person.size, Image.Resampling.NEAREST)
            binary = binary | (np.asarray(extra) >= 128)
        if not binary.any():
            raise ImageInputError("the mask is empty: mark the garment area to re-generate")
        pose = item.pose if pose is None else pose
        used = _Inputs(Image.fromarray(binary.astype(np.uint8) * 255), pose, description)
        outcome.mask, outcome.pose = png_bytes(used.mask), png_bytes(used.pose)
        return used

    def _automatic(self, person, category: str, mask: bool, pose: bool, auto_crop: bool):
        """The automatic mask (a bool array) and DensePose of ``person`` for ``category``, None
        where not asked; with ``auto_crop``, computed on the demo's crop box as the demo does."""
        if not auto_crop:
            return (
                np.asarray(self.preprocessor.mask(person, category), dtype=bool) if mask else None,
                self.preprocessor.densepose(person) if pose else None,
            )
        if not (mask or pose):
            return None, None
        region = centred_region(person.size, *self.work_size)
        box = (region.left, region.top, region.right, region.bottom)
        mask_image, pose_image = self.preprocessor.tryon_inputs(
            person, category, mask=mask, pose=pose, box=box
        )
        return (np.asarray(mask_image) >= 128 if mask else None), pose_image

    def _describe(self, items, outcomes, stopped) -> None:
        """Describe requests for the same garments: read once, answered to each."""
        live = [item for item in items if not stopped([item.id])]
        for item in items:
            if item not in live:
                outcomes[item.id].status, outcomes[item.id].error = 499, "cancelled"
        if not live:
            return
        try:
            readings = self.annotator.describe_batch(list(live[0].garments))
        except Exception as err:  # noqa: BLE001 - answered to each request
            for item in live:
                self._fail(outcomes[item.id], err)
            return
        for item in live:
            outcome = outcomes[item.id]
            outcome.seeds = []
            outcome.descriptions = [r.description for r in readings]
            outcome.categories = [self.annotator.category(r).value for r in readings]
            outcome.tags = [r.to_json() for r in readings]

    def _render_outfit(self, item: WorkItem, outcome: Outcome, progress, stopped) -> None:
        """An outfit, alone: one :func:`~idm_vton.pipelines.outfit.run_outfit` per image, each
        pass's automatic mask and DensePose from the image that pass starts from."""
        params, ids = item.params, [item.id]
        passes, steps = len(params.garments), params.steps
        total = params.num_images * passes * steps
        outfit = [
            OutfitGarment(
                image=image,
                category=g.category,
                description=None if g.reads_description else g.description,
                name=f"garment {i + 1}",
            )
            for i, (image, g) in enumerate(zip(item.garments, params.garments, strict=True))
        ]
        reads = any(g.category is None or g.reads_description for g in params.garments)
        state = {"done": 0, "pose": None}

        def inputs_for(image, category):
            mask, pose = self._automatic(image, category, True, item.pose is None, params.auto_crop)
            pose = item.pose if pose is None else pose
            if state["pose"] is None:
                state["pose"] = pose  # the photo's, shown as the DensePose used
            return Image.fromarray(mask.astype(np.uint8) * 255), pose

        def on_step_end(pipe, step_index, timestep, tensors):
            state["done"] += 1
            progress(ids, state["done"], total)
            if stopped(ids):
                raise BatchStopped()
            return tensors

        try:
            for seed in params.seeds:
                self.pipeline_calls += passes
                result = run_outfit(
                    self.pipe,
                    item.person,
                    outfit,
                    inputs_for,
                    seed=seed,
                    garment_seed=GARMENT_SEED,
                    garment_annotator=self.annotator if reads else None,
                    auto_crop=params.auto_crop,
                    num_inference_steps=steps,
                    guidance_scale=params.guidance,
                    garment_cache=self.garment_cache,
                    callback_on_step_end=on_step_end,
                )
                outcome.images.append(png_bytes(result.image))
                outcome.size = result.image.size
        except BatchStopped:
            outcome.status, outcome.error = 499, "cancelled"
            return
        except Exception as err:  # noqa: BLE001 - the request fails alone
            self._fail(outcome, err)
            return
        by_garment = sorted(result.passes, key=lambda p: p.index)
        outcome.descriptions = [p.description for p in by_garment]
        outcome.categories = [str(p.garment.category) for p in by_garment]
        outcome.tags = [p.tags.to_json() if p.tags is not None else None for p in by_garment]
        outcome.mask = png_bytes(Image.fromarray(result.changed.astype(np.uint8) * 255))
        outcome.pose = png_bytes(state["pose"])

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
            garment_description=inputs[first.id].description,
            num_inference_steps=params.steps,
            guidance_scale=params.guidance,
            generator=[torch.Generator().manual_seed(item.params.seeds[j]) for item, j in rows],
            paste_back=params.paste_back,
            auto_crop=params.auto_crop,
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
        model=config.model,
        annotator=config.annotator,
    )
    engine.warm_up()
    return engine
