"""Rebuild the example inputs (``python examples/make_examples.py``) and the README's pictures.

The examples ship inside the package (``src/idm_vton/examples/``, described by its
``examples.json``), so an installed wheel has them too (the web UI's examples, ``--model tiny``
runs). Every picture is drawn here, or is a public-domain photograph:

- ``person.jpg``: scikit-image's ``astronaut`` photo (Eileen Collins, NASA; public domain);
  ``mask.png`` and ``densepose.png``: an upper-body mask and a DensePose-style picture for it,
  drawn here by hand-placed polygons (stand-ins that let ``--model tiny`` run without the
  preprocessing weights; the real model computes both, ``--mask auto --pose auto``);
- ``person_hopper.jpg``: Commodore Grace M. Hopper, official U.S. Navy photograph (public domain,
  a work of the U.S. federal government), as matplotlib ships it (``grace_hopper.jpg``; rebuilt
  only where matplotlib is installed);
- ``figure_*.png``: full-length figures drawn here from a human-parsing label map and 18 body
  keypoints, so their automatic mask (:func:`idm_vton.preprocess.mask.agnostic_mask`, the
  project's mask logic) and a DensePose-style picture (the project's DensePose colouring of the
  drawn body parts) can be computed exactly: ``figure_*_mask.png``, ``figure_*_densepose.png``;
- the garments (``garment.jpg`` t-shirt, ``shirt.jpg``, ``trousers.jpg``, ``skirt.jpg``,
  ``dress.jpg``): drawn here.

The README's pictures (``docs/images/``) are made from these: the inputs, the automatic mask of
each ``--category``, the DensePose-style picture and the tiny model's output. Nothing here runs at
install or test time; the outputs are committed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "src" / "idm_vton" / "examples"
DOCS_IMAGES = REPO / "docs" / "images"

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


# --------------------------------------------------------------------------- more garments
def _garment_canvas() -> tuple[Image.Image, Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", GARMENT_SIZE, "white")
    shape = Image.new("L", GARMENT_SIZE, 0)
    return image, shape, ImageDraw.Draw(shape)


def _scaled(points, size=GARMENT_SIZE):
    return [(x * size[0], y * size[1]) for x, y in points]


def shirt() -> Image.Image:
    """A long-sleeve collared shirt, light blue with a button placket."""
    image, shape, draw = _garment_canvas()
    outline = [
        (0.34, 0.10), (0.44, 0.08), (0.50, 0.14), (0.56, 0.08), (0.66, 0.10), (0.82, 0.20),
        (0.95, 0.78), (0.86, 0.80), (0.74, 0.36), (0.74, 0.92), (0.26, 0.92), (0.26, 0.36),
        (0.14, 0.80), (0.05, 0.78), (0.18, 0.20),
    ]  # fmt: skip
    draw.polygon(_scaled(outline), fill=255)
    fabric = Image.new("RGB", GARMENT_SIZE, (150, 190, 225))
    pen = ImageDraw.Draw(fabric)
    for x in range(0, GARMENT_SIZE[0], 24):  # fine vertical pinstripes
        pen.line([(x, 0), (x, GARMENT_SIZE[1])], fill=(120, 160, 205), width=3)
    image.paste(fabric, mask=shape)
    pen = ImageDraw.Draw(image)
    w, h = GARMENT_SIZE
    pen.line([(0.5 * w, 0.15 * h), (0.5 * w, 0.92 * h)], fill=(90, 120, 160), width=4)
    for k in range(7):
        y = (0.22 + 0.1 * k) * h
        pen.ellipse([0.5 * w - 7, y - 7, 0.5 * w + 7, y + 7], fill="white", outline=(90, 120, 160))
    collar = [(0.44, 0.08), (0.50, 0.15), (0.41, 0.19), (0.38, 0.10)]
    pen.polygon(_scaled(collar), fill=(235, 240, 250), outline=(90, 120, 160))
    pen.polygon(
        _scaled([(1 - x, y) for x, y in collar]), fill=(235, 240, 250), outline=(90, 120, 160)
    )
    return image


def trousers() -> Image.Image:
    """Straight-leg trousers, khaki, with a waistband and a centre crease."""
    image, shape, draw = _garment_canvas()
    outline = [
        (0.28, 0.06), (0.72, 0.06), (0.76, 0.94), (0.56, 0.94), (0.50, 0.30), (0.44, 0.94),
        (0.24, 0.94),
    ]  # fmt: skip
    draw.polygon(_scaled(outline), fill=255)
    image.paste(Image.new("RGB", GARMENT_SIZE, (190, 165, 115)), mask=shape)
    pen = ImageDraw.Draw(image)
    w, h = GARMENT_SIZE
    pen.rectangle([0.28 * w, 0.06 * h, 0.72 * w, 0.11 * h], fill=(160, 135, 90))
    pen.line([(0.36 * w, 0.12 * h), (0.34 * w, 0.93 * h)], fill=(170, 145, 100), width=3)
    pen.line([(0.64 * w, 0.12 * h), (0.66 * w, 0.93 * h)], fill=(170, 145, 100), width=3)
    return image


def skirt() -> Image.Image:
    """A knee-length A-line skirt, green with white polka dots."""
    image, shape, draw = _garment_canvas()
    draw.polygon(_scaled([(0.34, 0.18), (0.66, 0.18), (0.84, 0.80), (0.16, 0.80)]), fill=255)
    fabric = Image.new("RGB", GARMENT_SIZE, (40, 120, 80))
    pen = ImageDraw.Draw(fabric)
    for row, y in enumerate(range(140, 660, 46)):
        for x in range(60 + 23 * (row % 2), 560, 46):
            pen.ellipse([x - 8, y - 8, x + 8, y + 8], fill=(245, 245, 240))
    image.paste(fabric, mask=shape)
    w, h = GARMENT_SIZE
    ImageDraw.Draw(image).rectangle([0.34 * w, 0.16 * h, 0.66 * w, 0.21 * h], fill=(25, 90, 60))
    return image


def dress() -> Image.Image:
    """A sleeveless knee-length dress, red with a gold belt."""
    image, shape, draw = _garment_canvas()
    outline = [
        (0.38, 0.06), (0.44, 0.06), (0.50, 0.13), (0.56, 0.06), (0.62, 0.06), (0.66, 0.30),
        (0.62, 0.42), (0.82, 0.94), (0.18, 0.94), (0.38, 0.42), (0.34, 0.30),
    ]  # fmt: skip
    draw.polygon(_scaled(outline), fill=255)
    image.paste(Image.new("RGB", GARMENT_SIZE, (190, 40, 55)), mask=shape)
    w, h = GARMENT_SIZE
    ImageDraw.Draw(image).rectangle([0.37 * w, 0.40 * h, 0.63 * w, 0.44 * h], fill=GOLD)
    return image


# --------------------------------------------------------------------------- drawn figures
FIGURE_SIZE = (768, 1024)  # (W, H): the 3:4 shape of try-on photos, VITON-HD's size
SKIN, HAIR_COLOUR = (226, 184, 152), (70, 45, 30)


def figure_parts(outfit: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ATR label map (H, W), 18 OpenPose keypoints (x, y), DensePose part map (H, W)) of a
    standing figure facing the viewer, wearing ``outfit``: "tshirt_trousers" or "dress"."""
    from idm_vton.preprocess import mask as labels

    w, h = FIGURE_SIZE
    keypoints = np.array(
        [
            (384, 150), (384, 255), (290, 268), (248, 420), (228, 565), (478, 268),
            (520, 420), (540, 565), (330, 545), (332, 735), (336, 930), (438, 545),
            (436, 735), (432, 930), (362, 135), (406, 135), (338, 148), (430, 148),
        ],
        dtype=np.float32,
    )  # fmt: skip
    parse = Image.new("L", (w, h), labels.BACKGROUND)
    parts = Image.new("L", (w, h), 0)
    p, d = ImageDraw.Draw(parse), ImageDraw.Draw(parts)
    k = [tuple(float(v) for v in point) for point in keypoints]

    def limb(a, b, width, parse_label, part_label):
        p.line([a, b], fill=parse_label, width=width)
        d.line([a, b], fill=part_label, width=width)
        for point in (a, b):
            r = width / 2
            box = [point[0] - r, point[1] - r, point[0] + r, point[1] + r]
            p.ellipse(box, fill=parse_label)
            d.ellipse(box, fill=part_label)

    # Legs (thigh, shin), arms (upper, lower), torso, neck, head: DensePose part indices
    # (1-2 torso, 3-4 hands, 5-6 feet, 7-14 legs, 15-22 arms, 23-24 head).
    limb(k[8], k[9], 92, labels.RIGHT_LEG, 7)
    limb(k[9], k[10], 70, labels.RIGHT_LEG, 11)
    limb(k[11], k[12], 92, labels.LEFT_LEG, 8)
    limb(k[12], k[13], 70, labels.LEFT_LEG, 12)
    limb(k[2], k[3], 58, labels.RIGHT_ARM, 16)
    limb(k[3], k[4], 48, labels.RIGHT_ARM, 20)
    limb(k[5], k[6], 58, labels.LEFT_ARM, 15)
    limb(k[6], k[7], 48, labels.LEFT_ARM, 19)
    torso = [(292, 250), (476, 250), (488, 300), (466, 560), (302, 560), (280, 300)]
    p.polygon(torso, fill=labels.UPPER_CLOTHES)
    d.polygon(torso, fill=2)
    p.rectangle([360, 200, 408, 258], fill=labels.NECK)
    d.rectangle([360, 200, 408, 258], fill=1)
    p.ellipse([322, 62, 446, 222], fill=labels.HEAD)
    d.ellipse([322, 62, 446, 222], fill=23)
    p.chord([318, 54, 450, 200], 180, 360, fill=labels.HAIR)
    for x0, label, part in ((228, labels.RIGHT_ARM, 3), (540, labels.LEFT_ARM, 4)):
        p.ellipse([x0 - 26, 560, x0 + 26, 622], fill=label)
        d.ellipse([x0 - 26, 560, x0 + 26, 622], fill=part)
    for x0, label, part in ((336, labels.RIGHT_SHOE, 6), (432, labels.LEFT_SHOE, 5)):
        p.ellipse([x0 - 44, 925, x0 + 44, 985], fill=label)
        d.ellipse([x0 - 44, 925, x0 + 44, 985], fill=part)
    # Clothes: sleeves and the garments over the body parts.
    if outfit == "tshirt_trousers":
        for a, b in ((k[2], k[3]), (k[5], k[6])):
            mid = (a[0] + 0.45 * (b[0] - a[0]), a[1] + 0.45 * (b[1] - a[1]))
            p.line([a, mid], fill=labels.UPPER_CLOTHES, width=70)
        p.polygon([(278, 540), (490, 540), (496, 930), (390, 930), (384, 640), (378, 930),
                   (272, 930)], fill=labels.PANTS)  # fmt: skip
        p.polygon(torso, fill=labels.UPPER_CLOTHES)
    elif outfit == "dress":
        p.polygon(torso, fill=labels.DRESS)
        p.polygon([(300, 250), (468, 250), (474, 320), (466, 520), (540, 760), (228, 760),
                   (302, 520), (294, 320)], fill=labels.DRESS)  # fmt: skip
        p.chord([300, 40, 468, 420], 180, 360, fill=labels.HAIR)  # long hair behind
        p.ellipse([322, 62, 446, 222], fill=labels.HEAD)
        p.chord([318, 54, 450, 170], 180, 360, fill=labels.HAIR)
    else:
        raise ValueError(outfit)
    return np.asarray(parse), keypoints, np.asarray(parts)


OUTFIT_COLOURS = {
    "tshirt_trousers": {"UPPER_CLOTHES": (236, 196, 80), "PANTS": (55, 75, 120)},
    "dress": {"DRESS": (60, 110, 170)},
}


def figure_photo(parse: np.ndarray, outfit: str) -> Image.Image:
    """The figure's picture: each label in a flat colour with soft shading, on a light wall."""
    from idm_vton.preprocess import mask as labels

    h, w = parse.shape
    wall = np.linspace(236, 214, h, dtype=np.float32)[:, None, None] * np.ones((1, w, 3))
    image = wall * np.array([1.0, 0.98, 0.95])
    colours = {
        labels.HEAD: SKIN, labels.NECK: SKIN, labels.LEFT_ARM: SKIN, labels.RIGHT_ARM: SKIN,
        labels.LEFT_LEG: SKIN, labels.RIGHT_LEG: SKIN, labels.HAIR: HAIR_COLOUR,
        labels.LEFT_SHOE: (40, 40, 45), labels.RIGHT_SHOE: (40, 40, 45),
    }  # fmt: skip
    for name, colour in OUTFIT_COLOURS[outfit].items():
        colours[getattr(labels, name)] = colour
    for label, colour in colours.items():
        image[parse == label] = colour
    # Soft shading so the figure reads as a body: darker towards each region's edges.
    body = (parse != labels.BACKGROUND).astype(np.float32)
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(body)
    shade = 0.78 + 0.22 * np.clip(depth / 18.0, 0, 1)
    image = np.where(body[..., None] > 0, image * shade[..., None], image)
    picture = Image.fromarray(image.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for x in (362, 406):  # eyes and mouth
        draw.ellipse([x - 6, 130, x + 6, 142], fill=(50, 40, 35))
    draw.arc([364, 160, 404, 190], 20, 160, fill=(150, 70, 70), width=4)
    return picture


# --------------------------------------------------------------------------- metadata
def examples_metadata() -> dict:
    nasa = (
        "NASA photograph, public domain; from scikit-image's sample data (skimage.data.astronaut)"
    )
    navy = (
        "official U.S. Navy photograph, public domain (a work of the U.S. federal government); "
        "as shipped in matplotlib's sample data"
    )
    drawn = "drawn by this project (examples/make_examples.py); Apache-2.0 like the code"
    return {
        "people": [
            {"file": "person.jpg", "title": "Eileen Collins (portrait)", "licence": nasa,
             "mask": "mask.png", "pose": "densepose.png"},
            {"file": "figure_tshirt_trousers.png", "title": "drawn figure, t-shirt and trousers",
             "licence": drawn, "mask": "figure_tshirt_trousers_mask.png",
             "pose": "figure_tshirt_trousers_densepose.png"},
            {"file": "figure_dress.png", "title": "drawn figure, dress", "licence": drawn,
             "mask": "figure_dress_mask.png", "pose": "figure_dress_densepose.png"},
            {"file": "person_hopper.jpg", "title": "Grace Hopper (portrait)", "licence": navy},
        ],
        "garments": [
            {"file": "garment.jpg", "category": "upper_body",
             "description": "short sleeve round neck t-shirts", "licence": drawn},
            {"file": "shirt.jpg", "category": "upper_body",
             "description": "long sleeve collared shirts", "licence": drawn},
            {"file": "trousers.jpg", "category": "lower_body",
             "description": "trousers", "licence": drawn},
            {"file": "skirt.jpg", "category": "lower_body",
             "description": "knee length skirts", "licence": drawn},
            {"file": "dress.jpg", "category": "dresses",
             "description": "sleeveless knee length dresses", "licence": drawn},
        ],
    }  # fmt: skip


# --------------------------------------------------------------------------- README pictures
def _labelled(image: Image.Image, text: str, height: int = 360) -> Image.Image:
    from PIL import ImageFont

    image = image.convert("RGB")
    scaled = image.resize((round(image.width * height / image.height), height))
    font = ImageFont.load_default(size=15)
    lines = text.split("\n")
    panel = Image.new("RGB", (max(scaled.width, 200), height + 12 + 20 * len(lines)), "white")
    panel.paste(scaled, ((panel.width - scaled.width) // 2, 0))
    draw = ImageDraw.Draw(panel)
    for n, line in enumerate(lines):
        width = draw.textlength(line, font=font)
        draw.text(((panel.width - width) / 2, height + 6 + 20 * n), line, fill="black", font=font)
    return panel


def _row(panels: list[Image.Image], gap: int = 12) -> Image.Image:
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    row = Image.new("RGB", (width, max(p.height for p in panels)), "white")
    x = 0
    for panel in panels:
        row.paste(panel, (x, 0))
        x += panel.width + gap
    return row


def _overlay(photo: Image.Image, mask: np.ndarray) -> Image.Image:
    """The photo with the mask in translucent red: what the try-on re-generates."""
    picture = np.asarray(photo.convert("RGB")).astype(np.float32)
    red = np.array([230.0, 30.0, 30.0])
    picture[mask] = 0.45 * picture[mask] + 0.55 * red
    return Image.fromarray(picture.astype(np.uint8))


def readme_pictures(photo, parse, keypoints, pose) -> None:
    """``docs/images/categories.png`` (the automatic mask of each --category) and
    ``docs/images/first_run.png`` (a tiny-model run, each picture labelled)."""
    import torch

    from idm_vton import TryOnPipeline
    from idm_vton.preprocess.mask import agnostic_mask

    DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
    panels = [_labelled(photo, "drawn figure (input)")]
    for category in ("upper_body", "lower_body", "dresses"):
        mask = agnostic_mask(parse, keypoints, category, "hd")
        panels.append(
            _labelled(_overlay(photo, mask), f"--category {category}\n(red: re-generated)")
        )
    _row(panels).save(DOCS_IMAGES / "categories.png", optimize=True)

    mask = agnostic_mask(parse, keypoints, "upper_body", "hd")
    garment_image = Image.open(HERE / "garment.jpg")
    pipe = TryOnPipeline.from_pretrained("tiny")
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        photo, garment_image, Image.fromarray(mask.astype(np.uint8) * 255), pose,
        num_inference_steps=30, generator=torch.Generator().manual_seed(42),
    ).images[0]  # fmt: skip
    _row(
        [
            _labelled(photo, "person (input,\ndrawn by this project)"),
            _labelled(garment_image, "garment (input,\ndrawn by this project)"),
            _labelled(
                _overlay(photo, mask), "automatic mask, upper_body\n(the project's mask logic)"
            ),
            _labelled(pose, "DensePose-style picture\n(the project's colouring)"),
            _labelled(out, "--model tiny output: random\nweights, noise in the mask"),
        ]
    ).save(DOCS_IMAGES / "first_run.png", optimize=True)


def main() -> None:
    import json

    import skimage

    from idm_vton.preprocess.densepose.render import part_labels_to_rgb
    from idm_vton.preprocess.mask import agnostic_mask

    HERE.mkdir(parents=True, exist_ok=True)
    source = Path(skimage.__file__).parent / "data" / "astronaut.png"
    Image.open(source).convert("RGB").save(HERE / "person.jpg", quality=92)
    try:
        from matplotlib import cbook

        hopper = Image.open(cbook.get_sample_data("grace_hopper.jpg"))
        hopper.convert("RGB").save(HERE / "person_hopper.jpg", quality=92)
    except ImportError:
        print("matplotlib is not installed: person_hopper.jpg kept as it is")
    garment().save(HERE / "garment.jpg", quality=92)
    for name, draw in (
        ("shirt", shirt),
        ("trousers", trousers),
        ("skirt", skirt),
        ("dress", dress),
    ):
        draw().save(HERE / f"{name}.jpg", quality=92)
    mask().save(HERE / "mask.png")
    densepose().save(HERE / "densepose.png")
    figures = {}
    for outfit in OUTFIT_COLOURS:
        parse, keypoints, parts = figure_parts(outfit)
        photo = figure_photo(parse, outfit)
        photo.save(HERE / f"figure_{outfit}.png", optimize=True)
        category = "dresses" if outfit == "dress" else "upper_body"
        figure_mask = agnostic_mask(parse, keypoints, category, "hd")
        Image.fromarray(figure_mask.astype(np.uint8) * 255).save(HERE / f"figure_{outfit}_mask.png")
        # The demo's DensePose pictures are black outside the body.
        pose = Image.fromarray(part_labels_to_rgb(parts) * (parts[..., None] > 0).astype(np.uint8))
        pose.save(HERE / f"figure_{outfit}_densepose.png", optimize=True)
        figures[outfit] = (photo, parse, keypoints, pose)
    (HERE / "examples.json").write_text(json.dumps(examples_metadata(), indent=2) + "\n")
    readme_pictures(*figures["tshirt_trousers"])
    print(f"wrote the examples in {HERE} and the README's pictures in {DOCS_IMAGES}")


if __name__ == "__main__":
    main()
