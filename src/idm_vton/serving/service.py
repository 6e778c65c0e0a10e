"""One server's state: settings, the work queue, and the model loading in the background.

The HTTP server starts first (``/healthz`` answers at once, ``/readyz`` and the try-on endpoints
answer 503 until the model is loaded and warmed up); :meth:`TryOnService.start` loads the model
in a background thread and then attaches it to the queue.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import ServeConfig
from .engine import WorkItem, load_engine
from .scheduler import Backend, Job, NotReadyError, Scheduler

__all__ = ["LoadedModel", "TryOnService", "load_local_model"]

logger = logging.getLogger("idm_vton.serving")


@dataclass
class LoadedModel:
    """What a loader returns: the batch runner, how many run at once, and facts for /v1/info."""

    backend: Backend
    workers: int = 1
    info: dict = field(default_factory=dict)


class TryOnService:
    """Settings + :class:`~.scheduler.Scheduler` + background model loading.

    Args:
        config: the server settings.
        loader: builds the model (slow); called once in a background thread by :meth:`start`.
    """

    def __init__(self, config: ServeConfig, loader: Callable[[], LoadedModel]) -> None:
        self.config = config
        self.loader = loader
        self.scheduler: Scheduler | None = None
        self.info: dict = {}
        self.load_error: str | None = None
        self.loaded = threading.Event()

    @property
    def ready(self) -> bool:
        return self.scheduler is not None and self.scheduler.ready

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
        except Exception as err:  # noqa: BLE001 - reported by /readyz and the log
            self.load_error = f"{type(err).__name__}: {err}"
            logger.error("loading the model failed", exc_info=err)
            self.loaded.set()
            return
        scheduler = Scheduler(
            max_queue=self.config.max_queue,
            max_batch=self.config.max_batch,
            workers=model.workers,
            timeout_s=self.config.timeout_s,
            job_ttl_s=self.config.job_ttl_s,
        )
        scheduler.start(model.backend)
        self.info = model.info
        self.scheduler = scheduler
        self.loaded.set()

    def submit(self, item: WorkItem) -> Job:
        """Queue a request (raises NotReadyError / QueueFullError)."""
        if self.scheduler is None:
            raise NotReadyError(self.load_error or "the model is loading; retry shortly")
        return self.scheduler.submit(item)

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()


def load_local_model(config: ServeConfig) -> LoadedModel:
    """The model of ``config`` in this process (:func:`~.engine.load_engine`), one worker."""
    engine = load_engine(config)
    height, width = engine.work_size
    info = {"backend": "local", "replicas": 1, "work_height": height, "work_width": width}
    return LoadedModel(backend=engine.run, workers=1, info=info)
