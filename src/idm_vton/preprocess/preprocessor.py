"""Automatic inputs for IDM-VTON: the inpaint mask and the DensePose image from a plain photo.

:class:`Preprocessor` runs the three models of the official demo (SCHP human parsing, OpenPose
body, DensePose R-CNN; weights in the demo's ``ckpt/`` layout, from a folder or downloaded from the
hub on first use by :mod:`idm_vton.loaders.hub`) and the mask function, the way the demo does for its 3:4
photos (models at 384 x 512) and at the same height with the photo's own aspect otherwise. The
``idm-vton preprocess`` and ``idm-vton mask`` commands are defined here too.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..enums import GarmentCategory
from ..files import atomic_path, write_json_atomic
from ..loaders.weights import PreprocessModelError
from ..pipelines.image_processor import ImageInputError, load_image, save_image_atomic

__all__ = [
    "MODELS_DIR_ENV",
    "MODEL_FILES",
    "Preprocessor",
    "PreprocessResult",
    "add_arguments",
    "add_mask_arguments",
    "add_preprocess_model_arguments",
    "default_models_dir",
    "mask_preview",
    "run",
    "run_mask",
]

#: Weight files, relative to the models folder (the official demo's ``ckpt/`` layout).
MODEL_FILES = {
    "parsing_atr": "humanparsing/parsing_atr.onnx",
    "parsing_lip": "humanparsing/parsing_lip.onnx",
    "openpose": "openpose/ckpts/body_pose_model.pth",
    "densepose": "densepose/model_final_162be9.pkl",
}
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
        models_dir: folder in the demo's ``ckpt/`` layout (:data:`MODEL_FILES`). ``None``:
            ``$IDM_VTON_PREPROCESS_MODELS`` if set, else each weight file is downloaded from the
            hub Space yisol/IDM-VTON (or found in the hub cache) when a model first needs it
            (:func:`idm_vton.loaders.hub.fetch_preprocess_models`), so a mask alone never fetches DensePose.
        device: torch device for OpenPose and DensePose (parsing runs on onnxruntime's CPU).
    """

    def __init__(
        self, models_dir: str | os.PathLike[str] | None = DEFAULT_MODELS_DIR, device: str = "cpu"
    ) -> None:
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
        self.device = device
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
                from ..loaders.hub import fetch_preprocess_models

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
        """The automatic inpaint mask (SPEC section 6) at the photo's size."""
        return self.analyse(photo, category, model_type, densepose=False).mask

    def densepose(self, photo: Image.Image) -> Image.Image:
        """The DensePose picture the model is conditioned on, at the photo's size."""
        return self.densepose_model.densepose_image(
            photo.convert("RGB"), detect_size=self.work_size(photo)
        )

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


def mask_preview(photo: Image.Image, mask: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The photo with the mask tinted red, to check a mask before using it."""
    rgb = np.asarray(photo.convert("RGB")).astype(np.float32)
    red = np.array([255.0, 0.0, 0.0])
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * red
    return Image.fromarray(rgb.round().astype(np.uint8))


# ---------------------------------------------------------------------------- idm-vton mask
def add_preprocess_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--preprocess-models``, ``--category``, ``--mask-type`` and ``--preprocess-device``."""
    parser.add_argument(
        "--preprocess-models",
        default=DEFAULT_MODELS_DIR,
        metavar="DIR",
        help="folder with the demo's ckpt/ layout (humanparsing/, openpose/ckpts/, densepose/); "
        "default: $IDM_VTON_PREPROCESS_MODELS, else downloaded from the hub Space yisol/IDM-VTON "
        "on first use",
    )
    parser.add_argument(
        "--category",
        default="upper_body",
        choices=[c.value for c in GarmentCategory],
        help="garment category whose area is masked (default %(default)s)",
    )
    parser.add_argument(
        "--mask-type",
        default="hd",
        choices=["hd", "dc"],
        help="mask flavour: hd (VITON-HD, wide arm band) or dc (DressCode) (default %(default)s)",
    )
    parser.add_argument(
        "--preprocess-device", default="cpu", help="device for OpenPose/DensePose (default cpu)"
    )


def add_mask_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--person", required=True, help="photo of the person")
    parser.add_argument("--out", required=True, help="mask PNG to write (white = re-generate)")
    parser.add_argument("--no-preview", action="store_true", help="do not write <out>.preview.png")
    add_preprocess_model_arguments(parser)


def preview_path(out: Path) -> Path:
    return out.with_name(out.stem + ".preview.png")


def run_mask(args) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must be a .png file, got '{out.name}'")
    photo = load_image(args.person, "person image")
    pre = Preprocessor(args.preprocess_models, device=args.preprocess_device)
    mask = pre.mask(photo, args.category, args.mask_type)
    save_image_atomic(Image.fromarray(mask.astype(np.uint8) * 255), out)
    print(f"wrote {out} ({mask.mean():.1%} of the photo)")
    if not args.no_preview:
        save_image_atomic(mask_preview(photo, mask), preview_path(out))
        print(f"wrote {preview_path(out)}")
    return 0


# ---------------------------------------------------------------------------- idm-vton preprocess
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, nargs="+", help="photos, or folders of photos")
    parser.add_argument("--output", required=True, help="dataset folder to write (VITON-HD layout)")
    add_preprocess_model_arguments(parser)


def dataset_paths(root: Path, name: str) -> dict[str, Path]:
    """Where one photo's files go in the VITON-HD layout."""
    return {
        "image": root / "image" / f"{name}.jpg",
        "mask": root / "agnostic-mask" / f"{name}_mask.png",
        "densepose": root / "image-densepose" / f"{name}.jpg",
        "parse": root / "image-parse-v3" / f"{name}.png",
        "keypoints": root / "openpose_json" / f"{name}_keypoints.json",
    }


def _photos(inputs: list[str]) -> list[Path]:
    photos: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            photos += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            photos.append(path)
        else:
            raise ValueError(f"--input: not found: {item}")
    if not photos:
        raise ValueError("--input: no photos found (.jpg, .png, .webp, .bmp)")
    names = [p.stem for p in photos]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"--input: several photos named {duplicates[0]} (names must be unique)")
    return photos


def run(args) -> int:
    from tqdm import tqdm

    from .openpose import write_openpose_json

    photos = _photos(args.input)
    root = Path(args.output)
    pre = Preprocessor(args.preprocess_models, device=args.preprocess_device)
    failed: list[str] = []
    done = skipped = 0
    for path in tqdm(photos, desc="preprocess", unit="photo"):
        outputs = dataset_paths(root, path.stem)
        if all(p.is_file() for p in outputs.values()):
            skipped += 1
            continue
        try:
            photo = load_image(path, f"photo {path.name}")
            result = pre.analyse(photo, args.category, args.mask_type)
        except (ImageInputError, ValueError) as err:  # no person found, unreadable photo...
            failed.append(f"{path.name}: {err}")
            continue
        save_image_atomic(photo, outputs["image"])
        save_image_atomic(Image.fromarray(result.mask.astype(np.uint8) * 255), outputs["mask"])
        save_image_atomic(result.densepose, outputs["densepose"])
        save_image_atomic(Image.fromarray(result.parse), outputs["parse"])
        with atomic_path(outputs["keypoints"]) as tmp:
            write_openpose_json(tmp, result.keypoints)
        done += 1
    write_json_atomic(
        root / "preprocess.json",
        {
            "labels": "image-parse-v3 holds ATR labels 0-17 plus 18 = neck (SPEC section 6), not VITON-HD's",
            "category": args.category,
            "mask_type": args.mask_type,
        },
    )
    print(f"{done} photos written, {skipped} already done, {len(failed)} failed -> {root}")
    for line in failed:
        print(f"  skipped {line}", file=sys.stderr)
    return 1 if failed else 0
