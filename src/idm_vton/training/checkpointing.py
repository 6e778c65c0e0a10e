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

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..loaders.pipeline import save_ip_adapter_config

__all__ = [
    "FROZEN_CACHE",
    "TRAINABLE_COMPONENTS",
    "TRAINER_STATE",
    "TRAINING_STATE",
    "checkpoints",
    "latest_checkpoint",
    "link_or_copy_tree",
    "read_trainer_state",
    "remove_old_checkpoints",
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


def read_trainer_state(checkpoint: Path) -> dict:
    path = Path(checkpoint) / TRAINER_STATE
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a training checkpoint (no {TRAINER_STATE})")
    return json.loads(path.read_text())


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


def write_trainable_components(pipe, state: dict[str, torch.Tensor], folder: Path) -> None:
    """Write ``unet/`` and ``image_projection/`` from a (gathered) TryonTrainable state dict.

    The configs come from the in-memory modules, the weights from ``state`` (keys ``unet.*`` and
    ``image_projection.*``), which is complete even where the modules are sharded (ZeRO-3, FSDP).
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
        expected = set(module.state_dict())
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
    """Load ``unet/`` and ``image_projection/`` weights of a checkpoint into a TryonTrainable."""
    from safetensors.torch import load_file

    for name in TRAINABLE_COMPONENTS:
        state = load_file(str(Path(checkpoint) / name / WEIGHTS_NAME))
        getattr(module, name).load_state_dict(state, strict=True)
