"""Small synthetic datasets on disk in the VITON-HD and DressCode layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FILE_H, FILE_W = 40, 30  # size of the synthetic files on disk (3:4, like the real data)


def _solid(color, size=(FILE_W, FILE_H)) -> Image.Image:
    return Image.new("RGB", size, tuple(int(c) for c in color))


def _person(color) -> Image.Image:
    """Solid person photo with a white square where the mask will be."""
    image = np.full((FILE_H, FILE_W, 3), color, dtype=np.uint8)
    image[10:26, 8:20] = 255
    return Image.fromarray(image)


def _mask() -> Image.Image:
    mask = np.zeros((FILE_H, FILE_W), dtype=np.uint8)
    mask[10:26, 8:20] = 255
    return Image.fromarray(mask, mode="L")


def make_vitonhd(root: Path, n: int = 3, tags_at_root: bool = False) -> list[str]:
    """VITON-HD layout with n people; unpaired garment of person i is garment (i + 1) % n."""
    names = [f"{i:05d}_00.jpg" for i in range(n)]
    for split in ("train", "test"):
        phase = root / split
        for folder in ("image", "cloth", "agnostic-mask", "image-densepose"):
            (phase / folder).mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(names):
            _person((40 + 30 * i, 80, 120)).save(phase / "image" / name, quality=95)
            _solid((200 - 30 * i, 50 + 20 * i, 90)).save(phase / "cloth" / name, quality=95)
            _mask().save(phase / "agnostic-mask" / name.replace(".jpg", "_mask.png"))
            _solid((i * 20, 0, 0)).save(phase / "image-densepose" / name, quality=95)
        lines = [f"{name} {names[(i + 1) % n]}\n" for i, name in enumerate(names)]
        (root / f"{split}_pairs.txt").write_text("".join(lines))
        tags = {
            "data": [
                {
                    "file_name": names[0],
                    "tag_info": [
                        {"tag_name": "item", "tag_category": "T-shirts"},
                        {"tag_name": "sleeveLength", "tag_category": "Short Sleeve"},
                        {"tag_name": "neckLine", "tag_category": None},
                    ],
                },
                {
                    "file_name": names[1],
                    "tag_info": [{"tag_name": "item", "tag_category": "Blouse"}],
                },
            ]
        }
        json_dir = root if tags_at_root else phase
        (json_dir / f"vitonhd_{split}_tagged.json").write_text(json.dumps(tags))
    return names


def vitonhd_fixture(n: int):
    """A module-scoped ``vitonhd`` fixture: a :func:`make_vitonhd` folder of ``n`` people, written
    once per test module (``vitonhd = vitonhd_fixture(2)`` at the module's top level)."""

    @pytest.fixture(scope="module")
    def vitonhd(tmp_path_factory) -> Path:
        root = tmp_path_factory.mktemp("vitonhd")
        make_vitonhd(root, n=n)
        return root

    return vitonhd


DC_IDS = {
    "upper_body": ["000001", "000002"],
    "lower_body": ["010001"],
    "dresses": ["020001", "020002"],
}


def make_dresscode(root: Path) -> None:
    """DressCode layout; the unpaired garment of person k is the garment of person k+1 (cyclic)."""
    index = 0
    for cat, ids in DC_IDS.items():
        folder = root / cat
        for sub in ("images", "image-densepose", "agnostic_masks"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        for k in ids:
            _person((40 + 30 * index, 80, 120)).save(folder / "images" / f"{k}_0.jpg", quality=95)
            _solid((200 - 30 * index, 60, 90)).save(folder / "images" / f"{k}_1.jpg", quality=95)
            _solid((0, 0, 90)).save(folder / "image-densepose" / f"{k}_0.jpg", quality=95)
            _mask().save(folder / "agnostic_masks" / f"{k}_0.png")
            index += 1
        paired = "".join(f"{k}_0.jpg {k}_1.jpg\n" for k in ids)
        unpaired = "".join(
            f"{k}_0.jpg {ids[(j + 1) % len(ids)]}_1.jpg\n" for j, k in enumerate(ids)
        )
        (folder / "train_pairs.txt").write_text(paired)
        (folder / "test_pairs_paired.txt").write_text(paired)
        (folder / "test_pairs_unpaired.txt").write_text(unpaired)
        # Captions: the first garment of each category has one (keyed with extension).
        (folder / "dc_caption.txt").write_text(f"{ids[0]}_1.jpg long  sleeve {cat} caption\n\n")
