"""The job queue on its own, exactly: accounting of pixels and result bytes, refusals and their
messages, job states and statuses, batching counters, shutdown. (Written against the mutation
pass over ``serving/job_queue.py``: each test pins behaviour a mutant changed.)"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time

import pytest
from PIL import Image

pytest.importorskip("fastapi")

from idm_vton.serving.config import ServeConfig, TryOnParams  # noqa: E402
from idm_vton.serving.engine import Outcome, WorkItem  # noqa: E402
from idm_vton.serving.job_queue import (  # noqa: E402
    Job,
    JobQueue,
    JobState,
    NotReadyError,
    QueueFullError,
    RequestTooLargeError,
    megapixels,
)

_ids = itertools.count()


def item(size=(10, 10), steps=2, n=1, color=(1, 2, 3), mask=True) -> WorkItem:
    params = TryOnParams.parse(ServeConfig(), seed=1, steps=steps, num_images=n)
    return WorkItem(
        id=f"q-{next(_ids)}",
        person=Image.new("RGB", size),
        garment=Image.new("RGB", (4, 5), color),
        params=params,
        mask=Image.new("L", size, 255) if mask else None,
    )


class Gate:
    """A backend that waits for ``release`` and then answers with ``answer(items)``."""

    def __init__(self, answer=None):
        self.release = threading.Event()
        self.started = threading.Event()
        self.calls: list[list[str]] = []
        self.answer = answer or (
            lambda items: [Outcome(i.id, images=[b"12345"], seeds=[1]) for i in items]
        )

    def __call__(self, items, progress, stopped):
        self.calls.append([i.id for i in items])
        self.started.set()
        assert self.release.wait(20)
        return self.answer(items)


def wait_until(condition, timeout=20):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.002)


def test_megapixels_and_item_pixels():
    assert megapixels(81_000_000) == "81.0 MP" and megapixels(1_250_000) == "1.2 MP"
    it = item(size=(10, 10))
    assert it.pixels == 10 * 10 + 4 * 5 + 10 * 10  # person, garment, mask
    it.pose = Image.new("RGB", (3, 3))
    it.extra_mask = Image.new("L", (2, 2))
    assert it.pixels == 100 + 20 + 100 + 9 + 4


def test_refusals_before_start_and_when_stopping():
    jobs = JobQueue()
    with pytest.raises(NotReadyError, match="^the model is not loaded yet$"):
        jobs.reserve(1)
    jobs.start(Gate())
    assert jobs.ready
    jobs.stop_accepting()
    assert not jobs.ready
    with pytest.raises(NotReadyError, match="^the server is shutting down$"):
        jobs.reserve(1)
    jobs.close()


def test_pixel_budgets_count_exactly_and_refuse_at_the_limit():
    jobs = JobQueue(max_queue=10, max_request_pixels=100, max_queue_pixels=250)
    jobs.start(Gate())
    try:
        assert jobs.reserve(100).pixels == 100  # exactly the limit is allowed
        with pytest.raises(RequestTooLargeError) as too_large:
            jobs.reserve(101)
        assert str(too_large.value) == (
            "the request's images have 0.0 MP in total, over the limit of 0.0 MP per request"
        )
        assert jobs.usage()["pixels"] == 100
        second = jobs.reserve(100)
        assert jobs.usage()["pixels"] == 200
        jobs.reserve(50)  # 250: exactly the queue's budget
        with pytest.raises(QueueFullError) as full:
            jobs.reserve(1)
        assert str(full.value) == "the queue is full (its images would pass 0.0 MP); retry later"
        second.release()
        second.release()  # once only
        assert jobs.usage()["pixels"] == 150
        with second:  # leaving an already released reservation changes nothing
            pass
        assert jobs.usage()["pixels"] == 150
    finally:
        jobs.close()


def test_waiting_and_decoding_requests_count_against_max_queue():
    gate = Gate()
    jobs = JobQueue(max_queue=2, max_batch=1)
    jobs.start(gate)
    try:
        running = jobs.submit(item())
        gate.started.wait(10)
        first = jobs.reserve(1)  # being decoded
        jobs.submit(item(steps=3))  # waiting
        with pytest.raises(QueueFullError) as full:
            jobs.reserve(1)
        assert str(full.value) == "the queue is full (2 requests waiting); retry later"
        first.release()
        assert jobs.reserve(1).pixels == 1
        gate.release.set()
        wait_until(lambda: running.state is JobState.DONE)
    finally:
        jobs.close()


def test_submit_takes_the_reservation_and_counts_the_job():
    gate = Gate()
    jobs = JobQueue(max_batch=1)
    jobs.start(gate)
    try:
        it = item()
        reservation = jobs.reserve(500)
        job = jobs.submit(it, reservation)
        assert not reservation.open
        assert (job.id, job.steps, job.pixels, job.item) == (it.id, 2, 500, it)
        assert jobs.usage() == {
            "queued": jobs.queued,
            "running": 1 - jobs.queued,
            "finished": 0,
            "pixels": 500,
            "result_bytes": 0,
        }
        with pytest.raises(AssertionError, match="used once"):
            jobs.submit(item(), reservation)
        other = jobs.submit(item())  # reserves its own pixels
        assert other.pixels == other.item.pixels == 220
        assert jobs.usage()["pixels"] == 720
        gate.release.set()
        wait_until(lambda: other.state.final and job.state.final)
        wait_until(lambda: jobs.usage()["running"] == 0)
        usage = jobs.usage()
        assert usage["pixels"] == 0 and usage["result_bytes"] == 10  # two results of 5 bytes
        assert job.item is None and other.item is None  # decoded images dropped
        assert job.outcome.images == [b"12345"] and job.status == 200 and job.error is None
    finally:
        jobs.close()


def test_statuses_positions_versions_and_cancelling():
    gate = Gate()
    jobs = JobQueue(max_queue=5, max_batch=1)
    jobs.start(gate)
    try:
        running = jobs.submit(item(steps=7))
        gate.started.wait(10)
        wait_until(lambda: running.state is JobState.RUNNING)
        waiting = [jobs.submit(item(steps=s)) for s in (3, 4)]
        status = jobs.status(waiting[1])
        assert status == {
            "id": waiting[1].id,
            "state": "queued",
            "queue_position": 2,
            "step": 0,
            "steps": 4,
            "error": None,
            "version": waiting[1].version,
        }
        assert jobs.status(running)["queue_position"] is None
        assert jobs.status(running)["steps"] == 7 == running.total
        version = waiting[1].version
        assert jobs.cancel(waiting[0].id) is waiting[0]
        assert (waiting[0].state, waiting[0].status, waiting[0].error) == (
            JobState.CANCELLED,
            409,
            "cancelled",
        )
        assert waiting[1].version == version + 1  # moved up: touched once
        assert jobs.status(waiting[1])["queue_position"] == 1
        assert jobs.cancel("no-such-job") is None
        assert jobs.cancel(waiting[0].id) is waiting[0]  # final: unchanged
        assert waiting[0].status == 409
        assert jobs.get(waiting[0].id) is waiting[0]
        jobs.forget(waiting[0].id)
        assert jobs.get(waiting[0].id) is None
        jobs.forget(running.id)  # not final: kept
        assert jobs.get(running.id) is running
        gate.release.set()
    finally:
        jobs.close()


def test_progress_reaches_running_jobs_only():
    jobs = JobQueue()
    job = Job(item=None, deadline=time.monotonic() + 60, id="p")
    jobs._jobs["p"] = job
    jobs._progress(["p", "unknown"], 3, 9)
    assert (job.step, job.total) == (0, 0)  # queued: not touched
    job.state = JobState.RUNNING
    version = job.version
    jobs._progress(["p"], 3, 9)
    assert (job.step, job.total, job.version) == (3, 9, version + 1)


def test_a_backend_that_raises_fails_its_batch_with_500(caplog):
    def broken(items, progress, stopped):
        raise RuntimeError("device lost")

    jobs = JobQueue(max_batch=2)
    jobs.start(broken)
    try:
        with caplog.at_level(logging.ERROR, logger="idm_vton.serving"):
            job = jobs.submit(item())
            wait_until(lambda: job.state.final)
        assert (job.state, job.status, job.error) == (
            JobState.FAILED,
            500,
            "internal error (see the server log)",
        )
        assert "batch of 1 failed" in caplog.text
        wait_until(lambda: jobs.usage()["running"] == 0)
        assert jobs.usage()["pixels"] == 0
    finally:
        jobs.close()


def test_a_failed_outcome_keeps_its_status_and_message():
    gate = Gate(lambda items: [Outcome(i.id, status=413, error="too big") for i in items])
    gate.release.set()
    jobs = JobQueue()
    jobs.start(gate)
    try:
        job = jobs.submit(item())
        wait_until(lambda: job.state.final)
        assert (job.state, job.status, job.error, job.outcome) == (
            JobState.FAILED,
            413,
            "too big",
            None,
        )
        assert jobs.batches == 1 and jobs.batch_sizes == [1]
    finally:
        jobs.close()


def test_shutdown_ends_waiting_and_running_jobs_with_503():
    gate = Gate()
    jobs = JobQueue(max_batch=1)
    jobs.start(gate)
    running = jobs.submit(item())
    gate.started.wait(10)
    waiting = jobs.submit(item(steps=5))
    jobs.cancel_all()
    for job in (running, waiting):
        assert (job.state, job.status, job.error) == (
            JobState.FAILED,
            503,
            "the server is shutting down",
        )
    assert jobs.queued == 0 and not jobs.ready
    gate.release.set()
    jobs.close(timeout=10)
    assert all(not thread.is_alive() for thread in jobs._threads)
    assert running.outcome is None  # the late result is dropped
    assert jobs.usage()["pixels"] == 0


def test_results_stay_within_their_byte_budget_oldest_first():
    answer = lambda items: [Outcome(i.id, images=[b"x" * 40]) for i in items]  # noqa: E731
    gate = Gate(answer)
    gate.release.set()
    jobs = JobQueue(max_result_bytes=100, max_batch=1)
    jobs.start(gate)
    try:
        done = []
        for _ in range(3):
            done.append(jobs.submit(item()))
            wait_until(lambda: done[-1].state.final)
            wait_until(lambda: jobs.usage()["running"] == 0)
        assert jobs.get(done[0].id) is None  # 120 bytes > 100: the oldest went
        assert jobs.get(done[1].id) is done[1] and jobs.get(done[2].id) is done[2]
        assert jobs.usage()["result_bytes"] == 80
        jobs.forget(done[1].id)
        assert jobs.usage()["result_bytes"] == 40 and done[1].outcome is None
    finally:
        jobs.close()


def test_finished_jobs_are_dropped_past_their_count_and_age():
    gate = Gate()
    gate.release.set()
    jobs = JobQueue(max_finished=2, job_ttl_s=3600, max_batch=1)
    jobs.start(gate)
    try:
        done = []
        for _ in range(3):
            done.append(jobs.submit(item()))
            wait_until(lambda: done[-1].state.final)
        wait_until(lambda: jobs.usage()["finished"] == 2)
        assert jobs.get(done[0].id) is None and jobs.get(done[2].id) is done[2]
        jobs.job_ttl_s = 0.0
        done[2].finished_at = time.monotonic() - 1
        assert jobs.get(done[2].id) is None
    finally:
        jobs.close()


def test_waiting_jobs_time_out_in_the_queue():
    gate = Gate()
    jobs = JobQueue(max_batch=1)
    jobs.start(gate)
    try:
        jobs.submit(item())
        gate.started.wait(10)
        late = jobs.submit(item(steps=9))
        late.deadline = time.monotonic() - 1
        assert jobs.status(late)["state"] == "failed"
        assert (late.status, late.error) == (504, "timed out while waiting in the queue")
        assert jobs.queued == 0
        gate.release.set()
    finally:
        jobs.close()


def test_watchers_wake_on_every_change():
    job = Job(item=None, deadline=0.0)

    async def scenario():
        assert await job.changed(job.version + 1, timeout=0.01)  # already different
        version = job.version
        assert not await job.changed(version, timeout=0.01)  # nothing happened
        waiter = asyncio.ensure_future(job.changed(version, timeout=10))
        await asyncio.sleep(0)
        threading.Thread(target=job._touch).start()  # from a worker thread
        assert await waiter
        assert job.version == version + 1 and job._watchers == []

    asyncio.run(scenario())
    job._touch()  # the loop is gone: nothing to wake, no error
    assert job.version >= 2


def test_workers_are_named_daemon_threads_and_drain_the_queue_after_stop_accepting():
    gate = Gate()
    jobs = JobQueue(max_batch=1, workers=2)
    jobs.start(gate)
    try:
        assert [t.name for t in jobs._threads] == ["idm-vton-worker-0", "idm-vton-worker-1"]
        assert all(t.daemon for t in jobs._threads)  # never keep the process alive
        waiting = [jobs.submit(item(steps=s)) for s in (2, 3, 4)]
        jobs.stop_accepting()  # a shutdown's first step: what is queued still runs
        gate.release.set()
        wait_until(lambda: all(job.state.final for job in waiting))
        assert [job.state for job in waiting] == [JobState.DONE] * 3
        assert jobs.batches == 3 and jobs.batch_sizes == [1, 1, 1]
        assert all(job.finished_at is not None for job in waiting)
    finally:
        jobs.close()


def test_a_released_reservation_frees_exactly_one_place():
    jobs = JobQueue(max_queue=1)
    jobs.start(Gate())
    try:
        jobs.reserve(1).release()
        jobs.reserve(1)
        with pytest.raises(QueueFullError):
            jobs.reserve(1)
    finally:
        jobs.close()


def test_forgetting_a_waiting_job_keeps_it():
    gate = Gate()
    jobs = JobQueue(max_batch=1)
    jobs.start(gate)
    try:
        jobs.submit(item())
        gate.started.wait(10)
        waiting = jobs.submit(item(steps=5))
        jobs.forget(waiting.id)
        assert jobs.get(waiting.id) is waiting
        gate.release.set()
    finally:
        jobs.close()


def test_a_batch_skips_a_job_too_big_for_it_and_takes_the_next_that_fits():
    gate = Gate()
    jobs = JobQueue(max_batch=2)
    jobs.start(gate)
    try:
        blocker = jobs.submit(item(color=(9, 9, 9)))
        gate.started.wait(10)
        first, two, third = jobs.submit(item()), jobs.submit(item(n=2)), jobs.submit(item())
        gate.release.set()
        wait_until(lambda: all(j.state.final for j in (first, two, third)))
        assert gate.calls == [[blocker.id], [first.id, third.id], [two.id]]
    finally:
        jobs.close()


def test_results_exactly_at_the_budget_are_kept():
    answer = lambda items: [Outcome(i.id, images=[b"x" * 40]) for i in items]  # noqa: E731
    gate = Gate(answer)
    gate.release.set()
    jobs = JobQueue(max_result_bytes=80, max_batch=1)
    jobs.start(gate)
    try:
        done = [jobs.submit(item())]
        wait_until(lambda: done[0].state.final)
        done.append(jobs.submit(item()))
        wait_until(lambda: done[1].state.final and jobs.usage()["running"] == 0)
        assert jobs.get(done[0].id) is done[0] and jobs.usage()["result_bytes"] == 80
    finally:
        jobs.close()


def test_the_failure_of_a_batch_is_logged_with_its_traceback(caplog):
    def broken(items, progress, stopped):
        raise RuntimeError("device lost")

    jobs = JobQueue()
    jobs.start(broken)
    try:
        with caplog.at_level(logging.ERROR, logger="idm_vton.serving"):
            job = jobs.submit(item())
            wait_until(lambda: job.state.final)
        (record,) = [r for r in caplog.records if r.name == "idm_vton.serving"]
        assert record.getMessage() == "batch of 1 failed" and record.exc_info[0] is RuntimeError
    finally:
        jobs.close()


def test_a_waiter_is_woken_by_the_change_not_by_its_timeout():
    job = Job(item=None, deadline=0.0)

    async def scenario():
        version = job.version
        waiter = asyncio.ensure_future(job.changed(version, timeout=30))
        await asyncio.sleep(0)
        started = time.monotonic()
        threading.Thread(target=job._touch).start()
        assert await waiter
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 15  # woken, not timed out


def test_the_jobs_that_finished_first_are_dropped_first():
    gate = Gate()
    jobs = JobQueue(max_finished=1, max_batch=1)
    jobs.start(gate)
    try:
        blocker = jobs.submit(item(color=(9, 9, 9)))
        gate.started.wait(10)
        older, newer = jobs.submit(item(steps=3)), jobs.submit(item(steps=4))
        jobs.cancel(newer.id)  # finishes first, though queued last
        stamp = newer.finished_at
        while time.monotonic() == stamp:  # distinct finishing times, even on a coarse clock
            pass
        jobs.cancel(older.id)
        assert jobs.get(newer.id) is None and jobs.get(older.id) is older
        gate.release.set()
        wait_until(lambda: blocker.state.final)
    finally:
        jobs.close()
