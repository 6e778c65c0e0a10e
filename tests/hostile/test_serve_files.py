"""The web UI's API reads no file but this server's own uploads (issue: any server file through a
``FileData``), opens no special file, and keeps its disk use inside one folder it removes.

A real server (uvicorn on 127.0.0.1, the tiny model, the UI mounted) is attacked through every
endpoint of the UI's API with every shape a file reference can take; each must be refused with a
400 before Gradio reads or copies anything, and the server must keep answering.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from ..conftest import EXAMPLES
from ..serve_support import running_server

pytest.importorskip("gradio")


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    with running_server(ui=True, default_steps=1) as (url, service):
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client, service


def upload(client, data: bytes, name: str = "x.png") -> str:
    response = client.post("/gradio_api/upload", files={"files": (name, data, "image/png")})
    assert response.status_code == 200, response.text
    return response.json()[0]


def png(size=(64, 48), color=(10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def file_data(path, **extra) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}, **extra}


def tryon_payload(person, garment, pose=None, layers=()) -> list:
    editor = {"background": person, "layers": list(layers), "composite": None}
    return [editor, garment, "", "upper_body", False, pose is None, pose, 1, 2.0, 1, 1, True]


def space_payload(person, garment, layers=()) -> list:
    """The official demo's /tryon inputs: editor, garment, description, auto mask, auto-crop,
    steps, seed."""
    editor = {"background": person, "layers": list(layers), "composite": None}
    return [editor, garment, "", not layers, False, 20, 42]


def outside_files(tmp_path: Path) -> dict[str, str]:
    """Files of the server's machine a caller must never get: an image, a text file, a FIFO,
    a device, the examples' folder itself."""
    image = tmp_path / "server_private.png"
    image.write_bytes(png(color=(1, 2, 3)))
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    return {
        "image": str(image),
        "text": str(secret),
        "fifo": str(fifo),
        "passwd": "/etc/passwd",
        "zero": "/dev/zero",
        "folder": str(tmp_path),
    }


def hostile_references(tmp_path: Path, own_folder: Path, uploaded: str) -> list:
    """Every shape of a file reference to something that is not an upload of this server."""
    files = outside_files(tmp_path)
    link = own_folder / "link_out.png"  # a symlink inside the server's own folder
    link.symlink_to(files["image"])
    inner_link = Path(uploaded).parent / "inner_link.png"
    inner_link.symlink_to(uploaded)  # even to an upload: a symlink is not a regular file
    refs = [file_data(path) for path in files.values()]
    refs += [
        {"path": files["image"]},  # no meta
        file_data(str(link)),
        file_data(str(inner_link)),
        file_data(f"{own_folder}/../../{Path(files['image']).relative_to('/')}"),  # ".." out
        file_data(uploaded + "/../" + Path(uploaded).name),
        file_data("etc/passwd"),  # relative: Gradio would resolve it in its working folder
        file_data("http://127.0.0.1:9/x.png"),  # fetched by Gradio otherwise
        file_data(uploaded, url="data:image/png;base64,iVBORw0KGgo="),  # decoded otherwise
        file_data(uploaded, url="http://127.0.0.1:9/x.png"),
        {"url": "file:///etc/passwd", "meta": {"_type": "gradio.FileData"}},
        file_data(["/etc/passwd"]),
    ]
    return refs


def test_the_ui_api_reads_only_this_servers_uploads(ui, tmp_path):
    client, service = ui
    own = service_folder(client)
    uploaded = upload(client, png())
    garment = upload(client, (EXAMPLES / "garment.jpg").read_bytes(), "garment.jpg")
    before = files_in(own)
    for ref in hostile_references(tmp_path, own, uploaded):
        for payload in (
            tryon_payload(ref, file_data(garment)),  # as the person photo
            tryon_payload(file_data(uploaded), ref),  # as the garment
            tryon_payload(file_data(uploaded), file_data(garment), pose=ref),  # as the pose
            tryon_payload(file_data(uploaded), file_data(garment), layers=[ref]),  # a layer
        ):
            for endpoint in ("/gradio_api/call/tryon_full", "/gradio_api/run/tryon_full"):
                response = client.post(endpoint, json={"data": payload})
                assert response.status_code == 400, (endpoint, ref, response.text)
                assert "not uploaded to this server" in response.json()["error"]
            joined = client.post(
                "/gradio_api/queue/join",
                json={"data": payload, "fn_index": 0, "session_hash": "abc", "trigger_id": 1},
            )
            assert joined.status_code == 400, (ref, joined.text)
        # the official demo's drop-in endpoint (/tryon) and the describe button likewise
        for endpoint, payload in (
            ("/gradio_api/call/tryon", space_payload(ref, file_data(garment))),
            ("/gradio_api/call/tryon", space_payload(file_data(uploaded), ref)),
            ("/gradio_api/call/tryon", space_payload(file_data(uploaded), ref, layers=[ref])),
            ("/gradio_api/call/describe", [ref]),
            ("/gradio_api/call/describe_second", [ref]),
            (  # as the UI's second garment
                "/gradio_api/call/tryon_full",
                [
                    *tryon_payload(file_data(uploaded), file_data(garment)),
                    False,
                    ref,
                    "",
                    "dresses",
                ],
            ),
            ("/gradio_api/call/check_second_garment", [ref]),
        ):
            response = client.post(endpoint, json={"data": payload})
            assert response.status_code == 400, (endpoint, ref, response.text)
            assert "not uploaded to this server" in response.json()["error"]
        checked = client.post("/gradio_api/call/check_garment", json={"data": [ref]})
        assert checked.status_code == 400, (ref, checked.text)
        assert client.get("/healthz", timeout=5).status_code == 200
    # nothing of the outside files was copied in
    after = files_in(own) - {own / "link_out.png", Path(uploaded).parent / "inner_link.png"}
    assert after == before
    # the same requests with this server's own uploads are taken (the guard is not a wall)
    ok = client.post(
        "/gradio_api/call/tryon_full",
        json={"data": tryon_payload(file_data(uploaded), file_data(garment))},
    )
    assert ok.status_code == 200 and "event_id" in ok.json()


def test_a_special_file_never_hangs_the_server(ui, tmp_path):
    client, _ = ui
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    own = service_folder(client) / "fifo-in-the-servers-own-folder"  # past the folder rule
    os.mkfifo(own)
    for path in ("/dev/zero", "/dev/urandom", str(fifo), str(own)):
        started = time.monotonic()
        response = client.post(
            "/gradio_api/call/tryon_full",
            json={"data": tryon_payload(file_data(path), file_data(path))},
        )
        assert response.status_code == 400
        assert client.get("/healthz", timeout=5).status_code == 200
        assert time.monotonic() - started < 20


def service_folder(client) -> Path:
    """The server's own upload folder, from where an upload lands."""
    path = Path(upload(client, png()))
    root = path.parent
    while root.name != "gradio":
        root = root.parent
    return root


def files_in(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() or p.is_symlink()}
