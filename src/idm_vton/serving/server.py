"""Run the server for a :class:`~.config.ServeConfig`: in this process with uvicorn (one model,
one work queue), or on Ray Serve with one model replica per GPU (:mod:`.ray_app`).

The HTTP server starts before the model is loaded (``/healthz`` answers at once, ``/readyz``
once the model is warm); a line on stderr says when it is ready, and where.
"""

from __future__ import annotations

import sys
import threading
import warnings

from .config import RayOptions, ServeConfig, base_url

__all__ = ["serve", "serve_local"]


def serve(config: ServeConfig, *, ui: bool = True, ray: RayOptions | None = None) -> int:
    """Serve ``config`` until interrupted: the HTTP API, and the web UI with ``ui``; on Ray
    Serve when ``ray`` is given. Returns the exit code."""
    from PIL import Image

    # Past Pillow's pixel limit an image is refused everywhere in this process (UI uploads too).
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    if ray is not None:
        from .ray_app import serve_on_ray

        return serve_on_ray(config, ray, ui=ui)
    return serve_local(config, ui=ui)


def serve_local(config: ServeConfig, ui: bool = True) -> int:
    """Serve ``config`` in this process with uvicorn until interrupted."""
    import uvicorn

    from ..models.tiny import TINY_MODEL_NOTE
    from .app import create_app
    from .service import TryOnService, load_local_model

    service = TryOnService(config, lambda: load_local_model(config))
    app = create_app(service, ui=ui)
    if config.is_tiny:
        print(f"note: {TINY_MODEL_NOTE}", file=sys.stderr)
    print(f"loading {config.model} on {config.device} ({config.dtype}) ...", file=sys.stderr)
    service.start()
    where = "web UI and API" if ui else "API"
    threading.Thread(target=_announce, args=(service, where), daemon=True).start()
    server = uvicorn.Server(
        uvicorn.Config(app, host=config.host, port=config.port, log_level="warning")
    )
    try:
        server.run()
    finally:
        service.close()
    return 0


def _announce(service, where: str) -> None:
    """Once the model has loaded: the ready line with the URL, or why it did not load."""
    service.loaded.wait()
    if service.load_error:
        print(f"error: the model did not load: {service.load_error}", file=sys.stderr)
    else:
        url = base_url(service.config)
        print(f"ready: {where} at {url} (API docs: {url}docs)", file=sys.stderr, flush=True)
