"""The FSDP path of training, piece by piece, in 2 CPU processes (gloo): run with
``python -m torch.distributed.run --nproc_per_node 2 tests/helpers/fsdp_pieces.py DATA OUT``.

accelerate runs FSDP on accelerators only, so this builds what it builds from the shipped
``configs/accelerate/fsdp.yaml`` (its auto-wrap policy from the trainable module, full sharding,
original parameters) with torch's FSDP on the CPU, takes one training step on the same batch in
both processes, gathers the full state dict as the trainer does and writes it in the pipeline's
layout. An unsharded copy takes the same step for comparison. Rank 0 writes ``OUT/report.json``
and ``OUT/checkpoint/``.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from accelerate.utils import FullyShardedDataParallelPlugin
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp import ShardingStrategy

from idm_vton.data.datasets import VitonHDDataset, collate
from idm_vton.pipelines.loading import tiny_pipeline
from idm_vton.training import checkpointing as ckpt
from idm_vton.training.distributed import fsdp_full_state_dict
from idm_vton.training.objective import (
    Conditioner,
    ObjectiveConfig,
    TryonTrainable,
    diffusion_loss,
    step_generator,
    training_noise_scheduler,
)

REPO = Path(__file__).resolve().parents[2]


def shipped_fsdp_settings() -> dict:
    return yaml.safe_load((REPO / "configs" / "accelerate" / "fsdp.yaml").read_text())[
        "fsdp_config"
    ]


def step(model, pipe, batch) -> float:
    """One optimizer step of the training objective (clipped to 1.0, AdamW) on ``batch``."""
    conditioner = Conditioner(pipe, torch.device("cpu"))
    scheduler = training_noise_scheduler(pipe.scheduler)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = diffusion_loss(
        model, conditioner, scheduler, batch, step_generator(0, 0), ObjectiveConfig()
    )
    loss.backward()
    if isinstance(model, FSDP):
        model.clip_grad_norm_(1.0)
    else:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    pipe.garment_store.clear()
    return float(loss)


def main(data: Path, out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    pipe = tiny_pipeline(seed=3)
    for module in (pipe.garment_unet, pipe.image_encoder, pipe.text_encoder, pipe.text_encoder_2):
        module.requires_grad_(False).eval()
    pipe.vae.requires_grad_(False).eval()
    keys = ckpt.trainable_keys(pipe)
    dataset = VitonHDDataset(data, size=(64, 48), clip_size=32, augment=False)
    batch = collate([dataset[0], dataset[1]])

    reference_pipe = copy.deepcopy(pipe)
    reference = TryonTrainable(reference_pipe.unet, reference_pipe.image_projection).train()
    reference_loss = step(reference, reference_pipe, batch)

    settings = shipped_fsdp_settings()
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=settings["fsdp_version"],
        sharding_strategy=settings["fsdp_sharding_strategy"],
        auto_wrap_policy=settings["fsdp_auto_wrap_policy"],
        use_orig_params=settings["fsdp_use_orig_params"],
        sync_module_states=False,  # accelerate refuses it on the CPU; every rank builds seed 3
        state_dict_type=settings["fsdp_state_dict_type"],
    )
    trainable = TryonTrainable(pipe.unet, pipe.image_projection).train()
    plugin.set_auto_wrap_policy(trainable)
    model = FSDP(
        trainable,
        sharding_strategy=ShardingStrategy[settings["fsdp_sharding_strategy"]],
        auto_wrap_policy=plugin.auto_wrap_policy,
        use_orig_params=settings["fsdp_use_orig_params"],
        device_id=torch.device("cpu"),
    )
    units = [m.module for m in FSDP.fsdp_modules(model) if m is not model]
    frozen = (
        pipe.garment_unet,
        pipe.vae,
        pipe.image_encoder,
        pipe.text_encoder,
        pipe.text_encoder_2,
    )
    local = sum(p.numel() for p in model.parameters() if p.numel())
    total = sum(p.numel() for p in reference.parameters())
    fsdp_loss = step(model, pipe, batch)

    state = fsdp_full_state_dict(model)
    if rank == 0:
        folder = out / "checkpoint"
        ckpt.write_frozen_components(pipe, folder)
        ckpt.write_trainable_components(pipe, state, folder, keys)
        expected = reference.state_dict()
        base = {f"unet.{k}": v for k, v in tiny_pipeline(seed=3).unet.state_dict().items()}
        report = {
            "world_size": dist.get_world_size(),
            "unit_classes": sorted({type(m).__name__ for m in units}),
            "units": len(units),
            "blocks_in_unet": sum(
                type(m).__name__ in TryonTrainable._no_split_modules for m in reference.modules()
            ),
            "frozen_wrapped": sum(isinstance(m, FSDP) for f in frozen for m in f.modules()),
            "local_numel": local,
            "total_numel": total,
            "losses": [reference_loss, fsdp_loss],
            "state_keys_match": sorted(state) == sorted(expected),
            "max_abs_diff": max((state[k] - expected[k]).abs().max().item() for k in expected),
            "changed": any(not torch.equal(expected[k], base[k]) for k in base),
        }
        (out / "report.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
