"""Draw ``category_masks.png``: the automatic mask of each garment category
(``python docs/images/make_category_masks.py``).

The bodies are two of the synthetic human-parsing label maps shipped with the tests
(``tests/fixtures/golden_mask/parse/000.png`` in a top and trousers, ``002.png`` in a dress, with
their OpenPose keypoints from ``cases.json``); each panel is :func:`idm_vton.preprocess.mask.
agnostic_mask` of one category on that map, drawn over the map in red. Real photos go through the
same function after human parsing and pose estimation (docs/preprocessing.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from idm_vton.preprocess import mask as labels
from idm_vton.preprocess.mask import agnostic_mask

HERE = Path(__file__).resolve().parent
CASES = HERE.parents[1] / "tests" / "fixtures" / "golden_mask"

SKIN, CLOTH = (233, 196, 170), (150, 150, 160)
#: Label map colours: skin, hair and shoes in their colours, each garment in its own grey-blue.
COLOURS = {
    labels.BACKGROUND: (255, 255, 255),
    labels.HAIR: (90, 60, 40),
    labels.HAT: (90, 60, 40),
    labels.SUNGLASSES: (40, 40, 40),
    labels.HEAD: SKIN,
    labels.NECK: SKIN,
    labels.LEFT_ARM: SKIN,
    labels.RIGHT_ARM: SKIN,
    labels.LEFT_LEG: SKIN,
    labels.RIGHT_LEG: SKIN,
    labels.UPPER_CLOTHES: (120, 150, 200),
    labels.DRESS: (170, 130, 190),
    labels.SKIRT: (90, 110, 150),
    labels.PANTS: (90, 110, 150),
    labels.BELT: (60, 60, 60),
    labels.LEFT_SHOE: (50, 50, 50),
    labels.RIGHT_SHOE: (50, 50, 50),
    labels.BAG: (140, 100, 60),
    labels.SCARF: (200, 170, 80),
}
PANELS = (("000", "upper_body"), ("000", "lower_body"), ("002", "dresses"))


def panel(name: str, category: str, keypoints: np.ndarray) -> Image.Image:
    parse = np.asarray(Image.open(CASES / "parse" / f"{name}.png"))
    rgb = np.zeros((*parse.shape, 3), np.float32)
    for label, colour in COLOURS.items():
        rgb[parse == label] = colour
    mask = agnostic_mask(parse, keypoints, category, "hd")
    rgb[mask] = 0.45 * rgb[mask] + 0.55 * np.array([230.0, 40.0, 40.0])
    image = Image.fromarray(rgb.round().astype(np.uint8))
    image = image.crop((0, 0, image.width, image.height - 30))  # the maps end in white
    canvas = Image.new("RGB", (image.width, image.height + 36), "white")
    canvas.paste(image, (0, 0))
    ImageDraw.Draw(canvas).text(
        (image.width // 2, image.height + 10),
        f"--category {category}",
        fill="black",
        anchor="mm",
        font=ImageFont.load_default(size=22),
    )
    return canvas


def main() -> None:
    cases = {case["name"]: case for case in json.loads((CASES / "cases.json").read_text())["cases"]}
    panels = [panel(n, c, np.array(cases[n]["keypoints"])) for n, c in PANELS]
    gap = 12
    out = Image.new("RGB", (sum(p.width for p in panels) + gap * 2, panels[0].height), "white")
    for i, p in enumerate(panels):
        out.paste(p, (i * (p.width + gap), 0))
    out.save(HERE / "category_masks.png", optimize=True)


if __name__ == "__main__":
    main()
