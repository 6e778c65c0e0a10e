"""The whole server as one ASGI application: the HTTP API, the web UI at ``/``, and the guards.

Layers, outermost first: the request body limit and read timeout (413/408 before anything is
parsed), the API key (when one is set), the UI's file guard (a path a client names must be one
of this server's uploads: :mod:`.ui_files`), then FastAPI's routes (``/v1``, ``/healthz``,
``/readyz``, ``/docs``) and the Gradio UI mounted at ``/`` behind them. :func:`close_app`
removes what the app keeps on disk.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path

from fastapi import FastAPI

from .api import create_api
from .security import ApiKeyMiddleware, BodyLimitMiddleware
from .service import TryOnService

__all__ = ["close_app", "create_app", "max_body_bytes"]


def max_body_bytes(max_upload_bytes: int) -> int:
    """Largest request body accepted: four image files plus 1 MiB for the form fields."""
    return 4 * max_upload_bytes + (1 << 20)


def create_app(service: TryOnService, ui: bool = True) -> FastAPI:
    """The FastAPI app serving ``service``; with ``ui`` the Gradio UI is mounted at ``/``.

    Call :func:`close_app` when the server stops (it also runs at exit)."""
    app = create_api(service)
    config = service.config
    app.state.ui_files = None
    if ui:
        app = _mount_ui(app, service)
    # Added last = outermost: the body limit sees the request before the key check and routes.
    if config.api_key:
        app.add_middleware(
            ApiKeyMiddleware, api_key=config.api_key, session_ttl_s=config.session_ttl_s
        )
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=max_body_bytes(config.max_upload_bytes),
        read_timeout_s=config.read_timeout_s,
    )
    return app


def close_app(app: FastAPI) -> None:
    """Remove the app's files on disk (the web UI's uploads and results)."""
    files = getattr(app.state, "ui_files", None)
    if files is not None:
        files.close()
        files.environment()


def _mount_ui(app: FastAPI, service: TryOnService) -> FastAPI:
    import gradio as gr

    from .ui import EXAMPLE_FILES, EXAMPLES_DIR, build_ui
    from .ui_files import GradioFileGuard, UiFiles

    config = service.config
    examples = [EXAMPLES_DIR / name for name in EXAMPLE_FILES if (EXAMPLES_DIR / name).is_file()]
    files = UiFiles(max_bytes=config.max_temp_bytes, examples=examples)
    atexit.register(files.close)
    app.state.ui_files = files
    # Gradio reads its folder from the environment whenever it makes a component (also while
    # serving: a session's copies), so the environment names this server's own folder for as
    # long as it runs (one web UI per process), and its uploads, cached examples and results
    # stay in it. (Gradio also makes an empty folder for a development feature in the temp
    # folder it saw at import: removed below.)
    import gradio.routes

    stray = Path(gradio.routes.DEFAULT_TEMP_DIR) / "vibe_edit_history"
    stray_folders = [folder for folder in (stray, stray.parent) if not folder.exists()]
    files.environment = _own_environment("GRADIO_TEMP_DIR", str(files.gradio))
    demo = build_ui(service, files)
    app = gr.mount_gradio_app(
        app,
        demo,
        path="/",
        server_name=config.host,
        server_port=config.port,
        footer_links=["api"],
        allowed_paths=[str(path) for path in examples] or None,
        max_file_size=config.max_upload_bytes,
        show_error=False,
        ssr_mode=False,
        enable_monitoring=False,
        mcp_server=False,
    )
    for folder in stray_folders:
        try:
            folder.rmdir()
        except OSError:
            pass
    for block in [demo, *demo.blocks.values()]:
        block.GRADIO_CACHE = str(files.gradio)
    for route in app.routes:
        if hasattr(getattr(route, "app", None), "uploaded_file_dir"):
            route.app.uploaded_file_dir = str(files.gradio)
    app.add_middleware(GradioFileGuard, files=files, max_upload_bytes=config.max_upload_bytes)
    return app


def _own_environment(name: str, value: str):
    """Set ``name`` to ``value``; returns what puts the previous value back (if it is still
    ``value`` then)."""
    previous = os.environ.get(name)
    os.environ[name] = value

    def restore() -> None:
        if os.environ.get(name) == value:
            if previous is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = previous

    return restore
