"""A drop-in for the official IDM-VTON Space's API: the Gradio endpoint ``/tryon``.

Scripts written for the demo on Hugging Face (``yisol/IDM-VTON``) call it with ``gradio_client``::

    client = Client("yisol/IDM-VTON")
    tryon, masked = client.predict(
        dict(background=handle_file("me.jpg"), layers=[], composite=None),  # the photo
        handle_file("shirt.jpg"),   # garm_img
        "short sleeve t-shirt",     # garment_des
        True,                       # is_checked: the automatic mask
        False,                      # is_checked_crop: the auto-crop
        30,                         # denoise_steps (20 to 40)
        42,                         # seed
        api_name="/tryon",
    )

:func:`add_space_api` adds an endpoint with exactly these inputs (same order, same parameter
names, same components, defaults and ranges) and outputs (the try-on, then the masked photo as
the demo draws it: the photo with the mask's area grey), so the same script works with
``Client("http://127.0.0.1:7860")`` (plus ``headers={"Authorization": "Bearer KEY"}`` when the
server has a key). Its components are hidden: the web UI shows its own, richer controls (their
endpoint is ``/tryon_full``). Requests go through the same checks, pixel budgets and queue as
every other request (:func:`~.requests.prepare_request`).

Where this server differs from the demo, it keeps its own behaviour: the result is the photo at
its own size with the render pasted inside the mask (the demo without auto-crop returns the
stretched 768 x 1024 render); a hand-drawn mask (``is_checked`` false) is the layers' painted,
non-black part over the whole photo (the demo also crops it to the centre, misplacing it on a
photo that is not 3:4); a seed of -1 draws a random seed, as everywhere in this server.
"""

from __future__ import annotations

import asyncio
import builtins
import io

import numpy as np
from PIL import Image

from .service import TryOnService
from .ui import _raw_editor_values, _raw_image_value, _read_request, _run_job
from .ui_files import UiFiles

__all__ = ["MASKED_GREY", "SPACE_API_NAME", "add_space_api", "masked_photo"]

#: The endpoint's name: the official demo's.
SPACE_API_NAME = "tryon"
#: The demo's masked photo: ``(1 - mask) * photo`` in [-1, 1], shown through ``(x + 1) / 2``,
#: so the masked area is 0.5, which its 8-bit conversion truncates to 127.
MASKED_GREY = 127
#: The demo's ranges and defaults for its two number inputs.
STEPS_RANGE, STEPS_DEFAULT = (20, 40), 30
SEED_RANGE, SEED_DEFAULT = (-1, 2147483647), 42


def masked_photo(photo: Image.Image, mask: Image.Image) -> Image.Image:
    """The photo with the mask's area grey (:data:`MASKED_GREY`), as the demo draws it."""
    pixels = np.asarray(photo.convert("RGB")).copy()
    marked = np.asarray(mask.convert("L").resize(photo.size, Image.Resampling.NEAREST)) >= 128
    pixels[marked] = MASKED_GREY
    return Image.fromarray(pixels)


def add_space_api(demo, service: TryOnService, files: UiFiles) -> None:
    """Add the demo's ``/tryon`` endpoint to the Blocks ``demo`` (hidden components)."""
    import gradio as gr

    with demo:
        with gr.Column(visible=False):
            # The demo's components, with its labels, defaults and ranges.
            imgs = gr.ImageEditor(
                sources="upload", type="filepath", label="Human. Mask with pen or use auto-masking"
            )
            _raw_editor_values(imgs)
            garm_img = gr.Image(label="Garment", sources="upload", type="filepath")
            _raw_image_value(garm_img)
            prompt = gr.Textbox(
                placeholder="Description of garment ex) Short Sleeve Round Neck T-shirts",
                show_label=False,
            )
            is_checked = gr.Checkbox(
                label="Yes", info="Use auto-generated mask (Takes 5 seconds)", value=True
            )
            is_checked_crop = gr.Checkbox(label="Yes", info="Use auto-crop & resizing", value=False)
            denoise_steps = gr.Number(
                label="Denoising Steps",
                minimum=STEPS_RANGE[0],
                maximum=STEPS_RANGE[1],
                value=STEPS_DEFAULT,
                step=1,
            )
            seed = gr.Number(
                label="Seed",
                minimum=SEED_RANGE[0],
                maximum=SEED_RANGE[1],
                step=1,
                value=SEED_DEFAULT,
            )
            image_out = gr.Image(label="Output", type="filepath", format="png")
            masked_img = gr.Image(label="Masked image output", type="filepath", format="png")
            trigger = gr.Button(visible=False)
        trigger.click(
            _space_handler(service, files),
            inputs=[imgs, garm_img, prompt, is_checked, is_checked_crop, denoise_steps, seed],
            outputs=[image_out, masked_img],
            api_name=SPACE_API_NAME,
            concurrency_limit=None,
        )


def _space_handler(service: TryOnService, files: UiFiles):
    """The demo's ``start_tryon``, on this server's queue. Its parameter names are the API's."""
    import gradio as gr

    async def start_tryon(
        dict,  # noqa: A002 - the demo's parameter name, which keyword calls use
        garm_img,
        garment_des,
        is_checked,
        is_checked_crop,
        denoise_steps,
        seed,
        progress=gr.Progress(),  # noqa: B008 - Gradio finds its progress tracker this way
    ):
        if not service.ready:
            raise gr.Error(service.not_ready_reason())
        editor = dict if isinstance(dict, builtins.dict) else {}
        if is_checked:  # the demo reads no layer with the automatic mask
            editor = {**editor, "layers": []}
        fields = {
            "description": garment_des,
            "steps": denoise_steps,
            "seed": seed,
            "auto_crop": bool(is_checked_crop),
        }
        auto_mask = bool(is_checked)
        item, outcome = await _run_job(
            service,
            lambda: _read_request(
                service, files, editor, [garm_img], None, auto_mask, True, fields, demo_layers=True
            ),
            progress,
        )
        return await asyncio.to_thread(_outputs, files, item.person, outcome)

    return start_tryon


def _outputs(files: UiFiles, person: Image.Image, outcome) -> tuple[str, str]:
    """The try-on and the masked photo, as files of this server's folder."""
    result = files.write(outcome.images[0], f"tryon_{outcome.seeds[0]}.png")
    mask = Image.open(io.BytesIO(outcome.mask))
    buffer = io.BytesIO()
    masked_photo(person, mask).save(buffer, format="PNG")
    return result, files.write(buffer.getvalue(), "masked.png")
