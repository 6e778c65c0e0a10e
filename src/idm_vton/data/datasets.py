"""VITON-HD and DressCode try-on datasets for training, dataset inference and evaluation.

Every item is a dict (see :class:`TryOnDataset`) with the person, inpainting mask, DensePose image
and garment as float tensors in ``[0, 1]`` at one size ``(H, W)``, the garment preprocessed for the
CLIP image encoder, and the two captions of paper Sec. 3.2. Scaling to ``[-1, 1]`` for the VAE is
left to the model side.

On-disk layouts (the official ``train_xl.py`` / ``inference.py`` / ``inference_dc.py``):

VITON-HD (``root``)::

    train_pairs.txt, test_pairs.txt          "<person file> <garment file>" per line
    {split}/image/<person>.jpg
    {split}/cloth/<garment>.jpg
    {split}/agnostic-mask/<person stem>_mask.png    white = region to regenerate
    {split}/image-densepose/<person>.jpg
    {split}/vitonhd_{split}_tagged.json     (official place; {root}/ is accepted too)

DressCode (``root``)::

    {category}/train_pairs.txt, test_pairs_paired.txt, test_pairs_unpaired.txt
    {category}/images/<id>_0.jpg (person), <id>_1.jpg (garment)
    {category}/image-densepose/<id>_0.jpg
    {category}/dc_caption.txt
    {category}/<mask folder>/...   see DRESSCODE_MASK_CANDIDATES

DressCode ships no inpainting masks: the official ``inference_dc.py`` computes them on the fly from
``label_maps/<id>_4.png`` and ``keypoints/<id>_2.json``. Here masks are precomputed files (the
mask logic lives in the preprocessing package); the dataset looks for them under the names in
:data:`DRESSCODE_MASK_CANDIDATES`, or in a folder you name with ``mask_dir``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..enums import Pairing, Split
from ..errors import DatasetError, UsageError
from ..images import load_image, load_mask
from .augment import (
    AugmentConfig,
    AugmentParams,
    augment_garment,
    augment_person,
    sample_augment_params,
)
from .captions import (
    GarmentCategory,
    garment_prompt,
    load_dresscode_captions,
    load_vitonhd_tags,
    tryon_prompt,
)
from .pairs import read_pairs, vitonhd_tag_file_candidates

logger = logging.getLogger(__name__)

#: CLIP image normalisation (transformers' ``OPENAI_CLIP_MEAN`` / ``OPENAI_CLIP_STD``).
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

#: DressCode mask files tried in order, relative to ``{root}/{category}``; ``{stem}`` is the
#: person file name without extension (``013563_0``). The first that exists is used.
#: ``agnostic_masks/`` is the layout of the masks CatVTON published for DressCode; the last entry
#: is the VITON-HD naming.
DRESSCODE_MASK_CANDIDATES: tuple[str, ...] = (
    "agnostic_masks/{stem}.png",
    "masks/{stem}.png",
    "agnostic-mask/{stem}_mask.png",
)

# Mask and pose must show the same framing as the person photo; a larger aspect-ratio mismatch
# means the files do not belong together.
_ASPECT_TOLERANCE = 0.02

_LOAD_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


# --------------------------------------------------------------------------------------------
# Image helpers
# --------------------------------------------------------------------------------------------


def load_rgb(path: str | Path) -> Image.Image:
    """An RGB image through the package's image boundary (:func:`~idm_vton.images.load_image`): decoded in full (truncated files fail here), bounded before
    decoding, EXIF orientation honoured, 16-bit and float files by their range (NaN refused)."""
    return load_image(path, "image")


def load_gray(path: str | Path) -> Image.Image:
    """A mask as an 8-bit single-channel image (:func:`~idm_vton.images.load_mask`: the painted part of a transparent layer, else the luminance)."""
    return load_mask(path, "mask")


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit PIL image to a float tensor ``[C, H, W]`` in ``[0, 1]``."""
    array = np.array(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """Float RGB tensor ``[3, H, W]`` in ``[0, 1]`` to an 8-bit PIL image (rounded)."""
    array = (image.detach().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy(), mode="RGB")


def clip_preprocess(image: Image.Image, size: int = 224) -> torch.Tensor:
    """CLIP image-encoder input ``[3, size, size]``, as transformers' ``CLIPImageProcessor``.

    With the processor's defaults (the PIL implementation the official code used): resize the
    shortest side to ``size`` with bicubic resampling (long side ``int(size * long / short)``),
    centre crop ``size x size`` (offset ``(extent - size) // 2``), scale to ``[0, 1]``, normalise
    with the OpenAI CLIP mean and std.
    """
    image = image.convert("RGB")
    width, height = image.size
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    resized = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    top, left = (new_height - size) // 2, (new_width - size) // 2
    cropped = pil_to_tensor(resized)[:, top : top + size, left : left + size]
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (cropped - mean) / std


# --------------------------------------------------------------------------------------------
# Dataset base
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleRecord:
    """Where one sample's files are, and where the sample came from (for error messages)."""

    person_path: Path
    garment_path: Path
    mask_paths: tuple[Path, ...]  # candidates; the first that exists is used
    pose_path: Path
    description: str  # garment description V
    category: GarmentCategory
    source: str  # e.g. "/data/test_pairs.txt line 3: '00001_00.jpg 00002_00.jpg'"


def _require_pairs(records: list, pairs_files: list[Path]) -> None:
    """An empty split is a mistake (a wrong or emptied pairs file), not a run with no samples."""
    if not records:
        names = ", ".join(str(p) for p in pairs_files)
        raise DatasetError(
            f"{names}: no pairs listed (the pairs file is empty)", path=pairs_files[0]
        )


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"size must be (height, width) with positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def _item_seed(seed: int, epoch: int, index: int) -> int:
    # SeedSequence mixes the three numbers well, so neighbouring indices get unrelated streams.
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & ((1 << 63) - 1)


class TryOnDataset(torch.utils.data.Dataset):
    """Shared loading logic of :class:`VitonHDDataset` and :class:`DressCodeDataset`.

    Item keys:

    - ``name`` (person file stem), ``garment_name`` (garment file stem), ``category`` (str);
    - ``person`` ``[3, H, W]``, ``garment`` ``[3, H, W]``, ``pose`` ``[3, H, W]``: float in ``[0, 1]``;
    - ``mask`` ``[1, H, W]``: float in ``{0, 1}``, 1 = region to regenerate (binarised at 0.5);
    - ``garment_clip`` ``[3, clip_size, clip_size]``: CLIP-normalised garment (see
      :func:`clip_preprocess`), computed from the full-resolution garment file after the same flip
      and colour jitter as ``garment``, like the official trainer;
    - ``caption`` (TryonNet prompt), ``garment_caption`` (GarmentNet prompt), ``description`` (V).

    Person and garment are resized to ``size`` with bicubic resampling, the pose bilinearly, the mask
    bilinearly and then binarised (so downscaling keeps the mask's area).

    Augmentation (``augment=True``, :mod:`.augment`) is seeded per item. With ``seed`` set, item
    ``i`` in epoch ``e`` always gets the same draw, whatever the worker or loading order; call
    :meth:`set_epoch` every epoch (as with ``DistributedSampler``) for fresh draws. With
    ``seed=None`` the per-item seed comes from torch's global RNG, which DataLoader seeds
    differently in each worker. (A shared ``torch.Generator`` would be copied into every worker and
    repeat the same stream there, so the dataset takes a seed, not a generator.)

    Bad data: a missing, truncated or undecodable file, or a mask / pose whose aspect ratio does not
    match the person photo, raises :class:`DatasetError` naming the file and the dataset row. With
    ``skip_bad_samples=True`` it logs a warning instead and returns the next loadable sample
    (index ``i + 1``, ``i + 2``, ... wrapping around; the substitute keeps its own augmentation
    seed). Rows found bad are remembered per process and not retried.
    """

    def __init__(
        self,
        records: Sequence[SampleRecord],
        *,
        size: Sequence[int] = (1024, 768),
        augment: bool = False,
        augment_config: AugmentConfig | None = None,
        seed: int | None = None,
        skip_bad_samples: bool = False,
        clip_size: int = 224,
    ):
        super().__init__()
        self.records = list(records)
        self.size = _check_size(size)
        self.augment = bool(augment)
        self.augment_config = augment_config or AugmentConfig()
        self.seed = seed
        self.skip_bad_samples = bool(skip_bad_samples)
        if clip_size <= 0:
            raise ValueError(f"clip_size must be positive, got {clip_size}")
        self.clip_size = int(clip_size)
        self.epoch = 0
        self._bad_rows: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (only matters with a fixed ``seed``)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        try:
            return self.load_sample(index)
        except DatasetError as error:
            if not self.skip_bad_samples:
                raise
            self._bad_rows.add(index)
            logger.warning("%s; substituting the next loadable sample", error)
        for offset in range(1, len(self)):
            candidate = (index + offset) % len(self)
            if candidate in self._bad_rows:
                continue
            try:
                return self.load_sample(candidate)
            except DatasetError as error:
                self._bad_rows.add(candidate)
                logger.warning("%s; trying the next sample", error)
        raise DatasetError(f"{type(self).__name__}: no loadable sample left (row {index} was bad)")

    def _generator(self, index: int) -> torch.Generator:
        if self.seed is None:
            item_seed = int(torch.randint(0, 2**62, (1,)).item())
        else:
            item_seed = _item_seed(self.seed, self.epoch, index)
        return torch.Generator().manual_seed(item_seed)

    def _fail(self, index: int, role: str, path: Path, reason: object) -> DatasetError:
        record = self.records[index]
        return DatasetError(
            f"{type(self).__name__} row {index} ({record.source}): {role} file {path}: {reason}",
            path=path,
            row=index,
        )

    def _open(self, index: int, role: str, path: Path, loader: Callable[[Path], Image.Image]):
        if not path.is_file():
            raise self._fail(index, role, path, "not found")
        try:
            return loader(path)
        except _LOAD_ERRORS as error:
            raise self._fail(index, role, path, f"cannot decode ({error})") from error

    def _check_aspect(self, index: int, role: str, path: Path, image, person) -> None:
        ratio = (image.width / image.height) / (person.width / person.height)
        if abs(ratio - 1.0) > _ASPECT_TOLERANCE:
            raise self._fail(
                index,
                role,
                path,
                f"size {image.width}x{image.height} does not match the person photo "
                f"{person.width}x{person.height}",
            )

    def load_sample(self, index: int) -> dict[str, Any]:
        """Load row ``index`` without the ``skip_bad_samples`` fallback."""
        record = self.records[index]
        height, width = self.size

        person_image = self._open(index, "person", record.person_path, load_rgb)
        garment_image = self._open(index, "garment", record.garment_path, load_rgb)
        mask_path = next((p for p in record.mask_paths if p.is_file()), None)
        if mask_path is None:
            tried = ", ".join(str(p) for p in record.mask_paths)
            raise self._fail(index, "mask", record.mask_paths[0], f"not found (tried: {tried})")
        mask_image = self._open(index, "mask", mask_path, load_gray)
        pose_image = self._open(index, "pose", record.pose_path, load_rgb)
        self._check_aspect(index, "mask", mask_path, mask_image, person_image)
        self._check_aspect(index, "pose", record.pose_path, pose_image, person_image)

        bicubic, bilinear = Image.Resampling.BICUBIC, Image.Resampling.BILINEAR
        person = pil_to_tensor(person_image.resize((width, height), bicubic))
        garment = pil_to_tensor(garment_image.resize((width, height), bicubic))
        pose = pil_to_tensor(pose_image.resize((width, height), bilinear))
        mask = (pil_to_tensor(mask_image.resize((width, height), bilinear)) >= 0.5).float()

        clip_source = garment_image
        if self.augment:
            params: AugmentParams = sample_augment_params(
                self._generator(index), self.augment_config
            )
            person, mask, pose = augment_person(person, mask, pose, params, self.augment_config)
            garment = augment_garment(garment, params)
            if params.flip or params.color is not None:
                # The CLIP view is taken from the full-resolution file (as the official trainer
                # does), so apply the same draw to it.
                clip_source = tensor_to_pil(augment_garment(pil_to_tensor(garment_image), params))

        return {
            "name": record.person_path.stem,
            "garment_name": record.garment_path.stem,
            "category": record.category.value,
            "person": person,
            "garment": garment,
            "mask": mask,
            "pose": pose,
            "garment_clip": clip_preprocess(clip_source, self.clip_size),
            "caption": tryon_prompt(record.description),
            "garment_caption": garment_prompt(record.description),
            "description": record.description,
        }


# --------------------------------------------------------------------------------------------
# VITON-HD
# --------------------------------------------------------------------------------------------


class VitonHDDataset(TryOnDataset):
    """VITON-HD (upper-body garments), layout in the module docstring.

    ``pairing="paired"`` uses the person's own garment (the garment file named like the person);
    ``"unpaired"`` uses the second column of ``{split}_pairs.txt``. Captions come from
    ``vitonhd_{split}_tagged.json`` looked up by garment file name (``tags_json`` overrides the
    location); a garment without an entry gets ``"shirts"`` (as in the official code). If no tag file is
    found a warning is logged and every garment gets ``"shirts"``.

    See :class:`TryOnDataset` for the item format, augmentation and error handling.
    """

    def __init__(
        self,
        root: str | Path,
        split: Split | str = "train",
        pairing: Pairing | str = "paired",
        size: Sequence[int] = (1024, 768),
        augment: bool = False,
        *,
        augment_config: AugmentConfig | None = None,
        seed: int | None = None,
        skip_bad_samples: bool = False,
        clip_size: int = 224,
        tags_json: str | Path | None = None,
    ):
        self.root = Path(root)
        self.split = Split.parse(split, "split")
        self.pairing = Pairing.parse(pairing, "pairing")
        if not self.root.is_dir():
            raise DatasetError(f"VITON-HD root folder not found: {self.root}", path=self.root)
        descriptions = self._load_tags(tags_json)
        phase = self.root / self.split.value
        records = []
        pairs_file = self.root / f"{self.split.value}_pairs.txt"
        for pair in read_pairs(pairs_file):
            garment = pair.person if self.pairing is Pairing.PAIRED else pair.garment
            records.append(
                SampleRecord(
                    person_path=phase / "image" / pair.person,
                    garment_path=phase / "cloth" / garment,
                    mask_paths=(phase / "agnostic-mask" / f"{Path(pair.person).stem}_mask.png",),
                    pose_path=phase / "image-densepose" / pair.person,
                    description=descriptions.get(garment, "shirts"),
                    category=GarmentCategory.UPPER_BODY,
                    source=pair.source,
                )
            )
        _require_pairs(records, [pairs_file])
        super().__init__(
            records,
            size=size,
            augment=augment,
            augment_config=augment_config,
            seed=seed,
            skip_bad_samples=skip_bad_samples,
            clip_size=clip_size,
        )

    def _load_tags(self, tags_json: str | Path | None) -> dict[str, str]:
        if tags_json is not None:
            candidates = [Path(tags_json)]
        else:
            candidates = vitonhd_tag_file_candidates(self.root, self.split)
        for path in candidates:
            if path.is_file():
                try:
                    return load_vitonhd_tags(path)
                except ValueError as error:
                    raise DatasetError(str(error), path=path) from error
        logger.warning(
            "VITON-HD tag file not found (looked at %s); every garment is described as 'shirts'",
            ", ".join(str(p) for p in candidates),
        )
        return {}


# --------------------------------------------------------------------------------------------
# DressCode
# --------------------------------------------------------------------------------------------


def _parse_categories(
    category: GarmentCategory | str | Iterable[GarmentCategory | str] | None,
) -> list[GarmentCategory]:
    if category is None or (isinstance(category, str) and category == "all"):
        return list(GarmentCategory)
    if isinstance(category, (str, GarmentCategory)):
        return [GarmentCategory.parse(category)]
    categories = [GarmentCategory.parse(c) for c in category]
    if not categories:
        raise UsageError("category list is empty")
    return categories


class DressCodeDataset(TryOnDataset):
    """DressCode, one category or several (layout in the module docstring).

    ``category`` is ``"upper_body"``, ``"lower_body"``, ``"dresses"``, a list of them, or ``"all"``
    (the three concatenated in that order). Pairs files per category: ``train_pairs.txt`` for the
    train split (paired only), ``test_pairs_paired.txt`` / ``test_pairs_unpaired.txt`` for the test
    split; the garment is the second column (the person's own garment in the paired files).

    Captions: ``dc_caption.txt`` per category, looked up by garment file name, then by its stem; a
    garment without a caption is described by its category name (``"upper_body"``, ...), as in the
    official code. A missing caption file logs a warning and falls back the same way.

    Masks: the first existing file among ``DRESSCODE_MASK_CANDIDATES`` (or
    ``{category}/{mask_dir}/{stem}.png`` when ``mask_dir`` is given), white = regenerate.

    See :class:`TryOnDataset` for the item format, augmentation and error handling.
    """

    def __init__(
        self,
        root: str | Path,
        category: GarmentCategory | str | Iterable[GarmentCategory | str] = "all",
        split: Split | str = "train",
        pairing: Pairing | str = "paired",
        size: Sequence[int] = (1024, 768),
        augment: bool = False,
        *,
        augment_config: AugmentConfig | None = None,
        seed: int | None = None,
        skip_bad_samples: bool = False,
        clip_size: int = 224,
        mask_dir: str | None = None,
    ):
        self.root = Path(root)
        self.categories = _parse_categories(category)
        self.split = Split.parse(split, "split")
        self.pairing = Pairing.parse(pairing, "pairing")
        if self.split is Split.TRAIN and self.pairing is Pairing.UNPAIRED:
            raise UsageError("DressCode has no unpaired training list; use pairing='paired'")
        if not self.root.is_dir():
            raise DatasetError(f"DressCode root folder not found: {self.root}", path=self.root)
        mask_templates = (f"{mask_dir}/{{stem}}.png",) if mask_dir else DRESSCODE_MASK_CANDIDATES
        pairs_name = (
            "train_pairs.txt"
            if self.split is Split.TRAIN
            else f"test_pairs_{self.pairing.value}.txt"
        )
        records = []
        for cat in self.categories:
            folder = self.root / cat.value
            captions = self._load_captions(folder / "dc_caption.txt")
            for pair in read_pairs(folder / pairs_name):
                stem = Path(pair.person).stem
                description = captions.get(pair.garment) or captions.get(
                    Path(pair.garment).stem, cat.value
                )
                records.append(
                    SampleRecord(
                        person_path=folder / "images" / pair.person,
                        garment_path=folder / "images" / pair.garment,
                        mask_paths=tuple(folder / t.format(stem=stem) for t in mask_templates),
                        pose_path=folder / "image-densepose" / pair.person,
                        description=description,
                        category=cat,
                        source=pair.source,
                    )
                )
        _require_pairs(records, [self.root / cat.value / pairs_name for cat in self.categories])
        super().__init__(
            records,
            size=size,
            augment=augment,
            augment_config=augment_config,
            seed=seed,
            skip_bad_samples=skip_bad_samples,
            clip_size=clip_size,
        )

    @staticmethod
    def _load_captions(path: Path) -> dict[str, str]:
        if not path.is_file():
            logger.warning(
                "DressCode caption file not found: %s; garments are described by category", path
            )
            return {}
        try:
            return load_dresscode_captions(path)
        except ValueError as error:
            raise DatasetError(str(error), path=path) from error


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch dataset items: tensors are stacked along a new first axis, other values listed."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch
