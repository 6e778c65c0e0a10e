"""Shared code of the serving tests: a real server on a loopback port, inputs, comparisons.

The server is the real ASGI app run by uvicorn in a background thread of the test process (so a
test can also look at the service's queue), on a socket bound to 127.0.0.1 port 0.
"""

from __future__ import annotations

import io
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import EXAMPLES, SHARED

#: Steps for test requests: enough to see progress, fast on the tiny model.
STEPS = 3


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    """A loopback port free a moment ago, for a server started in another process."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    return port


def wait_until_ready(
    process: subprocess.Popen, url: str, timeout_s: float = 300, log: Path | None = None
) -> None:
    """Poll ``url/readyz`` until the server in ``process`` answers 200: a condition, never a
    fixed wait; ``timeout_s`` only bounds it for a loaded machine. Fails with the server's
    output (``log``, else its stderr pipe) if it exits first, or when the time is up."""
    import httpx

    def output() -> str:
        return log.read_text()[-3000:] if log is not None else process.communicate()[1][-3000:]

    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, output()
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, (
            log.read_text()[-3000:] if log is not None else "the server did not become ready"
        )
        time.sleep(0.2)


def tiny_loader(config, gate: threading.Event | None = None):
    """A loader for :class:`TryOnService`: the tiny model (after ``gate`` is set, if given)."""
    from idm_vton.serving.service import load_local_model

    def load():
        if gate is not None:
            gate.wait(60)
        return load_local_model(config)

    return load


@contextmanager
def running_server(
    config=None,
    ui: bool = False,
    gate: threading.Event | None = None,
    wait_ready: bool = True,
    **overrides,
):
    """Serve the tiny model on 127.0.0.1 as ``idm-vton serve`` does (the same uvicorn settings:
    :func:`idm_vton.serving.server.make_server`); yields ``(base_url, service)``."""
    from idm_vton.serving.app import close_app, create_app
    from idm_vton.serving.config import ServeConfig
    from idm_vton.serving.server import make_server
    from idm_vton.serving.service import TryOnService

    overrides.setdefault("shutdown_grace_s", 0.5)
    config = config or ServeConfig(model="tiny", device="cpu", dtype="fp32", **overrides)
    service = TryOnService(config, tiny_loader(config, gate))
    app = create_app(service, ui=ui)
    sock = free_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = make_server(app, service, config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    service.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        if wait_ready:
            assert service.loaded.wait(120), "the model did not load"
            assert service.ready, service.load_error
        yield url, service
    finally:
        service.close()  # every open request is answered, so the server stops at once
        server.should_exit = True
        thread.join(30)
        close_app(app)
        sock.close()


# ---------------------------------------------------------------------------- inputs
def file_bytes(path: Path) -> bytes:
    return Path(path).read_bytes()


def png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def example_files() -> dict[str, bytes]:
    """The repository's example person, garment, mask and DensePose as uploaded bytes."""
    return {
        "person": file_bytes(EXAMPLES / "person.jpg"),
        "garment": file_bytes(EXAMPLES / "garment.jpg"),
        "mask": file_bytes(EXAMPLES / "mask.png"),
        "pose": file_bytes(EXAMPLES / "densepose.png"),
    }


def shared_pairs(limit: int = 2) -> list[tuple[Path, Path]]:
    """(person, garment) pairs of the optional VITON-HD photos (skips when they are absent)."""
    people = sorted((SHARED / "examples" / "person").glob("*.jpg"))
    garments = sorted((SHARED / "examples" / "garment").glob("*.jpg"))
    if not people or not garments:
        pytest.skip(f"optional VITON-HD example photos not found under {SHARED}/examples")
    count = min(limit, max(len(people), len(garments)))
    return [(people[i % len(people)], garments[i % len(garments)]) for i in range(count)]


def variant_garments() -> list[bytes]:
    """Three different garments made from the example garment (for batching tests)."""
    base = Image.open(EXAMPLES / "garment.jpg").convert("RGB")
    flipped = base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    tinted = Image.fromarray((np.asarray(base) * np.array([0.6, 0.9, 1.0])).astype(np.uint8))
    return [png_of(base), png_of(flipped), png_of(tinted)]


def multipart(files: dict[str, bytes], **fields) -> dict:
    """``httpx`` keyword arguments for a multipart try-on request."""
    return {
        "files": {
            name: (f"{name}.bin", data, "application/octet-stream") for name, data in files.items()
        },
        "data": {name: str(value) for name, value in fields.items() if value is not None},
    }


def decode_png(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        image.load()
        return image.copy()


def photo_mask(mask_bytes: bytes, size: tuple[int, int]) -> np.ndarray:
    """The uploaded mask as the server uses it: nearest-resized to the photo, white >= 128."""
    mask = Image.open(io.BytesIO(mask_bytes)).convert("L")
    if mask.size != size:
        mask = mask.resize(size, Image.Resampling.NEAREST)
    return np.asarray(mask) >= 128


def assert_outside_mask_unchanged(result: Image.Image, person_bytes: bytes, mask: np.ndarray):
    """Every pixel outside the mask is the photo's own (and the photo's size is kept)."""
    from PIL import ImageOps

    photo = ImageOps.exif_transpose(Image.open(io.BytesIO(person_bytes))).convert("RGB")
    assert result.size == photo.size
    out, original = np.asarray(result.convert("RGB")), np.asarray(photo)
    assert np.array_equal(out[~mask], original[~mask])
    assert not np.array_equal(out[mask], original[mask]), "nothing was rendered in the mask"


def image_difference(a: Image.Image, b: Image.Image) -> tuple[int, float]:
    """(largest 8-bit difference, fraction of pixels that differ) between two images."""
    x = np.asarray(a.convert("RGB")).astype(np.int16)
    y = np.asarray(b.convert("RGB")).astype(np.int16)
    assert x.shape == y.shape
    diff = np.abs(x - y).max(axis=-1)
    return int(diff.max()), float((diff > 0).mean())
