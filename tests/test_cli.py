"""``idm-vton`` end to end with the tiny model on the repository's example photos."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
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
    printed = capsys.readouterr()
    # The CLI says the tiny model's output is noise, on stdout: stderr is kept for errors.
    assert "noise" in printed.out and "noise" not in printed.err
    result = np.asarray(Image.open(out))
    photo = np.asarray(Image.open(inputs["person"]).convert("RGB"))
    mask = np.asarray(Image.open(inputs["mask"])) >= 128
    assert result.shape == photo.shape
    assert np.array_equal(result[~mask], photo[~mask])
    assert (result[mask] != photo[mask]).mean() > 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["result.png"]  # no temporary files left


def test_tryon_draws_no_progress_bar_where_stderr_is_not_a_terminal(inputs, tmp_path, capsys):
    """stderr is kept for errors where it is a log or a pipe: the denoising bar is off there."""
    assert main(tryon_args(inputs, tmp_path / "result.png")) == 0
    assert capsys.readouterr().err == ""


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
        ({"--steps": "0"}, "steps must be from 1 to 1000"),
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
    from idm_vton.pipelines.loading import tiny_pipeline

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
    in_process = tmp_path / "in_process.png"
    assert main(tryon_args(inputs, in_process)) == 0
    expected = np.asarray(Image.open(in_process)).astype(int)
    for i, command in enumerate(commands):
        out = tmp_path / f"o{i}.png"
        run = subprocess.run(
            command + tryon_args(inputs, out), capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, run.stderr
        assert f"wrote {out}" in run.stdout
        # The same command as the in-process main (up to float rounding across thread counts).
        assert np.abs(np.asarray(Image.open(out)).astype(int) - expected).max() <= 1
    run = subprocess.run(
        [sys.executable, "-m", "idm_vton", "tryon", "--model", "tiny"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2 and "required" in run.stderr


def test_convert_command(tmp_path, capsys):
    from idm_vton.pipelines.loading import tiny_pipeline

    from .helpers.checkpoints import write_published_checkpoint

    src = write_published_checkpoint(tiny_pipeline(), tmp_path / "published", fmt="bin")
    assert main(["convert", str(src), str(tmp_path / "out"), "--dtype", "bf16"]) == 0
    assert (tmp_path / "out" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert main(["convert", str(src), str(tmp_path / "out")]) == 2
    assert "already exists" in capsys.readouterr().err


def _render(inputs, out, *flags: str, model: str = "tiny") -> np.ndarray:
    """Run ``idm-vton tryon`` (raw H x W render) and return the image as an int array."""
    args = tryon_args(inputs, out, **{"--model": model}) + ["--no-paste-back", *flags]
    assert main(args) == 0
    return np.asarray(Image.open(out)).astype(int)


def test_two_phase_and_vae_slicing_are_exact(inputs, tmp_path):
    default = _render(inputs, tmp_path / "a.png")
    assert np.array_equal(
        _render(inputs, tmp_path / "b.png", "--two-phase", "--vae-slicing"), default
    )


def test_fp8_weights_equal_a_model_with_fp8_rounded_unet_weights(inputs, tmp_path):
    from idm_vton.pipelines.loading import tiny_pipeline

    # The same tiny model with every convolution and linear weight and bias of both UNets rounded
    # to fp8 (e4m3) up front, computing in fp32 (norm layers carry no such weights).
    pipe = tiny_pipeline()
    rounded = 0
    for unet in (pipe.unet, pipe.garment_unet):
        for module in unet.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                for parameter in module.parameters(recurse=False):
                    parameter.data = parameter.data.to(torch.float8_e4m3fn).to(torch.float32)
                    rounded += 1
    assert rounded > 100
    pipe.save_pretrained(tmp_path / "rounded")

    default = _render(inputs, tmp_path / "default.png")
    fp8 = _render(inputs, tmp_path / "fp8.png", "--fp8-weights")
    expected = _render(inputs, tmp_path / "expected.png", model=str(tmp_path / "rounded"))
    assert np.abs(fp8 - expected).max() <= 1  # the same weights: equal up to float rounding
    assert np.abs(fp8 - default).max() > 8 and (fp8 != default).mean() > 0.1


@pytest.fixture
def vae_inputs(monkeypatch) -> dict[str, list[tuple[int, int]]]:
    """Record the (H, W) of every VAE encoder and decoder input of the next ``tryon`` run."""
    import idm_vton.pipelines.memory as memory

    seen: dict[str, list[tuple[int, int]]] = {"encoder": [], "decoder": []}
    apply_memory_options = memory.apply_memory_options

    def apply_and_record(pipe, options, device=None):
        pipe = apply_memory_options(pipe, options, device)
        for part, sizes in seen.items():
            getattr(pipe.vae, part).register_forward_pre_hook(
                lambda module, args, sizes=sizes: sizes.append(tuple(args[0].shape[-2:]))
            )
        return pipe

    monkeypatch.setattr(memory, "apply_memory_options", apply_and_record)
    return seen


def test_vae_tiling_runs_the_vae_on_tiles_of_the_given_size(inputs, tmp_path, vae_inputs):
    def render(name: str, *flags: str) -> np.ndarray:
        for sizes in vae_inputs.values():
            sizes.clear()
        return _render(inputs, tmp_path / name, *flags)

    # Untiled, the VAE encodes the 64 x 48 person, pose and garment and decodes an 8 x 6 latent.
    default = render("default.png")
    whole = {"encoder": [(64, 48)] * 3, "decoder": [(8, 6)]}
    assert vae_inputs == whole
    # A tile as large as the image (and the 512 px default) changes nothing.
    for flags in (("--vae-tile-size", "64"), ()):
        assert np.array_equal(render("same.png", "--vae-tiling", *flags), default)
        assert vae_inputs == whole
    # 32 px tiles overlapping by a quarter (a 24 px stride) cover each 64 x 48 image in 3 x 2
    # tiles, and 4-latent tiles with a stride of 3 cover the 8 x 6 latent the same way.
    tiled = render("tiled.png", "--vae-tiling", "--vae-tile-size", "32")
    rows, cols = (32, 32, 16), (32, 24)
    assert sorted(vae_inputs["encoder"]) == sorted([(h, w) for h in rows for w in cols] * 3)
    assert sorted(vae_inputs["decoder"]) == sorted([(h, w) for h in (4, 4, 2) for w in (4, 3)])
    assert not np.array_equal(tiled, default)  # tiles are encoded and decoded apart
