"""The official Space's API as a drop-in: a script written for ``Client("yisol/IDM-VTON")`` runs
against ``idm-vton serve --model tiny`` (a real subprocess on 127.0.0.1, with an API key, so the
key header is shown too), in the positional and the keyword form, with ``handle_file``.

One server for the module; the demo's smallest step count (20) on the tiny model.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from .conftest import EXAMPLES, REPO
from .helpers.preprocess_models import make_preprocess_models
from .serve_support import (
    assert_outside_mask_unchanged,
    file_bytes,
    free_port,
    wait_until_ready,
)

gradio_client = pytest.importorskip("gradio_client")

KEY = "space-test-key-0123456789"
#: The demo's inputs, in its order, under its names, with its defaults (None: no default).
SPACE_INPUTS = [
    ("dict", None),
    ("garm_img", None),
    ("garment_des", None),
    ("is_checked", True),
    ("is_checked_crop", False),
    ("denoise_steps", 30),
    ("seed", 42),
]
PERSON, MASK, GARMENT = EXAMPLES / "person.jpg", EXAMPLES / "mask.png", EXAMPLES / "garment.jpg"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``idm-vton serve --model tiny`` with a key, in its own process; yields its URL."""
    folder = tmp_path_factory.mktemp("space")
    ckpt = make_preprocess_models(folder / "ckpt")
    port = free_port()
    argv = [sys.executable, "-m", "idm_vton", "serve", "--model", "tiny", "--device", "cpu"]
    argv += ["--port", str(port), "--preprocess-models", str(ckpt), "--shutdown-grace", "1"]
    env = {**os.environ, "IDM_VTON_API_KEY": KEY, "GRADIO_ANALYTICS_ENABLED": "False"}
    log = folder / "server.log"
    with open(log, "w") as stream:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(process, url, log=log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    """The Space's client, pointed at this server, with the key header."""
    headers = {"Authorization": f"Bearer {KEY}"}
    downloads = tmp_path_factory.mktemp("downloads")
    client = gradio_client.Client(server, headers=headers, download_files=downloads, verbose=False)
    yield client
    client.close()


def photo(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_the_endpoint_has_the_demos_signature(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert "/tryon" in api and "/tryon_full" in api  # the UI's own endpoint keeps working
    parameters = api["/tryon"]["parameters"]
    assert [p["parameter_name"] for p in parameters] == [name for name, _ in SPACE_INPUTS]
    for parameter, (name, default) in zip(parameters, SPACE_INPUTS, strict=True):
        if default is not None:
            assert parameter["parameter_default"] == default, name
    assert len(api["/tryon"]["returns"]) == 2


def test_positional_call_with_a_drawn_mask(client):
    """The Space's usual script: the editor's dict with a drawn layer, automatic mask off."""
    handle_file = gradio_client.handle_file
    tryon, masked = client.predict(
        {
            "background": handle_file(str(PERSON)),
            "layers": [handle_file(str(MASK))],
            "composite": None,
        },
        handle_file(str(GARMENT)),
        "short sleeve round neck t-shirts",
        False,  # is_checked: the layer is the mask
        False,  # is_checked_crop
        20,
        42,
        api_name="/tryon",
    )
    mask = np.asarray(Image.open(MASK).convert("L")) > 0  # the demo: painted = not black
    result = Image.open(tryon)
    assert result.size == Image.open(PERSON).size  # the photo's size (512 x 512, not 3:4)
    assert_outside_mask_unchanged(result, file_bytes(PERSON), mask)
    grey = np.asarray(Image.open(masked).convert("RGB"))
    assert grey.shape == photo(PERSON).shape
    assert (grey[mask] == 127).all()  # the demo's masked photo: the mask's area grey
    assert np.array_equal(grey[~mask], photo(PERSON)[~mask])


def test_keyword_call_with_automatic_mask_and_auto_crop(client):
    handle_file = gradio_client.handle_file
    tryon, masked = client.predict(
        dict={"background": handle_file(str(PERSON)), "layers": [], "composite": None},
        garm_img=handle_file(str(GARMENT)),
        garment_des="short sleeve round neck t-shirts",
        is_checked=True,
        is_checked_crop=True,
        denoise_steps=20,
        seed=7,
        api_name="/tryon",
    )
    original = photo(PERSON)
    result = np.asarray(Image.open(tryon).convert("RGB"))
    assert result.shape == original.shape
    # the demo's crop of a square photo: the centred 3:4 box, columns 64..447; all else kept
    outside = np.ones(original.shape[:2], dtype=bool)
    outside[:, 64:448] = False
    assert np.array_equal(result[outside], original[outside])
    assert not np.array_equal(result[~outside], original[~outside])
    grey = np.asarray(Image.open(masked).convert("RGB"))
    marked = (grey == 127).all(axis=-1) & (original != 127).any(axis=-1)
    assert marked.any() and not marked[outside].any()  # the automatic mask, inside the box
    # the whole box is pasted back, not only the mask (the default would keep the rest)
    box_not_mask = ~outside & ~marked
    assert not np.array_equal(result[box_not_mask], original[box_not_mask])


def test_out_of_range_steps_are_refused_in_a_sentence(client):
    with pytest.raises(Exception) as info:  # gradio_client raises AppError for gr.Error
        client.predict(
            {"background": gradio_client.handle_file(str(PERSON)), "layers": [], "composite": None},
            gradio_client.handle_file(str(GARMENT)),
            "",
            True,
            False,
            10,  # the demo's range is 20..40
            42,
            api_name="/tryon",
        )
    assert "20" in str(info.value) and "Traceback" not in str(info.value)


def test_the_key_is_required(server):
    with pytest.raises(Exception):  # noqa: B017, PT011 - the client cannot even read the API
        gradio_client.Client(server, verbose=False, download_files=False)
    refused = httpx.post(server + "/gradio_api/call/tryon", json={"data": []}, timeout=30)
    assert refused.status_code == 401
    wrong = httpx.post(
        server + "/gradio_api/call/tryon",
        json={"data": []},
        headers={"Authorization": "Bearer wrong"},
        timeout=30,
    )
    assert wrong.status_code == 401
