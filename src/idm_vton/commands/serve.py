"""Serve a try-on web app and an HTTP API (``idm-vton serve``); see docs/serving.md.

One model, one work queue per device: the web UI at ``/`` (Gradio) and the HTTP API under
``/v1`` (FastAPI; documentation at ``/docs``) share it. ``--ray --replicas N`` runs the same app
on Ray Serve with N model replicas (one per GPU). The options are the fields of
:class:`~idm_vton.serving.config.ServeConfig` and :class:`~idm_vton.serving.config.RayOptions`;
:func:`idm_vton.serving.server.serve` does the rest.
"""

from __future__ import annotations

import argparse
import logging

from ._dataclass_flags import add_dataclass_arguments, add_memory_arguments, memory_options
from ._dataclass_flags import config_from_args as _config_from_args

__all__ = ["HELP", "add_arguments", "config_from_args", "run"]

HELP = "serve a try-on web app and HTTP API (one model, one GPU queue; Ray for more)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` options: ServeConfig's fields, ``--no-ui``, Ray, the memory modes."""
    from ..serving.config import RayOptions, ServeConfig

    # No device or dtype given: chosen for this machine when the config is built.
    add_dataclass_arguments(parser, ServeConfig, defaults={"device": None, "dtype": None})
    parser.add_argument("--no-ui", action="store_true", help="serve the HTTP API only")
    ray = parser.add_argument_group("Ray Serve")
    ray.add_argument(
        "--ray",
        action="store_true",
        help='run on Ray Serve (needs the ray extra: pip install ".[serve,ray]" in the clone)',
    )
    add_dataclass_arguments(ray, RayOptions)
    add_memory_arguments(parser)


def config_from_args(args: argparse.Namespace):
    """The :class:`~idm_vton.serving.config.ServeConfig` the parsed options describe (device
    and dtype resolved, the API key from the environment when not given). With ``--ray`` the
    device and dtype are resolved where each model replica runs, not here: ``auto`` unless
    given."""
    from ..serving.config import ServeConfig, api_key_or_environment, resolve_device_and_dtype

    if getattr(args, "ray", False):
        device, dtype = args.device or "auto", args.dtype or "auto"
        if hasattr(dtype, "value"):
            dtype = dtype.value
    else:
        device, dtype = resolve_device_and_dtype(args.device, args.dtype)
    return _config_from_args(
        ServeConfig,
        args,
        device=device,
        dtype=dtype,
        api_key=api_key_or_environment(args.api_key),
        memory_options=memory_options(args),
    )


def run(args: argparse.Namespace) -> int:
    """``idm-vton serve``: start the server and block until Ctrl-C."""
    from ..serving.config import RayOptions
    from ..serving.server import serve

    config = config_from_args(args)
    ray = _config_from_args(RayOptions, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("idm_vton.serving").setLevel(logging.INFO)
    return serve(config, ui=not args.no_ui, ray=ray if args.ray else None)
