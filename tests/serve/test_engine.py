"""The engine on its own, with a recording stand-in pipeline: what each pipeline call receives,
the automatic mask and DensePose, progress and stopping, failures alone, and the status of each
error. (Written against the mutation pass over ``serving/engine.py``.)"""

from __future__ import annotations

import io
import itertools
import logging

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")

from idm_vton.errors import (  # noqa: E402
    ImageInputError,
    NonFiniteOutputError,
    PreprocessModelError,
    UsageError,
)
from idm_vton.serving.config import ServeConfig, TryOnParams  # noqa: E402
from idm_vton.serving.engine import (  # noqa: E402
    GARMENT_SEED,
    BatchStopped,
    TryOnEngine,
    WorkItem,
    error_status,
)
from idm_vton.serving.images import ImageTooLargeError  # noqa: E402

_ids = itertools.count()


class RecordingPipeline:
    """Records each call's keyword arguments; returns each person image with its seed painted
    in pixel (0, 0); fails calls that hold a person marked (255, 0, 255)."""

    default_height, default_width = 32, 24

    def __init__(self):
        self.calls: list[dict] = []
        self.progress_disabled = None
        self.vae_slicing = False

    def set_progress_bar_config(self, disable):
        self.progress_disabled = disable

    def enable_vae_slicing(self):
        self.vae_slicing = True

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        people = kwargs["person_image"]
        people = people if isinstance(people, list) else [people]
        if any(p.getpixel((0, 0)) == (255, 0, 255) for p in people):
            raise RuntimeError("simulated failure")
        callback = kwargs.get("callback_on_step_end")
        for step in range(kwargs["num_inference_steps"]):
            if callback is not None:
                callback(self, step, 0, {})
        generators = kwargs["generator"]
        generators = generators if isinstance(generators, list) else [generators]
        images = []
        for person, generator in zip(people, generators, strict=True):
            out = person.copy()
            out.putpixel((0, 0), (int(generator.initial_seed()) % 256, 0, 0))
            images.append(out)
        return type("Out", (), {"images": images})()


class FakePreprocessor:
    def __init__(self):
        self.masks, self.poses = [], []

    def mask(self, person, category):
        self.masks.append(category)
        mask = np.zeros((person.height, person.width), bool)
        mask[: person.height // 2] = True
        return mask

    def densepose(self, person):
        self.poses.append(person.size)
        return Image.new("RGB", person.size, (9, 9, 9))


def item(seed=1, n=1, size=(8, 6), mask="full", pose=True, **fields) -> WorkItem:
    params = TryOnParams.parse(ServeConfig(), seed=seed, steps=3, num_images=n, **fields)
    masks = {"full": Image.new("L", size, 255), "none": None, "empty": Image.new("L", size, 0)}
    return WorkItem(
        id=f"e-{next(_ids)}",
        person=Image.new("RGB", size, (50, 60, 70)),
        garment=Image.new("RGB", (4, 4), (1, 2, 3)),
        params=params,
        mask=masks[mask],
        pose=Image.new("RGB", size, (5, 5, 5)) if pose else None,
    )


def png(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_the_engine_sets_up_its_pipeline():
    pipe = RecordingPipeline()
    engine = TryOnEngine(pipe, max_batch=0, garment_cache_bytes=0)
    assert pipe.progress_disabled is True and pipe.vae_slicing
    assert engine.max_batch == 1 and engine.garment_cache is None
    assert engine.work_size == (32, 24)
    cached = TryOnEngine(RecordingPipeline(), garment_cache_bytes=1 << 20)
    assert cached.garment_cache is not None and cached.max_batch == 4


def test_each_call_gets_its_rows_seeds_and_settings():
    pipe = RecordingPipeline()
    engine = TryOnEngine(pipe, max_batch=4)
    a, b = item(seed=10, n=2, description="a shirt"), item(seed=20, description="a shirt")
    outcomes = engine.run([a, b])
    assert engine.pipeline_calls == 1 and len(pipe.calls) == 1
    call = pipe.calls[0]
    assert call["garment_generator"].initial_seed() == GARMENT_SEED
    assert [g.initial_seed() for g in call["generator"]] == [10, 11, 20]
    assert call["person_image"] == [a.person, a.person, b.person]
    assert call["garment_image"] is a.garment
    assert call["garment_description"] == "a shirt"
    assert call["num_inference_steps"] == 3 and call["guidance_scale"] == 2.0
    assert call["paste_back"] is True and call["output_type"] == "pil"
    assert call["garment_cache"] is None
    assert [np.asarray(m).max() for m in call["mask_image"]] == [255, 255, 255]
    # each image is its own seed's, in order, as PNG bytes; the size is recorded
    assert [[png(d).getpixel((0, 0))[0] for d in o.images] for o in outcomes] == [[10, 11], [20]]
    assert [o.size for o in outcomes] == [(8, 6), (8, 6)] and [o.seeds for o in outcomes] == [
        [10, 11],
        [20],
    ]
    assert all(o.ok and o.status == 200 and o.seconds > 0 for o in outcomes)


def test_automatic_mask_and_pose_leave_the_request_as_it_came():
    pipe = RecordingPipeline()
    engine = TryOnEngine(pipe)
    engine._preprocessor = FakePreprocessor()
    it = item(mask="none", pose=False, category="dresses")
    extra = Image.new("L", (4, 3), 0)
    extra.putpixel((0, 2), 255)  # bottom left, at half size: resized to the photo
    it.extra_mask = extra
    (outcome,) = engine.run([it])
    assert it.mask is None and it.pose is None  # the queued request is not changed
    assert engine._preprocessor.masks == ["dresses"] and engine._preprocessor.poses == [(8, 6)]
    expected = np.zeros((6, 8), bool)
    expected[:3] = True
    expected[4:6, 0:2] = True
    assert np.array_equal(np.asarray(png(outcome.mask)) >= 128, expected)
    assert np.array_equal(np.asarray(pipe.calls[0]["mask_image"][0]) >= 128, expected)
    assert png(outcome.pose).getpixel((0, 0)) == (9, 9, 9)
    assert pipe.calls[0]["pose_image"][0].getpixel((0, 0)) == (9, 9, 9)


def test_a_mask_of_another_size_is_resized_nearest_and_left_as_it_came():
    pipe = RecordingPipeline()
    engine = TryOnEngine(pipe)
    it = item()
    small = Image.new("L", (4, 3), 0)
    small.putpixel((3, 0), 255)
    it.mask = small
    (outcome,) = engine.run([it])
    assert it.mask is small and small.size == (4, 3)
    expected = np.zeros((6, 8), bool)
    expected[0:2, 6:8] = True
    assert np.array_equal(np.asarray(png(outcome.mask)) >= 128, expected)
    assert png(outcome.pose).getpixel((1, 1)) == (5, 5, 5)  # the request's own pose


def test_an_empty_mask_fails_alone_with_400():
    engine = TryOnEngine(RecordingPipeline())
    good, empty = item(), item(mask="empty")
    outcomes = engine.run([good, empty])
    assert outcomes[0].ok and len(outcomes[0].images) == 1
    assert (outcomes[1].status, outcomes[1].error) == (
        400,
        "the mask is empty: mark the garment area to re-generate",
    )
    assert outcomes[1].images == [] and outcomes[1].mask is None and outcomes[1].pose is None


def test_a_failing_call_is_retried_request_by_request(caplog):
    pipe = RecordingPipeline()
    engine = TryOnEngine(pipe, max_batch=4)
    poison = item()
    poison.person = Image.new("RGB", (8, 6), (255, 0, 255))
    good = item(seed=3)
    with caplog.at_level(logging.INFO, logger="idm_vton.serving"):
        outcomes = engine.run([poison, good])
    assert [len(c["person_image"]) for c in pipe.calls] == [2, 1, 1]
    assert engine.pipeline_calls == 3
    assert (outcomes[0].status, outcomes[0].error) == (
        500,
        "internal error (details are in the server log)",
    )
    assert outcomes[1].ok and png(outcomes[1].images[0]).getpixel((0, 0))[0] == 3
    assert "batched call of 2 requests failed (RuntimeError); retrying one by one" in caplog.text
    assert f"request {poison.id} failed" in caplog.text


def test_progress_counts_steps_over_every_call_and_stopping_cancels():
    pipe = RecordingPipeline()
    engine = TryOnEngine(pipe, max_batch=1)
    it = item(n=2)
    seen = []
    engine.run([it], progress=lambda ids, done, total: seen.append((list(ids), done, total)))
    assert seen == [([it.id], d, 6) for d in (1, 2, 3, 4, 5, 6)]
    stopped_after = []

    def stopped(ids):
        stopped_after.append(list(ids))
        return len(stopped_after) > 2  # after the check per request and one step

    (outcome,) = engine.run([item(n=2)], stopped=stopped)
    assert (outcome.status, outcome.error, outcome.images) == (499, "cancelled", [])
    (gone,) = engine.run([item()], stopped=lambda ids: True)  # given up before it starts
    assert (gone.status, gone.error) == (499, "cancelled")


def test_batch_stopped_is_raised_from_the_step_callback():
    engine = TryOnEngine(RecordingPipeline())
    it = item()
    inputs = {it.id: type("I", (), {"mask": it.mask, "pose": it.pose})()}
    with pytest.raises(BatchStopped):
        engine._call([(it, 0)], inputs, lambda done: None, lambda: True)


def test_warm_up_is_one_small_call():
    pipe = RecordingPipeline()
    TryOnEngine(pipe).warm_up()
    (call,) = pipe.calls
    assert call["num_inference_steps"] == 1 and call["person_image"].size == (24, 32)
    mask = np.asarray(call["mask_image"]) >= 128
    assert mask[16, 12] and not mask[0, 0] and mask.mean() == 0.25
    assert call["garment_generator"].initial_seed() == GARMENT_SEED


@pytest.mark.parametrize(
    "error,status,message",
    [
        (ImageTooLargeError("x: too big"), 413, "x: too big"),
        (PreprocessModelError("no weights"), 503, "automatic mask/pose unavailable: no weights"),
        (NonFiniteOutputError("NaN"), 500, "NaN"),
        (UsageError("bad"), 400, "bad"),
        (ImageInputError("unreadable"), 400, "unreadable"),
        (torch.OutOfMemoryError("cuda"), 503, "out of memory on the device; try again later "
         "or with fewer images"),
        (RuntimeError("bug"), 500, "internal error (details are in the server log)"),
    ],
)  # fmt: skip
def test_error_status(error, status, message):
    assert error_status(error) == (status, message)


def test_defaults_and_lazy_preprocessing():
    engine = TryOnEngine(RecordingPipeline(), preprocess_models="/weights")
    assert (engine.preprocess_models, engine.preprocess_device) == ("/weights", "cpu")
    assert engine._preprocessor is None  # loaded on the first request that needs it
    assert TryOnEngine(RecordingPipeline(), garment_cache_bytes=1).garment_cache is not None
    cached = TryOnEngine(RecordingPipeline(), garment_cache_bytes=1 << 20)
    cached.run([item()])
    assert cached.pipe.calls[0]["garment_cache"] is cached.garment_cache


def test_warm_up_uses_a_grey_photo_as_every_image():
    pipe = RecordingPipeline()
    TryOnEngine(pipe).warm_up()
    (call,) = pipe.calls
    person = call["person_image"]
    assert person.getpixel((0, 0)) == (128, 128, 128)
    assert call["garment_image"] is person and call["pose_image"] is person
    assert call["garment_description"] == "" and call["generator"].initial_seed() == 0
    assert set(np.unique(np.asarray(call["mask_image"]))) == {0, 255}


def test_a_stop_between_calls_skips_the_rest_and_a_stop_in_a_call_ends_it():
    pipe = RecordingPipeline()
    engine = TryOnEngine(pipe, max_batch=1)
    asked = []

    def stopped(ids):
        # asked for the inputs, before the first call, at each of its 3 steps, then before
        # the second call: given up there, after the first image was made
        asked.append(list(ids))
        return len(asked) >= 6

    (outcome,) = engine.run([item(n=3)], stopped=stopped)
    assert len(pipe.calls) == 1  # the second and third images were never started
    assert (outcome.status, outcome.error, outcome.images) == (499, "cancelled", [])
    # a stop inside a call ends it at that step
    steps = []
    pipe2 = RecordingPipeline()
    (gone,) = TryOnEngine(pipe2).run(
        [item()],
        progress=lambda ids, done, total: steps.append(done),
        stopped=lambda ids: bool(steps),  # after the first step
    )
    assert steps == [1] and (gone.status, gone.error) == (499, "cancelled")


def test_a_batch_of_mixed_garments_or_settings_is_refused():
    engine = TryOnEngine(RecordingPipeline())
    with pytest.raises(AssertionError, match="a batch shares garment and settings"):
        engine.run([item(), item(description="another")])


def nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``mask`` scaled to ``size`` (width, height) by nearest neighbour, by index arithmetic."""
    rows = ((np.arange(size[1]) + 0.5) * mask.shape[0] / size[1]).astype(int)
    cols = ((np.arange(size[0]) + 0.5) * mask.shape[1] / size[0]).astype(int)
    return mask[rows][:, cols]


def test_masks_of_other_sizes_and_modes_are_read_the_same_way():
    engine = TryOnEngine(RecordingPipeline())
    it = item(size=(5, 5))
    checker = np.array([[0, 255], [255, 0]], np.uint8)
    it.mask = Image.fromarray(checker).convert("RGB")  # an RGB mask of another size
    corner = np.array([[255, 0], [0, 0]], np.uint8)
    it.extra_mask = Image.fromarray(corner)
    (outcome,) = engine.run([it])
    # nearest, not smoothed: a smoothing resize fills in part of the checker's other squares
    expected = (nearest(checker, (5, 5)) >= 128) | (nearest(corner, (5, 5)) >= 128)
    assert np.array_equal(np.asarray(png(outcome.mask)) >= 128, expected)


def test_a_given_up_request_does_not_stop_the_others():
    pipe = RecordingPipeline()
    engine = TryOnEngine(pipe)
    gone, kept = item(), item(seed=5)
    outcomes = engine.run([gone, kept], stopped=lambda ids: ids == [gone.id])
    assert (outcomes[0].status, outcomes[0].error) == (499, "cancelled")
    assert outcomes[1].ok and pipe.calls[0]["person_image"] == [kept.person]
    assert 0 < outcomes[1].seconds < 60


def test_masks_are_read_at_half_intensity_and_resized_nearest():
    engine = TryOnEngine(RecordingPipeline())
    it = item(size=(4, 2))
    it.mask = Image.fromarray(np.array([[128, 127]], np.uint8))  # 2 x 1: resized to 4 x 2
    extra = Image.fromarray(np.array([[0, 0, 0, 128], [0, 0, 0, 127]], np.uint8), mode="L")
    it.extra_mask = extra.convert("RGB")  # any mode: read as L
    (outcome,) = engine.run([it])
    assert (np.asarray(png(outcome.mask)) >= 128).tolist() == [
        [True, True, False, True],
        [True, True, False, False],
    ]


def test_failures_are_logged_by_their_kind(caplog):
    engine = TryOnEngine(RecordingPipeline())
    poison = item()
    poison.person = Image.new("RGB", (8, 6), (255, 0, 255))
    empty = item(mask="empty")
    with caplog.at_level(logging.INFO, logger="idm_vton.serving"):
        engine.run([poison])
        engine.run([empty])
    records = [r for r in caplog.records if r.name == "idm_vton.serving"]
    failed = next(r for r in records if r.levelno == logging.ERROR)
    assert failed.getMessage() == f"request {poison.id} failed"
    assert failed.exc_info[0] is RuntimeError
    refused = next(r for r in records if r.levelno == logging.INFO)
    assert refused.getMessage() == (
        f"request {empty.id} refused: the mask is empty: mark the garment area to re-generate"
    )
