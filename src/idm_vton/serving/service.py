"""One server's state: settings, the job queue, and the model loading in the background.

The HTTP server starts first (``/healthz`` answers at once, ``/readyz`` and the try-on endpoints
answer 503 until the model is loaded and warmed up); :meth:`TryOnService.start` loads the model
in a background thread and then attaches it to the queue. :meth:`TryOnService.drain` and
:meth:`TryOnService.close` are the two steps of a bounded shutdown.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import IdmVtonError
from .config import ServeConfig
from .engine import WorkItem, load_engine
from .job_queue import Backend, Job, JobQueue, NotReadyError, Reservation

__all__ = ["LoadedModel", "ModelLoadError", "TryOnService", "load_local_model"]

logger = logging.getLogger("idm_vton.serving")


class ModelLoadError(IdmVtonError, RuntimeError):
    """The server's model could not be loaded (the server stops: exit code 2)."""


@dataclass
class LoadedModel:
    """What a loader returns: the batch runner, how many run at once, and facts for /v1/info."""

    backend: Backend
    workers: int = 1
    info: dict = field(default_factory=dict)


class TryOnService:
    """Settings + :class:`~.job_queue.JobQueue` + background model loading.

    Args:
        config: the server settings.
        loader: builds the model (slow); called once in a background thread by :meth:`start`.
    """

    def __init__(self, config: ServeConfig, loader: Callable[[], LoadedModel]) -> None:
        self.config = config
        self.loader = loader
        self.jobs: JobQueue | None = None
        self.info: dict = {}
        self.load_error: str | None = None
        self.loaded = threading.Event()
        self._closed = False

    @property
    def ready(self) -> bool:
        return self.jobs is not None and self.jobs.ready

    def start(self, wait: bool = False) -> threading.Thread:
        """Load the model in a background thread (``wait``: block until it is ready or failed)."""
        thread = threading.Thread(target=self._load, name="idm-vton-loader", daemon=True)
        thread.start()
        if wait:
            self.loaded.wait()
        return thread

    def _load(self) -> None:
        try:
            model = self.loader()
        except Exception as err:  # noqa: BLE001 - reported in one line by /readyz and the server
            detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
            self.load_error = f"{type(err).__name__}: {detail}" if detail else type(err).__name__
            logger.debug("loading the model failed", exc_info=err)
            self.loaded.set()
            return
        config = self.config
        jobs = JobQueue(
            max_queue=config.max_queue,
            max_batch=config.max_batch,
            workers=model.workers,
            timeout_s=config.timeout_s,
            job_ttl_s=config.job_ttl_s,
            max_request_pixels=config.max_request_pixels,
            max_queue_pixels=config.max_queue_pixels,
            max_result_bytes=config.max_result_bytes,
        )
        if self._closed:
            self.loaded.set()
            return
        jobs.start(model.backend)
        self.info = model.info
        self.jobs = jobs
        self.loaded.set()

    def not_ready_reason(self) -> str:
        """Why requests are refused now (503): loading, failed to load, or shutting down."""
        if self.load_error:
            return self.load_error
        if self.jobs is None:
            return "the model is loading; retry shortly"
        return "the server is shutting down"

    def check_loaded(self) -> None:
        """Raise :class:`ModelLoadError` if the model failed to load."""
        if self.load_error:
            raise ModelLoadError(f"the model did not load: {self.load_error}")

    def _queue(self) -> JobQueue:
        if self.jobs is None:
            raise NotReadyError(self.not_ready_reason())
        return self.jobs

    def reserve(self, pixels: int) -> Reservation:
        """Room for a request of ``pixels`` (raises NotReadyError / RequestTooLargeError /
        QueueFullError)."""
        return self._queue().reserve(pixels)

    def submit(self, item: WorkItem, reservation: Reservation | None = None) -> Job:
        """Queue a request (raises NotReadyError / QueueFullError)."""
        return self._queue().submit(item, reservation)

    def drain(self) -> None:
        """The first step of a shutdown: refuse new requests (503); queued and running ones go
        on until :meth:`close`."""
        if self.jobs is not None:
            self.jobs.stop_accepting()

    def close(self) -> None:
        """End every waiting and running job (503) and stop the workers."""
        self._closed = True
        if self.jobs is not None:
            self.jobs.close()


def load_local_model(config: ServeConfig) -> LoadedModel:
    """The model of ``config`` in this process (:func:`~.engine.load_engine`), one worker."""
    engine = load_engine(config)
    height, width = engine.work_size
    info = {"backend": "local", "replicas": 1, "work_height": height, "work_width": width}
    return LoadedModel(backend=engine.run, workers=1, info=info)
