"""Serve the model: a try-on web app and an HTTP API in one process (``idm-vton serve``).

One model, one work queue per device: the web UI at ``/`` (Gradio) and the HTTP API under
``/v1`` (FastAPI; documentation at ``/docs``) share it. ``--ray --replicas N`` runs the same app
on Ray Serve with N model replicas (one per GPU). See docs/serving.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

__all__ = ["HELP", "add_arguments", "config_from_args", "load_pipeline", "run"]

HELP = "serve a try-on web app and HTTP API (one model, one GPU queue; Ray for more)"
API_KEY_ENV = "IDM_VTON_API_KEY"

logger = logging.getLogger("idm_vton.serving")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` options (model/device/dtype/memory/preprocessing flags are the shared ones)."""
    from ..commands import _flags as flags

    flags.add_shared(parser, "model", "device", "dtype", "preprocess_models")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default %(default)s: this machine only; 0.0.0.0 = all)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default %(default)s)")
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"require this key for the API and the UI (default: ${API_KEY_ENV}; unset = open)",
    )
    parser.add_argument(
        "--max-queue", type=int, default=64, help="requests waiting before 429 (default 64)"
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=4,
        help="people per pipeline call; same-garment requests share one (default %(default)s)",
    )
    parser.add_argument(
        "--max-upload-mb", type=float, default=20.0, help="per uploaded image (default 20)"
    )
    parser.add_argument(
        "--max-images", type=int, default=4, help="images per request at most (default 4)"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds per request (default 600)"
    )
    parser.add_argument(
        "--garment-cache-mb",
        type=float,
        default=0.0,
        help="keep GarmentNet features of recent garments (MB; SDXL: ~158 MB per step in bf16; "
        "default 0 = off)",
    )
    parser.add_argument("--no-ui", action="store_true", help="serve the HTTP API only")
    ray = parser.add_argument_group("Ray Serve")
    ray.add_argument(
        "--ray", action="store_true", help="run on Ray Serve (pip install idm-vton[ray])"
    )
    ray.add_argument(
        "--replicas", type=int, default=1, help="model replicas, one per GPU (default 1)"
    )
    ray.add_argument(
        "--max-replicas",
        type=int,
        default=None,
        help="autoscale between --replicas and this many replicas by queue length",
    )
    ray.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster (default: $RAY_ADDRESS, else a local Ray instance)",
    )
    flags.add_memory_arguments(parser)


def config_from_args(args: argparse.Namespace):
    """The :class:`~.config.ServeConfig` the parsed options describe (device/dtype resolved)."""
    from dataclasses import asdict

    from ..commands._flags import memory_options
    from ..devices import resolve_device, resolve_dtype
    from ..enums import DType
    from ..errors import UsageError
    from .config import ServeConfig

    for flag in ("max_queue", "max_batch", "max_images", "replicas"):
        if getattr(args, flag) < 1 and not (flag == "max_queue" and args.max_queue == 0):
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.max_upload_mb <= 0 or args.timeout <= 0:
        raise UsageError("--max-upload-mb and --timeout must be > 0")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be 1..65535, got {args.port}")
    device = resolve_device(args.device)
    dtype = DType.of(resolve_dtype(args.dtype, device)).value
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    return ServeConfig(
        model=args.model,
        device=str(device),
        dtype=dtype,
        host=args.host,
        port=args.port,
        api_key=api_key,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_images=args.max_images,
        timeout_s=args.timeout,
        garment_cache_bytes=int(args.garment_cache_mb * 1024 * 1024),
        preprocess_models=args.preprocess_models,
        memory_options=asdict(memory_options(args)),
    )


def load_pipeline(model: str, device: str, dtype: str):
    """Load ``model`` ("tiny", a hub id or a folder) on ``device`` in ``dtype`` (fp32/bf16/fp16)."""
    from ..devices import check_dtype_on_device
    from ..enums import DType
    from ..loaders.pipeline import load_model

    torch_dtype = DType(dtype).torch_dtype
    check_dtype_on_device(torch_dtype, device)
    return load_model(model, torch_dtype, device)


def run(args: argparse.Namespace) -> int:
    """``idm-vton serve``: start the server and block until Ctrl-C."""
    from PIL import Image

    config = config_from_args(args)
    # Past Pillow's pixel limit an image is refused everywhere in this process (UI uploads too).
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("idm_vton.serving").setLevel(logging.INFO)
    if args.ray:
        from .ray_app import serve_on_ray

        return serve_on_ray(
            config,
            replicas=args.replicas,
            max_replicas=args.max_replicas,
            address=args.ray_address,
            ui=not args.no_ui,
        )
    return serve_local(config, ui=not args.no_ui)


def serve_local(config, ui: bool = True) -> int:
    """Serve ``config`` in this process with uvicorn until interrupted."""
    import uvicorn

    from ..testing.tiny import TINY_MODEL_NOTE
    from .app import create_app
    from .service import TryOnService, load_local_model

    service = TryOnService(config, lambda: load_local_model(config))
    app = create_app(service, ui=ui)
    url = f"http://{_url_host(config.host)}:{config.port}/"
    if config.is_tiny:
        print(f"note: {TINY_MODEL_NOTE}", file=sys.stderr)
    print(f"loading {config.model} on {config.device} ({config.dtype}) ...", file=sys.stderr)

    def announce() -> None:
        service.loaded.wait()
        if service.load_error:
            print(f"error: the model did not load: {service.load_error}", file=sys.stderr)
        else:
            where = "web UI and API" if ui else "API"
            print(f"ready: {where} at {url} (API docs: {url}docs)", file=sys.stderr, flush=True)

    service.start()
    import threading

    threading.Thread(target=announce, daemon=True).start()
    server = uvicorn.Server(
        uvicorn.Config(app, host=config.host, port=config.port, log_level="warning")
    )
    try:
        server.run()
    finally:
        service.close()
    return 0


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
