"""Run the server for a :class:`~.config.ServeConfig`: in this process with uvicorn (one model,
one work queue), or on Ray Serve with one model replica per GPU (:mod:`.ray_app`).

The HTTP server starts before the model is loaded (``/healthz`` answers at once, ``/readyz``
once the model is warm); a line on stderr says when it is ready, and where. A model that cannot
load stops the server with one line (exit code 2).

Bounded on every side (docs/serving.md, *Limits*): a client must send a request's headers within
``read_timeout_s`` (:func:`guarded_protocol`) and its body at a minimum rate
(:class:`~.security.BodyLimitMiddleware`); at most ``max_connections`` are served at once; on
SIGTERM or Ctrl-C new requests get 503, running ones get ``shutdown_grace_s`` seconds, then
whatever remains is cancelled (503) and the process exits.
"""

from __future__ import annotations

import signal
import sys
import threading
import warnings
from contextlib import contextmanager

from .config import RayOptions, ServeConfig, base_url

__all__ = ["guarded_protocol", "serve", "serve_local"]


def serve(config: ServeConfig, *, ui: bool = True, ray: RayOptions | None = None) -> int:
    """Serve ``config`` until interrupted: the HTTP API, and the web UI with ``ui``; on Ray
    Serve when ``ray`` is given. Returns the exit code."""
    from PIL import Image

    _check_installed(ui, ray is not None)
    # Past Pillow's pixel limit an image is refused everywhere in this process (UI uploads too).
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    if ray is not None:
        from .ray_app import serve_on_ray

        return serve_on_ray(config, ray, ui=ui)
    return serve_local(config, ui=ui)


def _check_installed(ui: bool, ray: bool) -> None:
    """Name the install command when the ``serve`` (or ``ray``) extra is missing."""
    import importlib.util

    from ..errors import UsageError

    needed = ["fastapi", "uvicorn", "multipart", "httpx"] + (["gradio"] if ui else [])
    missing = [name for name in needed if _missing(importlib.util, name)]
    if missing:
        raise UsageError(
            f"the server needs the serve extra (missing: {', '.join(missing)}): "
            'pip install ".[serve]" in the idm-vton clone (with -c constraints.txt)'
        )
    if ray and _missing(importlib.util, "ray"):
        raise UsageError(
            '--ray needs the ray extra (missing: ray): pip install ".[serve,ray]" in the idm-vton '
            "clone (with -c constraints.txt)"
        )


def _missing(util, name: str) -> bool:
    try:
        return util.find_spec(name) is None
    except (ImportError, ValueError):  # a module set to None in sys.modules, or broken
        return True


def guarded_protocol(read_timeout_s: float):
    """uvicorn's HTTP protocol with a header timeout: a connection that has not sent a whole
    request head ``read_timeout_s`` after it opened (or after its last answer) is closed, however
    slowly it trickles bytes. uvicorn's own keep-alive timeout only covers idle connections."""
    base = _http_protocol_class()

    class GuardedProtocol(base):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_head_timeout()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_head_timeout()

        def connection_lost(self, exc) -> None:
            timer = getattr(self, "_head_timer", None)
            if timer is not None:
                timer.cancel()
            super().connection_lost(exc)

        def _arm_head_timeout(self) -> None:
            timer = getattr(self, "_head_timer", None)
            if timer is not None:
                timer.cancel()
            if not self.transport.is_closing():
                self._head_timer = self.loop.call_later(read_timeout_s, self._head_timed_out)

        def _head_timed_out(self) -> None:
            self._head_timer = None
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                return  # a request is being answered: its body has its own timeout
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedProtocol


def _http_protocol_class():
    """The class uvicorn's ``http="auto"`` picks (httptools when installed, else h11)."""
    try:
        import httptools  # noqa: F401
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


def serve_local(config: ServeConfig, ui: bool = True, sockets=None) -> int:
    """Serve ``config`` in this process with uvicorn until interrupted (or until the model
    fails to load: :class:`~.service.ModelLoadError`). ``sockets``: listen on these instead of
    ``config.host``/``config.port``."""
    from ..models.tiny import TINY_MODEL_NOTE
    from .app import close_app, create_app
    from .service import TryOnService, load_local_model

    service = TryOnService(config, lambda: load_local_model(config))
    app = create_app(service, ui=ui)
    if config.is_tiny:
        print(f"note: {TINY_MODEL_NOTE}", file=sys.stderr)
    print(f"loading {config.model} on {config.device} ({config.dtype}) ...", file=sys.stderr)
    server = make_server(app, service, config)
    service.start()
    where = "web UI and API" if ui else "API"
    threading.Thread(target=_announce, args=(service, server, where), daemon=True).start()
    try:
        with _terminate_by_exception():
            server.run(sockets=sockets)
    except _Terminated:
        pass  # SIGTERM: a clean stop (uvicorn raises the signal again once it has stopped)
    finally:
        server.stop_grace_timer()
        service.close()
        close_app(app)
    if server.interrupted:
        # uvicorn raises the captured SIGINT again once it has stopped, but asyncio's own SIGINT
        # handler can swallow it when the serving task is just finishing: say it here, so Ctrl-C
        # always ends the command with its one line and exit code 130.
        raise KeyboardInterrupt
    service.check_loaded()
    return 0


class _Terminated(Exception):
    """SIGTERM arrived (after uvicorn's graceful stop)."""


@contextmanager
def _terminate_by_exception():
    """While serving, SIGTERM raises :class:`_Terminated` instead of killing the process at
    once, so the server's folders are removed on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def make_server(app, service, config: ServeConfig):
    """The uvicorn server for ``app``, with this module's bounds and shutdown (see the module
    docs); ``run()`` it."""
    import uvicorn

    class Server(uvicorn.Server):
        """On SIGTERM/Ctrl-C: refuse new work at once, give running work ``shutdown_grace_s``,
        then cancel it, so every open request is answered and the process exits."""

        grace_timer: threading.Timer | None = None
        interrupted = False  # stopped by Ctrl-C (SIGINT)

        def handle_exit(self, sig, frame) -> None:
            if sig == signal.SIGINT:
                self.interrupted = True
            self.begin_shutdown()
            super().handle_exit(sig, frame)

        def begin_shutdown(self) -> None:
            if self.grace_timer is None:
                service.drain()
                self.grace_timer = threading.Timer(config.shutdown_grace_s, service.close)
                self.grace_timer.daemon = True
                self.grace_timer.start()

        def stop_grace_timer(self) -> None:
            if self.grace_timer is not None:
                self.grace_timer.cancel()

    uvicorn_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level="warning",
        http=guarded_protocol(config.read_timeout_s),
        limit_concurrency=config.max_connections,
        # After the grace period the jobs are cancelled; this leaves time to answer them.
        timeout_graceful_shutdown=config.shutdown_grace_s + 3.0,
        timeout_keep_alive=5,
    )
    return Server(uvicorn_config)


def _announce(service, server, where: str) -> None:
    """Once the model has loaded: the ready line with the URL; or stop the server (the error
    is reported by :func:`serve_local`, in one line)."""
    service.loaded.wait()
    if service.load_error:
        server.should_exit = True
    else:
        url = base_url(service.config)
        print(f"ready: {where} at {url} (API docs: {url}docs)", file=sys.stderr, flush=True)
