"""The server on Ray Serve: two replicas of the tiny model on the CPU in a local Ray instance
answer concurrent requests through the same HTTP API, with the same images as one process."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .serve_support import (
    STEPS,
    decode_png,
    example_files,
    free_port,
    image_difference,
    multipart,
    running_server,
    variant_garments,
)

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def ray_url(monkeypatch_module):
    from idm_vton.serving.config import ServeConfig
    from idm_vton.serving.ray_app import build_application, start_local_ray

    port = free_port()
    monkeypatch_module.setenv("RAY_USAGE_STATS_ENABLED", "0")  # no usage report
    # start_local_ray turns Ray's cluster mode off in this process: undone after the module
    from ray._private import ray_constants

    monkeypatch_module.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
    monkeypatch_module.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    start_local_ray(  # every Ray service on the loopback interface
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        object_store_memory=200 * 1024 * 1024,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = ServeConfig(model="tiny", device="cpu", dtype="fp32", max_batch=2)
        serve.run(
            build_application(config, replicas=2, ui=False), name="idm-vton", route_prefix="/"
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_answer_concurrent_requests(ray_url):
    garments = variant_garments()
    person = example_files()
    specs = [(garments[i % 2], 300 + i) for i in range(8)]

    def call(spec, url=ray_url):
        garment, seed = spec
        with httpx.Client(base_url=url, timeout=120) as client:
            response = client.post(
                "/v1/tryon", **multipart({**person, "garment": garment}, steps=STEPS, seed=seed)
            )
        assert response.status_code == 200, response.text
        return decode_png(response.content), response.headers.get("x-worker", "")

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, specs))
    workers = {worker for _, worker in answers}
    assert len(workers) == 2, f"expected both replicas to render, got {workers}"
    with httpx.Client(base_url=ray_url, timeout=60) as client:
        info = client.get("/v1/info").json()
        assert info["backend"] == "ray" and info["replicas"] == 2
        assert client.get("/readyz").status_code == 200
        bad = example_files()
        bad["mask"] = b"not an image"
        assert client.post("/v1/tryon", **multipart(bad)).status_code == 400
        job = client.post("/v1/jobs", **multipart(person, steps=STEPS, seed=1)).json()
        assert client.get(f"/v1/jobs/{job['id']}").status_code == 200  # one home for jobs
    # the same requests in one local process give the same images
    with running_server(max_batch=1) as (url, _):
        for (image, _), spec in zip(answers[:4], specs[:4], strict=True):
            local, _ = call(spec, url)
            largest, share = image_difference(image, local)
            assert largest <= 1 and share < 1e-3


# ---------------------------------------------------------------------------- deployment options
def deployment_options(application) -> tuple[dict, dict, dict]:
    """(ingress actor options, model actor options, model config) of a built application."""
    ingress = application._bound_deployment
    model_app = ingress.init_args[0]
    model = model_app._bound_deployment
    return ingress.ray_actor_options, model.ray_actor_options, model.init_args[0]


def test_replicas_get_the_servers_settings_and_resolve_their_device(monkeypatch):
    from idm_vton.serving.config import ServeConfig
    from idm_vton.serving.ray_app import HEAD_NODE, build_application, resolved_on_this_node

    monkeypatch.setenv("IDM_VTON_PREPROCESS_MODELS", "/shared/ckpt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = ServeConfig(model="tiny", device="auto", dtype="auto")
    ingress, model, model_config = deployment_options(build_application(config, ui=False))
    for options in (ingress, model):
        assert options["runtime_env"]["env_vars"] == {
            "IDM_VTON_PREPROCESS_MODELS": "/shared/ckpt",
            "HF_HUB_OFFLINE": "1",
        }
    # the ingress is placed on the head node unless told otherwise
    assert ingress["resources"] == HEAD_NODE and ingress["num_cpus"] == 0
    placed = build_application(config, ui=False, ingress_resources={"ingress": 1})
    assert deployment_options(placed)[0]["resources"] == {"ingress": 1}
    # the device is not resolved by the driver: each replica resolves it on its own node
    assert (model_config["device"], model_config["dtype"]) == ("auto", "auto")
    assert model["num_gpus"] == 0  # no Ray cluster with GPUs here
    gpu = deployment_options(build_application(config, ui=False, gpus_per_replica=1))[1]
    assert gpu["num_gpus"] == 1
    here = resolved_on_this_node(ServeConfig(**model_config))
    assert (here.device, here.dtype) == ("cpu", "fp32")  # this machine has no GPU
    cuda = ServeConfig(model="tiny", device="cuda", dtype="bf16")
    assert deployment_options(build_application(cuda, ui=False))[1]["num_gpus"] == 1


def test_serve_ray_options_are_checked(monkeypatch):
    from idm_vton.commands.main import build_parser
    from idm_vton.commands.serve import config_from_args
    from idm_vton.errors import UsageError
    from idm_vton.serving.config import RayOptions

    with pytest.raises(UsageError, match="--ingress-resources"):
        RayOptions(ingress_resources="[1]")
    args = build_parser().parse_args(["serve", "--ray", "--device", "cuda", "--model", "tiny"])
    # --device cuda is not refused on a machine without a GPU: the replicas' nodes have them
    assert config_from_args(args).device == "cuda"


def test_a_local_ray_instance_off_loopback_is_refused(monkeypatch):
    from ray._private import ray_constants

    from idm_vton.errors import UsageError
    from idm_vton.serving.ray_app import start_local_ray

    calls = []
    monkeypatch.setattr(ray, "init", lambda **options: calls.append(options))
    monkeypatch.setattr(ray, "nodes", lambda: [{"NodeManagerAddress": "192.0.2.7"}])
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    with pytest.raises(UsageError, match="put the local instance on 192.0.2.7, not 127.0.0.1"):
        start_local_ray(include_dashboard=False)
    assert calls == [{"_node_ip_address": "127.0.0.1", "include_dashboard": False}, "shutdown"]
    # Ray's cluster mode off for this process and the ones Ray starts; no cluster joined
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert ray_constants.ENABLE_RAY_CLUSTER is False
    assert "RAY_ADDRESS" not in os.environ


@pytest.mark.parametrize(
    "local,address,expected",
    [
        (False, None, "local"),
        (False, "10.0.0.1:6379", "10.0.0.1:6379"),
        (True, "10.0.0.1:6379", "local"),
    ],
)
def test_serve_on_ray_joins_ray_address_unless_told_to_start_here(
    monkeypatch, local, address, expected
):
    from idm_vton.serving import ray_app
    from idm_vton.serving.config import RayOptions, ServeConfig

    class Started(Exception):
        pass

    def started(where):
        raise Started(where)

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda address, **options: started(address))
    monkeypatch.setattr(ray_app, "start_local_ray", lambda **options: started("local"))
    if address:
        monkeypatch.setenv("RAY_ADDRESS", address)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(Started) as info:
        ray_app.serve_on_ray(ServeConfig(model="tiny"), RayOptions(local=local))
    assert info.value.args == (expected,)


class _LostReplica:
    """A deployment handle whose replica sends one step, then dies with its node."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def options(self, **kwargs):
        assert kwargs == {"stream": True}
        return self

    @property
    def run(self):
        return self

    def remote(self, payload):
        ids = [item["id"] for item in payload["items"]]

        def events():
            yield {"step": {"ids": ids, "done": 1, "total": 4}}
            raise self.error

        return events()


@pytest.mark.parametrize("kind", ["actor died", "node died"])
def test_a_replica_lost_mid_render_is_a_503_to_retry_not_an_internal_error(kind):
    from PIL import Image

    from idm_vton.serving.config import ServeConfig, TryOnParams
    from idm_vton.serving.engine import WorkItem
    from idm_vton.serving.ray_app import RayBackend

    error = (
        ray.exceptions.ActorDiedError()
        if kind == "actor died"
        else ray.exceptions.NodeDiedError("node 1 died")
    )
    params = TryOnParams.parse(ServeConfig(), seed=1, steps=4)
    items = [
        WorkItem(
            id=f"job-{i}",
            person=Image.new("RGB", (8, 6)),
            garment=Image.new("RGB", (4, 4)),
            params=params,
        )
        for i in range(2)
    ]
    steps = []
    outcomes = RayBackend(_LostReplica(error))(
        items, lambda ids, done, total: steps.append((ids, done, total)), lambda ids: False
    )
    assert steps == [(["job-0", "job-1"], 1, 4)]
    assert [(o.id, o.status) for o in outcomes] == [("job-0", 503), ("job-1", 503)]
    assert all("retry" in o.error and "\n" not in o.error for o in outcomes)
