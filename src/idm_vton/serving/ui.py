"""The web UI (Gradio): the official demo's controls plus what its peers lack.

Person photo in an image editor: with "Automatic mask" on, the mask is computed from the photo
and whatever is painted is added to it; with it off, the painted strokes alone are the mask
(the opaque part of every layer; transparent = not painted). "Edit this mask" puts the mask of
the last run into the editor as a layer, to erase from or paint over. An optional second
garment makes an outfit (one pass per garment, :mod:`idm_vton.pipelines.outfit`); "Describe
from the photo" fills a garment's description box with the V the garment annotator reads
(editable before the run); "Auto-crop" is the official demo's. Results: a gallery, a
before/after slider, the seed used, full-size PNG downloads, and the mask and DensePose used.
Requests go through the same checks and work queue as the HTTP API (:mod:`.requests`), so a
refusal is the API's sentence; progress shows the queue position and the denoising steps. The
UI reads only files uploaded to this server (:mod:`.ui_files`) and decodes nothing on the event
loop.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import logging
from collections import OrderedDict

import numpy as np
from PIL import Image

from ..enums import GarmentCategory
from ..examples import EXAMPLES_DIR, example_garments, example_people
from ..models.tiny import TINY_MODEL_NOTE
from .config import ServeConfig
from .images import decode_image, image_pixels, png_bytes
from .job_queue import JobState
from .requests import (
    Refusal,
    check_size,
    editor_mask,
    prepare_describe,
    prepare_request,
    refusal,
)
from .service import TryOnService
from .ui_files import UiFiles

__all__ = ["EXAMPLES_DIR", "EXAMPLE_FILES", "build_ui", "editor_mask", "mask_layer"]

logger = logging.getLogger("idm_vton.serving")

#: The example photos offered under the person and garment inputs: package data
#: (``idm_vton.examples``), so an installed copy has them too.
EXAMPLE_FILES = tuple(
    str(e.path.relative_to(EXAMPLES_DIR)) for e in (*example_people(), *example_garments())
)

CATEGORY_LABELS = {"upper_body": "Upper body", "lower_body": "Lower body", "dresses": "Dresses"}
#: Colour of the mask layer put into the editor by "Edit this mask" (half transparent red).
MASK_LAYER_RGBA = (255, 0, 0, 128)
#: After "Edit this mask": bring the editor into view (the user may be scrolled to the bottom).
_SCROLL_TO_EDITOR = (
    "() => document.querySelector('#person')?.scrollIntoView({behavior: 'smooth', block: 'start'})"
)


def mask_layer(mask: Image.Image) -> Image.Image:
    """A mask as an editor layer: :data:`MASK_LAYER_RGBA` where it is set, transparent elsewhere."""
    on = np.asarray(mask.convert("L")) >= 128
    layer = np.zeros((*on.shape, 4), dtype=np.uint8)
    layer[on] = MASK_LAYER_RGBA
    return Image.fromarray(layer, mode="RGBA")


class _RecentBlobs(OrderedDict):
    """The editor's in-memory uploads (Gradio keeps them until the next event), at most
    ``limit`` editors' worth: the oldest go first, so they cannot pile up."""

    limit = 8

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


def _raw_editor_values(editor) -> None:
    """Make ``editor`` hand its images to the event as they came (bytes, or the path of an
    upload), decoding nothing: they are checked and decoded by :func:`prepare_request`."""
    editor.blob_storage = _RecentBlobs()

    def preprocess(payload):
        if payload is None:
            return None
        blobs = editor.blob_storage.pop(payload.id, None) if payload.id else None

        def pick(blob, data):
            if blob is not None:
                return bytes(blob)
            return data.path if data is not None else None

        if blobs is not None:
            layers = [pick(b, None) for b in blobs.layers]
            return {"background": pick(blobs.background, payload.background), "layers": layers}
        layers = [pick(None, layer) for layer in payload.layers or []]
        return {"background": pick(None, payload.background), "layers": layers}

    editor.preprocess = preprocess


def _raw_image_value(image) -> None:
    """Make a ``gr.Image`` hand the event its upload's path without opening it (Gradio would
    read the header, failing on a non-image with no message for the user)."""
    image.preprocess = lambda payload: None if payload is None else payload.path


def build_ui(service: TryOnService, files: UiFiles):
    """The Gradio Blocks of the web UI, bound to ``service``'s queue; the files it reads and
    writes are ``files``' (mount it with ``app.py``)."""
    import gradio as gr

    config = service.config
    with gr.Blocks(title="idm-vton: virtual try-on", analytics_enabled=False) as demo:
        _header(config)
        with gr.Row():
            person = _person_column(config)
            garment = _garment_column(person["category"])
            results = _results_column()
        settings = _settings(config)
        used = _used_inputs()
        last = gr.State(None)  # the last run's photo and mask, for "Edit this mask"
        tryon = _tryon_handler(service, files)
        controls = {**person, **garment, **settings}
        garment["run"].click(
            tryon,
            inputs=[controls[name] for name in _parameters(tryon)],
            outputs=[
                *(results[name] for name in ("gallery", "slider", "seed_used", "files")),
                used["mask_used"],
                used["pose_used"],
                last,
                garment["description"],
                garment["description2"],
            ],
            # The official demo's endpoint name, /tryon, is its drop-in (.space_api).
            api_name="tryon_full",
            concurrency_limit=None,
        )
        describe = _describe_handler(service, files)
        for image, box, name in (
            (garment["garment"], garment["description"], "describe"),
            (garment["garment2"], garment["description2"], "describe_second"),
        ):
            button = garment["describe"] if name == "describe" else garment["describe2"]
            button.click(describe, inputs=[image], outputs=[box], api_name=name)
        used["edit"].click(
            _edit_mask_handler(files),
            inputs=[last],
            outputs=[person["editor"], person["auto_mask"]],
            api_name=False,
        ).then(None, js=_SCROLL_TO_EDITOR)
        # A file that is not a usable image is refused as soon as it is added, with the
        # sentence the API gives for it, and taken out of the input again.
        shown = [results[name] for name in ("gallery", "slider", "seed_used", "files")]
        for name, component, what in (
            ("check_person", person["editor"], "person"),
            ("check_garment", garment["garment"], "garment"),
            ("check_second_garment", garment["garment2"], "garment"),
            ("check_pose", settings["pose"], "pose"),
        ):
            checked = component.upload(
                _upload_check(service, files, what), inputs=[component], api_name=name
            )
            checked.failure(lambda: None, outputs=[component], api_name=False)
            # A fixed input clears the error marks a refused run left on the results.
            checked.success(
                lambda: tuple(gr.skip() for _ in shown),
                outputs=shown,
                api_name=False,
                show_progress="hidden",
            )
    demo.queue(max_size=max(config.max_queue * 2, 16))
    return demo


def _parameters(handler) -> list[str]:
    """The names of ``handler``'s inputs, in order (Gradio passes the values by position)."""
    return [name for name in inspect.signature(handler).parameters if name != "progress"]


# ---------------------------------------------------------------------------- UI sections
def _header(config: ServeConfig) -> None:
    import gradio as gr

    signed = " [Sign out](/logout)" if config.api_key else ""
    gr.Markdown(f"## idm-vton: virtual try-on\nIDM-VTON (Choi et al., ECCV 2024).{signed}")
    if config.is_tiny:
        gr.Markdown(
            f"**Note: {TINY_MODEL_NOTE}.** Start the server with `--model yisol/IDM-VTON` "
            "for real results.",
            elem_id="tiny-banner",
        )


def _person_column(config: ServeConfig) -> dict:
    """The photo in an image editor (paint the area), the automatic switches, the category."""
    import gradio as gr

    with gr.Column(min_width=280):
        editor = gr.ImageEditor(
            label="Person",
            type="filepath",
            image_mode="RGBA",
            sources=["upload", "clipboard"],
            format="png",
            transforms=(),
            brush=gr.Brush(colors=["#ff0000"], color_mode="fixed", default_size=24),
            eraser=gr.Eraser(default_size=24),
            layers=False,
            height=440,
            elem_id="person",
        )
        _raw_editor_values(editor)
        gr.Markdown("Paint the area to re-generate (added to the automatic mask when it is on).")
        with gr.Row():
            auto_mask = gr.Checkbox(True, label="Automatic mask", elem_id="auto-mask")
            auto_pose = gr.Checkbox(True, label="Automatic DensePose", elem_id="auto-pose")
        category = gr.Radio(
            [(CATEGORY_LABELS[c], c) for c in GarmentCategory.values()],
            value=config.default_category,
            label="Garment category",
        )
        gr.Examples(
            [[str(p.path)] for p in example_people()],
            [editor],
            label="Example people (public domain or drawn for this project)",
            examples_per_page=8,
        )
    return {"editor": editor, "auto_mask": auto_mask, "auto_pose": auto_pose, "category": category}


def _garment_column(category) -> dict:
    """The garment photo, its description (and "Describe from the photo"), the "Try on" button,
    and an optional second garment for an outfit; an example garment also fills in its
    description and sets its category (``category``: the person column's radio)."""
    import gradio as gr

    with gr.Column(min_width=280):
        garment = gr.Image(
            label="Garment",
            type="filepath",
            sources=["upload", "clipboard"],
            height=320,
            elem_id="garment",
        )
        _raw_image_value(garment)
        with gr.Row(equal_height=True):
            description = gr.Textbox(
                label="Garment description (optional)",
                info="'auto': read from the photo at the run",
                placeholder="short sleeve round neck t-shirt",
                elem_id="description",
                scale=3,
            )
            describe = gr.Button("Describe from the photo", elem_id="describe", scale=1, size="sm")
        run = gr.Button("Try on", variant="primary", elem_id="run")
        gr.Examples(
            [[str(g.path), g.description, g.category] for g in example_garments()],
            [garment, description, category],
            label="Example garments (with their description and category)",
            examples_per_page=8,
        )
        with gr.Accordion("Second garment (a whole outfit)", open=False, elem_id="outfit"):
            gr.Markdown(
                "An upper- and a lower-body garment, rendered one after the other (lower body "
                "first), each on the previous result with its own automatic mask. A dress is "
                "worn alone."
            )
            garment2 = gr.Image(
                label="Second garment",
                type="filepath",
                sources=["upload", "clipboard"],
                height=240,
                elem_id="garment2",
            )
            _raw_image_value(garment2)
            category2 = gr.Radio(
                [(CATEGORY_LABELS[c], c) for c in GarmentCategory.values()],
                value=GarmentCategory.LOWER_BODY.value,
                label="Second garment's category",
                elem_id="category2",
            )
            with gr.Row(equal_height=True):
                description2 = gr.Textbox(
                    "",  # a default: API calls may leave the second garment's inputs out
                    label="Second garment's description (optional)",
                    elem_id="description2",
                    scale=3,
                )
                describe2 = gr.Button(
                    "Describe from the photo", elem_id="describe2", scale=1, size="sm"
                )
            gr.Examples(
                [
                    [str(g.path), g.description, g.category]
                    for g in example_garments()
                    if g.category == GarmentCategory.LOWER_BODY.value
                ],
                [garment2, description2, category2],
                label="Example lower-body garments",
            )
    return {
        "garment": garment,
        "description": description,
        "describe": describe,
        "run": run,
        "garment2": garment2,
        "category2": category2,
        "description2": description2,
        "describe2": describe2,
    }


def _results_column() -> dict:
    """Before/after slider, gallery, seed used and downloads."""
    import gradio as gr

    with gr.Column(min_width=280):
        slider = gr.ImageSlider(label="Before / after", type="filepath", elem_id="slider")
        gallery = gr.Gallery(
            label="Results", format="png", columns=2, height=260, elem_id="results"
        )
        seed_used = gr.Textbox(label="Seed used", interactive=False, elem_id="seed-used")
        files = gr.File(
            label="Download (full-size PNG)", file_count="multiple", elem_id="downloads"
        )
    return {"gallery": gallery, "slider": slider, "seed_used": seed_used, "files": files}


def _settings(config: ServeConfig) -> dict:
    """Steps, guidance, seed, samples, keep the size, a DensePose picture of one's own."""
    import gradio as gr

    with gr.Accordion("Settings", open=False):
        with gr.Row():
            steps = gr.Slider(
                1, config.max_steps, value=config.default_steps, step=1, label="Steps"
            )
            guidance = gr.Slider(0, 10, value=config.default_guidance, step=0.1, label="Guidance")
            seed = gr.Number(-1, precision=0, label="Seed (-1 = random)")
            num_images = gr.Slider(1, config.max_images, value=1, step=1, label="Samples")
        keep_size = gr.Checkbox(
            True, label="Keep the original size (paste the result into the full photo)"
        )
        auto_crop = gr.Checkbox(
            False,
            label="Auto-crop as the official demo (render the centred 3:4 box, paste all of it "
            "back; off: a box around the mask, pasted back inside the mask)",
            elem_id="auto-crop",
        )
        pose = gr.Image(
            label="DensePose picture (used when automatic DensePose is off)",
            type="filepath",
            elem_id="pose",
        )
        _raw_image_value(pose)
    return {
        "steps": steps,
        "guidance": guidance,
        "seed": seed,
        "num_images": num_images,
        "keep_size": keep_size,
        "auto_crop": auto_crop,
        "pose": pose,
    }


def _used_inputs() -> dict:
    """The mask and DensePose of the last run, and "Edit this mask"."""
    import gradio as gr

    with gr.Accordion("Mask and DensePose used", open=False):
        with gr.Row():
            mask_used = gr.Image(
                label="Mask", type="filepath", interactive=False, elem_id="mask-used"
            )
            pose_used = gr.Image(label="DensePose", type="filepath", interactive=False)
        edit = gr.Button("Edit this mask", elem_id="edit-mask")
    return {"mask_used": mask_used, "pose_used": pose_used, "edit": edit}


# ---------------------------------------------------------------------------- try-on steps
def _ui_error(err: Exception):
    """A refusal as the UI shows it: the API's sentence, in a ``gr.Error``."""
    import gradio as gr

    found = refusal(err)
    if found is None:
        raise err
    return gr.Error(found.message, print_exception=False)


def _upload_check(service: TryOnService, files: UiFiles, what: str):
    """The check of a file added to the ``what`` input: a readable image within the limits."""

    def check(value) -> None:
        path = value.get("background") if isinstance(value, dict) else value
        if path is None:
            return
        try:
            image_pixels(_read(files, path, what, service.config.max_upload_bytes), what)
        except Exception as err:  # noqa: BLE001 - a refusal, shown as its sentence
            _forget(files, path)
            raise _ui_error(err) from None

    return check


def _read(files: UiFiles, value, what: str, max_bytes: int) -> bytes:
    """The bytes of an input: sent with the event (the editor's), or an upload's path."""
    if isinstance(value, bytes):
        check_size(what, len(value), max_bytes)
        return value
    return files.read(value, what, max_bytes)


def _forget(files: UiFiles, path: object) -> None:
    """Delete a refused upload now (it is in this server's folder, or it is left alone)."""
    accepted = files.accepted(path)
    if accepted is not None and accepted.is_relative_to(files.gradio):
        accepted.unlink(missing_ok=True)


def _tryon_handler(service: TryOnService, files: UiFiles):
    """The "Try on" event: read the inputs, queue the request, follow it, show the results."""
    import gradio as gr

    async def tryon(
        editor,
        garment,
        description,
        category,
        auto_mask,
        auto_pose,
        pose,
        steps,
        guidance,
        seed,
        num_images,
        keep_size,
        auto_crop=False,
        garment2=None,
        description2="",
        category2=GarmentCategory.LOWER_BODY.value,
        progress=gr.Progress(),  # noqa: B008 - Gradio finds its progress tracker this way
    ):
        if not service.ready:
            raise gr.Error(service.not_ready_reason())
        outfit = garment2 is not None
        fields = {
            "description": [description, description2] if outfit else description,
            "category": [category, category2] if outfit else category,
            "steps": steps,
            "guidance": guidance,
            "seed": seed,
            "num_images": num_images,
            "paste_back": keep_size,
            "auto_crop": auto_crop,
        }
        garments = [garment, garment2] if outfit else [garment]
        item, outcome = await _run_job(
            service,
            lambda: _read_request(
                service, files, editor, garments, pose, auto_mask, auto_pose, fields
            ),
            progress,
        )
        shown = await asyncio.to_thread(_present, files, item.person, outcome, keep_size, editor)
        # A description read at the run ('auto') is shown in its box: the V it was rendered with.
        boxes = [
            outcome.descriptions[i] if g.reads_description else gr.skip()
            for i, g in enumerate(item.params.garments)
        ]
        return (*shown, *boxes, *([gr.skip()] * (2 - len(boxes))))

    return tryon


def _describe_handler(service: TryOnService, files: UiFiles):
    """ "Describe from the photo": the garment annotator reads the photo's description V (on
    the model's queue, as the API's ``/v1/describe``), which fills the description box."""
    import gradio as gr

    async def describe(garment, progress=gr.Progress()):  # noqa: B008 - Gradio's tracker
        if garment is None:
            raise gr.Error("Add a photo of the garment first.")
        if not service.ready:
            raise gr.Error(service.not_ready_reason())
        limit = service.config.max_upload_bytes
        _, outcome = await _run_job(
            service,
            lambda: prepare_describe(service, [_read(files, garment, "garment", limit)]),
            progress,
        )
        return outcome.descriptions[0]

    return describe


def _read_request(
    service, files: UiFiles, editor, garments, pose, auto_mask, auto_pose, fields, demo_layers=False
):
    """The request of the UI's inputs, through the API's checks (:func:`prepare_request`).

    With the automatic mask on, what is painted is added to it; with it off, what is painted is
    the mask (``demo_layers``: as the official demo reads its layers, see
    :func:`~.requests.editor_mask`). Raises ``gr.Error`` for what is missing and
    :class:`Refusal` for the rest.
    """
    import gradio as gr

    limit = service.config.max_upload_bytes
    background = editor.get("background") if isinstance(editor, dict) else None
    if background is None:
        raise gr.Error("Add a photo of the person first.")
    if garments[0] is None:
        raise gr.Error("Add a photo of the garment.")
    if not auto_pose and pose is None:
        raise gr.Error("Add a DensePose picture, or switch on automatic DensePose.")
    data = {
        "person": _read(files, background, "person", limit),
        "garment": [_read(files, garment, "garment", limit) for garment in garments],
        "mask": None,
        "pose": _read(files, pose, "pose", limit) if not auto_pose else None,
    }
    layers = [_read(files, layer, "mask", limit) for layer in editor.get("layers") or [] if layer]
    item, reservation = prepare_request(
        service,
        data,
        fields,
        layers=layers,
        layers_are="extra_mask" if auto_mask else "mask",
        black_is_unpainted=demo_layers,
    )
    if not auto_mask and item.mask is None:
        reservation.release()
        raise gr.Error(
            "Paint the area to re-generate on the photo, or switch on the automatic mask."
        )
    return item, reservation


async def _run_job(service: TryOnService, prepare, progress):
    """Queue the request ``prepare()`` reads and checks (off the event loop: it reads files and
    decodes images), follow it to its end, and return ``(item, outcome)``; a refusal or a
    failure is a ``gr.Error`` with its one sentence. The job is answered here, so it is not
    kept for a later fetch."""
    import gradio as gr

    try:
        item, reservation = await asyncio.to_thread(prepare)
        job = service.submit(item, reservation)
    except Exception as err:  # noqa: BLE001 - refusals become their sentence
        raise _ui_error(err) from None
    await _follow(service, job, progress)
    outcome = job.outcome
    service.jobs.forget(job.id)
    if job.state is not JobState.DONE or outcome is None:
        raise gr.Error(job.error or "the result has expired", print_exception=False)
    return item, outcome


async def _follow(service: TryOnService, job, progress) -> None:
    """Wait for ``job``, showing its queue position, then its denoising steps; cancel it if the
    browser leaves (or the event is stopped) first."""
    jobs = service.jobs
    try:
        while not job.state.final:
            status = jobs.status(job)
            if status["state"] == JobState.QUEUED.value:
                progress(0.0, desc=f"In the queue: position {status['queue_position']}")
            elif status["step"]:
                progress((status["step"], status["steps"]), desc="Denoising", unit="steps")
            else:
                progress(0.0, desc="Preparing (mask, DensePose)")
            await job.changed(status["version"], timeout=1.0)
    except BaseException:
        jobs.cancel(job.id)
        jobs.forget(job.id)
        raise


def _present(files: UiFiles, person: Image.Image, outcome, keep_size: bool, editor) -> tuple:
    """The try-on outputs (files in this server's folder): gallery, before/after, seeds,
    downloads, mask and DensePose used, and the state "Edit this mask" reads."""
    paths = [
        files.write(data, f"tryon_{seed}.png")
        for data, seed in zip(outcome.images, outcome.seeds, strict=True)
    ]
    background = editor["background"]
    if isinstance(background, bytes):
        background = files.write(png_bytes(person), "person.png")
    if keep_size and person.size == outcome.size:
        before = background
    else:
        resized = person.resize(outcome.size, Image.Resampling.BICUBIC)
        before = files.write(png_bytes(resized), "before.png")
    mask = files.write(outcome.mask, "mask.png") if outcome.mask else None
    pose = files.write(outcome.pose, "densepose.png") if outcome.pose else None
    gallery = [(path, f"seed {s}") for path, s in zip(paths, outcome.seeds, strict=True)]
    return (
        gallery,
        (before, paths[0]),
        ", ".join(str(s) for s in outcome.seeds),
        paths,
        mask,
        pose,
        {"person": background, "mask": mask, "size": list(person.size)},
    )


def _edit_mask_handler(files: UiFiles):
    """ "Edit this mask": the last run's mask as a layer over its photo, automatic mask off."""
    import gradio as gr

    def edit_mask(last):
        if not last or last.get("mask") is None:
            raise gr.Error("Run a try-on first: its mask is then loaded here for editing.")
        try:
            mask = decode_image(files.read(last["mask"], "mask", 1 << 30), "mask", mode="L")
        except Refusal as err:
            raise gr.Error(err.message) from None
        buffer = io.BytesIO()
        mask_layer(mask).save(buffer, format="PNG")  # with its transparency
        layer = files.write(buffer.getvalue(), "mask_layer.png")
        value = {"background": last["person"], "layers": [layer], "composite": None}
        # The canvas takes the photo's size, so the layer lands on the photo pixel for pixel.
        return gr.ImageEditor(value=value, canvas_size=tuple(last["size"])), False

    return edit_mask
