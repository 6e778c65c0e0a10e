"""Throughput and latency of ``idm-vton serve`` with the tiny model; prints JSON lines.

For every concurrency (default 1, 4, 16) and for batching on (``--max-batch``, requests for the
same garment share one pipeline call) and off (``max_batch=1``): requests/s and p50/p95 latency
of ``POST /v1/tryon`` on a real server (uvicorn on 127.0.0.1, the HTTP client in the same
process), all requests for the example person and garment with different seeds. Then the Ray
Serve path (``--ray-replicas`` replicas on the CPU in a local Ray instance) at the highest
concurrency. The tiny model measures the serving plumbing (HTTP, decoding, queueing, batching,
PNG encoding), not IDM-VTON's speed; on a GPU with the real model the UNet dominates.

    python benchmarks/bench_serve.py [--requests 32] [--steps 10] [--concurrency 1,4,16]
        [--max-batch 4] [--ray-replicas 2] [--no-ray] [--threads N]

Each setting shows a progress bar of its requests on stderr and prints its JSON line when done
(nine settings with the defaults; ``--no-ray``, ``--requests 8`` or ``--concurrency 1,4`` make
a quicker run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import torch

from idm_vton.examples import EXAMPLES_DIR as EXAMPLES
from idm_vton.progress import progress_bar


def files() -> dict:
    return {
        name: (f"{name}.bin", (EXAMPLES / filename).read_bytes(), "application/octet-stream")
        for name, filename in (
            ("person", "person.jpg"),
            ("garment", "garment.jpg"),
            ("mask", "mask.png"),
            ("pose", "densepose.png"),
        )
    }


def load(url: str, requests: int, concurrency: int, steps: int, what: str = "") -> dict:
    """Send ``requests`` try-ons, ``concurrency`` at a time; latency figures in seconds. A
    progress bar on stderr counts the finished requests (``what`` names the setting)."""
    payload = files()

    def one(seed: int) -> float:
        started = time.perf_counter()
        with httpx.Client(base_url=url, timeout=600) as client:
            response = client.post(
                "/v1/tryon", files=payload, data={"steps": str(steps), "seed": str(seed)}
            )
        assert response.status_code == 200, response.text
        return time.perf_counter() - started

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # warm-up round
        started = time.perf_counter()
        timed = pool.map(one, range(1000, 1000 + requests))
        latencies = list(progress_bar(timed, total=requests, desc=what, unit="request"))
        wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests_per_s": round(requests / wall, 3),
        "p50_s": round(statistics.median(ordered), 3),
        "p95_s": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
        "wall_s": round(wall, 2),
    }


class LocalServer:
    """``idm-vton serve --model tiny`` in a background thread on a free loopback port."""

    def __init__(self, max_batch: int, **settings) -> None:
        from idm_vton.serving.app import create_app
        from idm_vton.serving.config import ServeConfig
        from idm_vton.serving.server import make_server
        from idm_vton.serving.service import TryOnService, load_local_model

        config = ServeConfig(
            model="tiny",
            device="cpu",
            dtype="fp32",
            max_batch=max_batch,
            max_queue=256,
            shutdown_grace_s=1.0,
            **settings,
        )
        self.service = TryOnService(config, lambda: load_local_model(config))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = make_server(create_app(self.service, ui=False), self.service, config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> LocalServer:
        self.thread.start()
        self.service.start(wait=True)
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.service.close()
        self.server.should_exit = True
        self.thread.join(30)

    def batch_sizes(self) -> list[int]:
        return list(self.service.jobs.batch_sizes)


def memory_figures(jobs: int = 40) -> dict:
    """What ``jobs`` big cheap requests (a uniform 4000 x 4000 PNG photo, mask and DensePose,
    about 150 KB on the wire, 48 MP decoded) cost the server: accepted and refused jobs, the
    pixels the queue holds at most (its budget is the default 256 MP), and the growth of the
    process's peak RSS (the tiny model's load included)."""
    import io
    import resource

    import httpx
    from PIL import Image

    def uniform(color) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (4000, 4000), color).save(buffer, format="PNG", compress_level=9)
        return buffer.getvalue()

    files = {
        "person": ("p.png", uniform((120, 80, 60))),
        "garment": ("g.jpg", (EXAMPLES / "garment.jpg").read_bytes()),
        "mask": ("m.png", uniform((255, 255, 255))),
        "pose": ("d.png", uniform((20, 20, 90))),
    }
    codes: dict[int, int] = {}
    peak_pixels = 0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with LocalServer(max_batch=1) as server, httpx.Client(base_url=server.url, timeout=600) as c:
        for seed in range(jobs):
            response = c.post("/v1/jobs", files=files, data={"steps": "30", "seed": str(seed)})
            codes[response.status_code] = codes.get(response.status_code, 0) + 1
            peak_pixels = max(peak_pixels, server.service.jobs.usage()["pixels"])
    return {
        "requests": jobs,
        "answers": codes,
        "upload_bytes_each": sum(len(data) for _, data in files.values()),
        "queue_pixels_peak_mp": round(peak_pixels / 1e6, 1),
        "peak_rss_growth_mb": round(
            (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024, 1
        ),
    }


def ray_figures(args, concurrency: int) -> dict:
    import ray
    from ray import serve

    from idm_vton.serving.config import ServeConfig
    from idm_vton.serving.ray_app import build_application, start_local_ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    start_local_ray(  # every Ray service on 127.0.0.1
        num_cpus=max(2, args.ray_replicas + 1), include_dashboard=False, log_to_driver=False
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = ServeConfig(
            model="tiny", device="cpu", dtype="fp32", max_batch=args.max_batch, max_queue=256
        )
        serve.run(
            build_application(config, replicas=args.ray_replicas, ui=False),
            name="idm-vton",
            route_prefix="/",
        )
        what = f"Ray, {args.ray_replicas} replicas, concurrency {concurrency}"
        return load(f"http://127.0.0.1:{port}", args.requests, concurrency, args.steps, what)
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32, help="timed requests per setting")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per request")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--ray-replicas", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default all)")
    parser.add_argument(
        "--memory-only", action="store_true", help="only the memory figures of big cheap uploads"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps({"path": "memory", **memory_figures()}), flush=True)
    if args.memory_only:
        return
    levels = [int(c) for c in args.concurrency.split(",")]
    common = {
        "model": "tiny",
        "steps": args.steps,
        "requests": args.requests,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    for max_batch in (args.max_batch, 1):
        with LocalServer(max_batch) as server:
            for concurrency in levels:
                before = len(server.batch_sizes())
                what = f"local, max batch {max_batch}, concurrency {concurrency}"
                figures = load(server.url, args.requests, concurrency, args.steps, what)
                sizes = server.batch_sizes()[before:]
                line = {
                    "path": "local",
                    "batching": max_batch > 1,
                    "max_batch": max_batch,
                    "concurrency": concurrency,
                    **figures,
                    "mean_batch": round(sum(sizes) / max(1, len(sizes)), 2),
                    **common,
                }
                print(json.dumps(line), flush=True)
    if not args.no_ray:
        concurrency = max(levels)
        figures = ray_figures(args, concurrency)
        line = {
            "path": "ray",
            "replicas": args.ray_replicas,
            "batching": args.max_batch > 1,
            "max_batch": args.max_batch,
            "concurrency": concurrency,
            **figures,
            **common,
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
