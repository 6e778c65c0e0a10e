"""The web UI (Gradio): the official demo's controls plus what its peers lack.

Person photo in an image editor: with "Automatic mask" on, the mask is computed from the photo
and whatever is painted is added to it; with it off, the painted strokes alone are the mask
(the opaque part of every layer; transparent = not painted). "Edit this mask" puts the mask of
the last run into the editor as a layer, to erase from or paint over. Results: a gallery, a
before/after slider, the seed used, full-size PNG downloads, and the mask and DensePose used.
Requests go through the same work queue as the HTTP API; progress shows the queue position and
the denoising steps, and errors are one-line messages.
"""

from __future__ import annotations

import inspect
import logging
import secrets
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..enums import GarmentCategory
from ..errors import ImageInputError
from ..examples import EXAMPLES_DIR  # package data: there in an installed copy too
from ..images import load_image
from ..models.tiny import TINY_MODEL_NOTE
from .config import ParameterError, ServeConfig, TryOnParams
from .engine import WorkItem
from .images import png_bytes
from .scheduler import JobState, NotReadyError, QueueFullError
from .service import TryOnService

__all__ = ["EXAMPLES_DIR", "build_ui", "editor_mask"]

logger = logging.getLogger("idm_vton.serving")

CATEGORY_LABELS = {"upper_body": "Upper body", "lower_body": "Lower body", "dresses": "Dresses"}
#: Colour of the mask layer put into the editor by "Edit this mask" (half transparent red).
MASK_LAYER_RGBA = (255, 0, 0, 128)


def editor_mask(layers: list[Image.Image] | None, size: tuple[int, int]) -> Image.Image | None:
    """The painted area of the editor's layers as an L mask at ``size`` (None if nothing)."""
    painted = np.zeros((size[1], size[0]), dtype=bool)
    for layer in layers or []:
        if layer is None:
            continue
        alpha = np.asarray(layer.convert("RGBA").getchannel("A"))
        if alpha.shape != painted.shape:
            resized = Image.fromarray(alpha).resize(size, Image.Resampling.NEAREST)
            alpha = np.asarray(resized)
        painted |= alpha > 0
    if not painted.any():
        return None
    return Image.fromarray(painted.astype(np.uint8) * 255)


def mask_layer(mask: Image.Image) -> Image.Image:
    """A mask as an editor layer: :data:`MASK_LAYER_RGBA` where it is set, transparent elsewhere."""
    on = np.asarray(mask.convert("L")) >= 128
    layer = np.zeros((*on.shape, 4), dtype=np.uint8)
    layer[on] = MASK_LAYER_RGBA
    return Image.fromarray(layer, mode="RGBA")


class _Downloads:
    """PNG files for the download box, in a private folder; files older than an hour go."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="idm-vton-ui-"))

    def write(self, images: list[Image.Image], seeds: list[int]) -> list[str]:
        cutoff = time.time() - 3600
        for old in self.folder.glob("*.png"):
            if old.stat().st_mtime < cutoff:
                old.unlink(missing_ok=True)
        paths = []
        tag = secrets.token_hex(4)
        for image, seed in zip(images, seeds, strict=True):
            path = self.folder / f"tryon_{seed}_{tag}.png"
            path.write_bytes(png_bytes(image))
            paths.append(str(path))
        return paths


def build_ui(service: TryOnService):
    """The Gradio Blocks of the web UI, bound to ``service``'s queue (mount with ``app.py``)."""
    import gradio as gr

    config = service.config
    with gr.Blocks(title="idm-vton: virtual try-on", analytics_enabled=False) as demo:
        _header(config)
        with gr.Row():
            person = _person_column(config)
            garment = _garment_column()
            results = _results_column()
        settings = _settings(config)
        used = _used_inputs()
        last = gr.State(None)  # the last run's photo and mask, for "Edit this mask"
        tryon = _tryon_handler(service)
        controls = {**person, **garment, **settings}
        garment["run"].click(
            tryon,
            inputs=[controls[name] for name in _parameters(tryon)],
            outputs=[
                *(results[name] for name in ("gallery", "slider", "seed_used", "files")),
                used["mask_used"],
                used["pose_used"],
                last,
            ],
            api_name="tryon",
            concurrency_limit=None,
        )
        used["edit"].click(
            _edit_mask,
            inputs=[last],
            outputs=[person["editor"], person["auto_mask"]],
            api_name=False,
        )
    demo.queue(max_size=max(config.max_queue * 2, 16))
    return demo


def _parameters(handler) -> list[str]:
    """The names of ``handler``'s inputs, in order (Gradio passes the values by position)."""
    return [name for name in inspect.signature(handler).parameters if name != "progress"]


# ---------------------------------------------------------------------------- UI sections
def _header(config: ServeConfig) -> None:
    import gradio as gr

    gr.Markdown("# idm-vton: virtual try-on\nIDM-VTON (Choi et al., ECCV 2024).")
    if config.is_tiny:
        gr.Markdown(
            f"**Note: {TINY_MODEL_NOTE}.** Start the server with `--model yisol/IDM-VTON` "
            "for real results.",
            elem_id="tiny-banner",
        )


def _person_column(config: ServeConfig) -> dict:
    """The photo in an image editor (paint the area), the automatic switches, the category."""
    import gradio as gr

    with gr.Column():
        editor = gr.ImageEditor(
            label="Person: paint the area to re-generate",
            type="pil",
            image_mode="RGBA",
            sources=["upload", "clipboard"],
            format="png",
            transforms=(),
            brush=gr.Brush(colors=["#ff0000"], color_mode="fixed", default_size=24),
            eraser=gr.Eraser(default_size=24),
            layers=False,
            height=520,
            elem_id="person",
        )
        with gr.Row():
            auto_mask = gr.Checkbox(True, label="Automatic mask", elem_id="auto-mask")
            auto_pose = gr.Checkbox(True, label="Automatic DensePose", elem_id="auto-pose")
        category = gr.Radio(
            [(CATEGORY_LABELS[c], c) for c in GarmentCategory.values()],
            value=config.default_category,
            label="Garment category",
        )
        _example("person.jpg", editor, "Person")
    return {"editor": editor, "auto_mask": auto_mask, "auto_pose": auto_pose, "category": category}


def _garment_column() -> dict:
    """The garment photo, its description and the "Try on" button."""
    import gradio as gr

    with gr.Column():
        garment = gr.Image(
            label="Garment",
            type="pil",
            sources=["upload", "clipboard"],
            height=400,
            elem_id="garment",
        )
        description = gr.Textbox(
            label="Garment description (optional)",
            placeholder="short sleeve round neck t-shirt",
        )
        _example("garment.jpg", garment, "Garment")
        run = gr.Button("Try on", variant="primary", elem_id="run")
    return {"garment": garment, "description": description, "run": run}


def _results_column() -> dict:
    """Before/after slider, gallery, seed used and downloads."""
    import gradio as gr

    with gr.Column():
        slider = gr.ImageSlider(label="Before / after", type="pil", format="png", elem_id="slider")
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
        pose = gr.Image(
            label="DensePose picture (used when automatic DensePose is off)", type="pil"
        )
    return {
        "steps": steps,
        "guidance": guidance,
        "seed": seed,
        "num_images": num_images,
        "keep_size": keep_size,
        "pose": pose,
    }


def _used_inputs() -> dict:
    """The mask and DensePose of the last run, and "Edit this mask"."""
    import gradio as gr

    with gr.Accordion("Mask and DensePose used", open=False):
        with gr.Row():
            mask_used = gr.Image(
                label="Mask", type="pil", format="png", interactive=False, elem_id="mask-used"
            )
            pose_used = gr.Image(label="DensePose", type="pil", format="png", interactive=False)
        edit = gr.Button("Edit this mask")
    return {"mask_used": mask_used, "pose_used": pose_used, "edit": edit}


def _example(name: str, component, label: str) -> None:
    """The repository's example image ``name`` under ``component``, when it is there."""
    import gradio as gr

    if (EXAMPLES_DIR / name).is_file():
        gr.Examples([[str(EXAMPLES_DIR / name)]], [component], label=label)


# ---------------------------------------------------------------------------- try-on steps
def _tryon_handler(service: TryOnService):
    """The "Try on" event: read the inputs, queue the request, follow it, show the results."""
    import gradio as gr

    downloads = _Downloads()

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
        progress=gr.Progress(),  # noqa: B008 - Gradio finds its progress tracker this way
    ):
        if not service.ready:
            raise gr.Error(service.load_error or "The model is still loading; try again shortly.")
        try:
            images = _read_inputs(editor, garment, pose, auto_mask, auto_pose)
            params = TryOnParams.parse(
                service.config,
                description=description,
                category=category,
                steps=steps,
                guidance=guidance,
                seed=seed,
                num_images=num_images,
                paste_back=keep_size,
            )
        except (ImageInputError, ParameterError) as err:
            raise gr.Error(str(err)) from None
        try:
            job = service.submit(WorkItem(id=secrets.token_urlsafe(12), params=params, **images))
        except (QueueFullError, NotReadyError) as err:
            raise gr.Error(str(err)) from None
        await _follow(service, job, progress)
        if job.state is not JobState.DONE:
            raise gr.Error(job.error or job.state.value)
        return _present(images["person"], job.outcome, keep_size, downloads)

    return tryon


def _read_inputs(editor, garment, pose, auto_mask: bool, auto_pose: bool) -> dict:
    """The images of a request (:class:`WorkItem` fields) from the UI's inputs.

    With the automatic mask on, what is painted is added to it (``extra_mask``); with it off,
    what is painted is the mask. Raises ``gr.Error`` for what is missing and
    :class:`ImageInputError` for an unreadable image.
    """
    import gradio as gr

    background = editor.get("background") if isinstance(editor, dict) else None
    if background is None:
        raise gr.Error("Add a photo of the person first.")
    if garment is None:
        raise gr.Error("Add a photo of the garment.")
    person = load_image(background, "person photo")
    garment_image = load_image(garment, "garment photo")
    painted = editor_mask(editor.get("layers"), person.size)
    pose_image = None
    if not auto_pose:
        if pose is None:
            raise gr.Error("Add a DensePose picture, or switch on automatic DensePose.")
        pose_image = load_image(pose, "DensePose picture")
    if not auto_mask and painted is None:
        raise gr.Error(
            "Paint the area to re-generate on the photo, or switch on the automatic mask."
        )
    return {
        "person": person,
        "garment": garment_image,
        "mask": None if auto_mask else painted,
        "extra_mask": painted if auto_mask else None,
        "pose": pose_image,
    }


async def _follow(service: TryOnService, job, progress) -> None:
    """Wait for ``job``, showing its queue position, then its denoising steps; cancel it if the
    browser leaves (or the event is stopped) first."""
    try:
        while not job.state.final:
            status = service.scheduler.status(job)
            if status["state"] == JobState.QUEUED.value:
                progress(0.0, desc=f"In the queue: position {status['queue_position']}")
            elif status["step"]:
                progress((status["step"], status["steps"]), desc="Denoising", unit="steps")
            else:
                progress(0.0, desc="Preparing (mask, DensePose)")
            await job.changed(status["version"], timeout=1.0)
    except BaseException:
        service.scheduler.cancel(job.id)
        raise
    service.scheduler.forget(job.id)


def _present(person: Image.Image, outcome, keep_size: bool, downloads: _Downloads) -> tuple:
    """The try-on outputs: gallery, before/after, seeds, download files, mask and DensePose
    used, and the state "Edit this mask" reads."""
    images = outcome.images
    before = person if keep_size else person.resize(images[0].size, Image.Resampling.BICUBIC)
    gallery = [(image, f"seed {s}") for image, s in zip(images, outcome.seeds, strict=True)]
    return (
        gallery,
        (before, images[0]),
        ", ".join(str(s) for s in outcome.seeds),
        downloads.write(images, outcome.seeds),
        outcome.mask,
        outcome.pose,
        {"person": person, "mask": outcome.mask},
    )


def _edit_mask(last):
    """ "Edit this mask": the last run's mask as a layer over its photo, automatic mask off."""
    import gradio as gr

    if not last or last.get("mask") is None:
        raise gr.Error("Run a try-on first: its mask is then loaded here for editing.")
    person = last["person"]
    value = {"background": person, "layers": [mask_layer(last["mask"])], "composite": None}
    # The canvas takes the photo's size, so the layer lands on the photo pixel for pixel.
    return gr.ImageEditor(value=value, canvas_size=person.size), False
