"""Sizes are bounded before anything is allocated: each case runs in a child process under an
address-space limit (``RLIMIT_AS``), so a regression fails with a one-line error or a crash
instead of swapping the machine.

The limit is the footprint of an ordinary tiny try-on plus :data:`HEADROOM`; the first test
checks that an ordinary run passes under it, so a refusal below is the code's, not the limit's.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ..conftest import EXAMPLES
from .conftest import assert_user_error, cli_subprocess, files_under

GIB = 1 << 30
# Address space of `python -m idm_vton tryon --model tiny` on the examples: about 1.4 GiB of
# mappings (torch, diffusers, transformers and their libraries); the cases below asked for 10 to
# 468 GB before they were bounded.
BASELINE = 2 * GIB
HEADROOM = 2 * GIB
LIMIT = BASELINE + HEADROOM
# Fewer allocator arenas and threads: each reserves address space without using memory.
ENV = {"MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
FAST = ("--model", "tiny", "--height", "64", "--width", "48", "--steps", "1", "--device", "cpu")


def tryon(tmp_path, person, mask, model: str = "tiny"):
    out = tmp_path / "out" / "result.png"
    fast = list(FAST)
    fast[1] = model
    result = cli_subprocess(
        "tryon",
        *fast,
        "--person",
        person,
        "--garment",
        EXAMPLES / "garment.jpg",
        "--mask",
        mask,
        "--pose",
        person,
        "--out",
        out,
        memory_limit_bytes=LIMIT,
        env=ENV,
    )
    return result, out


def test_an_ordinary_run_fits_under_the_limit(tmp_path):
    result, out = tryon(tmp_path, EXAMPLES / "person.jpg", EXAMPLES / "mask.png")
    assert result.code == 0, result.stderr
    assert out.is_file()


def test_a_photo_100000_by_10_is_refused_from_its_header(tmp_path):
    Image.new("RGB", (100_000, 10), (128, 128, 128)).save(tmp_path / "strip.png")
    Image.new("L", (100_000, 10), 255).save(tmp_path / "strip_mask.png")
    result, _ = tryon(tmp_path, tmp_path / "strip.png", tmp_path / "strip_mask.png")
    assert_user_error(result, "tryon", "strip.png", "100000x10", "aspect")
    assert not files_under(tmp_path / "out")


def test_a_mask_across_a_wide_photo_renders_in_bounded_memory(tmp_path):
    """A 16:1 photo is accepted; a mask across its width needs a 3:4 region of 19200 x 25600
    pixels (25 times the photo). It is rendered, and only the masked pixels change."""
    w, h = 16_000, 1_000
    rng = np.random.default_rng(0)
    photo = np.repeat(rng.integers(0, 256, (h, 1, 3), dtype=np.uint8), w, axis=1)
    Image.fromarray(photo).save(tmp_path / "wide.png")
    marked = np.zeros((h, w), bool)
    marked[300:700, 50 : w - 50] = True
    Image.fromarray(marked).save(tmp_path / "wide_mask.png")
    result, out = tryon(tmp_path, tmp_path / "wide.png", tmp_path / "wide_mask.png")
    assert result.code == 0, result.stderr
    rendered = np.asarray(Image.open(out))
    assert rendered.shape == photo.shape
    assert np.array_equal(rendered[~marked], photo[~marked])
    assert (rendered[marked] != photo[marked]).any(axis=-1).mean() > 0.5


def test_evaluate_resolution_30000_by_30000_is_refused(tmp_path):
    for name in ("pred", "gt"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (40, 48), (10, 20, 30)).save(tmp_path / name / "00001_00.png")
    result = cli_subprocess(
        "evaluate",
        tmp_path / "pred",
        tmp_path / "gt",
        "--metrics",
        "ssim",
        "--resolution",
        "30000x30000",
        "--no-progress",
        memory_limit_bytes=LIMIT,
        env=ENV,
    )
    assert_user_error(result, "evaluate", "resolution", "30000x30000")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from idm_vton.pipelines.loading import tiny_pipeline

    root = tmp_path_factory.mktemp("checkpoint") / "tiny"
    tiny_pipeline().save_pretrained(root)
    return root


@pytest.mark.parametrize(
    "component, change, fragments",
    [
        ("unet", {"block_out_channels": [320_000, 480_000]}, ("unet", "block_out_channels")),
        ("garment_unet", {"layers_per_block": 10**7}, ("garment_unet", "layers")),
        ("vae", {"block_out_channels": [16, 32, 32, 2_000_000]}, ("vae", "billion")),
    ],
    ids=["unet-width", "garmentnet-depth", "vae-width"],
)
def test_absurd_model_configs_are_refused_before_building(
    tmp_path, tiny_checkpoint, component, change, fragments
):
    import shutil

    root = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, root)
    config_path = root / component / "config.json"
    config = json.loads(config_path.read_text())
    config.update(change)
    config_path.write_text(json.dumps(config))
    result, _ = tryon(tmp_path, EXAMPLES / "person.jpg", EXAMPLES / "mask.png", model=str(root))
    assert_user_error(result, "tryon", "config.json", *fragments)
    assert not files_under(tmp_path / "out")
