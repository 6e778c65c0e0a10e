"""``idm-vton`` end to end with the tiny model on the repository's example photos."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from idm_vton.commands.main import main

from .conftest import EXAMPLES, example_person


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    odd = example_person().crop((31, 17, 31 + 417, 17 + 471))  # odd size, not 3:4
    odd.save(root / "odd.jpg", quality=95)
    mask = np.zeros((471, 417), np.uint8)
    mask[180:420, 60:330] = 255
    Image.fromarray(mask).save(root / "odd_mask.png")
    Image.fromarray(mask[::2, ::2]).save(root / "half_mask.png")  # another size: resized
    Image.new("L", (417, 471), 0).save(root / "empty_mask.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    garment = Image.open(EXAMPLES / "garment.jpg").convert("RGB")
    square = Image.new("RGB", (800, 800), "white")  # not every garment photo is 3:4
    square.paste(garment, (100, 0))
    square.save(root / "square_garment.jpg", quality=95)
    return {
        "root": root,
        "person": str(root / "odd.jpg"),
        "garment": str(root / "square_garment.jpg"),
        "mask": str(root / "odd_mask.png"),
        "pose": str(EXAMPLES / "densepose.png"),  # another size than the photo: resized
    }


def tryon_args(inputs, out, **override):
    args = {
        "--model": "tiny",
        "--person": inputs["person"],
        "--garment": inputs["garment"],
        "--mask": inputs["mask"],
        "--pose": inputs["pose"],
        "--description": "short sleeve round neck t-shirts",
        "--out": str(out),
        "--steps": "2",
        "--height": "64",
        "--width": "48",
        "--device": "cpu",
    }
    args.update(override)
    return ["tryon"] + [x for kv in args.items() for x in kv]


def test_tryon_end_to_end_keeps_the_photo(inputs, tmp_path, capsys):
    out = tmp_path / "result.png"
    assert main(tryon_args(inputs, out)) == 0
    err = capsys.readouterr().err
    assert "noise" in err  # the CLI says the tiny model's output is noise
    result = np.asarray(Image.open(out))
    photo = np.asarray(Image.open(inputs["person"]).convert("RGB"))
    mask = np.asarray(Image.open(inputs["mask"])) >= 128
    assert result.shape == photo.shape
    assert np.array_equal(result[~mask], photo[~mask])
    assert (result[mask] != photo[mask]).mean() > 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["result.png"]  # no temporary files left


def test_tryon_raw_render_and_resized_mask(inputs, tmp_path):
    out = tmp_path / "raw.jpg"
    args = tryon_args(inputs, out, **{"--mask": str(inputs["root"] / "half_mask.png")}) + [
        "--no-paste-back"
    ]
    assert main(args) == 0
    assert Image.open(out).size == (48, 64)


def test_same_seed_same_image(inputs, tmp_path):
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    assert main(tryon_args(inputs, a, **{"--seed": "3"})) == 0
    assert main(tryon_args(inputs, b, **{"--seed": "3"})) == 0
    assert main(tryon_args(inputs, c, **{"--seed": "4"})) == 0
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(c)))


@pytest.mark.parametrize(
    "override,message",
    [
        ({"--person": "BROKEN"}, "not a readable image"),
        ({"--person": "/does/not/exist.jpg"}, "file not found"),
        ({"--mask": "EMPTY"}, "empty"),
        ({"--device": "gpu7"}, "unknown device"),
        ({"--device": "cuda"}, "CUDA is not available"),
        ({"--dtype": "fp8"}, "unknown dtype"),
        ({"--dtype": "fp16"}, "fp16 is not supported on the CPU"),
        ({"--steps": "0"}, "--steps must be >= 1"),
        ({"--height": "63"}, "multiple of 8"),
        ({"--model": "/no/such/folder"}, "not found"),
        ({"--out": "OUT.txt"}, "--out must end in"),
    ],
)
def test_bad_input_is_one_line_exit_2_no_output(inputs, tmp_path, capsys, override, message):
    override = {
        k: {
            "BROKEN": str(inputs["root"] / "broken.jpg"),
            "EMPTY": str(inputs["root"] / "empty_mask.png"),
            "OUT.txt": str(tmp_path / "out.txt"),
        }.get(v, v)
        for k, v in override.items()
    }
    out = tmp_path / "out.png"
    code = main(tryon_args(inputs, out, **override))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err and message in err[-1] and err[-1].startswith("idm-vton tryon: error:")
    assert "Traceback" not in "\n".join(err)
    assert list(tmp_path.iterdir()) == []


def test_placeholder_checkpoint_is_explained(inputs, tmp_path, capsys):
    from idm_vton.testing.tiny import tiny_pipeline

    tiny_pipeline().save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "unet" / "diffusion_pytorch_model.safetensors").write_text(
        "Put the weights here\n"
    )
    code = main(tryon_args(inputs, tmp_path / "out.png", **{"--model": str(tmp_path / "ckpt")}))
    assert code == 2
    assert "placeholder" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


def test_console_script_and_module_entry_points(inputs, tmp_path):
    exe = shutil.which("idm-vton")
    commands = [[sys.executable, "-m", "idm_vton"]] + ([[exe]] if exe else [])
    for i, command in enumerate(commands):
        out = tmp_path / f"o{i}.png"
        run = subprocess.run(
            command + tryon_args(inputs, out), capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, run.stderr
        assert out.is_file()
    run = subprocess.run(
        [sys.executable, "-m", "idm_vton", "tryon", "--model", "tiny"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2 and "required" in run.stderr


def test_convert_command(tmp_path, capsys):
    from idm_vton.testing.tiny import tiny_pipeline

    from .helpers.checkpoints import write_published_checkpoint

    src = write_published_checkpoint(tiny_pipeline(), tmp_path / "published", fmt="bin")
    assert main(["convert", str(src), str(tmp_path / "out"), "--dtype", "bf16"]) == 0
    assert (tmp_path / "out" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert main(["convert", str(src), str(tmp_path / "out")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_memory_flags(inputs, tmp_path):
    default, two_phase, light = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    assert main(tryon_args(inputs, default)) == 0
    assert main(tryon_args(inputs, two_phase) + ["--two-phase", "--vae-slicing"]) == 0
    assert np.array_equal(np.asarray(Image.open(default)), np.asarray(Image.open(two_phase)))
    assert (
        main(tryon_args(inputs, light) + ["--fp8-weights", "--vae-tiling", "--vae-tile-size", "32"])
        == 0
    )
    assert Image.open(light).size == Image.open(default).size
