"""Automatic inputs for IDM-VTON: the inpaint mask and the DensePose image from a plain photo.

:class:`Preprocessor` runs the three models of the official demo (SCHP human parsing, OpenPose
body, DensePose R-CNN; weights in the demo's ``ckpt/`` layout, from a folder or downloaded from the
hub on first use by :mod:`idm_vton.loaders.hub`) and the mask function, the way the demo does for its 3:4
photos (models at 384 x 512) and at the same height with the photo's own aspect otherwise;
:func:`preprocess_photos` turns a list of photos into a VITON-HD-layout dataset
(``idm-vton preprocess``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..enums import GarmentCategory
from ..errors import ImageInputError, NoPersonFoundError, PreprocessModelError, UsageError
from ..files import atomic_path, make_folders, remove_empty_folders, write_json_atomic
from ..images import load_image, save_image_atomic
from ..loaders.hub import MODEL_FILES, fetch_preprocess_models

__all__ = [
    "MODELS_DIR_ENV",
    "PreprocessResult",
    "PreprocessSummary",
    "Preprocessor",
    "dataset_paths",
    "default_models_dir",
    "find_photos",
    "mask_preview",
    "preprocess_photos",
]

#: Height at which the demo runs parsing, pose and DensePose (on its 384 x 512 photo).
WORK_HEIGHT = 512
#: Environment variable naming a weights folder; read when a :class:`Preprocessor` is made.
MODELS_DIR_ENV = "IDM_VTON_PREPROCESS_MODELS"
#: ``--preprocess-models`` default: None = ``$IDM_VTON_PREPROCESS_MODELS``, else the hub.
DEFAULT_MODELS_DIR = None
_PARSE_AND_POSE = ("parsing_atr", "parsing_lip", "openpose")


def default_models_dir() -> Path | None:
    """``$IDM_VTON_PREPROCESS_MODELS`` as a path (read now), or None when unset or empty."""
    value = os.environ.get(MODELS_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else None


@dataclass
class PreprocessResult:
    """Everything computed for one photo, in the photo's own pixels."""

    mask: np.ndarray  # (H, W) bool, True = re-generate
    parse: np.ndarray  # (H, W) uint8 ATR labels + 18 neck
    keypoints: np.ndarray  # (18, 2) OpenPose body points, [0, 0] = missing
    densepose: Image.Image | None


class Preprocessor:
    """The demo's preprocessing models, loaded lazily from ``models_dir`` or the hub.

    Args:
        models_dir: folder in the demo's ``ckpt/`` layout (:data:`~idm_vton.loaders.hub.MODEL_FILES`). ``None``:
            ``$IDM_VTON_PREPROCESS_MODELS`` if set, else each weight file is downloaded from the
            hub Space yisol/IDM-VTON (or found in the hub cache) when a model first needs it
            (:func:`idm_vton.loaders.hub.fetch_preprocess_models`), so a mask alone never fetches DensePose.
        device: torch device for OpenPose and DensePose (parsing runs on onnxruntime's CPU),
            checked first (:func:`idm_vton.devices.resolve_device`, named as
            ``--preprocess-device`` in messages).
    """

    def __init__(
        self, models_dir: str | os.PathLike[str] | None = DEFAULT_MODELS_DIR, device: str = "cpu"
    ) -> None:
        from ..devices import resolve_device

        self.device = resolve_device(device, "--preprocess-device")
        source = ""
        if models_dir is None:
            models_dir = default_models_dir()
            source = f"${MODELS_DIR_ENV} = "
        self.models_dir = None if models_dir is None else Path(models_dir)
        if self.models_dir is not None and not self.models_dir.is_dir():
            raise PreprocessModelError(
                f"preprocessing models folder not found: {source}{self.models_dir} (expected "
                f"{', '.join(MODEL_FILES.values())}; get them from the yisol/IDM-VTON hub repo "
                "folder ckpt/ and pass --preprocess-models DIR)"
            )
        self._files: dict[str, Path] = {}
        self._parser = self._pose = self._densepose = None

    def model_paths(
        self, names: tuple[str, ...] | list[str] = tuple(MODEL_FILES)
    ) -> dict[str, Path]:
        """Paths of the weight files ``names``, downloading from the hub those not known yet.

        One call fetches all of ``names`` together, so an offline error lists every missing file.
        """
        todo = [name for name in names if name not in self._files]
        if todo:
            if self.models_dir is not None:
                self._files.update({name: self.models_dir / MODEL_FILES[name] for name in todo})
            else:
                self._files.update(fetch_preprocess_models(todo))
        return {name: self._files[name] for name in names}

    @property
    def parser(self):
        if self._parser is None:
            from .parsing import HumanParser

            paths = self.model_paths(("parsing_atr", "parsing_lip"))
            self._parser = HumanParser(atr_path=paths["parsing_atr"], lip_path=paths["parsing_lip"])
        return self._parser

    @property
    def pose(self):
        if self._pose is None:
            from .openpose import OpenPoseBody

            path = self.model_paths(("openpose",))["openpose"]
            self._pose = OpenPoseBody(path, device=self.device)
        return self._pose

    @property
    def densepose_model(self):
        if self._densepose is None:
            from .densepose.predictor import DensePosePredictor

            path = self.model_paths(("densepose",))["densepose"]
            self._densepose = DensePosePredictor(path, device=self.device)
        return self._densepose

    @staticmethod
    def work_size(photo: Image.Image) -> tuple[int, int]:
        """(W, H) at which the models run: 512 high, the photo's aspect (384 x 512 for 3:4)."""
        return max(1, round(WORK_HEIGHT * photo.width / photo.height)), WORK_HEIGHT

    def parse_and_pose(self, photo: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """ATR+neck label map and OpenPose keypoints at :meth:`work_size`."""
        self.model_paths(_PARSE_AND_POSE)  # fetch together: one error lists all missing files
        small = photo.convert("RGB").resize(self.work_size(photo), Image.Resampling.BICUBIC)
        return self.parser(small), self.pose(small)

    def mask(
        self,
        photo: Image.Image,
        category: GarmentCategory | str = "upper_body",
        model_type: str = "hd",
    ) -> np.ndarray:
        """The automatic inpaint mask (:func:`~idm_vton.preprocess.mask.agnostic_mask`) at the photo's size."""
        return self.analyse(photo, category, model_type, densepose=False).mask

    def densepose(self, photo: Image.Image) -> Image.Image:
        """The DensePose picture the model is conditioned on, at the photo's size."""
        return self.densepose_model.densepose_image(
            photo.convert("RGB"), detect_size=self.work_size(photo)
        )

    def tryon_inputs(
        self,
        photo: Image.Image,
        category: GarmentCategory | str = "upper_body",
        model_type: str = "hd",
        *,
        mask: bool = True,
        pose: bool = True,
        box: tuple[int, int, int, int] | None = None,
    ) -> tuple[Image.Image | None, Image.Image | None]:
        """The try-on pipeline's mask image (white = re-generate) and DensePose picture for a
        photo; ``mask=False`` / ``pose=False`` leave one out (``None``).

        ``box`` (left, top, right, bottom), inside the photo: both are computed on that crop of
        the photo, as the official demo computes them on its auto-crop, and returned at the
        photo's size, black outside the box.

        Every weight file needed is fetched first, together, so an offline error lists all the
        missing ones. Raises :class:`~idm_vton.errors.NoPersonFoundError` for a photo without a
        person.
        """
        needed = (list(_PARSE_AND_POSE) if mask else []) + (["densepose"] if pose else [])
        self.model_paths(needed)
        if box is not None:
            crop_mask, crop_pose = self.tryon_inputs(
                photo.crop(box), category, model_type, mask=mask, pose=pose
            )
            return _in_frame(crop_mask, photo.size, box), _in_frame(crop_pose, photo.size, box)
        mask_image = None
        if mask:
            mask_image = Image.fromarray(
                self.mask(photo, category, model_type).astype(np.uint8) * 255
            )
        return mask_image, self.densepose(photo) if pose else None

    def analyse(
        self,
        photo: Image.Image,
        category: GarmentCategory | str = "upper_body",
        model_type: str = "hd",
        densepose: bool = True,
    ) -> PreprocessResult:
        from .mask import agnostic_mask

        category = GarmentCategory.parse(category)
        self.model_paths(tuple(MODEL_FILES) if densepose else _PARSE_AND_POSE)
        parse, keypoints = self.parse_and_pose(photo)
        small_mask = agnostic_mask(parse, keypoints, category, model_type)
        size = photo.size
        mask = np.asarray(
            Image.fromarray(small_mask.astype(np.uint8) * 255).resize(
                size, Image.Resampling.NEAREST
            )
        )
        full_parse = np.asarray(
            Image.fromarray(parse.astype(np.uint8)).resize(size, Image.Resampling.NEAREST)
        )
        scale = np.array([photo.width / parse.shape[1], photo.height / parse.shape[0]])
        full_keypoints = np.where(
            (keypoints == 0).all(axis=1, keepdims=True), 0.0, keypoints * scale
        )
        return PreprocessResult(
            mask=mask >= 128,
            parse=full_parse,
            keypoints=full_keypoints,
            densepose=self.densepose(photo) if densepose else None,
        )


def _in_frame(
    image: Image.Image | None, size: tuple[int, int], box: tuple[int, int, int, int]
) -> Image.Image | None:
    """``image`` (computed on the crop ``box``) placed at ``box`` on a black canvas of ``size``."""
    if image is None:
        return None
    canvas = Image.new(image.mode, size)
    canvas.paste(image, box[:2])
    return canvas


def mask_preview(photo: Image.Image, mask: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The photo with the mask tinted red, to check a mask before using it."""
    rgb = np.asarray(photo.convert("RGB")).astype(np.float32)
    red = np.array([255.0, 0.0, 0.0])
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * red
    return Image.fromarray(rgb.round().astype(np.uint8))


# ---------------------------------------------------------------------------- datasets
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class PreprocessSummary:
    """What :func:`preprocess_photos` did: photos written, already done, and failures."""

    done: int
    skipped: int
    failed: list[str]


def dataset_paths(root: Path, name: str) -> dict[str, Path]:
    """Where one photo's files go in the VITON-HD layout."""
    return {
        "image": root / "image" / f"{name}.jpg",
        "mask": root / "agnostic-mask" / f"{name}_mask.png",
        "densepose": root / "image-densepose" / f"{name}.jpg",
        "parse": root / "image-parse-v3" / f"{name}.png",
        "keypoints": root / "openpose_json" / f"{name}_keypoints.json",
    }


def find_photos(inputs: list[str | os.PathLike[str]]) -> list[Path]:
    """The photos among ``inputs`` (files, or folders whose image files are taken in name order);
    names must be unique, as they name the dataset's files."""
    photos: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            photos += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            photos.append(path)
        else:
            raise UsageError(f"--input: not found: {item}")
    if not photos:
        raise UsageError("--input: no photos found (.jpg, .png, .webp, .bmp)")
    names = [p.stem for p in photos]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"--input: several photos named {duplicates[0]} (names must be unique)")
    return photos


def preprocess_photos(
    photos: list[Path],
    root: str | os.PathLike[str],
    preprocessor: Preprocessor,
    category: GarmentCategory | str = "upper_body",
    model_type: str = "hd",
    progress: bool = True,
) -> PreprocessSummary:
    """Write a VITON-HD-layout dataset (:func:`dataset_paths`) for ``photos`` into ``root``.

    Resumable: a photo whose files all exist is skipped. A photo that cannot be read or shows
    nobody is listed in the summary's ``failed`` and the others go on.
    """
    from ..progress import progress_bar

    root = Path(root)
    failed: list[str] = []
    done = skipped = 0
    for path in progress_bar(photos, desc="preprocess", unit="photo", show=progress):
        outputs = dataset_paths(root, path.stem)
        if all(p.is_file() for p in outputs.values()):
            skipped += 1
            continue
        try:
            photo = load_image(path, "photo")  # messages name the file
            result = preprocessor.analyse(photo, category, model_type)
        except (ImageInputError, NoPersonFoundError) as err:
            failed.append(f"{path.name}: {err}")
            continue
        _write_sample(outputs, photo, result)
        done += 1
    write_json_atomic(
        root / "preprocess.json",
        {
            "labels": "image-parse-v3 holds ATR labels 0-17 plus 18 = neck (the official demo's mask labels), not VITON-HD's",
            "category": str(category),
            "mask_type": model_type,
        },
    )
    return PreprocessSummary(done=done, skipped=skipped, failed=failed)


def _write_sample(outputs: dict[str, Path], photo: Image.Image, result: PreprocessResult) -> None:
    """Write one photo's five files, all or none: a failure (a full disk) takes back the files
    and folders of this sample already written, so a later run redoes it whole."""
    from .openpose import write_openpose_json

    created = [folder for path in outputs.values() for folder in make_folders(path.parent)]
    written: list[Path] = []
    try:
        for key, image in (
            ("image", photo),
            ("mask", Image.fromarray(result.mask.astype(np.uint8) * 255)),
            ("densepose", result.densepose),
            ("parse", Image.fromarray(result.parse)),
        ):
            written.append(save_image_atomic(image, outputs[key]))
        with atomic_path(outputs["keypoints"]) as tmp:
            write_openpose_json(tmp, result.keypoints)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        remove_empty_folders(created)
        raise
