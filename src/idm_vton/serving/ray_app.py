"""The server on Ray Serve: the same app in front, one model replica per GPU behind it.

Two deployments:

- ``TryOnIngress`` (one replica, no GPU) is the same ASGI application as ``idm-vton serve``
  (FastAPI API + Gradio UI, :func:`~.app.create_app`), with the same work queue
  (:class:`~.job_queue.JobQueue`): uploads are checked there, jobs live there and same-garment
  requests are batched there. Its workers (one per model replica) send each batch to:
- ``TryOnModel`` (``num_replicas`` or autoscaled, ``num_gpus=1`` each on CUDA), which holds a
  pipeline and a :class:`~.engine.TryOnEngine` and streams the batch's step events back, then its
  results; cancelling the stream stops the batch at its next step.

Why not N copies of the whole app: Ray Serve's HTTP proxy spreads requests over replicas with no
stickiness, so a job created on one replica could be polled, streamed or cancelled on another,
and a browser's Gradio session would hop between replicas. With one ingress, jobs, progress
streams and UI sessions have one home, and batching sees every request.

The same code runs on one machine with several GPUs (a local Ray instance) and on a cluster
(``ray start --head`` / ``ray start --address=HEAD:6379`` on each node, then ``idm-vton serve
--ray --ray-address auto`` or ``serve run idm_vton.serving.ray_app:app`` on the head node).
Only plain data crosses process boundaries (dicts, numbers, strings, raw pixel bytes).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace

from PIL import Image
from ray import serve
from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError

from .config import (
    RayOptions,
    ServeConfig,
    TryOnParams,
    api_key_or_environment,
    base_url,
    resolve_device_and_dtype,
)
from .engine import Outcome, WorkItem, load_engine
from .service import LoadedModel, TryOnService

__all__ = [
    "RayBackend",
    "TryOnIngress",
    "TryOnModel",
    "app",
    "build_application",
    "serve_on_ray",
]

logger = logging.getLogger("idm_vton.serving")


# ---------------------------------------------------------------------------- plain-data transport
def _image_data(image: Image.Image | None) -> dict | None:
    if image is None:
        return None
    return {"mode": image.mode, "size": list(image.size), "pixels": image.tobytes()}


def _image(data: dict | None) -> Image.Image | None:
    if data is None:
        return None
    return Image.frombytes(data["mode"], tuple(data["size"]), data["pixels"])


def item_to_data(item: WorkItem) -> dict:
    """A :class:`WorkItem` as plain data (for a call to a model replica)."""
    return {
        "id": item.id,
        "params": asdict(item.params),
        "garment_hash": item.garment_hash,
        "task": item.task,
        "more_garments": [_image_data(image) for image in item.more_garments],
        **{
            name: _image_data(getattr(item, name))
            for name in ("person", "garment", "mask", "pose", "extra_mask")
        },
    }


def item_from_data(data: dict) -> WorkItem:
    return WorkItem(
        id=data["id"],
        params=TryOnParams(**data["params"]),
        garment_hash=data["garment_hash"],
        task=data["task"],
        more_garments=tuple(_image(image) for image in data["more_garments"]),
        **{
            name: _image(data[name]) for name in ("person", "garment", "mask", "pose", "extra_mask")
        },
    )


def outcome_to_data(outcome: Outcome) -> dict:
    """An :class:`Outcome` (PNG bytes and numbers) as plain data."""
    return asdict(outcome)


def outcome_from_data(data: dict) -> Outcome:
    data = dict(data)
    data["size"] = tuple(data["size"])
    return Outcome(**data)


# ---------------------------------------------------------------------------- model replicas
def resolved_on_this_node(config: ServeConfig) -> ServeConfig:
    """``config`` with ``auto`` device and dtype resolved on the machine this runs on (a model
    replica's node, not the driver's: a GPU-less head still makes CUDA replicas)."""
    device = None if config.device == "auto" else config.device
    dtype = None if config.dtype == "auto" else config.dtype
    if device is None or dtype is None:
        device, dtype = resolve_device_and_dtype(device, dtype)
        config = replace(config, device=device, dtype=dtype)
    return config


#: The addresses of a loopback-only node (a local instance: :func:`start_local_ray`).
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def keep_replica_servers_on_loopback() -> None:
    """In a replica on a loopback-only node (a local instance, see :func:`start_local_ray`):
    Ray Serve opens each replica's inter-deployment gRPC server on every interface
    (``[::]:0``, Ray 2.60), while the replicas reach each other at their node's address; bind it
    to 127.0.0.1 like every other service of the instance. Called before the replica starts that
    server (the deployment's ``__init__`` runs first); on a cluster node, nothing changes."""
    import ray

    if ray.util.get_node_ip_address() not in LOOPBACK:
        return
    try:
        from ray.serve._private import replica
    except ImportError:
        return
    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "on_loopback", False):
        return

    def bind_on_loopback(server, address: str):
        host, _, port = address.rpartition(":")
        if host in ("[::]", "0.0.0.0", ""):
            address = f"127.0.0.1:{port}"
        return bind(server, address)

    bind_on_loopback.on_loopback = True
    replica.add_port_to_grpc_server = bind_on_loopback


class TryOnModel:
    """One pipeline on one device; renders batches sent by the ingress (a Ray Serve replica)."""

    def __init__(self, config: dict) -> None:
        keep_replica_servers_on_loopback()
        self.config = resolved_on_this_node(ServeConfig(**config))
        self.engine = load_engine(self.config)
        self.name = serve.get_replica_context().replica_tag
        # One pipeline call at a time on this replica's device.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="idm-vton-gpu")

    def info(self) -> dict:
        height, width = self.engine.work_size
        return {
            "work_height": height,
            "work_width": width,
            "device": self.config.device,
            "dtype": self.config.dtype,
        }

    async def run(self, batch: dict):
        """Stream ``{"step": ...}`` events, then ``{"outcomes": [...]}`` for one batch."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        items = [item_from_data(data) for data in batch["items"]]

        def progress(ids, done, total) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (list(ids), done, total))

        work = loop.run_in_executor(
            self._executor, self.engine.run, items, progress, lambda ids: stop.is_set()
        )
        try:
            while not work.done():
                next_event = asyncio.ensure_future(events.get())
                await asyncio.wait({next_event, work}, return_when=asyncio.FIRST_COMPLETED)
                if next_event.done():
                    ids, done, total = next_event.result()
                    yield {"step": {"ids": ids, "done": done, "total": total}}
                else:
                    next_event.cancel()
            outcomes = await work
            for outcome in outcomes:
                outcome.worker = self.name
            yield {"outcomes": [outcome_to_data(outcome) for outcome in outcomes]}
        except BaseException:
            stop.set()  # cancelled by the ingress (or the client left): stop at the next step
            raise


#: The answer to requests whose model replica died while rendering them (HTTP 503).
REPLICA_LOST = (
    "the model replica rendering this request was lost (its process or node stopped); "
    "Ray Serve is starting another: retry"
)


class RayBackend:
    """The ingress side: sends one batch to a free model replica and relays its events."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def __call__(self, items, progress, stopped) -> list[Outcome]:
        ids = [item.id for item in items]
        stream = self.handle.options(stream=True).run.remote(
            {"items": [item_to_data(item) for item in items]}
        )
        try:
            for event in stream:
                if "step" in event:
                    step = event["step"]
                    progress(step["ids"], step["done"], step["total"])
                    if stopped(ids):
                        stream.cancel()
                        break
                else:
                    return [outcome_from_data(data) for data in event["outcomes"]]
        except (RayActorError, NodeDiedError, WorkerCrashedError) as err:
            # The replica died with its process or node: Ray Serve starts another. The request
            # was not wrong, so it is a 503 (retry), not an internal error.
            logger.warning("a model replica was lost while rendering: %s", err)
            return [Outcome(item_id, status=503, error=REPLICA_LOST) for item_id in ids]
        return [Outcome(item_id, status=499, error="cancelled") for item_id in ids]


# ---------------------------------------------------------------------------- ingress
class TryOnIngress:
    """The FastAPI + Gradio app of ``idm-vton serve``, with model replicas as its backend."""

    def __init__(self, model, config: dict, workers: int, ui: bool = True) -> None:
        keep_replica_servers_on_loopback()
        self.config = ServeConfig(**config)
        self.ui = ui
        backend = RayBackend(model)

        def load() -> LoadedModel:
            info = model.info.remote().result()
            info.update(backend="ray", replicas=workers)
            return LoadedModel(backend=backend, workers=workers, info=info)

        self.service = TryOnService(self.config, load)
        self.service.start()

    def __serve_build_asgi_app__(self):
        from .app import create_app

        return create_app(self.service, ui=self.ui)


#: Environment variables every replica gets from the process that deploys (``idm-vton serve
#: --ray``): where the preprocessing weights and the hub cache are, and how the hub is reached.
FORWARDED_ENVIRONMENT = (
    "IDM_VTON_PREPROCESS_MODELS",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "HF_ENDPOINT",
    "HF_TOKEN",
)
#: Where the ingress goes by default: the head node (Ray gives each node a ``node:...`` resource
#: and the head this one), so it is not lost with a worker node.
HEAD_NODE = {"node:__internal_head__": 0.001}


def runtime_environment() -> dict:
    """The runtime environment of every deployment: :data:`FORWARDED_ENVIRONMENT` as set here."""
    env = {name: os.environ[name] for name in FORWARDED_ENVIRONMENT if os.environ.get(name)}
    return {"env_vars": env} if env else {}


def build_application(
    config: ServeConfig,
    replicas: int = 1,
    max_replicas: int | None = None,
    ui: bool = True,
    ingress_resources: dict | None = None,
    gpus_per_replica: float | None = None,
):
    """The Ray Serve application: ingress + model deployment for ``config``.

    ``replicas`` model replicas (one GPU each when the device is CUDA, or ``auto`` on a cluster
    with GPUs: ``gpus_per_replica``, by default decided from ``ray.cluster_resources()``); with
    ``max_replicas``, autoscaled between the two by the number of batches in flight. The ingress
    is placed by ``ingress_resources`` (default: the head node). The device and dtype are
    resolved by each replica on its own node.
    """
    if gpus_per_replica is None:
        gpus_per_replica = 1 if _wants_gpu(config.device) else 0
    runtime_env = runtime_environment()
    model_actor = {"num_gpus": gpus_per_replica, "num_cpus": 1}
    if runtime_env:
        model_actor["runtime_env"] = runtime_env
    model_options: dict = {"ray_actor_options": model_actor, "max_ongoing_requests": 1}
    if max_replicas and max_replicas > replicas:
        model_options["autoscaling_config"] = {
            "min_replicas": replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": 1,
        }
    else:
        model_options["num_replicas"] = replicas
    if gpus_per_replica and config.device.startswith("cuda"):
        config = replace(config, device="cuda")  # a replica sees only its own GPU, as cuda:0
    ingress_actor = {"num_cpus": 0, "resources": dict(ingress_resources or HEAD_NODE)}
    if runtime_env:
        ingress_actor["runtime_env"] = runtime_env
    model = serve.deployment(TryOnModel, name="TryOnModel").options(**model_options)
    ingress = serve.deployment(
        serve.ingress()(TryOnIngress),
        name="TryOnIngress",
        num_replicas=1,
        ray_actor_options=ingress_actor,
        max_ongoing_requests=max(100, 2 * config.max_queue),
    )
    workers = max_replicas if max_replicas and max_replicas > replicas else replicas
    return ingress.bind(model.bind(asdict(config)), asdict(config), workers, ui)


def _wants_gpu(device: str) -> bool:
    """A CUDA device, or ``auto`` on a cluster that has GPUs."""
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def app(args: dict[str, str]):
    """Builder for ``serve run idm_vton.serving.ray_app:app [key=value ...]``.

    Keys: ``model`` (default yisol/IDM-VTON), ``device``, ``dtype``, ``replicas``,
    ``max_replicas``, ``max_batch``, ``max_queue``, ``api_key`` (default
    ``$IDM_VTON_API_KEY``), ``preprocess_models``, ``annotator``, ``ui`` (true/false).
    """
    device, dtype = args.get("device", "auto"), args.get("dtype", "auto")
    names = ("model", "preprocess_models", "annotator")
    fields = {key: args[key] for key in names if key in args}
    fields.update({key: int(args[key]) for key in ("max_batch", "max_queue") if key in args})
    config = ServeConfig(
        device=device, dtype=dtype, api_key=api_key_or_environment(args.get("api_key")), **fields
    )
    max_replicas = args.get("max_replicas")
    return build_application(
        config,
        replicas=int(args.get("replicas", 1)),
        max_replicas=int(max_replicas) if max_replicas else None,
        ui=str(args.get("ui", "true")).lower() not in ("0", "false", "no"),
    )


def start_local_ray(**init_options) -> None:
    """Start a Ray instance on this machine with every one of its services (GCS, raylet, agents,
    workers) listening on 127.0.0.1 only, or refuse.

    Ray replaces a loopback node address with the machine's routable one, and its gRPC servers
    then listen on every interface, unless Ray's cluster mode is off
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read when ``ray`` is imported): single-node Ray
    then keeps the node on 127.0.0.1 and its servers on loopback. The variable is set for the
    processes Ray starts, the already imported constant for this one, and the node's address is
    checked after the start.
    """
    import ray
    from ray._private import ray_constants

    from ..errors import UsageError

    os.environ.pop("RAY_ADDRESS", None)  # ray.init would join that cluster instead
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(_node_ip_address="127.0.0.1", **init_options)
    addresses = {node["NodeManagerAddress"] for node in ray.nodes()}
    if not addresses <= set(LOOPBACK):
        ray.shutdown()
        raise UsageError(
            f"Ray {ray.__version__} put the local instance on {', '.join(sorted(addresses))}, "
            "not 127.0.0.1: start a cluster yourself (ray start --head, behind a firewall) and "
            "pass --ray-address auto"
        )


def serve_on_ray(config: ServeConfig, options: RayOptions, ui: bool = True) -> int:
    """``idm-vton serve --ray``: deploy on Ray Serve and block until interrupted (SIGTERM or
    Ctrl-C); then the application is deleted and a local Ray instance started here is stopped
    with every process it started."""
    import json
    import signal

    import ray

    address = None if options.local else options.address or os.environ.get("RAY_ADDRESS")
    started_here = False

    def stop(signum, frame):
        raise _Terminated()

    if not ray.is_initialized():
        started_here = not address
        if address:
            ray.init(address=address, runtime_env=runtime_environment() or None)
        else:
            start_local_ray(include_dashboard=False, runtime_env=runtime_environment() or None)
    # After ray.init, which arms Ray's native fatal-signal handlers (they would abort the
    # process on SIGTERM): from here SIGTERM is this function's clean stop.
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        _check_serve_port(config.port)
        serve.start(http_options={"host": config.host, "port": config.port})
        print(
            f"deploying {options.replicas} replica(s) of {config.model} on Ray ...",
            file=sys.stderr,
        )
        resources = json.loads(options.ingress_resources) if options.ingress_resources else None
        application = build_application(
            config, options.replicas, options.max_replicas, ui, ingress_resources=resources
        )
        serve.run(application, name="idm-vton", route_prefix="/")
        url = base_url(config)
        print(f"ready: {url} (API docs: {url}docs)", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    except _Terminated:
        pass  # SIGTERM: a clean stop
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the cleanup is not cut short
        try:
            if ray.is_initialized():
                serve.delete("idm-vton")
                if started_here:
                    serve.shutdown()
        finally:
            ray.shutdown()
            signal.signal(signal.SIGTERM, previous)
    return 0


class _Terminated(Exception):
    """SIGTERM arrived."""


def _check_serve_port(port: int) -> None:
    """Refuse to deploy when Ray Serve already runs on this cluster on another port (a detached
    instance left by an earlier driver): the new port would never listen."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    from ..errors import UsageError

    try:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return  # no Serve instance yet
    running = ray.get(controller.get_http_config.remote()).port
    if running != port:
        raise UsageError(
            f"Ray Serve already runs on this cluster on port {running}: use --port {running}, "
            "or stop it first (serve shutdown)"
        )
