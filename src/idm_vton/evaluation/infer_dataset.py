"""Batch try-on over a dataset's test split (SPEC section 7, paper Sec. 4): ``idm-vton infer-dataset``.

Every sample of a VITON-HD or DressCode split (:mod:`idm_vton.data.datasets`, no augmentation) is
rendered with the dataset's own mask, DensePose image and caption, and written to
``{out}/{person stem}_{garment stem}.png``. The run is

* **deterministic per sample**: sample ``k`` draws all its noise from its own
  ``torch.Generator`` seeded with :func:`sample_seed` (a SHA-256 of the base seed and the output
  name), and every batch row gets its own garment entry and generator, so an image does not depend
  on which other samples share its batch. (Batched kernels round differently, by ~1e-6: across
  batch sizes a rare pixel can differ by one 8-bit level. At a fixed batch size the files are
  bit-identical whatever the number of processes, see :func:`shard`.);
* **resumable**: an output that exists and is a valid PNG of the work size is not redone, a run
  with nothing left to do does not even load the model, and images are written atomically
  (:func:`idm_vton.pipelines.image_processor.save_image_atomic`), so an interrupted run leaves only whole images;
* **distributed**: under ``accelerate launch -m idm_vton infer-dataset ...`` the pending samples
  (in dataset order) are cut into batches that are dealt round robin to the processes by
  :func:`shard`; every process lists the same pending samples before anyone writes, so there are
  no duplicates and no gaps. No gradients, so no synchronisation beyond two barriers.

Launching several processes: ``accelerate launch --multi_gpu --num_processes 4 -m idm_vton
infer-dataset ...`` (one process per GPU; leave ``--device`` unset). CPU processes: accelerate's
``--cpu`` launcher starts a single process unless given an ``--mpirun_hostfile``; use
``torchrun --nproc_per_node N -m idm_vton infer-dataset ... --device cpu`` instead (on a machine
without GPUs, ``accelerate launch --multi_gpu --num_processes N`` works too).

Images are rendered at the work size ``--height x --width`` (default 1024 x 768, the size of the
VITON-HD / DressCode test photos) with ``paste_back=False``: the dataset already brings person,
mask and pose to the work size, so the output is the pipeline's raw H x W render, as in the
official ``inference.py``.

``{out}/manifest.json`` records the protocol (model, steps, guidance, seed, size, dtype, dataset,
category, split, pairing, negative prompt) and the image count. It is written when a run starts
(``"complete": false``) and again at the end; resuming into a folder whose manifest states another
protocol is refused, so one folder never mixes two protocols.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from ..files import write_json_atomic

__all__ = [
    "DatasetKind",
    "DatasetInferenceConfig",
    "InferenceSummary",
    "add_arguments",
    "infer_dataset",
    "is_finished_image",
    "output_name",
    "run",
    "sample_seed",
    "shard",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
SEED_SCHEME = (
    "per sample: torch.Generator('cpu').manual_seed(int.from_bytes("
    "sha256(f'{seed}/{person stem}_{garment stem}').digest()[:8], 'little') & (2**63 - 1))"
)
# Manifest fields that change the images: a folder must not mix runs that differ in any of them.
PROTOCOL_KEYS = (
    "model",
    "dataset",
    "category",
    "split",
    "pairing",
    "steps",
    "guidance",
    "seed",
    "height",
    "width",
    "dtype",
    "negative_prompt",
    "paste_back",
    "seed_scheme",
)


class DatasetKind(str, Enum):
    """Dataset layout (see :mod:`idm_vton.data.datasets`)."""

    VITONHD = "vitonhd"
    DRESSCODE = "dresscode"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class DatasetInferenceConfig:
    """What :func:`infer_dataset` renders and how; the CLI flags map one to one.

    ``category`` is DressCode's ``upper_body`` / ``lower_body`` / ``dresses`` / ``all`` (default
    ``all``); VITON-HD only has ``upper_body``. ``device`` ``None`` = the accelerate process's
    device (``cuda:<local rank>`` when there is a GPU); ``dtype`` ``None`` = ``bf16`` on CUDA,
    ``fp32`` elsewhere.
    """

    model: str
    data: Path
    dataset: DatasetKind
    out: Path
    category: str | None = None
    split: str = "test"
    pairing: str = "paired"
    steps: int = 30
    guidance: float = 2.0
    seed: int = 42
    height: int = 1024
    width: int = 768
    batch_size: int = 1
    device: str | None = None
    dtype: str | None = None
    num_workers: int = 2
    negative_prompt: str | None = None
    progress: bool = True


@dataclass(frozen=True)
class InferenceSummary:
    """What one process of a run did: ``rendered`` by this process, ``skipped`` finished before
    the run started (all processes), ``total`` samples in the split, ``finished`` outputs present
    at the end (counted on the main process; ``None`` on the others)."""

    rendered: int
    skipped: int
    total: int
    finished: int | None
    out: Path
    process_index: int = 0
    num_processes: int = 1


# ------------------------------------------------------------------------------- pure helpers


def output_name(person_stem: str, garment_stem: str) -> str:
    """File name of one sample's output: ``{person stem}_{garment stem}.png``."""
    return f"{person_stem}_{garment_stem}.png"


def sample_seed(seed: int, key: str) -> int:
    """Seed of one sample: 63 bits of SHA-256 over ``"{seed}/{key}"`` (stable across runs,
    platforms and Python versions, unlike ``hash()``); ``key`` is the output file stem."""
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def shard(items: Sequence, index: int, count: int, chunk: int = 1) -> list:
    """Items of process ``index`` out of ``count``: consecutive chunks of ``chunk`` items dealt
    round robin (chunk ``k`` goes to process ``k % count``), concatenated in order.

    Over all processes every item appears exactly once. With ``chunk`` = the batch size, every
    batch a process forms is one whole chunk, so the batches, and with them the rendered images
    bit for bit, are the same whatever the number of processes.
    """
    if not 0 <= index < count:
        raise ValueError(f"process index {index} out of range for {count} processes")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    starts = range(index * chunk, len(items), count * chunk)
    return [item for start in starts for item in items[start : start + chunk]]


def is_finished_image(path: Path, size: tuple[int, int]) -> bool:
    """True if ``path`` is a readable PNG of ``size`` (H, W) whose chunk checksums all match.

    ``verify()`` reads the whole file and checks every chunk's CRC without decoding the pixels,
    so a truncated or damaged file is caught at a fraction of the cost of a full decode.
    """
    from PIL import Image

    if not path.is_file():
        return False
    try:
        with Image.open(path) as image:
            if image.format != "PNG" or image.size != (size[1], size[0]):
                return False
            image.verify()
    except Exception:  # noqa: BLE001 - any failure to read means "redo it"
        return False
    return True


# ------------------------------------------------------------------------------- the run


def _resolve_model(model: str) -> str:
    # A local folder is recorded by absolute path so "./ckpt" and "/abs/ckpt" resume alike.
    return str(Path(model).resolve()) if model != "tiny" and Path(model).exists() else model


def _build_dataset(config: DatasetInferenceConfig, clip_size: int = 224):
    from ..data.datasets import DressCodeDataset, VitonHDDataset

    size = (config.height, config.width)
    if config.dataset is DatasetKind.VITONHD:
        return VitonHDDataset(
            config.data, split=config.split, pairing=config.pairing, size=size, clip_size=clip_size
        )
    return DressCodeDataset(
        config.data,
        category=config.category or "all",
        split=config.split,
        pairing=config.pairing,
        size=size,
        clip_size=clip_size,
    )


def _validate(config: DatasetInferenceConfig) -> None:
    if config.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {config.steps}")
    if config.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {config.batch_size}")
    if config.num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0, got {config.num_workers}")
    for flag, value in (("--height", config.height), ("--width", config.width)):
        if value % 8 or value < 16:
            raise ValueError(f"{flag} must be a multiple of 8 and >= 16, got {value}")
    if config.dataset is DatasetKind.VITONHD and config.category not in (None, "upper_body"):
        raise ValueError(f"VITON-HD has upper_body garments only, got --category {config.category}")


def _protocol(config: DatasetInferenceConfig, dtype_name: str) -> dict[str, Any]:
    from ..pipelines.tryon import DEFAULT_NEGATIVE_PROMPT

    category = config.category or (
        "all" if config.dataset is DatasetKind.DRESSCODE else "upper_body"
    )
    from .. import __version__

    return {
        "idm_vton": __version__,
        "model": _resolve_model(config.model),
        "dataset": config.dataset.value,
        "category": category,
        "split": str(config.split),
        "pairing": str(config.pairing),
        "steps": config.steps,
        "guidance": config.guidance,
        "seed": config.seed,
        "height": config.height,
        "width": config.width,
        "dtype": dtype_name,
        "negative_prompt": config.negative_prompt
        if config.negative_prompt is not None
        else DEFAULT_NEGATIVE_PROMPT,
        "paste_back": False,
        "seed_scheme": SEED_SCHEME,
    }


def _check_resumable(manifest_path: Path, protocol: dict[str, Any]) -> None:
    if not manifest_path.is_file():
        return
    try:
        previous = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(
            f"cannot read {manifest_path}: {error}; remove it or use another --out"
        ) from None
    differ = [
        f"{key} {previous.get(key)!r} -> {protocol[key]!r}"
        for key in PROTOCOL_KEYS
        if previous.get(key) != protocol[key]
    ]
    if differ:
        raise ValueError(
            f"{manifest_path.parent} holds results of another protocol ({'; '.join(differ)}): "
            "use another --out"
        )


def infer_dataset(config: DatasetInferenceConfig, pipe=None) -> InferenceSummary:
    """Render every pending sample of the split; see the module docstring.

    ``pipe``: a ready :class:`~idm_vton.pipelines.tryon.TryOnPipeline` (on its device, in its dtype);
    when ``None`` the model named by ``config.model`` is loaded, and only if there is work left.
    Call it in every process of an accelerate launch (the processes meet at barriers).
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from ..commands.main import DTYPES, resolve_device, resolve_dtype

    _validate(config)
    device = resolve_device(config.device) if config.device is not None else None
    # Without ``cpu=True`` accelerate treats a launch on a machine without GPUs as one process.
    cpu = (
        (device is not None and device.type == "cpu")
        or parse_flag_from_env("ACCELERATE_USE_CPU")
        or not torch.accelerator.is_available()
    )
    state = PartialState(cpu=cpu)
    if pipe is not None:  # its device and dtype are what the images are made with
        device, dtype = pipe._execution_device, pipe.unet.dtype
        dtype_name = next(k for k, v in DTYPES.items() if getattr(torch, v) == dtype)
    else:
        device = device or state.device
        dtype_name = config.dtype or ("bf16" if device.type == "cuda" else "fp32")
        dtype = resolve_dtype(dtype_name)
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("fp16 is not supported on the CPU: use --dtype bf16 or fp32")
    out = Path(config.out)
    manifest_path = out / MANIFEST_NAME
    protocol = _protocol(config, dtype_name)
    _check_resumable(manifest_path, protocol)

    # 1. Samples and their output files, in dataset order (repeated pairs rendered once).
    dataset = _build_dataset(config)
    index_of: dict[str, int] = {}
    for i, record in enumerate(dataset.records):
        index_of.setdefault(output_name(record.person_path.stem, record.garment_path.stem), i)
    if len(index_of) < len(dataset):
        logger.warning("%d repeated pairs are rendered once", len(dataset) - len(index_of))
    size = (config.height, config.width)
    pending = [(n, i) for n, i in index_of.items() if not is_finished_image(out / n, size)]

    # 2. Nobody renders before everyone has listed the pending samples, so the lists agree.
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        for pattern in (".*.png.*.tmp", f".{MANIFEST_NAME}.*.tmp"):  # left by a killed run
            for stale in out.glob(pattern):
                stale.unlink(missing_ok=True)
        write_json_atomic(
            manifest_path,
            {
                **protocol,
                "total": len(index_of),
                "count": len(index_of) - len(pending),
                "complete": False,
            },
        )
    state.wait_for_everyone()
    mine = shard(pending, state.process_index, state.num_processes, config.batch_size)

    # 3. Render this process's share.
    rendered = 0
    if mine:
        rendered = _render(config, pipe, mine, device, dtype, protocol, out, state)

    # 4. Count and record.
    state.wait_for_everyone()
    finished = None
    if state.is_main_process:
        finished = sum(is_finished_image(out / n, size) for n in index_of)
        write_json_atomic(
            manifest_path,
            {
                **protocol,
                "total": len(index_of),
                "count": finished,
                "complete": finished == len(index_of),
            },
        )
    return InferenceSummary(
        rendered=rendered,
        skipped=len(index_of) - len(pending),
        total=len(index_of),
        finished=finished,
        out=out,
        process_index=state.process_index,
        num_processes=state.num_processes,
    )


def _render(config, pipe, mine, device, dtype, protocol, out, state) -> int:
    """Render ``mine`` (output name, dataset row) in batches of ``config.batch_size``."""
    import torch
    from tqdm import tqdm

    from ..data.datasets import collate
    from ..pipelines.image_processor import save_image_atomic

    if pipe is None:
        from ..commands.main import load_model

        pipe = load_model(config.model, dtype, device)
    pipe.set_progress_bar_config(disable=True)
    # The dataset's CLIP view must match the image encoder's input size.
    dataset = _build_dataset(config, clip_size=pipe.image_encoder.config.image_size)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, [i for _, i in mine]),
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        collate_fn=collate,
    )
    names = [n for n, _ in mine]
    desc = "infer-dataset" + (
        f" [{state.process_index}/{state.num_processes}]" if state.num_processes > 1 else ""
    )
    done = 0
    with tqdm(
        total=len(mine),
        desc=desc,
        unit="img",
        disable=not (config.progress and state.is_local_main_process),
    ) as bar:
        for batch in loader:
            batch_names = names[done : done + len(batch["name"])]
            for name, person, garment in zip(
                batch_names, batch["name"], batch["garment_name"], strict=True
            ):
                assert name == output_name(person, garment), (name, person, garment)
            empty = [n for n, m in zip(batch_names, batch["mask"], strict=True) if not m.any()]
            if empty:
                raise ValueError(f"empty inpainting mask for {', '.join(empty)}")
            generators = [
                torch.Generator("cpu").manual_seed(sample_seed(config.seed, Path(n).stem))
                for n in batch_names
            ]
            images = pipe(
                person_image=batch["person"],
                garment_image=batch["garment"],
                mask_image=batch["mask"],
                pose_image=batch["pose"],
                garment_clip_pixels=batch["garment_clip"],
                garment_description=batch["description"],
                negative_prompt=protocol["negative_prompt"],
                num_inference_steps=config.steps,
                guidance_scale=config.guidance,
                height=config.height,
                width=config.width,
                generator=generators,
                paste_back=False,
                output_type="pil",
            ).images
            for name, image in zip(batch_names, images, strict=True):
                save_image_atomic(image, out / name)
            done += len(batch_names)
            bar.update(len(batch_names))
    return done


# ------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``infer-dataset`` command's arguments to ``parser`` (returned for chaining)."""
    parser.description = (
        "Render every pair of a VITON-HD / DressCode split with the dataset's masks, DensePose "
        "and captions into OUT/{person}_{garment}.png (resumable; run it under "
        "'accelerate launch -m idm_vton infer-dataset ...' to share the work over GPUs)."
    )
    parser.add_argument(
        "--model",
        default="yisol/IDM-VTON",
        help="hub id, checkpoint folder, or 'tiny' (default %(default)s)",
    )
    parser.add_argument("--data", required=True, type=Path, help="dataset root folder")
    parser.add_argument(
        "--dataset", required=True, choices=[k.value for k in DatasetKind], help="dataset layout"
    )
    parser.add_argument(
        "--category",
        choices=("upper_body", "lower_body", "dresses", "all"),
        default=None,
        help="DressCode category (default: all)",
    )
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument(
        "--pairing",
        choices=("paired", "unpaired"),
        default="paired",
        help="the person's own garment (paired) or another one (unpaired); default %(default)s",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="output folder (one PNG per pair + manifest.json)"
    )
    parser.add_argument(
        "--steps", type=int, default=30, help="denoising steps (default %(default)s)"
    )
    parser.add_argument(
        "--guidance", type=float, default=2.0, help="classifier-free guidance (default %(default)s)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=42,
        help="base seed; each sample derives its own (default %(default)s)",
    )
    parser.add_argument(
        "--height", type=int, default=1024, help="work height (default %(default)s)"
    )
    parser.add_argument("--width", type=int, default=768, help="work width (default %(default)s)")
    parser.add_argument(
        "--batch-size", type=int, default=1, help="samples per pipeline call (default %(default)s)"
    )
    parser.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:N (default: the accelerate process's device; leave unset under "
        "accelerate launch)",
    )
    parser.add_argument(
        "--dtype",
        choices=("fp32", "bf16", "fp16"),
        default=None,
        help="default: bf16 on GPU, fp32 on CPU",
    )
    parser.add_argument(
        "--num-workers", type=int, default=2, help="data loading processes (default %(default)s)"
    )
    parser.add_argument(
        "--negative-prompt", default=None, help="unconditional caption (reference default)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    """``idm-vton infer-dataset``: build the config from parsed arguments and run it."""
    config = DatasetInferenceConfig(
        model=args.model,
        data=args.data,
        dataset=DatasetKind(args.dataset),
        out=args.out,
        category=args.category,
        split=args.split,
        pairing=args.pairing,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        height=args.height,
        width=args.width,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        num_workers=args.num_workers,
        negative_prompt=args.negative_prompt,
        progress=not args.no_progress,
    )
    summary = infer_dataset(config)
    if summary.num_processes > 1:
        print(
            f"process {summary.process_index}/{summary.num_processes} rendered "
            f"{summary.rendered} images",
            flush=True,
        )
    if summary.finished is None:  # not the main process
        return 0
    print(
        f"{summary.finished}/{summary.total} images in {summary.out} "
        f"({summary.skipped} were already done)"
    )
    if summary.finished != summary.total:
        print(
            f"idm-vton infer-dataset: error: {summary.total - summary.finished} images missing "
            f"after the run",
            file=sys.stderr,
        )
        return 1
    return 0
