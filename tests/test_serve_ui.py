"""The web UI against a real server: its endpoint through ``gradio_client``, the API key login,
and a real browser (Debian's Chromium driven by Playwright) doing a try-on."""

from __future__ import annotations

import io
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")

from .conftest import EXAMPLES  # noqa: E402
from .helpers.preprocess_models import make_preprocess_models  # noqa: E402
from .serve_support import (  # noqa: E402
    assert_outside_mask_unchanged,
    file_bytes,
    photo_mask,
    running_server,
)

CHROMIUM = Path("/usr/bin/chromium")
#: How long any wait for a page's state may last: an upper bound for a loaded 2-core machine
#: (CI beside other heavy work), never a delay: each wait ends as soon as its condition holds.
WAIT_MS = 180_000
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def preprocess_dir(tmp_path_factory):
    return make_preprocess_models(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def ui_server(preprocess_dir):
    with running_server(ui=True, preprocess_models=str(preprocess_dir), default_steps=4) as s:
        yield s


def mask_layer_file(tmp_path: Path) -> Path:
    """The example mask as an editor layer: opaque red where painted, transparent elsewhere."""
    painted = np.asarray(Image.open(EXAMPLES / "mask.png").convert("L")) >= 128
    layer = np.zeros((*painted.shape, 4), np.uint8)
    layer[painted] = (255, 0, 0, 255)
    path = tmp_path / "layer.png"
    Image.fromarray(layer).save(path)
    return path


def test_gradio_client_gets_the_image(ui_server, tmp_path):
    from gradio_client import Client, handle_file

    url, _ = ui_server
    client = Client(url + "/", verbose=False, analytics_enabled=False, download_files=tmp_path)
    editor = {
        "background": handle_file(str(EXAMPLES / "person.jpg")),
        "layers": [handle_file(str(mask_layer_file(tmp_path)))],
        "composite": None,
    }
    gallery, slider, seed, files, mask, pose, description, _ = client.predict(
        editor,
        handle_file(str(EXAMPLES / "garment.jpg")),
        "short sleeve t-shirt",  # description
        "upper_body",
        False,  # automatic mask off: the painted layer is the mask
        False,  # automatic DensePose off: the picture below is used
        handle_file(str(EXAMPLES / "densepose.png")),
        2,  # steps
        2.0,  # guidance
        21,  # seed
        1,  # samples
        True,  # keep the original size
        api_name="/tryon_full",
    )
    assert seed == "21" and gallery[0]["caption"] == "seed 21"
    result = Image.open(gallery[0]["image"])
    person = file_bytes(EXAMPLES / "person.jpg")
    assert_outside_mask_unchanged(
        result, person, photo_mask(file_bytes(EXAMPLES / "mask.png"), (512, 512))
    )
    download = Image.open(files[0])
    assert download.format == "PNG" and download.size == (512, 512)
    assert np.array_equal(np.asarray(download.convert("RGB")), np.asarray(result.convert("RGB")))
    assert Image.open(slider[0]).size == (512, 512)  # before / after
    assert np.array_equal(
        np.asarray(Image.open(mask).convert("L")) >= 128,
        photo_mask(file_bytes(EXAMPLES / "mask.png"), (512, 512)),
    )


def test_a_space_script_runs_unchanged_without_a_key(ui_server, tmp_path):
    """The official Space's call, as its users write it, with only the address changed."""
    from gradio_client import Client, handle_file

    url, _ = ui_server
    client = Client(url + "/", verbose=False, analytics_enabled=False, download_files=tmp_path)
    tryon, masked = client.predict(
        dict(
            background=handle_file(str(EXAMPLES / "person.jpg")),
            layers=[handle_file(str(mask_layer_file(tmp_path)))],
            composite=None,
        ),
        handle_file(str(EXAMPLES / "garment.jpg")),
        "short sleeve round neck t-shirts",
        False,  # is_checked: the drawn layer is the mask
        False,  # is_checked_crop
        20,  # denoise_steps: the demo's smallest
        7,  # seed
        api_name="/tryon",
    )
    painted = photo_mask(file_bytes(EXAMPLES / "mask.png"), (512, 512))
    result = Image.open(tryon)
    assert result.size == (512, 512)
    assert_outside_mask_unchanged(result, file_bytes(EXAMPLES / "person.jpg"), painted)
    grey = np.asarray(Image.open(masked).convert("RGB"))
    assert grey.shape == (512, 512, 3) and (grey[painted] == 127).all()


def test_second_garment_makes_an_outfit_and_describe_fills_its_box(ui_server, tmp_path):
    """The UI's second garment (trousers, lower body) with the automatic mask: every pixel
    outside the union of the passes' masks is the photo's; its description 'auto' comes back
    as the V read, the same the "Describe from the photo" button gives."""
    from gradio_client import Client, handle_file

    url, _ = ui_server
    client = Client(url + "/", verbose=False, analytics_enabled=False, download_files=tmp_path)
    person = handle_file(str(EXAMPLES / "person.jpg"))
    gallery, _, seed, _, mask, _, description, description2 = client.predict(
        editor={"background": person, "layers": [], "composite": None},
        garment=handle_file(str(EXAMPLES / "garment.jpg")),
        description="short sleeve t-shirt",
        category="upper_body",
        auto_mask=True,
        auto_pose=True,
        pose=None,
        steps=1,
        seed=4,
        garment2=handle_file(str(EXAMPLES / "trousers.jpg")),
        description2="auto",
        category2="lower_body",
        api_name="/tryon_full",
    )
    union = np.asarray(Image.open(mask).convert("L")) >= 128
    assert 0 < union.mean() < 1
    result = Image.open(gallery[0]["image"])
    assert_outside_mask_unchanged(result, file_bytes(EXAMPLES / "person.jpg"), union)
    assert not isinstance(description, str)  # typed: the box is left as it was (no update)
    read = client.predict(handle_file(str(EXAMPLES / "trousers.jpg")), api_name="/describe")
    assert description2 == read and isinstance(read, str)


def test_gradio_client_reports_errors_as_messages(ui_server, tmp_path):
    from gradio_client import Client, handle_file

    url, _ = ui_server
    client = Client(url + "/", verbose=False, analytics_enabled=False, download_files=tmp_path)
    editor = {
        "background": handle_file(str(EXAMPLES / "person.jpg")),
        "layers": [],
        "composite": None,
    }
    with pytest.raises(Exception) as info:
        client.predict(
            editor,
            handle_file(str(EXAMPLES / "garment.jpg")),
            "",
            "upper_body",
            False,
            True,
            None,
            2,
            2.0,
            1,
            1,
            True,
            api_name="/tryon_full",
        )
    message = str(info.value)
    assert "Paint the area" in message and "Traceback" not in message


def test_ui_needs_the_key(tmp_path):
    from gradio_client import Client, handle_file

    key = "ui-key"
    with running_server(ui=True, api_key=key) as (url, _):
        with httpx.Client(base_url=url, timeout=WAIT_MS / 1000) as client:
            page = client.get("/", headers={"Accept": "text/html"})
            assert page.status_code == 303 and page.headers["location"] == "/login"
            assert client.get("/gradio_api/info").status_code == 401
            assert client.post("/login", data={"key": "wrong"}).status_code == 401
            login = client.post("/login", data={"key": key})
            assert login.status_code == 303
            cookie = login.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and key not in cookie
            assert client.get("/", headers={"Accept": "text/html"}).status_code == 200
        # gradio_client with the key as a bearer token
        gc = Client(
            url + "/",
            verbose=False,
            analytics_enabled=False,
            download_files=tmp_path,
            headers={"Authorization": f"Bearer {key}"},
        )
        editor = {
            "background": handle_file(str(EXAMPLES / "person.jpg")),
            "layers": [handle_file(str(mask_layer_file(tmp_path)))],
            "composite": None,
        }
        gallery, *_ = gc.predict(
            editor,
            handle_file(str(EXAMPLES / "garment.jpg")),
            "",
            "upper_body",
            False,
            False,
            handle_file(str(EXAMPLES / "densepose.png")),
            1,
            2.0,
            1,
            1,
            True,
            api_name="/tryon_full",
        )
        assert Image.open(gallery[0]["image"]).size == (512, 512)


def launch(playwright):
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )


def add_file(page, selector: str, path: Path, sent: str) -> None:
    """Put ``path`` into the input ``selector`` and wait until the page has it: the upload has
    landed and the input's upload event has sent the value (whose JSON contains ``sent``)."""
    with page.expect_request(
        lambda r: "/queue/join" in r.url and sent in (r.post_data or ""), timeout=WAIT_MS
    ):
        page.locator(f"{selector} input[type=file]").set_input_files(str(path))


def fetch_image(page, selector: str) -> np.ndarray:
    src = page.locator(selector).first.get_attribute("src")
    data = page.request.get(src).body()
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def toast_texts(page) -> list[str]:
    return page.locator(".toast-body").all_inner_texts()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_browser_try_on(ui_server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, service = ui_server
    shots = Path(os.environ.get("IDM_VTON_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url + "/", wait_until="load")
            page.locator("#run").wait_for(state="visible", timeout=WAIT_MS)
            assert "noise" in page.locator("#tiny-banner").inner_text()
            # "Try on" is on the first screen at 1280 x 800
            box = page.locator("#run").bounding_box()
            assert box["y"] + box["height"] <= 800, box
            add_file(page, "#person", EXAMPLES / "person.jpg", "background")
            add_file(page, "#garment", EXAMPLES / "garment.jpg", "garment.jpg")
            page.locator("#run").click()
            result = page.locator("#results img").first
            result.wait_for(state="visible", timeout=WAIT_MS)
            page.wait_for_function(
                "() => { const i = document.querySelector('#results img');"
                " return i && i.complete && i.naturalWidth > 0; }",
                timeout=WAIT_MS,
            )
            page.screenshot(path=str(shots / "ui_result.png"), full_page=True)
            size = result.evaluate("img => [img.naturalWidth, img.naturalHeight]")
            assert size == [512, 512]
            seed = page.locator("#seed-used textarea, #seed-used input").first.input_value()
            assert seed.isdigit()
            # the mask and DensePose used, then that mask loaded into the editor for editing
            page.get_by_text("Mask and DensePose used").click()
            page.locator("#mask-used img").wait_for(state="visible", timeout=WAIT_MS)
            first_mask = fetch_image(page, "#mask-used img") >= 128
            assert 0 < first_mask.mean() < 1
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            # What the editor receives: the photo of the run as its background, and a layer
            # painted exactly where the mask used was (half-transparent red), nothing else.
            with page.expect_response(lambda r: "mask_layer.png" in r.url, timeout=WAIT_MS) as got:
                page.get_by_role("button", name="Edit this mask").click()
            layer_png = page.request.get(got.value.url).body()
            layer = np.asarray(Image.open(io.BytesIO(layer_png)).convert("RGBA"))
            assert np.array_equal(layer[..., 3] > 0, first_mask)
            assert (layer[first_mask] == (255, 0, 0, 128)).all()
            page.wait_for_function(
                "() => !document.querySelector('#auto-mask input').checked", timeout=WAIT_MS
            )
            # the editor is brought into view for the user scrolled to the bottom
            page.wait_for_function(
                "() => { const r = document.querySelector('#person').getBoundingClientRect();"
                " return r.top >= -5 && r.top < window.innerHeight / 2; }",
                timeout=WAIT_MS,
            )
            page.screenshot(path=str(shots / "ui_mask_edit.png"), full_page=True)
        finally:
            browser.close()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_browser_shows_each_refusal_as_the_apis_sentence(ui_server, tmp_path):
    from .helpers.images import huge_png_header
    from .serve_support import multipart

    sync_api = pytest.importorskip("playwright.sync_api")
    url, _ = ui_server
    text = tmp_path / "shirt.png"  # a text file named like an image
    text.write_bytes(b"this is not an image " * 500)
    bomb = tmp_path / "bomb.png"  # a header claiming 10000 x 9000 pixels
    bomb.write_bytes(huge_png_header(10_000, 9_000))
    good = {name: (EXAMPLES / f"{name}.jpg").read_bytes() for name in ("person", "garment")}

    def api_sentence(field: str, data: bytes) -> str:
        files = {**good, field: data}
        answer = httpx.post(url + "/v1/tryon", timeout=WAIT_MS / 1000, **multipart(files, steps=1))
        assert answer.status_code in (400, 413), answer.text
        return answer.json()["error"]

    with sync_api.sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url + "/", wait_until="load")
            page.locator("#run").wait_for(state="visible", timeout=WAIT_MS)
            page.get_by_text("Settings").click()  # the DensePose picture is in there
            for selector, field, path, sent in (
                ("#garment", "garment", text, "shirt.png"),
                ("#garment", "garment", bomb, "bomb.png"),
                ("#pose", "pose", bomb, "bomb.png"),
            ):
                sentence = api_sentence(field, path.read_bytes())
                add_file(page, selector, path, sent)
                page.wait_for_function(
                    "s => Array.from(document.querySelectorAll('.toast-body'))"
                    ".some(t => t.innerText.includes(s))",
                    arg=sentence,
                    timeout=WAIT_MS,
                )
                page.locator(".toast-close").first.click()
                page.wait_for_function("() => !document.querySelector('.toast-body')")
            # the refused garment was taken out again (no broken picture left)
            assert page.locator("#garment img").count() == 0
            # "Try on" with nothing usable: the refusal shows, and marks the results...
            page.locator("#run").click()
            page.wait_for_function(
                "() => Array.from(document.querySelectorAll('.toast-body'))"
                ".some(t => t.innerText.includes('Add a photo of the person first.'))",
                timeout=WAIT_MS,
            )
            page.wait_for_selector("#results .error", timeout=WAIT_MS)
            # ...until the inputs are fixed: the marks go, and the next run shows its result
            add_file(page, "#person", EXAMPLES / "person.jpg", "background")
            add_file(page, "#garment", EXAMPLES / "garment.jpg", "garment.jpg")
            page.wait_for_function("() => !document.querySelector('#results .error')")
            page.locator("#run").click()
            page.locator("#results img").first.wait_for(state="visible", timeout=WAIT_MS)
            assert page.locator("#results .error, #slider .error, #seed-used .error").count() == 0
            page.screenshot(path=str(tmp_path / "ui_after_errors.png"), full_page=True)
        finally:
            browser.close()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_browser_phone_width_shows_the_person_label(ui_server):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, _ = ui_server
    with sync_api.sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 375, "height": 740})
            page.goto(url + "/", wait_until="load")
            page.locator("#run").wait_for(state="attached", timeout=WAIT_MS)
            label = page.locator("#person [data-testid='block-label']").first
            fits = label.evaluate("e => e.scrollWidth <= e.clientWidth + 1")
            assert fits, label.inner_text()
            # ...and no button of the editor's toolbar lies over it
            covered = label.evaluate(
                "l => { const a = l.getBoundingClientRect();"
                " return Array.from(document.querySelectorAll('#person button'))"
                ".map(b => b.getBoundingClientRect())"
                ".filter(r => r.width > 0 && r.top < a.bottom && r.bottom > a.top)"
                ".filter(r => r.left < a.right && r.right > a.left).length; }"
            )
            assert covered == 0, f"{covered} toolbar buttons cover {label.inner_text()!r}"
        finally:
            browser.close()
