"""A small dataset in VITON-HD's layout made from the example photos that ship with the package,
to try ``idm-vton train``, ``infer-dataset`` and ``evaluate`` without downloading a dataset.

Two people (the drawn full-length figure and its mirror image, each with its mask and
DensePose picture) and two upper-body garments (the t-shirt and the shirt), in a train and a test
split with their pairs files and garment tags. It is far too small to learn anything: it exercises
the commands, nothing more.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageOps

from ..errors import UsageError
from ..examples import EXAMPLES_DIR, example_garments

__all__ = ["write_example_dataset"]

_FIGURE = "figure_tshirt_trousers"
_GARMENTS = ("garment.jpg", "shirt.jpg")
# VITON-HD's tags for the two garments (sleeve length, neckline, item).
_TAGS = (
    {"sleeveLength": "Short Sleeve", "neckLine": "Round Neck", "item": "T-shirts"},
    {"sleeveLength": "Long Sleeve", "neckLine": "Collar", "item": "Shirts"},
)


def write_example_dataset(root: str | Path) -> Path:
    """Write the example dataset into the new folder ``root`` (VITON-HD layout: ``train/`` and
    ``test/`` with ``image/``, ``cloth/``, ``agnostic-mask/``, ``image-densepose/`` and the tag
    file; ``train_pairs.txt``, ``test_pairs.txt``); returns ``root``.

    Raises :class:`~idm_vton.errors.UsageError` when ``root`` exists and is not empty.
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise UsageError(f"{root} is not empty: choose a new folder for the example dataset")
    descriptions = {g.path.name: g.description for g in example_garments()}
    assert all(name in descriptions for name in _GARMENTS), descriptions
    photo = Image.open(EXAMPLES_DIR / f"{_FIGURE}.png").convert("RGB")
    mask = Image.open(EXAMPLES_DIR / f"{_FIGURE}_mask.png").convert("L")
    pose = Image.open(EXAMPLES_DIR / f"{_FIGURE}_densepose.png").convert("RGB")
    people = [(photo, mask, pose), tuple(ImageOps.mirror(image) for image in (photo, mask, pose))]
    names = [f"{i:05d}_00.jpg" for i in range(len(people))]
    for split in ("train", "test"):
        phase = root / split
        for folder in ("image", "cloth", "agnostic-mask", "image-densepose"):
            (phase / folder).mkdir(parents=True, exist_ok=True)
        for name, (person, person_mask, person_pose), garment in zip(
            names, people, _GARMENTS, strict=True
        ):
            person.save(phase / "image" / name, quality=95)
            person_mask.save(phase / "agnostic-mask" / name.replace(".jpg", "_mask.png"))
            person_pose.save(phase / "image-densepose" / name, quality=95)
            Image.open(EXAMPLES_DIR / garment).convert("RGB").save(phase / "cloth" / name)
        tags = [
            {
                "file_name": name,
                "tag_info": [{"tag_name": k, "tag_category": v} for k, v in t.items()],
            }
            for name, t in zip(names, _TAGS, strict=True)
        ]
        (phase / f"vitonhd_{split}_tagged.json").write_text(json.dumps({"data": tags}, indent=1))
        pairs = names if split == "train" else names[1:] + names[:1]  # test: unpaired
        lines = [f"{person} {garment}\n" for person, garment in zip(names, pairs, strict=True)]
        (root / f"{split}_pairs.txt").write_text("".join(lines))
    return root
