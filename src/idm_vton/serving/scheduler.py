"""The work queue: jobs, a bounded queue, same-garment batching and the worker threads.

Requests become :class:`Job` s in one FIFO queue of at most ``max_queue`` waiting jobs (one more
is refused: :class:`QueueFullError`, HTTP 429). Each worker thread (one per device: one in a
single process, one per Ray replica behind the Ray ingress) takes the oldest job and, in queue
order, the other waiting jobs with the same :func:`~.engine.batch_key` up to ``max_batch``
images, and hands them to the backend as one batch. Jobs can be cancelled (a waiting job leaves
the queue; a running one stops at the next denoising step once every job of its call is
cancelled, and is reported cancelled at once in any case) and time out ``timeout_s`` after they
arrived. Finished jobs are kept ``job_ttl_s`` seconds for ``GET /v1/jobs/{id}/result``.

Every change of a job bumps its ``version`` and wakes its async watchers (:meth:`Job.changed`),
which is how the HTTP layer waits for results and streams progress without polling.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from .engine import Outcome, WorkItem, batch_key

__all__ = [
    "Backend",
    "Job",
    "JobState",
    "NotReadyError",
    "QueueFullError",
    "Scheduler",
]

logger = logging.getLogger("idm_vton.serving")

#: ``backend(items, progress, stopped) -> outcomes``: renders one batch (see TryOnEngine.run).
Backend = Callable[..., list[Outcome]]


class QueueFullError(Exception):
    """The queue holds ``max_queue`` waiting jobs (HTTP 429)."""


class NotReadyError(Exception):
    """The model is not loaded yet, or failed to load (HTTP 503)."""


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


@dataclass(eq=False)
class Job:
    """One request through the queue. Read its fields under the scheduler's lock or via
    :meth:`Scheduler.status`; ``version`` increases with every change."""

    item: WorkItem
    deadline: float
    id: str = field(default_factory=lambda: secrets.token_urlsafe(12))
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


class Scheduler:
    """Bounded queue + batching + ``workers`` threads calling ``backend`` (see module docs).

    Args:
        max_queue: most jobs waiting to run (running ones do not count).
        max_batch: most images per batch (a request larger than that runs in several calls).
        workers: threads taking batches; one per device the backend drives.
        timeout_s: per job, from arrival to answer.
        job_ttl_s: how long a finished job stays retrievable.
    """

    def __init__(
        self,
        max_queue: int = 64,
        max_batch: int = 4,
        workers: int = 1,
        timeout_s: float = 600.0,
        job_ttl_s: float = 600.0,
        max_finished: int = 256,
    ) -> None:
        self.max_queue = max(0, int(max_queue))
        self.max_batch = max(1, int(max_batch))
        self.workers = max(1, int(workers))
        self.timeout_s = float(timeout_s)
        self.job_ttl_s = float(job_ttl_s)
        self.max_finished = max_finished
        self._lock = threading.Condition()
        self._queue: list[Job] = []
        self._jobs: dict[str, Job] = {}
        self._running: set[str] = set()
        self._backend: Backend | None = None
        self._threads: list[threading.Thread] = []
        self._closing = False
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

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking work, cancel waiting jobs and join the workers."""
        with self._lock:
            self._closing = True
            for job in list(self._queue):
                self._finish(job, JobState.CANCELLED, 503, "the server is shutting down")
            self._queue.clear()
            self._lock.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    # ------------------------------------------------------------------ client side
    def submit(self, item: WorkItem) -> Job:
        """Queue a request; raises :class:`NotReadyError` or :class:`QueueFullError`."""
        with self._lock:
            if not self.ready:
                raise NotReadyError("the model is not loaded yet")
            self._expire()
            if len(self._queue) >= self.max_queue:
                raise QueueFullError(
                    f"the queue is full ({self.max_queue} requests waiting); retry later"
                )
            job = Job(item=item, deadline=time.monotonic() + self.timeout_s, id=item.id)
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
        """Drop a finished job and its images now (its answer has been delivered)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.state.final and job_id not in self._running:
                del self._jobs[job_id]

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
                "steps": job.total or job.item.params.steps,
                "error": job.error,
                "version": job.version,
            }

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._queue)

    # ------------------------------------------------------------------ worker side
    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._closing and not self._queue:
                    self._lock.wait(timeout=1.0)
                    self._expire()
                if self._closing:
                    return
                batch = self._take_batch()
                if not batch:
                    continue
                backend = self._backend
            try:
                outcomes = backend([job.item for job in batch], self._progress, self._stopped)
            except Exception as err:  # noqa: BLE001 - the backend failed as a whole
                logger.error("batch of %d failed", len(batch), exc_info=err)
                outcomes = [
                    Outcome(job.id, status=500, error="internal error (see the server log)")
                    for job in batch
                ]
            with self._lock:
                for job, outcome in zip(batch, outcomes, strict=True):
                    self._running.discard(job.id)
                    if job.state.final:
                        continue  # cancelled or timed out meanwhile: the result is dropped
                    if outcome.ok:
                        job.outcome = outcome
                        self._finish(job, JobState.DONE, 200, None)
                    else:
                        self._finish(job, JobState.FAILED, outcome.status, outcome.error)

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
            job.total = job.item.params.steps
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
    def _finish(self, job: Job, state: JobState, status: int, error: str | None) -> None:
        job.state, job.status, job.error = state, status, error
        job.finished_at = time.monotonic()
        job._touch()

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
            if n < excess or now - (job.finished_at or now) > self.job_ttl_s:
                del self._jobs[job.id]
