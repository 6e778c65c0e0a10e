"""The whole server as one ASGI application: the HTTP API, the web UI at ``/``, and the guards.

Layers, outermost first: the request body limit (413 before anything is parsed), the API key
(when one is set), then FastAPI's routes (``/v1``, ``/healthz``, ``/readyz``, ``/docs``) and the
Gradio UI mounted at ``/`` behind them.
"""

from __future__ import annotations

from fastapi import FastAPI

from .api import create_api
from .security import ApiKeyMiddleware, BodyLimitMiddleware
from .service import TryOnService

__all__ = ["create_app", "max_body_bytes"]


def max_body_bytes(max_upload_bytes: int) -> int:
    """Largest request body accepted: four image files plus 1 MiB for the form fields."""
    return 4 * max_upload_bytes + (1 << 20)


def create_app(service: TryOnService, ui: bool = True) -> FastAPI:
    """The FastAPI app serving ``service``; with ``ui`` the Gradio UI is mounted at ``/``."""
    app = create_api(service)
    config = service.config
    if ui:
        import gradio as gr

        from .ui import EXAMPLES_DIR, build_ui

        app = gr.mount_gradio_app(
            app,
            build_ui(service),
            path="/",
            server_name=config.host,
            server_port=config.port,
            footer_links=["api"],
            allowed_paths=[str(EXAMPLES_DIR)] if EXAMPLES_DIR.is_dir() else None,
            max_file_size=config.max_upload_bytes,
            show_error=False,
            ssr_mode=False,
            enable_monitoring=False,
            mcp_server=False,
        )
    # Added last = outermost: the body limit sees the request before the key check and routes.
    if config.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=config.api_key)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes(config.max_upload_bytes))
    return app
