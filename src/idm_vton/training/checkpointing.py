"""Training checkpoints: the pipeline's own layout plus the accelerate training state.

``<output>/checkpoint-<step>/`` holds everything :meth:`TryOnPipeline.from_pretrained` reads
(``model_index.json``, ``unet/``, ``image_projection/``, ``garment_unet/``, ``vae/``, ...), so
``idm-vton tryon --model <output>/checkpoint-<step>`` works as is, plus

* ``training_state/``: ``accelerate`` state (optimizer, LR scheduler, grad scaler, RNG states;
  the trainable weights are *not* duplicated there: they are read back from ``unet/`` and
  ``image_projection/``, except under DeepSpeed/FSDP, whose sharded states accelerate writes);
* ``trainer_state.json``: optimizer steps taken, micro-batches consumed, seed, batch geometry.

A checkpoint is written to ``.checkpoint-<step>.tmp`` and renamed when complete, so a crash
never leaves a half-written ``checkpoint-<step>``. The frozen components never change during a run:
they are written once per run to ``.frozen-components/`` and hard-linked into every checkpoint
(copied where the file system has no hard links).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import CheckpointError, IdmVtonError
from ..loaders.checkpoint import check_state_dict, read_state_dict
from ..loaders.json_files import read_json_object
from ..loaders.pipeline import save_ip_adapter_config
from ..loaders.weights import pickle_failure

__all__ = [
    "FROZEN_CACHE",
    "TRAINABLE_COMPONENTS",
    "TRAINER_STATE",
    "TRAINING_STATE",
    "checkpoints",
    "latest_checkpoint",
    "link_or_copy_tree",
    "load_trainable_components",
    "load_training_state",
    "read_trainer_state",
    "remove_old_checkpoints",
    "trainable_keys",
    "write_frozen_components",
    "write_trainable_components",
]

TRAINING_STATE = "training_state"
TRAINER_STATE = "trainer_state.json"
FROZEN_CACHE = ".frozen-components"
TRAINABLE_COMPONENTS = ("unet", "image_projection")
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(output: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``output``, oldest first."""
    output = Path(output)
    if not output.is_dir():
        return []
    found = []
    for path in output.iterdir():
        m = _CHECKPOINT.match(path.name)
        if m and path.is_dir() and (path / TRAINER_STATE).is_file():
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(output: Path) -> Path | None:
    found = checkpoints(output)
    return found[-1][1] if found else None


def remove_old_checkpoints(output: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints; returns the deleted folders."""
    found = checkpoints(output)
    doomed = [path for _, path in found[: max(0, len(found) - keep)]]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


# trainer_state.json: key -> (required, smallest value). All are integers.
_TRAINER_STATE_KEYS = {
    "global_step": (True, 0),
    "batch_size": (True, 1),
    "num_processes": (True, 1),
    "gradient_accumulation_steps": (True, 1),
    "consumed_micro_batches": (False, 0),
    "seed": (False, None),
    "max_steps": (False, 1),
}


def read_trainer_state(checkpoint: Path) -> dict:
    """A checkpoint's ``trainer_state.json``, checked: a JSON object whose step counts and batch
    geometry are integers in range. Raises :class:`~idm_vton.errors.CheckpointError` naming the
    file otherwise (a damaged or hand-edited checkpoint)."""
    path = Path(checkpoint) / TRAINER_STATE
    if not path.is_file():
        raise CheckpointError(f"{checkpoint} is not a training checkpoint (no {TRAINER_STATE})")
    state = read_json_object(path, CheckpointError, "training state")
    for key, (required, smallest) in _TRAINER_STATE_KEYS.items():
        if key not in state:
            if required:
                raise CheckpointError(f"training state {path} has no {key!r} (damaged checkpoint)")
            continue
        value = state[key]
        if type(value) is not int or (smallest is not None and value < smallest):
            bound = "an integer" if smallest is None else f"an integer >= {smallest}"
            raise CheckpointError(
                f"training state {path}: {key!r} must be {bound}, got {value!r:.40}"
            )
    return state


def load_training_state(accelerator, checkpoint: Path) -> None:
    """Restore optimizer, LR schedule, grad scaler and RNG states from ``checkpoint`` (and,
    through the load hook, the trainable weights: :func:`load_trainable_components`).

    accelerate reads its pickles with ``torch.load(weights_only=True)``; any failure (a file
    missing, damaged, refused for safety, or not fitting this run's optimizer) becomes one
    :class:`~idm_vton.errors.CheckpointError` naming the file or the folder.
    """
    folder = Path(checkpoint) / TRAINING_STATE
    if not folder.is_dir():
        raise CheckpointError(
            f"{checkpoint} has no {TRAINING_STATE}/ folder (an incomplete training checkpoint)"
        )
    try:
        accelerator.load_state(str(folder))
    except IdmVtonError:
        raise
    except Exception as err:  # noqa: BLE001 - accelerate and torch fail in many ways
        raise CheckpointError(_training_state_failure(folder, err)) from err


def _training_state_failure(folder: Path, err: BaseException) -> str:
    """The one-line message of :func:`load_training_state`: the file that fails to load, else
    what went wrong."""
    from accelerate.utils import load

    if isinstance(err, FileNotFoundError) and err.filename:
        return f"training state {folder} is incomplete: {err.filename} is missing"
    for path in sorted(folder.iterdir()):
        if path.suffix not in (".bin", ".pkl", ".pt") or not path.is_file():
            continue
        try:
            load(path, map_location="cpu")  # as accelerate reads it: weights_only, numpy allowed
        except Exception as file_err:  # noqa: BLE001
            reason, damaged = pickle_failure(path, file_err)
            if damaged:
                return f"{path} is truncated or corrupt ({reason})"
            return f"{path} was refused for safety: {reason} (only tensors are loaded)"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = lines[0] if lines else type(err).__name__
    return f"cannot restore the training state from {folder} ({detail}): it does not fit this run"


def write_frozen_components(pipe, folder: Path) -> None:
    """Write every pipeline component except the trainable ones, and ``model_index.json``."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    pipe.save_config(folder)
    for name in pipe.components:
        component = getattr(pipe, name)
        if component is None or name in TRAINABLE_COMPONENTS:
            continue
        if hasattr(component, "save_pretrained"):
            kwargs = {"safe_serialization": True} if isinstance(component, torch.nn.Module) else {}
            component.save_pretrained(folder / name, **kwargs)
        else:
            component.save_config(folder / name)


def link_or_copy_tree(src: Path, dst: Path) -> None:
    """Recreate ``src`` under ``dst`` with hard links (copies where links are not possible)."""

    def link(source: str, target: str) -> None:
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)

    shutil.copytree(src, dst, copy_function=link, dirs_exist_ok=True)


def trainable_keys(pipe) -> dict[str, frozenset[str]]:
    """The state-dict keys of ``unet`` and ``image_projection``, taken before a strategy wraps
    them (an FSDP-wrapped module's own ``state_dict`` is a collective call with other names)."""
    return {name: frozenset(getattr(pipe, name).state_dict()) for name in TRAINABLE_COMPONENTS}


def write_trainable_components(
    pipe,
    state: dict[str, torch.Tensor],
    folder: Path,
    keys: dict[str, frozenset[str]] | None = None,
) -> None:
    """Write ``unet/`` and ``image_projection/`` from a (gathered) TryonTrainable state dict.

    The configs come from the in-memory modules, the weights from ``state`` (keys ``unet.*`` and
    ``image_projection.*``), which is complete even where the modules are sharded (ZeRO-3, FSDP).
    ``keys`` (:func:`trainable_keys`, default: the modules' own) are the names ``state`` must hold.
    """
    folder = Path(folder)
    for name in TRAINABLE_COMPONENTS:
        module = getattr(pipe, name)
        prefix = f"{name}."
        weights = {
            k[len(prefix) :]: v.detach().to("cpu").contiguous()
            for k, v in state.items()
            if k.startswith(prefix)
        }
        expected = set(module.state_dict()) if keys is None else set(keys[name])
        if set(weights) != expected:
            raise RuntimeError(
                f"{name}: gathered weights do not match the module "
                f"({len(expected - set(weights))} missing, {len(set(weights) - expected)} unexpected)"
            )
        target = folder / name
        target.mkdir(parents=True, exist_ok=True)
        module.save_config(target)
        save_file(weights, str(target / WEIGHTS_NAME), metadata={"format": "pt"})
        if name == "unet":
            save_ip_adapter_config(module, target)


def load_trainable_components(module: torch.nn.Module, checkpoint: Path) -> None:
    """Load ``unet/`` and ``image_projection/`` weights of a checkpoint into a TryonTrainable,
    read and checked as every checkpoint is (:func:`~idm_vton.loaders.checkpoint.read_state_dict`,
    :func:`~idm_vton.loaders.checkpoint.check_state_dict`)."""
    for name in TRAINABLE_COMPONENTS:
        target = getattr(module, name)
        state = read_state_dict(Path(checkpoint) / name)
        state = check_state_dict(target, state, f"{name} ({checkpoint})")
        target.load_state_dict(state, strict=True)
