"""The job queue: jobs, bounded waiting, same-garment batching and the worker threads.

Requests become :class:`Job` s in one FIFO queue of at most ``max_queue`` waiting jobs. Each
worker thread (one per device: one in a single process, one per Ray replica behind the Ray
ingress) takes the oldest job and, in queue order, the other waiting jobs with the same
:func:`~.engine.batch_key` up to ``max_batch`` images, and hands them to the :class:`Backend` as
one batch. Jobs can be cancelled (a waiting job leaves the queue; a running one stops at the next
denoising step once every job of its call is cancelled, and is reported cancelled at once in any
case) and time out ``timeout_s`` after they arrived.

Memory is bounded by design (docs/serving.md, *Limits*):

- a request's images are counted in pixels before they are decoded (:meth:`JobQueue.reserve`):
  over ``max_request_pixels`` it is refused (:class:`RequestTooLargeError`, HTTP 413); the pixels
  of every job waiting, running or being decoded together stay under ``max_queue_pixels``
  (:class:`QueueFullError`, HTTP 429);
- a finished job keeps only its encoded PNGs (:class:`~.engine.Outcome`), never its decoded
  inputs; the results not yet fetched stay under ``max_result_bytes`` (the oldest go first),
  ``max_finished`` jobs and ``job_ttl_s`` seconds (then ``GET /v1/jobs/{id}/result`` is 404).

Every change of a job bumps its ``version`` and wakes its async watchers (:meth:`Job.changed`),
which is how the HTTP layer waits for results and streams progress without polling.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from .engine import Outcome, ProgressFn, StoppedFn, WorkItem, batch_key

__all__ = [
    "Backend",
    "Job",
    "JobQueue",
    "JobState",
    "NotReadyError",
    "QueueFullError",
    "RequestTooLargeError",
    "Reservation",
]

logger = logging.getLogger("idm_vton.serving")

_MP = 1_000_000


class Backend(Protocol):
    """What renders a batch: :meth:`.engine.TryOnEngine.run`, or a Ray model replica's client.

    Returns one :class:`~.engine.Outcome` per item, in order; reports ``progress(ids, done,
    total)`` and stops early when ``stopped(ids)`` is true (every job of the call given up).
    """

    def __call__(
        self, items: Sequence[WorkItem], progress: ProgressFn, stopped: StoppedFn
    ) -> list[Outcome]: ...


class QueueFullError(Exception):
    """The queue holds ``max_queue`` waiting jobs or ``max_queue_pixels`` of images (HTTP 429)."""


class NotReadyError(Exception):
    """The model is not loaded yet, failed to load, or the server is stopping (HTTP 503)."""


class RequestTooLargeError(Exception):
    """One request's images are over ``max_request_pixels`` (HTTP 413)."""


class JobState(str, Enum):
    """Where a job is; the last three are final."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


def megapixels(pixels: int) -> str:
    """``pixels`` in megapixels for a message: ``81.0 MP``."""
    return f"{pixels / _MP:.1f} MP"


@dataclass(eq=False)
class Job:
    """One request through the queue. Read its fields under the queue's lock or via
    :meth:`JobQueue.status`; ``version`` increases with every change. ``item`` (the decoded
    images) is dropped once the job is final and no worker uses it."""

    item: WorkItem | None
    deadline: float
    id: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    steps: int = 0
    pixels: int = 0
    created: float = field(default_factory=time.monotonic)
    state: JobState = JobState.QUEUED
    step: int = 0
    total: int = 0
    outcome: Outcome | None = None
    status: int = 200
    error: str | None = None
    finished_at: float | None = None
    version: int = 0
    _watchers: list = field(default_factory=list, repr=False)

    def _touch(self) -> None:
        self.version += 1
        for loop, event in list(self._watchers):
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop is closed: its waiter is gone
                self._watchers.remove((loop, event))

    async def changed(self, version: int, timeout: float) -> bool:
        """Wait (asynchronously) until ``self.version != version``; False on timeout."""
        if self.version != version:
            return True
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        self._watchers.append(entry)
        try:
            if self.version != version:
                return True
            try:
                await asyncio.wait_for(event.wait(), timeout)
            except asyncio.TimeoutError:
                return self.version != version
            return True
        finally:
            if entry in self._watchers:
                self._watchers.remove(entry)


class Reservation:
    """Room in the queue for one request's pixels, taken before its images are decoded.

    Given to :meth:`JobQueue.submit`; :meth:`release` gives the room back if the request is
    refused meanwhile (a context manager releases it on leaving unless it was submitted).
    """

    def __init__(self, queue: JobQueue, pixels: int) -> None:
        self.queue = queue
        self.pixels = pixels
        self.open = True

    def release(self) -> None:
        with self.queue._lock:
            if self.open:
                self.open = False
                self.queue._reserved -= self.pixels
                self.queue._pending -= 1

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class JobQueue:
    """Bounded queue + batching + ``workers`` threads calling ``backend`` (see module docs).

    Args:
        max_queue: most jobs waiting to run (running ones do not count).
        max_batch: most images per batch (a request larger than that runs in several calls).
        workers: threads taking batches; one per device the backend drives.
        timeout_s: per job, from arrival to answer.
        job_ttl_s: how long a finished job stays retrievable.
        max_finished: most finished jobs kept.
        max_request_pixels: most pixels of images in one request.
        max_queue_pixels: most pixels of images held by jobs waiting, running or being decoded.
        max_result_bytes: most bytes of encoded results kept for jobs not yet fetched.
    """

    def __init__(
        self,
        max_queue: int = 64,
        max_batch: int = 4,
        workers: int = 1,
        timeout_s: float = 600.0,
        job_ttl_s: float = 600.0,
        max_finished: int = 256,
        max_request_pixels: int = 64 * _MP,
        max_queue_pixels: int = 256 * _MP,
        max_result_bytes: int = 512 << 20,
    ) -> None:
        self.max_queue = max(0, int(max_queue))
        self.max_batch = max(1, int(max_batch))
        self.workers = max(1, int(workers))
        self.timeout_s = float(timeout_s)
        self.job_ttl_s = float(job_ttl_s)
        self.max_finished = max_finished
        self.max_request_pixels = max_request_pixels
        self.max_queue_pixels = max_queue_pixels
        self.max_result_bytes = max_result_bytes
        self._lock = threading.Condition()
        self._queue: list[Job] = []
        self._jobs: dict[str, Job] = {}
        self._running: set[str] = set()
        self._backend: Backend | None = None
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._held = 0  # pixels of queued and running jobs
        self._reserved = 0  # pixels of requests being decoded
        self._pending = 0  # requests being decoded
        self._result_bytes = 0
        self.batches = 0
        self.batch_sizes: list[int] = []

    # ------------------------------------------------------------------ lifecycle
    @property
    def ready(self) -> bool:
        return self._backend is not None and not self._closing

    def start(self, backend: Backend) -> None:
        """Attach the backend (the model is loaded) and start the worker threads."""
        with self._lock:
            self._backend = backend
            for n in range(self.workers):
                thread = threading.Thread(
                    target=self._work, name=f"idm-vton-worker-{n}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def stop_accepting(self) -> None:
        """Refuse new work (503) from now on; waiting and running jobs go on."""
        with self._lock:
            self._closing = True

    def cancel_all(self, reason: str = "the server is shutting down") -> None:
        """End every waiting and running job now with 503 ``reason`` (a running pipeline call
        stops at its next step)."""
        with self._lock:
            self._closing = True
            for job in list(self._queue) + [self._jobs[i] for i in self._running]:
                if not job.state.final:
                    self._finish(job, JobState.FAILED, 503, reason)
            self._queue.clear()
            self._lock.notify_all()

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking work, end waiting and running jobs and join the workers (``timeout``)."""
        self.cancel_all()
        for thread in self._threads:
            thread.join(timeout)

    # ------------------------------------------------------------------ client side
    def reserve(self, pixels: int) -> Reservation:
        """Room for a request of ``pixels`` (counted from the image headers, before decoding).

        Raises :class:`NotReadyError`, :class:`RequestTooLargeError` or :class:`QueueFullError`.
        """
        with self._lock:
            self._check_open()
            if pixels > self.max_request_pixels:
                raise RequestTooLargeError(
                    f"the request's images have {megapixels(pixels)} in total, over the limit "
                    f"of {megapixels(self.max_request_pixels)} per request"
                )
            self._expire()
            if len(self._queue) + self._pending >= self.max_queue:
                raise QueueFullError(
                    f"the queue is full ({self.max_queue} requests waiting); retry later"
                )
            if self._held + self._reserved + pixels > self.max_queue_pixels:
                raise QueueFullError(
                    "the queue is full (its images would pass "
                    f"{megapixels(self.max_queue_pixels)}); retry later"
                )
            self._reserved += pixels
            self._pending += 1
            return Reservation(self, pixels)

    def submit(self, item: WorkItem, reservation: Reservation | None = None) -> Job:
        """Queue a request (with the room :meth:`reserve` gave it, else reserved now)."""
        if reservation is None:
            reservation = self.reserve(item.pixels)
        with self._lock:
            assert reservation.open, "a reservation is used once"
            reservation.open = False
            self._reserved -= reservation.pixels
            self._pending -= 1
            self._check_open()
            job = Job(
                item=item,
                deadline=time.monotonic() + self.timeout_s,
                id=item.id,
                steps=item.params.steps,
                pixels=reservation.pixels,
            )
            self._held += job.pixels
            self._jobs[job.id] = job
            self._queue.append(job)
            job._touch()
            self._lock.notify()
            return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            self._expire()
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a waiting or running job (no effect on a finished one); None if unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state.final:
                return job
            if job.state is JobState.QUEUED:
                self._queue.remove(job)
                self._touch_queue()
            self._finish(job, JobState.CANCELLED, 409, "cancelled")
            return job

    def forget(self, job_id: str) -> None:
        """Drop a finished job and its result now (its answer has been delivered)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.state.final and job_id not in self._running:
                self._drop(job)

    def status(self, job: Job) -> dict:
        """A JSON-ready snapshot: state, queue position (1 = next), step i of n, error."""
        with self._lock:
            self._expire()
            position = self._queue.index(job) + 1 if job.state is JobState.QUEUED else None
            return {
                "id": job.id,
                "state": job.state.value,
                "queue_position": position,
                "step": job.step,
                "steps": job.total or job.steps,
                "error": job.error,
                "version": job.version,
            }

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._queue)

    def usage(self) -> dict:
        """What is held now: jobs, pixels of images, bytes of results (for /v1/info and tests)."""
        with self._lock:
            self._expire()
            return {
                "queued": len(self._queue),
                "running": len(self._running),
                "finished": sum(1 for job in self._jobs.values() if job.state.final),
                "pixels": self._held + self._reserved,
                "result_bytes": self._result_bytes,
            }

    # ------------------------------------------------------------------ worker side
    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._closing and not self._queue:
                    self._lock.wait(timeout=1.0)
                    self._expire()
                if self._closing and not self._queue:
                    return
                batch = self._take_batch()
                if not batch:
                    continue
                backend = self._backend
                items = [job.item for job in batch]
            try:
                outcomes = backend(items, self._progress, self._stopped)
            except Exception as err:  # noqa: BLE001 - the backend failed as a whole
                logger.error("batch of %d failed", len(batch), exc_info=err)
                outcomes = [
                    Outcome(job.id, status=500, error="internal error (see the server log)")
                    for job in batch
                ]
            with self._lock:
                for job, outcome in zip(batch, outcomes, strict=True):
                    self._running.discard(job.id)
                    if not job.state.final:
                        if outcome.ok:
                            job.outcome = outcome
                            self._result_bytes += outcome.nbytes
                            self._finish(job, JobState.DONE, 200, None)
                        else:
                            self._finish(job, JobState.FAILED, outcome.status, outcome.error)
                    self._release(job)  # cancelled or timed out meanwhile: result dropped
                self._expire()

    def _take_batch(self) -> list[Job]:
        self._expire()
        if not self._queue:
            return []
        first = self._queue[0]
        key = batch_key(first.item)
        batch, images = [first], first.item.params.num_images
        for job in self._queue[1:]:
            n = job.item.params.num_images
            if images + n > self.max_batch:
                continue
            if batch_key(job.item) == key:
                batch.append(job)
                images += n
        for job in batch:
            self._queue.remove(job)
            self._running.add(job.id)
            job.state = JobState.RUNNING
            job.total = job.steps
            job._touch()
        self._touch_queue()
        self.batches += 1
        self.batch_sizes.append(len(batch))
        return batch

    def _progress(self, ids: Sequence[str], done: int, total: int) -> None:
        with self._lock:
            for job_id in ids:
                job = self._jobs.get(job_id)
                if job is not None and job.state is JobState.RUNNING:
                    job.step, job.total = done, total
                    job._touch()

    def _stopped(self, ids: Sequence[str]) -> bool:
        """True when no job of ``ids`` still wants its result (cancelled or timed out)."""
        with self._lock:
            now = time.monotonic()
            alive = False
            for job_id in ids:
                job = self._jobs.get(job_id)
                if job is None or job.state.final:
                    continue
                if now > job.deadline:
                    self._finish(job, JobState.FAILED, 504, "timed out")
                    continue
                alive = True
            return not alive

    # ------------------------------------------------------------------ bookkeeping (locked)
    def _check_open(self) -> None:
        if self._backend is None:
            raise NotReadyError("the model is not loaded yet")
        if self._closing:
            raise NotReadyError("the server is shutting down")

    def _finish(self, job: Job, state: JobState, status: int, error: str | None) -> None:
        job.state, job.status, job.error = state, status, error
        job.finished_at = time.monotonic()
        job._touch()
        if job.id not in self._running:
            self._release(job)

    def _release(self, job: Job) -> None:
        """A final job no worker uses: its decoded images go, its pixels leave the count."""
        if job.item is not None:
            job.item = None
            self._held -= job.pixels

    def _drop(self, job: Job) -> None:
        del self._jobs[job.id]
        if job.outcome is not None:
            self._result_bytes -= job.outcome.nbytes
            job.outcome = None

    def _touch_queue(self) -> None:
        for job in self._queue:
            job._touch()

    def _expire(self) -> None:
        now = time.monotonic()
        timed_out = [job for job in self._queue if now > job.deadline]
        for job in timed_out:
            self._queue.remove(job)
            self._finish(job, JobState.FAILED, 504, "timed out while waiting in the queue")
        if timed_out:
            self._touch_queue()
        finished = [j for j in self._jobs.values() if j.state.final and j.id not in self._running]
        finished.sort(key=lambda j: j.finished_at or 0.0)
        excess = len(finished) - self.max_finished
        for n, job in enumerate(finished):
            too_old = now - (job.finished_at or now) > self.job_ttl_s
            if n < excess or too_old or self._result_bytes > self.max_result_bytes:
                self._drop(job)
