"""Tests of ``idm-vton infer-dataset``: one image per pair, resumable, independent of batch size
and of the number of processes, on synthetic VITON-HD and DressCode folders and the tiny model."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from idm_vton.commands.main import main
from idm_vton.evaluation.infer_dataset import sample_seed, shard
from idm_vton.pipelines.tryon import TryOnPipeline

H, W = 64, 48  # work size
FILE_H, FILE_W = 80, 60  # files on disk (same 3:4 aspect), so the dataset resizes
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ synthetic data


def _noise(rng: np.random.Generator) -> Image.Image:
    """A smooth random colour picture (upsampled noise), different for every file."""
    small = rng.integers(0, 256, size=(FILE_H // 10, FILE_W // 10, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((FILE_W, FILE_H), Image.Resampling.BICUBIC)


def _mask(rng: np.random.Generator) -> Image.Image:
    mask = np.zeros((FILE_H, FILE_W), dtype=np.uint8)
    top, left = rng.integers(5, 25), rng.integers(5, 20)
    mask[top : top + 40, left : left + 30] = 255
    return Image.fromarray(mask, mode="L")


def write_vitonhd(root: Path, n: int = 4) -> dict[str, list[str]]:
    """VITON-HD test split with n people; unpaired garment of person i is garment (i + 1) % n.

    Returns the expected output names per pairing (written out here, not by the code under test).
    """
    rng = np.random.default_rng(0)
    names = [f"{i:05d}_00" for i in range(n)]
    phase = root / "test"
    for folder in ("image", "cloth", "agnostic-mask", "image-densepose"):
        (phase / folder).mkdir(parents=True)
    for name in names:
        _noise(rng).save(phase / "image" / f"{name}.jpg", quality=95)
        _noise(rng).save(phase / "cloth" / f"{name}.jpg", quality=95)
        _mask(rng).save(phase / "agnostic-mask" / f"{name}_mask.png")
        _noise(rng).save(phase / "image-densepose" / f"{name}.jpg", quality=95)
    (root / "test_pairs.txt").write_text(
        "".join(f"{a}.jpg {names[(i + 1) % n]}.jpg\n" for i, a in enumerate(names))
    )
    tags = {
        "data": [
            {
                "file_name": f"{names[0]}.jpg",
                "tag_info": [{"tag_name": "item", "tag_category": "T-shirts"}],
            }
        ]
    }
    (phase / "vitonhd_test_tagged.json").write_text(json.dumps(tags))
    return {
        "paired": [f"{a}_{a}.png" for a in names],
        "unpaired": [f"{a}_{names[(i + 1) % n]}.png" for i, a in enumerate(names)],
    }


DC_IDS = {
    "upper_body": ["000001", "000002", "000003"],
    "lower_body": ["010001"],
    "dresses": ["020001"],
}


def write_dresscode(root: Path) -> dict[str, list[str]]:
    """DressCode test split, three categories; unpaired = next person's garment in the category."""
    rng = np.random.default_rng(1)
    expected = {"paired": [], "unpaired": []}
    for cat, ids in DC_IDS.items():
        folder = root / cat
        for sub in ("images", "image-densepose", "agnostic_masks"):
            (folder / sub).mkdir(parents=True)
        for k in ids:
            _noise(rng).save(folder / "images" / f"{k}_0.jpg", quality=95)
            _noise(rng).save(folder / "images" / f"{k}_1.jpg", quality=95)
            _noise(rng).save(folder / "image-densepose" / f"{k}_0.jpg", quality=95)
            _mask(rng).save(folder / "agnostic_masks" / f"{k}_0.png")
        others = [ids[(j + 1) % len(ids)] for j in range(len(ids))]
        (folder / "test_pairs_paired.txt").write_text(
            "".join(f"{k}_0.jpg {k}_1.jpg\n" for k in ids)
        )
        (folder / "test_pairs_unpaired.txt").write_text(
            "".join(f"{k}_0.jpg {o}_1.jpg\n" for k, o in zip(ids, others, strict=True))
        )
        (folder / "dc_caption.txt").write_text(f"{ids[0]}_1.jpg long sleeve {cat}\n")
        expected["paired"] += [f"{k}_0_{k}_1.png" for k in ids]
        expected["unpaired"] += [f"{k}_0_{o}_1.png" for k, o in zip(ids, others, strict=True)]
    return expected


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, tuple[Path, dict[str, list[str]]]]:
    root = tmp_path_factory.mktemp("data")
    return {
        "vitonhd": (root / "vitonhd", write_vitonhd(root / "vitonhd")),
        "dresscode": (root / "dresscode", write_dresscode(root / "dresscode")),
    }


# ------------------------------------------------------------------------------ running it


def _args(
    data: Path, kind: str, out: Path, *extra: str, pairing: str = "paired", device: bool = True
) -> list[str]:
    return [
        "infer-dataset",
        "--model",
        "tiny",
        "--data",
        str(data),
        "--dataset",
        kind,
        "--pairing",
        pairing,
        "--out",
        str(out),
        "--steps",
        "2",
        "--height",
        str(H),
        "--width",
        str(W),
        "--seed",
        "7",
        "--num-workers",
        "0",
        *(["--device", "cpu"] if device else []),
        "--no-progress",
        *extra,
    ]


class Calls:
    """Counts pipeline calls and the rows they rendered; optionally interrupts the n-th call."""

    def __init__(self, interrupt_at: int | None = None):
        self.calls = 0
        self.rows = 0
        self.models_loaded = 0
        self.interrupt_at = interrupt_at


@contextlib.contextmanager
def counting(interrupt_at: int | None = None):
    import idm_vton.pipelines.loading

    calls = Calls(interrupt_at)
    original_call = TryOnPipeline.__call__
    original_tiny = idm_vton.pipelines.loading.tiny_pipeline

    def call(self, *args, **kwargs):
        calls.calls += 1
        if calls.calls == calls.interrupt_at:
            raise KeyboardInterrupt
        calls.rows += kwargs["person_image"].shape[0]
        return original_call(self, *args, **kwargs)

    def tiny(*args, **kwargs):
        calls.models_loaded += 1
        return original_tiny(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TryOnPipeline, "__call__", call)
        mp.setattr(idm_vton.pipelines.loading, "tiny_pipeline", tiny)
        yield calls


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


@pytest.fixture(scope="module")
def reference(datasets, tmp_path_factory) -> dict[str, Path]:
    """One uninterrupted run per layout (batch size 1, paired): the images every test compares to."""
    # One compute thread, as the tests that compare to these images run (conftest); restored
    # after, since this module-scoped fixture runs outside the per-test thread fixture.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outs = {}
        for kind, (data, _) in datasets.items():
            out = tmp_path_factory.mktemp(f"ref_{kind}")
            assert main(_args(data, kind, out, "--batch-size", "1")) == 0
            outs[kind] = out
    finally:
        torch.set_num_threads(previous)
    return outs


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("kind", ["vitonhd", "dresscode"])
def test_one_image_per_pair_then_nothing_left_to_do(kind, datasets, reference, tmp_path):
    data, expected = datasets[kind]
    ref = reference[kind]
    images = _pixels(ref)
    assert sorted(images) == sorted(expected["paired"])
    assert sorted(p.name for p in ref.iterdir()) == sorted([*expected["paired"], "manifest.json"])
    for image in images.values():
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
    # Different samples get different seeds and inputs, so no two images are alike.
    arrays = list(images.values())
    assert all(
        np.abs(a.astype(int) - b.astype(int)).max() > 10
        for i, a in enumerate(arrays)
        for b in arrays[i + 1 :]
    )
    manifest = json.loads((ref / "manifest.json").read_text())
    assert manifest["count"] == manifest["total"] == len(expected["paired"])
    assert manifest["complete"] is True
    assert (manifest["model"], manifest["steps"], manifest["seed"]) == ("tiny", 2, 7)
    assert (manifest["height"], manifest["width"], manifest["guidance"]) == (H, W, 2.0)
    assert (manifest["dataset"], manifest["split"], manifest["pairing"]) == (kind, "test", "paired")
    assert manifest["paste_back"] is False

    # A second run into the same folder: no model load, no pipeline call, files untouched.
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with counting() as calls:
        assert main(_args(data, kind, out, "--batch-size", "1")) == 0
    assert (calls.calls, calls.models_loaded) == (0, 0)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == {
        k: v for k, v in stamps.items() if k.endswith(".png")
    }


def test_unpaired_uses_the_other_garment(datasets, reference, tmp_path):
    data, expected = datasets["vitonhd"]
    out = tmp_path / "unpaired"
    with counting() as calls:
        assert main(_args(data, "vitonhd", out, "--batch-size", "2", pairing="unpaired")) == 0
    assert sorted(_pixels(out)) == sorted(expected["unpaired"])
    assert calls.rows == len(expected["unpaired"])
    # Same people, other garments: the renders differ from the paired ones.
    paired = _pixels(reference["vitonhd"])
    for name, image in _pixels(out).items():
        person = name[:8]
        assert not np.array_equal(image, paired[f"{person}_{person}.png"])


@pytest.mark.parametrize("kind", ["vitonhd", "dresscode"])
def test_batch_size_does_not_change_the_images(kind, datasets, reference, tmp_path):
    data, expected = datasets[kind]
    out = tmp_path / "b3"
    with counting() as calls:
        assert main(_args(data, kind, out, "--batch-size", "3")) == 0
    n = len(expected["paired"])
    assert calls.calls == -(-n // 3) and calls.rows == n  # really batched
    ref, got = _pixels(reference[kind]), _pixels(out)
    assert sorted(got) == sorted(ref)
    # Same noise, same inputs: the same images, up to batched kernels rounding differently
    # (~1e-6 in the float render), which can flip a rare pixel by one 8-bit level. A wrong seed,
    # a shared generator or a mixed-up garment changes nearly every pixel.
    for name in ref:
        diff = np.abs(got[name].astype(int) - ref[name].astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, name


@pytest.mark.parametrize("kind", ["vitonhd", "dresscode"])
def test_interrupted_run_resumes_to_the_same_images(kind, datasets, reference, tmp_path):
    data, expected = datasets[kind]
    n = len(expected["paired"])
    out = tmp_path / "out"
    with counting(interrupt_at=3) as calls:
        assert main(_args(data, kind, out, "--batch-size", "1")) == 130  # KeyboardInterrupt
    done = sorted(_pixels(out))
    assert len(done) == 2 and calls.rows == 2
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    # What a killed process can leave behind: a damaged output and its temporary file (named
    # as idm_vton.files names them, with the pid of a process that has ended).
    (out / done[0]).write_bytes((out / done[0]).read_bytes()[:-20])
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    (out / f".{done[1]}.idm-vton-{ended.pid}-0123abcd.tmp").write_bytes(b"partial")

    with counting() as calls:
        assert main(_args(data, kind, out, "--batch-size", "1")) == 0
    assert calls.rows == n - 1  # everything but the one intact image
    assert _bytes(out) == _bytes(reference[kind])
    assert sorted(p.name for p in out.iterdir()) == sorted([*expected["paired"], "manifest.json"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == n and manifest["complete"] is True


def test_resuming_with_another_protocol_is_refused(datasets, reference, tmp_path, capsys):
    data, _ = datasets["vitonhd"]
    out = tmp_path / "out"
    shutil.copytree(reference["vitonhd"], out)
    before = _bytes(out)
    with counting() as calls:
        assert main(_args(data, "vitonhd", out, "--steps", "3")) == 2
    assert "steps 2 -> 3" in capsys.readouterr().err
    assert calls.models_loaded == 0 and _bytes(out) == before


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_shards_cover_every_item_once_in_whole_batches(chunk):
    items = list(range(11))
    batches = [items[k : k + chunk] for k in range(0, len(items), chunk)]
    for count in (1, 2, 3, 4, 16):
        parts = [shard(items, i, count, chunk) for i in range(count)]
        assert sorted(x for p in parts for x in p) == items
        # Each process's batches are whole batches of the one-process run, dealt round robin.
        for i, part in enumerate(parts):
            assert [part[k : k + chunk] for k in range(0, len(part), chunk)] == batches[i::count]
    with pytest.raises(ValueError):
        shard(items, 2, 2)


def test_sample_seed_depends_on_seed_and_name_only():
    assert sample_seed(7, "a_b") == sample_seed(7, "a_b")
    assert len({sample_seed(7, "a_b"), sample_seed(8, "a_b"), sample_seed(7, "a_c")}) == 3
    assert 0 <= sample_seed(7, "a_b") < 2**63


def test_two_processes_write_the_same_files_as_one(datasets, tmp_path):
    data, expected = datasets["dresscode"]
    n = len(expected["paired"])  # 5: batches of 2 are [0 1] [2 3] [4], dealt 0 1 0
    one = tmp_path / "one"
    assert main(_args(data, "dresscode", one, "--batch-size", "2")) == 0
    two = tmp_path / "two"
    # One compute thread per process in both runs (the kernels then round alike); no GPU. With
    # --cpu, accelerate's launcher starts a single process (several only through mpirun), so the
    # two CPU processes come from the multi-process launcher on a machine without visible GPUs.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": str(REPO / "src"),
    }
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--main_process_port",
        str(_free_port()),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "idm_vton",
        *_args(data, "dresscode", two, "--batch-size", "2", device=False),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    # Both processes worked and between them rendered every pair exactly once.
    counts = {
        line.split()[1]: int(line.split()[3])
        for line in done.stdout.splitlines()
        if line.startswith("process ")
    }
    assert counts == {"0/2": 3, "1/2": 2}, done.stdout
    assert sorted(_bytes(two)) == sorted(expected["paired"])
    assert _bytes(two) == _bytes(one)
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["count"] == n and manifest["complete"] is True
