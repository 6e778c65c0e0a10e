"""Batch try-on over a dataset's test split (the protocol of paper Sec. 4, docs/evaluation.md): ``idm-vton infer-dataset``.

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
  (:func:`idm_vton.images.save_image_atomic`), so an interrupted run leaves only whole images;
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

Garment descriptions V come from the dataset (its tag file or captions) or, with
``--description auto`` (for a dataset without tags), from the garment photos through the garment
annotator (:mod:`idm_vton.annotation`; the probe reads the CLIP embedding the try-on computes);
each image's V is then appended to ``{out}/descriptions.jsonl`` (``{"image": ..., "description":
...}`` per line).

``{out}/manifest.json`` records the protocol (model, steps, guidance, seed, size, dtype, dataset,
category, split, pairing, negative prompt, description source and annotator) and the image count. It is written when a run starts
(``"complete": false``) and again at the end; resuming into a folder whose manifest states another
protocol is refused, so one folder never mixes two protocols.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import defaults
from ..annotation.tags import DEFAULT_MIN_SCORE
from ..enums import (
    Choice,
    DatasetKind,
    DType,
    GarmentCategory,
    Pairing,
    Split,
    parse_dataset_category,
)
from ..errors import DatasetError, UsageError
from ..files import (
    check_writable_output,
    lock_folder,
    make_folders,
    remove_empty_folders,
    remove_stale_temporaries,
    write_json_atomic,
)
from ..images import check_work_size
from ..loaders.json_files import read_json_object
from ..options import check_seed, option

__all__ = [
    "DatasetInferenceConfig",
    "DescriptionSource",
    "DatasetKind",
    "InferenceSummary",
    "infer_dataset",
    "is_finished_image",
    "output_name",
    "sample_seed",
    "shard",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
DESCRIPTIONS_NAME = "descriptions.jsonl"
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
    "description",
    "annotator",
    "min_score",
)
# What a manifest written before a key existed meant by it.
_PROTOCOL_DEFAULTS = {"description": "dataset"}


class DescriptionSource(Choice):
    """Where each garment's description V comes from: the dataset's tags or captions, or the
    garment photo (the annotator)."""

    DATASET = "dataset"
    AUTO = "auto"


@dataclass(frozen=True)
class DatasetInferenceConfig:
    """What :func:`infer_dataset` renders and how (the options of ``idm-vton infer-dataset``).

    ``category`` is a DressCode category, or ``None``: all of DressCode's, VITON-HD's
    ``upper_body``. ``device`` ``None`` = the accelerate process's device (``cuda:<local rank>``
    when there is a GPU, else the CPU); ``dtype`` ``None`` = ``bf16`` on CUDA, ``fp32`` elsewhere.
    """

    model: str = option(shared="model")
    data: Path = option(help="dataset root folder")
    dataset: DatasetKind = option(help="dataset layout")
    out: Path = option(help="output folder (one PNG per pair + manifest.json)")
    category: GarmentCategory | None = option(
        None,
        "DressCode category (default: all)",
        parse=parse_dataset_category,
        metavar="{upper_body,lower_body,dresses,all}",
    )
    split: Split = option(Split.TEST, "dataset split to render (default test)")
    pairing: Pairing = option(
        Pairing.PAIRED,
        "the person's own garment (paired) or another one (unpaired); default %(default)s",
    )
    steps: int = option(defaults.NUM_INFERENCE_STEPS, shared="steps")
    guidance: float = option(defaults.GUIDANCE_SCALE, shared="guidance")
    seed: int = option(
        defaults.SEED, "base seed; each sample derives its own (default %(default)s)", shared="seed"
    )
    height: int = option(defaults.WORK_HEIGHT, shared="height")
    width: int = option(defaults.WORK_WIDTH, shared="width")
    batch_size: int = option(1, "samples per pipeline call (default %(default)s)")
    device: str | None = option(
        None,
        "cpu, cuda, cuda:N (default: the accelerate process's device; leave unset under "
        "accelerate launch)",
        shared="device",
    )
    dtype: DType | None = option(None, shared="dtype")
    num_workers: int = option(2, "data loading processes (default %(default)s)")
    negative_prompt: str | None = option(None, shared="negative_prompt")
    description: DescriptionSource = option(
        DescriptionSource.DATASET,
        "garment descriptions: the dataset's tags/captions (dataset, default) or read from each "
        "garment photo by --annotator (auto, for datasets without tags)",
    )
    annotator: str | None = option(None, shared="annotator")
    min_score: float = option(DEFAULT_MIN_SCORE, shared="min_score")
    progress: bool = option(True, "hide the progress bar")

    def __post_init__(self) -> None:
        # Plain strings are accepted (as from a script); the fields hold the enums.
        object.__setattr__(self, "dataset", DatasetKind.parse(self.dataset, "dataset"))
        object.__setattr__(self, "category", parse_dataset_category(self.category))
        object.__setattr__(self, "split", Split.parse(self.split, "split"))
        object.__setattr__(self, "pairing", Pairing.parse(self.pairing, "pairing"))
        object.__setattr__(
            self, "description", DescriptionSource.parse(self.description, "description source")
        )
        if self.dtype is not None:
            object.__setattr__(self, "dtype", DType.parse(self.dtype, "dtype"))
        if self.device is not None:  # checked before any work; kept as the name given
            from ..devices import resolve_device

            resolve_device(self.device)


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
    if not 1 <= config.steps <= defaults.MAX_INFERENCE_STEPS:
        raise UsageError(
            f"--steps must be from 1 to {defaults.MAX_INFERENCE_STEPS}, got {config.steps}"
        )
    if not (math.isfinite(config.guidance) and 0 <= config.guidance <= defaults.MAX_GUIDANCE_SCALE):
        raise UsageError(
            f"--guidance must be from 0 to {defaults.MAX_GUIDANCE_SCALE:g}, got {config.guidance}"
        )
    check_seed(config.seed)
    if config.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {config.batch_size}")
    if config.num_workers < 0:
        raise UsageError(f"--num-workers must be >= 0, got {config.num_workers}")
    check_work_size(config.height, config.width, flag="--")
    if config.description is DescriptionSource.DATASET and config.annotator is not None:
        raise UsageError("--annotator only applies with --description auto")
    if not 0.0 <= config.min_score <= 1.0:
        raise UsageError(f"--min-score must be in [0, 1], got {config.min_score}")
    if config.dataset is DatasetKind.VITONHD and config.category not in (
        None,
        GarmentCategory.UPPER_BODY,
    ):
        raise UsageError(f"VITON-HD has upper_body garments only, got --category {config.category}")


def _protocol(config: DatasetInferenceConfig, dtype: DType, annotator=None) -> dict[str, Any]:
    from .. import __version__

    if config.category is not None:
        category = config.category.value
    else:
        category = "all" if config.dataset is DatasetKind.DRESSCODE else "upper_body"
    return {
        "idm_vton": __version__,
        "model": _resolve_model(config.model),
        "dataset": config.dataset.value,
        "category": category,
        "split": config.split.value,
        "pairing": config.pairing.value,
        "steps": config.steps,
        "guidance": config.guidance,
        "seed": config.seed,
        "height": config.height,
        "width": config.width,
        "dtype": dtype.value,
        "negative_prompt": config.negative_prompt
        if config.negative_prompt is not None
        else defaults.NEGATIVE_PROMPT,
        "paste_back": False,
        "seed_scheme": SEED_SCHEME,
        "description": config.description.value,
        "annotator": None if annotator is None else annotator.identity,
        "min_score": None if annotator is None else config.min_score,
    }


def _check_resumable(manifest_path: Path, protocol: dict[str, Any]) -> None:
    if not manifest_path.is_file():
        return
    previous = read_json_object(manifest_path, UsageError, "manifest of an earlier run")
    differ = [
        f"{key} {previous.get(key)!r} -> {protocol[key]!r}"
        for key in PROTOCOL_KEYS
        if previous.get(key, _PROTOCOL_DEFAULTS.get(key)) != protocol[key]
    ]
    if differ:
        raise UsageError(
            f"{manifest_path.parent} holds results of another protocol ({'; '.join(differ)}): "
            "use another --out"
        )


def infer_dataset(config: DatasetInferenceConfig, pipe=None) -> InferenceSummary:
    """Render every pending sample of the split; see the module docstring.

    ``pipe``: a ready :class:`~idm_vton.pipelines.tryon.TryOnPipeline` (on its device, in its dtype);
    when ``None`` the model named by ``config.model`` is loaded, and only if there is work left.
    Call it in every process of an accelerate launch (the processes meet at barriers).

    The options, ``--out`` and the dataset are checked before anything is written. The main
    process holds ``--out``'s lock (:func:`idm_vton.files.lock_folder`) for the whole run, so a
    second run into the same folder is refused instead of racing this one; a run that fails
    before writing any image leaves no manifest and no folder of its own behind.
    """
    _validate(config)
    out = check_writable_output(config.out, kind="folder", flag="--out")
    state, device, dtype = _process_device_and_dtype(config, pipe)
    annotator = None
    if config.description is DescriptionSource.AUTO:
        from ..annotation import resolve_annotator

        annotator = resolve_annotator(config.annotator, config.model)
    protocol = _protocol(config, dtype, annotator)

    # 1. Samples and their output files, in dataset order (repeated pairs rendered once).
    index_of = _output_rows(config)

    main = state.is_main_process
    created = make_folders(out) if main else []
    try:
        with lock_folder(out, "--out") if main else nullcontext():
            return _infer_locked(
                config, pipe, state, device, dtype, out, protocol, index_of, annotator
            )
    except BaseException:
        remove_empty_folders(created)
        raise


def _infer_locked(
    config, pipe, state, device, dtype, out, protocol, index_of, annotator
) -> InferenceSummary:
    """:func:`infer_dataset` once the main process holds the output folder."""
    main, manifest_path = state.is_main_process, out / MANIFEST_NAME
    state.wait_for_everyone()  # nobody lists the folder before it is held
    had_manifest = manifest_path.is_file()
    pending_names: list[str] = []
    try:
        if main:
            remove_stale_temporaries(out)
        _check_resumable(manifest_path, protocol)
        size = (config.height, config.width)
        pending = [(n, i) for n, i in index_of.items() if not is_finished_image(out / n, size)]
        pending_names = [n for n, _ in pending]

        # 2. Nobody renders before everyone has listed the pending samples, so the lists agree.
        if main:
            done = len(index_of) - len(pending)
            _write_manifest(manifest_path, protocol, len(index_of), done, complete=False)
        state.wait_for_everyone()
        mine = shard(pending, state.process_index, state.num_processes, config.batch_size)

        # 3. Render this process's share.
        rendered = 0
        if mine:
            if pipe is None:
                from ..pipelines.loading import load_model

                pipe = load_model(config.model, dtype.torch_dtype, device)
            if annotator is not None:
                from ..annotation import load_annotator

                annotator = load_annotator(
                    annotator, model=config.model, pipe=pipe, min_score=config.min_score
                )
            rendered = _render(config, pipe, mine, protocol, out, state, annotator)

        # 4. Count and record.
        state.wait_for_everyone()
        finished = None
        if main:
            finished = sum(is_finished_image(out / n, size) for n in index_of)
            complete = finished == len(index_of)
            _write_manifest(manifest_path, protocol, len(index_of), finished, complete=complete)
    except BaseException:
        # Nothing came of this run: it leaves no manifest of its own either.
        if main and not had_manifest and not any((out / n).exists() for n in pending_names):
            manifest_path.unlink(missing_ok=True)
        raise
    return InferenceSummary(
        rendered=rendered,
        skipped=len(index_of) - len(pending),
        total=len(index_of),
        finished=finished,
        out=out,
        process_index=state.process_index,
        num_processes=state.num_processes,
    )


def _process_device_and_dtype(config: DatasetInferenceConfig, pipe):
    """(accelerate process state, device, dtype): ``pipe``'s own when given, else the config's
    (by default the process's device, bf16 on CUDA and fp32 elsewhere)."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from ..devices import check_dtype_on_device, default_dtype, resolve_device

    device = resolve_device(config.device) if config.device is not None else None
    # Without ``cpu=True`` accelerate treats a launch on a machine without GPUs as one process.
    cpu = (
        (device is not None and device.type == "cpu")
        or parse_flag_from_env("ACCELERATE_USE_CPU")
        or not torch.accelerator.is_available()
    )
    state = PartialState(cpu=cpu)
    if pipe is not None:  # its device and dtype are what the images are made with
        device, dtype = pipe._execution_device, DType.of(pipe.unet.dtype)
    else:
        device = device or state.device
        dtype = config.dtype or default_dtype(device)
    check_dtype_on_device(dtype.torch_dtype, device)
    return state, device, dtype


def _output_rows(config: DatasetInferenceConfig) -> dict[str, int]:
    """Output file name -> dataset row, in dataset order; a repeated pair is rendered once."""
    dataset = _build_dataset(config)
    index_of: dict[str, int] = {}
    for i, record in enumerate(dataset.records):
        index_of.setdefault(output_name(record.person_path.stem, record.garment_path.stem), i)
    if len(index_of) < len(dataset):
        logger.warning("%d repeated pairs are rendered once", len(dataset) - len(index_of))
    return index_of


def _write_manifest(
    path: Path, protocol: dict[str, Any], total: int, count: int, complete: bool
) -> None:
    """The protocol with the image counts; ``complete`` once every image is there."""
    write_json_atomic(path, {**protocol, "total": total, "count": count, "complete": complete})


def _render(config, pipe, mine, protocol, out, state, annotator=None) -> int:
    """Render ``mine`` (output name, dataset row) in batches of ``config.batch_size``."""
    import torch

    from ..data.datasets import collate
    from ..images import save_image_atomic
    from ..progress import progress_bar

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
    with progress_bar(
        total=len(mine),
        desc=desc,
        unit="img",
        show=config.progress and state.is_local_main_process,
    ) as bar:
        for batch in loader:
            batch_names = names[done : done + len(batch["name"])]
            result = _render_batch(
                config, pipe, batch, batch_names, protocol["negative_prompt"], annotator
            )
            for name, image in zip(batch_names, result.images, strict=True):
                save_image_atomic(image, out / name)
            if annotator is not None:
                _record_descriptions(out, batch_names, result.garment_descriptions)
            done += len(batch_names)
            bar.update(len(batch_names))
    return done


def _record_descriptions(out: Path, names: list[str], descriptions: list[str]) -> None:
    """Append each image's V to ``descriptions.jsonl``: one ``write`` per line on a file opened
    for appending, so the processes of a distributed run never interleave within a line."""
    import json
    import os

    fd = os.open(out / DESCRIPTIONS_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        for name, description in zip(names, descriptions, strict=True):
            line = json.dumps({"image": name, "description": description}) + "\n"
            os.write(fd, line.encode())
    finally:
        os.close(fd)


def _render_batch(
    config, pipe, batch: dict, names: list[str], negative_prompt: str, annotator=None
):
    """One pipeline call for a collated batch; every row draws from its own seeded generator.
    With an ``annotator``, each garment's V is read from its photo instead of the dataset's."""
    import torch

    for name, person, garment in zip(names, batch["name"], batch["garment_name"], strict=True):
        assert name == output_name(person, garment), (name, person, garment)
    empty = [n for n, m in zip(names, batch["mask"], strict=True) if not m.any()]
    if empty:
        raise DatasetError(f"empty inpainting mask for {', '.join(empty)}")
    generators = [
        torch.Generator("cpu").manual_seed(sample_seed(config.seed, Path(n).stem)) for n in names
    ]
    return pipe(
        person_image=batch["person"],
        garment_image=batch["garment"],
        mask_image=batch["mask"],
        pose_image=batch["pose"],
        garment_clip_pixels=batch["garment_clip"],
        garment_description=[None] * len(names) if annotator else batch["description"],
        garment_annotator=annotator,
        negative_prompt=negative_prompt,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance,
        height=config.height,
        width=config.width,
        generator=generators,
        paste_back=False,
        output_type="pil",
    )
