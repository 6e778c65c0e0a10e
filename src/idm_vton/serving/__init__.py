"""Serving: ``idm-vton serve``, a web UI and an HTTP API over one model and one work queue.

- :mod:`.config`: server settings and request parameters, validated at the boundary;
- :mod:`.images`: uploaded bytes to verified images, images to metadata-free PNGs;
- :mod:`.engine`: the model side (automatic mask/pose, batched pipeline calls);
- :mod:`.scheduler`: jobs, the bounded queue, same-garment batching, worker threads;
- :mod:`.service`: one server's state and background model loading;
- :mod:`.api`, :mod:`.ui`, :mod:`.security`, :mod:`.app`: HTTP routes, the Gradio UI, the body
  limit and API key, the combined ASGI app;
- :mod:`.server`: running it for a config, in this process or on Ray Serve (:mod:`.ray_app`);
  the ``idm-vton serve`` options are parsed by :mod:`idm_vton.commands.serve`.

Needs the ``serve`` extra (``pip install "idm-vton[serve]"``; Ray: ``idm-vton[ray]``).
See docs/serving.md.
"""

from __future__ import annotations

_EXPORTS = {
    "ServeConfig": "config",
    "TryOnParams": "config",
    "TryOnEngine": "engine",
    "WorkItem": "engine",
    "Scheduler": "scheduler",
    "TryOnService": "service",
    "create_app": "app",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy: importing the package does not import FastAPI, Gradio or torch.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'idm_vton.serving' has no attribute '{name}'")
