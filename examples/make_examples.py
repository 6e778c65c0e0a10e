"""Rebuild the example inputs in this folder (``python examples/make_examples.py``).

- ``person.jpg``: scikit-image's ``astronaut`` photo (Eileen Collins, NASA; public domain), read
  from the installed scikit-image package and stored as JPEG.
- ``garment.jpg``: a striped t-shirt with a star logo, drawn here (this project's own picture).
- ``mask.png``: an upper-body inpaint mask for ``person.jpg``, drawn here by hand-placed polygons.
- ``densepose.png``: a DensePose-style picture for ``person.jpg`` (body parts in flat colours on
  black), drawn here. It stands in for a real DensePose rendering with the tiny random model;
  the real model needs the real one (``--pose auto``).

The outputs are committed, so nothing here runs at install or test time.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent

# Garment canvas: the 3:4 shape of in-shop photos.
GARMENT_SIZE = (600, 800)
NAVY, CREAM, GOLD = (28, 42, 86), (244, 236, 214), (232, 178, 40)


def garment() -> Image.Image:
    """A short-sleeve crew-neck t-shirt on white: navy with cream stripes and a gold star."""
    w, h = GARMENT_SIZE
    image = Image.new("RGB", GARMENT_SIZE, "white")
    shirt = Image.new("L", GARMENT_SIZE, 0)
    outline = [
        (0.30, 0.14), (0.40, 0.11), (0.44, 0.15), (0.50, 0.17), (0.56, 0.15), (0.60, 0.11),
        (0.70, 0.14), (0.93, 0.30), (0.84, 0.42), (0.75, 0.36), (0.76, 0.90), (0.24, 0.90),
        (0.25, 0.36), (0.16, 0.42), (0.07, 0.30),
    ]  # fmt: skip
    ImageDraw.Draw(shirt).polygon([(x * w, y * h) for x, y in outline], fill=255)
    pattern = Image.new("RGB", GARMENT_SIZE, NAVY)
    draw = ImageDraw.Draw(pattern)
    for top in range(int(0.22 * h), h, 56):
        draw.rectangle([0, top, w, top + 18], fill=CREAM)
    cx, cy, r = 0.5 * w, 0.42 * h, 0.09 * w
    star = []
    for k in range(10):
        radius = r if k % 2 == 0 else 0.42 * r
        angle = math.pi * (k / 5 - 0.5)
        star.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    draw.ellipse([cx - 1.35 * r, cy - 1.35 * r, cx + 1.35 * r, cy + 1.35 * r], fill=NAVY)
    draw.polygon(star, fill=GOLD)
    image.paste(pattern, mask=shirt)
    collar = ImageDraw.Draw(image)
    collar.arc([0.43 * w, 0.07 * h, 0.57 * w, 0.17 * h], 20, 160, fill=GOLD, width=8)
    return image


# Polygons in the astronaut photo's pixels (512 x 512).
TORSO = [
    (60, 235),
    (130, 200),
    (300, 195),
    (345, 250),
    (365, 300),
    (378, 512),
    (12, 512),
    (25, 330),
]
HEAD = (152, 24, 300, 196)
NECK = [(190, 170), (262, 170), (270, 240), (184, 240)]
LEFT_ARM = [(25, 330), (60, 235), (95, 280), (90, 512), (12, 512)]
RIGHT_ARM = [(320, 230), (345, 250), (365, 300), (378, 512), (330, 512)]


def mask() -> Image.Image:
    """White = the upper-body garment area to re-generate (torso and arms, not the face)."""
    image = Image.new("L", (512, 512), 0)
    ImageDraw.Draw(image).polygon(TORSO, fill=255)
    return image


def densepose() -> Image.Image:
    """Body parts in flat colours on black, the look of the demo's DensePose rendering."""
    image = Image.new("RGB", (512, 512), "black")
    draw = ImageDraw.Draw(image)
    draw.polygon(TORSO, fill=(20, 80, 200))
    draw.polygon(LEFT_ARM, fill=(40, 170, 160))
    draw.polygon(RIGHT_ARM, fill=(150, 200, 60))
    draw.polygon(NECK, fill=(230, 190, 50))
    draw.ellipse(HEAD, fill=(250, 250, 20))
    return image


def main() -> None:
    import skimage

    source = Path(skimage.__file__).parent / "data" / "astronaut.png"
    Image.open(source).convert("RGB").save(HERE / "person.jpg", quality=92)
    garment().save(HERE / "garment.jpg", quality=92)
    mask().save(HERE / "mask.png")
    densepose().save(HERE / "densepose.png")
    print(f"wrote person.jpg, garment.jpg, mask.png, densepose.png in {HERE}")


if __name__ == "__main__":
    main()
