"""DensePose for IDM-VTON without detectron2: the adapter the pipeline uses.

IDM-VTON conditions its TryonNet on a DensePose picture of the person (paper Sec. 3.2). The
official demo makes it with detectron2's DensePose project (``densepose_rcnn_R_50_FPN_s1x``,
weights ``model_final_162be9.pkl``), which does not install from PyPI. Here:

- :mod:`~idm_vton.preprocess.densepose.weights` reads the checkpoint without running pickle
  code;
- :mod:`~idm_vton.preprocess.densepose.model` is the network and its inference, step for step
  as detectron2 runs it (RoIAlign and NMS in :mod:`~idm_vton.preprocess.densepose.roi_ops`);
- :mod:`~idm_vton.preprocess.densepose.render` draws the fine-segmentation picture as the
  demo does.

Usage::

    predictor = DensePosePredictor("ckpt/densepose/model_final_162be9.pkl", device="cuda")
    pose_picture = predictor.densepose_image(person_photo)  # PIL RGB, photo's size
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from idm_vton.errors import NoPersonFoundError, PreprocessModelError
from idm_vton.loaders.weights import building_from
from idm_vton.preprocess.densepose.model import (
    DensePoseRCNN,
    DensePoseRCNNConfig,
    chart_outputs_to_box,
)
from idm_vton.preprocess.densepose.render import (
    N_PART_LABELS,
    DensePoseResult,
    apply_parula,
    part_labels_to_rgb,
    parula_table,
    render_densepose,
)
from idm_vton.preprocess.densepose.weights import (
    DENSEPOSE_WEIGHTS_SOURCE,
    load_densepose_state_dict,
)

__all__ = [
    "DEMO_DETECT_SIZE",
    "DENSEPOSE_WEIGHTS_SOURCE",
    "N_PART_LABELS",
    "DensePosePredictor",
    "DensePoseRCNN",
    "DensePoseRCNNConfig",
    "DensePoseResult",
    "NoPersonFoundError",
    "apply_parula",
    "chart_outputs_to_box",
    "load_densepose_state_dict",
    "part_labels_to_rgb",
    "parula_table",
    "render_densepose",
]

#: The demo's detection input size (width, height): it resizes the 768x1024 photo to half.
DEMO_DETECT_SIZE = (384, 512)


def _as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"expected an RGB uint8 image of shape (H, W, 3), got {array.dtype} {array.shape}"
        )
    return np.ascontiguousarray(array)


class DensePosePredictor:
    """DensePose for IDM-VTON: the demo's ``model_final_162be9.pkl`` without detectron2.

    Args:
        weights_path: the detectron2 checkpoint (``.pkl``), or the same state dict as
            ``.pth`` / ``.safetensors``.
        device: torch device to run on.
        config: inference settings (defaults: the demo's).

    ``predictor(image)`` returns the people found (:class:`DensePoseResult`);
    ``predictor.densepose_image(photo)`` returns the picture IDM-VTON conditions on.
    """

    def __init__(
        self,
        weights_path: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        config: DensePoseRCNNConfig | None = None,
    ) -> None:
        state = load_densepose_state_dict(weights_path)
        with building_from(weights_path, PreprocessModelError):
            model = DensePoseRCNN.from_state_dict(state, config)
        self.model = model.to(device)
        self.device = torch.device(device)

    def __call__(self, image: Image.Image | np.ndarray) -> DensePoseResult:
        """Run the network on ``image`` (PIL or RGB ``uint8`` array) at its own size.

        The result may be empty (no person above the score threshold).
        """
        return self.model.predict(_as_rgb_array(image))

    def densepose_image(
        self,
        image: Image.Image | np.ndarray,
        detect_size: tuple[int, int] | None = DEMO_DETECT_SIZE,
    ) -> Image.Image:
        """The demo's DensePose picture of ``image``: RGB PIL image of the photo's size.

        As ``gradio_demo/app.py``: the photo is resized (PIL bicubic) to ``detect_size``
        (width, height; the demo's 384x512, ``None`` keeps the photo's size), DensePose runs
        on it, the fine segmentation is drawn (:func:`render_densepose`) and the picture is
        resized back to the photo's size (PIL bicubic).

        Raises:
            NoPersonFoundError: no person detected above the score threshold.
        """
        photo = Image.fromarray(_as_rgb_array(image))
        small = (
            photo if detect_size is None else photo.resize(detect_size, Image.Resampling.BICUBIC)
        )
        small_rgb = np.asarray(small)
        results = self(small_rgb)
        if len(results) == 0:
            raise NoPersonFoundError(
                f"DensePose found no person in the {photo.width}x{photo.height} image (score "
                f"threshold {self.model.config.score_threshold}); use a photo showing one person"
            )
        picture = Image.fromarray(render_densepose(small_rgb, results))
        if picture.size != photo.size:
            picture = picture.resize(photo.size, Image.Resampling.BICUBIC)
        return picture
