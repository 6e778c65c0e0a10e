"""Serving pieces on their own: request parameters, upload decoding, the queue and batching with a
stand-in backend, failure isolation in the engine, the editor mask, and the body-limit guard."""

from __future__ import annotations

import io
import itertools
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")

from idm_vton.serving.config import ParameterError, ServeConfig, TryOnParams  # noqa: E402
from idm_vton.serving.engine import Outcome, TryOnEngine, WorkItem, batch_key  # noqa: E402
from idm_vton.serving.images import (  # noqa: E402
    ImageTooLargeError,
    decode_image,
    image_digest,
    png_bytes,
)
from idm_vton.serving.job_queue import JobQueue, JobState, QueueFullError  # noqa: E402

from .conftest import EXAMPLES  # noqa: E402
from .helpers.images import huge_png_header  # noqa: E402
from .serve_support import png_of  # noqa: E402


def params(**fields) -> TryOnParams:
    return TryOnParams.parse(ServeConfig(), **{"seed": 1, "steps": 2, **fields})


_ids = itertools.count()


def item(garment_color=(200, 0, 0), n=1, **fields) -> WorkItem:
    return WorkItem(
        id=f"job-{next(_ids)}",
        person=Image.new("RGB", (32, 32), (90, 90, 90)),
        garment=Image.new("RGB", (32, 32), garment_color),
        params=params(num_images=n, **fields),
        mask=Image.new("L", (32, 32), 255),
        pose=Image.new("RGB", (32, 32)),
    )


# ---------------------------------------------------------------------------- parameters
def test_params_defaults_and_seed():
    config = ServeConfig(default_steps=30, default_guidance=2.0)
    p = TryOnParams.parse(config)
    assert (p.steps, p.guidance, p.category, p.num_images, p.paste_back) == (
        30,
        2.0,
        "upper_body",
        1,
        True,
    )
    assert 0 <= p.seed < 2**32
    assert TryOnParams.parse(config, seed="-1").seed != -1
    q = TryOnParams.parse(config, seed="4294967295", num_images="3", paste_back="false")
    assert q.seeds == [4294967295, 0, 1] and q.paste_back is False
    assert TryOnParams.parse(config, steps="12", guidance="1.5").steps == 12


@pytest.mark.parametrize(
    "fields",
    [
        {"steps": "0"},
        {"steps": "2.5"},
        {"steps": "inf"},
        {"guidance": "-1"},
        {"guidance": "1e400"},
        {"seed": str(2**32)},
        {"num_images": "5"},
        {"category": "shoes"},
        {"description": "x" * 501},
        {"paste_back": "2"},
    ],
)
def test_params_refused(fields):
    with pytest.raises(ParameterError):
        TryOnParams.parse(ServeConfig(), **fields)


def test_params_refusals_say_field_allowed_values_and_what_came_in():
    config = ServeConfig(max_steps=50)
    cases = {
        "steps": ("60", "steps: expected an integer in 1..50, got '60'"),
        "num_images": ("1.5", "num_images: expected an integer, got '1.5'"),
        "guidance": ("31", "guidance: expected a number in 0..30, got '31'"),
        "seed": ("x", "seed: expected an integer, got 'x'"),
        "category": ("hats", "unknown category 'hats'; expected one of: upper_body, lower_body"),
    }
    for field, (value, message) in cases.items():
        with pytest.raises(ParameterError) as info:
            TryOnParams.parse(config, **{field: value})
        assert str(info.value).startswith(message)
    # whole numbers written as decimals are integers; numbers keep their fraction
    p = TryOnParams.parse(config, steps="3.0", guidance="1.25", category=" dresses ")
    assert (p.steps, type(p.steps), p.guidance, p.category) == (3, int, 1.25, "dresses")


# ---------------------------------------------------------------------------- uploads
def test_decode_image_formats_and_modes():
    data = (EXAMPLES / "person.jpg").read_bytes()
    image = decode_image(data, "person")
    assert image.mode == "RGB" and image.size == (512, 512)
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert decode_image(png_of(rgba), "x").getpixel((0, 0)) == (255, 255, 255)  # on white
    assert decode_image(png_of(Image.new("L", (8, 8), 200)), "m", mode="L").getpixel((1, 1)) == 200


def test_a_mask_upload_painted_on_a_transparent_layer_is_its_painted_part():
    layer = np.zeros((6, 8, 4), np.uint8)  # transparent black, as Gradio's paint layers
    layer[2:4, 3:6] = (255, 255, 255, 255)
    mask = decode_image(png_of(Image.fromarray(layer, mode="RGBA")), "mask", as_mask=True)
    assert mask.mode == "L"
    assert (np.asarray(mask) >= 128).tolist() == (layer[..., 3] > 0).tolist()


@pytest.mark.parametrize(
    "data",
    [b"", b"GIF89a", b"not an image at all", b"%!PS-Adobe-3.0 EPSF-3.0\n"],
)
def test_decode_image_refuses_non_images(data):
    from idm_vton.errors import ImageInputError

    with pytest.raises(ImageInputError) as info:
        decode_image(data, "garment")
    assert "garment" in str(info.value) and not isinstance(info.value, ImageTooLargeError)


def test_decode_image_refuses_truncated_files():
    from idm_vton.errors import ImageInputError

    data = (EXAMPLES / "person.jpg").read_bytes()
    with pytest.raises(ImageInputError):
        decode_image(data[: len(data) // 3], "person")


def test_pixel_limit_checked_from_the_header():
    with pytest.raises(ImageTooLargeError):
        decode_image(huge_png_header(5000, 5000), "person", max_pixels=1_000_000)
    with pytest.raises(ImageTooLargeError):
        decode_image(huge_png_header(40_000, 40_000), "person")  # Pillow's own bomb guard
    small = png_of(Image.new("RGB", (100, 100)))
    assert decode_image(small, "person", max_pixels=10_000).size == (100, 100)


def test_png_bytes_has_pixels_only():
    image = Image.new("RGB", (4, 4), (1, 2, 3))
    image.info["icc_profile"] = b"fake profile"
    image.info["comment"] = "secret"
    data = png_bytes(image)
    with Image.open(io.BytesIO(data)) as out:
        assert out.format == "PNG" and not out.info
        assert np.array_equal(np.asarray(out), np.asarray(image))
    assert b"secret" not in data and b"fake profile" not in data


def test_image_digest_compares_content():
    a = Image.new("RGB", (4, 4), (1, 2, 3))
    assert image_digest(a) == image_digest(a.copy())
    assert image_digest(a) != image_digest(Image.new("RGB", (4, 4), (1, 2, 4)))


# ---------------------------------------------------------------------------- queue and batching
class FakeBackend:
    """Records batches; each run takes ``delay`` seconds and reports ``steps`` steps."""

    def __init__(self, delay=0.05, steps=2, gate=None):
        self.batches, self.delay, self.steps, self.gate = [], delay, steps, gate

    def __call__(self, items, progress, stopped):
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append([i.id for i in items])
        ids = [i.id for i in items]
        for step in range(self.steps):
            time.sleep(self.delay / self.steps)
            progress(ids, step + 1, self.steps)
            if stopped(ids):
                return [Outcome(i.id, status=499, error="cancelled") for i in items]
        return [Outcome(i.id, images=[b"png"], seeds=i.params.seeds) for i in items]


def wait_final(job, timeout=10):
    deadline = time.monotonic() + timeout
    while not job.state.final:
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_batches_group_same_garment_and_settings_in_queue_order():
    gate = threading.Event()
    backend = FakeBackend(gate=gate)
    jobs = JobQueue(max_queue=20, max_batch=3)
    jobs.start(backend)
    try:
        first = jobs.submit(item())  # taken alone while the gate is closed
        time.sleep(0.05)
        red = [jobs.submit(item()) for _ in range(4)]
        blue = [jobs.submit(item((0, 0, 200))) for _ in range(2)]
        other_steps = jobs.submit(item(steps=5))
        two_images = jobs.submit(item(n=2))
        gate.set()
        for job in [first, *red, *blue, other_steps, two_images]:
            wait_final(job)
            assert job.state is JobState.DONE
    finally:
        jobs.close()
    ids = lambda jobs: [j.id for j in jobs]  # noqa: E731
    assert backend.batches[0] == [first.id]
    assert backend.batches[1] == ids(red[:3])  # max_batch images
    # the oldest waiting job leads the next batch; a 2-image request with its key fits beside it
    assert backend.batches[2] == [red[3].id, two_images.id]
    assert backend.batches[3] == ids(blue)
    assert backend.batches[4] == [other_steps.id]


def test_queue_limit_and_cancel_of_a_queued_job():
    gate = threading.Event()
    jobs = JobQueue(max_queue=2, max_batch=1)
    jobs.start(FakeBackend(gate=gate))
    try:
        running = jobs.submit(item())
        time.sleep(0.05)
        queued = [jobs.submit(item(steps=s)) for s in (3, 4)]
        with pytest.raises(QueueFullError):
            jobs.submit(item(steps=5))
        assert jobs.status(queued[1])["queue_position"] == 2
        jobs.cancel(queued[0].id)
        assert queued[0].state is JobState.CANCELLED
        assert jobs.status(queued[1])["queue_position"] == 1
        jobs.submit(item(steps=6))  # room again
        gate.set()
        wait_final(running)
        wait_final(queued[1])
        assert queued[1].state is JobState.DONE
    finally:
        jobs.close()


class SteppingBackend:
    """Runs ``steps`` steps of ``step_s`` each, stopping as soon as ``stopped`` says so; records
    the steps it ran per batch and the items it was given."""

    def __init__(self, steps=400, step_s=0.01):
        self.steps, self.step_s = steps, step_s
        self.ran: list[int] = []
        self.started = threading.Event()

    def __call__(self, items, progress, stopped):
        ids = [i.id for i in items]
        self.started.set()
        for step in range(self.steps):
            time.sleep(self.step_s)
            progress(ids, step + 1, self.steps)
            if stopped(ids):
                self.ran.append(step + 1)
                return [Outcome(i.id, status=499, error="cancelled") for i in items]
        self.ran.append(self.steps)
        return [Outcome(i.id, images=[b"png"], seeds=i.params.seeds) for i in items]


def wait_step(job, step):
    deadline = time.monotonic() + 30
    while job.step < step:
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.002)


def test_cancelling_a_running_job_stops_its_call_at_the_next_step():
    backend = SteppingBackend()
    jobs = JobQueue(max_queue=5, max_batch=1)
    jobs.start(backend)
    try:
        job = jobs.submit(item())
        wait_step(job, 2)
        jobs.cancel(job.id)
        cancelled_at = job.step
        assert job.state is JobState.CANCELLED  # at once
        follow = jobs.submit(item())
        wait_final(follow, timeout=30)
        assert follow.state is JobState.DONE
        # the cancelled call ran one more step (the one under way), not its 400
        assert backend.ran[0] <= cancelled_at + 2, backend.ran
    finally:
        jobs.close()


def test_a_cancelled_or_timed_out_job_fails_alone_in_a_shared_call():
    gate = threading.Event()
    backend = SteppingBackend(steps=60)
    jobs = JobQueue(max_queue=5, max_batch=3)

    def gated(items, progress, stopped):
        gate.wait(10)
        return backend(items, progress, stopped)

    jobs.start(gated)
    try:
        blocker = jobs.submit(item((1, 2, 3)))  # holds the worker until the gate opens
        shared = [jobs.submit(item()) for _ in range(3)]  # one batch of three
        gate.set()
        wait_final(blocker, timeout=30)
        wait_step(shared[0], 2)
        jobs.cancel(shared[0].id)
        shared[1].deadline = time.monotonic() - 1  # its time is up
        wait_final(shared[2], timeout=30)
        assert shared[0].state is JobState.CANCELLED
        assert (shared[1].state, shared[1].status, shared[1].error) == (
            JobState.FAILED,
            504,
            "timed out",
        )
        # the third still wanted its result: the call went on to the end for it
        assert shared[2].state is JobState.DONE and shared[2].outcome.images == [b"png"]
        assert backend.ran == [60, 60]
    finally:
        jobs.close()


def test_a_job_past_its_deadline_fails_with_504_and_stops_its_call():
    backend = SteppingBackend()
    jobs = JobQueue(max_queue=5, max_batch=1, timeout_s=0.3)
    jobs.start(backend)
    try:
        job = jobs.submit(item())
        wait_final(job, timeout=30)
        assert job.state is JobState.FAILED and job.status == 504
        assert backend.ran and backend.ran[0] < 400
    finally:
        jobs.close()


def test_batch_key_ignores_the_category_and_the_seed():
    assert batch_key(item(category="dresses", seed=3)) == batch_key(item(seed=9))
    assert batch_key(item()) != batch_key(item(description="a shirt"))
    assert batch_key(item()) != batch_key(item(guidance=3.0))


# ---------------------------------------------------------------------------- engine
class FlakyPipeline:
    """Stands in for the pipeline: fails any call containing a person marked as poison."""

    default_height, default_width = 32, 24

    def __init__(self):
        self.calls = []
        self.garment_cache = None

    def __call__(
        self,
        person_image,
        callback_on_step_end=None,
        num_inference_steps=1,
        garment_generator=None,
        **kwargs,
    ):
        self.calls.append(len(person_image))
        if any(p.getpixel((0, 0)) == (255, 0, 255) for p in person_image):
            raise RuntimeError("simulated device failure")
        for step in range(num_inference_steps):
            callback_on_step_end(self, step, 0, {})
        return type("Out", (), {"images": [p.copy() for p in person_image]})()


def test_a_failing_request_fails_alone():
    pipe = FlakyPipeline()
    engine = TryOnEngine(pipe, max_batch=4)
    good = [item() for _ in range(2)]
    poison = item()
    poison.person = Image.new("RGB", (32, 32), (255, 0, 255))
    empty = item()
    empty.mask = Image.new("L", (32, 32), 0)
    outcomes = engine.run([good[0], poison, empty, good[1]])
    assert [o.ok for o in outcomes] == [True, False, False, True]
    assert outcomes[1].status == 500 and "internal" in outcomes[1].error
    assert outcomes[2].status == 400 and "empty" in outcomes[2].error
    # one batched call of the three with a valid mask, then one call per request
    assert pipe.calls == [3, 1, 1, 1]
    assert outcomes[0].size == (32, 32)
    assert Image.open(io.BytesIO(outcomes[0].images[0])).size == (32, 32)
    assert outcomes[1].images == [] and outcomes[1].mask is None


def test_requests_larger_than_a_batch_run_in_several_calls():
    pipe = FlakyPipeline()
    engine = TryOnEngine(pipe, max_batch=2)
    outcomes = engine.run([item(n=3), item(n=2)])
    assert pipe.calls == [2, 2, 1]
    assert [len(o.images) for o in outcomes] == [3, 2]


def test_editor_mask_is_the_painted_part_of_the_layers():
    from idm_vton.serving.ui import editor_mask, mask_layer

    assert editor_mask([], (8, 6)) is None
    assert editor_mask([Image.new("RGBA", (8, 6), (255, 0, 0, 0))], (8, 6)) is None
    layer = Image.new("RGBA", (8, 6), (0, 0, 0, 0))
    layer.putpixel((2, 3), (255, 0, 0, 255))
    other = Image.new("RGBA", (16, 12), (0, 0, 0, 0))  # another size: resized to the photo
    other.paste((0, 255, 0, 40), (10, 0, 16, 2))
    mask = np.asarray(editor_mask([layer, other], (8, 6)))
    expected = np.zeros((6, 8), bool)
    expected[3, 2] = True
    expected[0, 5:8] = True
    assert np.array_equal(mask >= 128, expected)
    # a mask loaded into the editor comes back as the same mask
    original = Image.fromarray((np.arange(48).reshape(6, 8) % 3 == 0).astype(np.uint8) * 255)
    assert np.array_equal(
        np.asarray(editor_mask([mask_layer(original)], (8, 6))), np.asarray(original)
    )


# ---------------------------------------------------------------------------- body limit
def test_body_limit_middleware_cuts_streams_off():
    import asyncio

    from idm_vton.serving.security import BodyLimitMiddleware

    seen = []

    async def app(scope, receive, send):
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def run(chunks, headers=()):
        sent, queue = [], list(chunks)

        async def receive():
            body = queue.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(queue)}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "headers": list(headers)}
        await BodyLimitMiddleware(app, max_bytes=10)(scope, receive, send)
        return sent[0]["status"]

    assert asyncio.run(run([b"12345", b"12345"])) == 200
    assert asyncio.run(run([b"12345", b"123456", b"more"])) == 413
    assert seen[-1] == "http.disconnect"  # the app saw the input end, not the rest
    assert asyncio.run(run([b""], headers=[(b"content-length", b"11")])) == 413
    assert asyncio.run(run([b""], headers=[(b"content-length", b"x")])) == 400


# ---------------------------------------------------------------------------- the serve command
def serve_args(*argv: str):
    from idm_vton.commands.main import build_parser

    return build_parser().parse_args(["serve", "--model", "tiny", "--device", "cpu", *argv])


def test_serve_options_build_the_config(monkeypatch):
    from idm_vton.commands.serve import config_from_args

    monkeypatch.delenv("IDM_VTON_API_KEY", raising=False)
    config = config_from_args(
        serve_args(
            "--max-upload-mb", "1.5", "--timeout", "30", "--garment-cache-mb", "10",
            "--max-queue", "0", "--port", "8123", "--host", "0.0.0.0", "--vae-slicing",
        )
    )  # fmt: skip
    assert (config.model, config.device, config.dtype) == ("tiny", "cpu", "fp32")
    assert config.max_upload_bytes == 1536 * 1024 and config.garment_cache_bytes == 10 * 2**20
    assert (config.timeout_s, config.max_queue, config.port, config.host) == (
        30.0,
        0,
        8123,
        "0.0.0.0",
    )
    assert config.memory_options.vae_slicing and not config.memory_options.offload
    assert config.api_key is None
    monkeypatch.setenv("IDM_VTON_API_KEY", "from-env")
    assert config_from_args(serve_args()).api_key == "from-env"
    assert config_from_args(serve_args("--api-key", "given")).api_key == "given"
    # the defaults are ServeConfig's own
    from idm_vton.serving.config import ServeConfig

    default = config_from_args(serve_args())
    assert (default.max_upload_bytes, default.timeout_s, default.max_batch) == (
        ServeConfig.max_upload_bytes,
        ServeConfig.timeout_s,
        ServeConfig.max_batch,
    )


def test_serve_command_hands_ui_and_ray_options_to_the_server(monkeypatch):
    import idm_vton.serving.server as server
    from idm_vton.commands.serve import run
    from idm_vton.serving.config import RayOptions

    calls = []
    monkeypatch.setattr(server, "serve", lambda config, **kw: calls.append((config, kw)) or 0)
    assert run(serve_args("--no-ui", "--ray", "--replicas", "2", "--ray-address", "auto")) == 0
    assert run(serve_args("--replicas", "3")) == 0
    (first, first_kw), (second, second_kw) = calls
    assert first_kw == {"ui": False, "ray": RayOptions(replicas=2, address="auto")}
    assert second_kw == {"ui": True, "ray": None}  # --replicas alone does not mean Ray
    assert first.model == second.model == "tiny"


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--max-batch", "0"], "--max-batch must be >= 1"),
        (["--max-queue", "-1"], "--max-queue must be >= 0"),
        (["--max-images", "0"], "--max-images must be >= 1"),
        (["--port", "70000"], "--port must be 1..65535"),
        (["--max-upload-mb", "0"], "--max-upload-mb and --timeout must be > 0"),
        (["--timeout", "0"], "--max-upload-mb and --timeout must be > 0"),
        (["--replicas", "0"], "--replicas must be >= 1"),
        (["--ray", "--ray-local", "--ray-address", "auto"], "leave out --ray-address"),
    ],
)
def test_serve_options_refused_in_one_line(monkeypatch, capsys, argv, words):
    import idm_vton.serving.server as server
    from idm_vton.commands.main import run_command
    from idm_vton.commands.serve import run

    monkeypatch.setattr(server, "serve", lambda *a, **kw: pytest.fail("the server started"))
    assert run_command(run, serve_args(*argv), "idm-vton serve") == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--max-upload-mb", "--garment-cache-mb", "--max-temp-mb"])
@pytest.mark.parametrize("value", ["inf", "nan", "big", "-1"])
def test_serve_sizes_in_mb_must_be_numbers(capsys, flag, value):
    with pytest.raises(SystemExit) as info:
        serve_args(flag, value)
    assert info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    # argparse's one line, naming the flag and what came in (after the usage line)
    assert lines[-1].startswith("idm-vton serve: error: argument ") and flag in lines[-1], lines
    assert repr(value) in lines[-1] or value in lines[-1], lines


def test_building_the_parser_imports_no_server_library():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from idm_vton.commands.main import build_parser\n"
        "build_parser().parse_args(['serve', '--model', 'tiny'])\n"
        "heavy = ('gradio', 'fastapi', 'starlette', 'uvicorn', 'ray')\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in heavy]\n"
        "loaded += [m for m in sys.modules if m.startswith('idm_vton.serving.')\n"
        "           and m != 'idm_vton.serving.config']\n"
        "print(sorted(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_ready_line_url_is_one_a_browser_here_opens():
    from idm_vton.serving.config import ServeConfig, base_url

    assert base_url(ServeConfig(host="0.0.0.0", port=80)) == "http://127.0.0.1:80/"
    assert base_url(ServeConfig(host="::", port=81)) == "http://127.0.0.1:81/"
    assert base_url(ServeConfig(host="::1", port=82)) == "http://[::1]:82/"
    assert base_url(ServeConfig(host="example.org", port=83)) == "http://example.org:83/"
