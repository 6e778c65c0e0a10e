"""How a training run is spread over processes: the accelerate launch, checked and completed.

``accelerate launch --config_file configs/accelerate/<strategy>.yaml`` hands its settings to the
training processes through environment variables (``ACCELERATE_USE_DEEPSPEED``,
``ACCELERATE_USE_FSDP``, ``ACCELERATE_MIXED_PRECISION``...) and starts them with ``torchrun``,
which sets ``WORLD_SIZE`` and ``RANK``. accelerate then decides on its own what it can do on this
machine, and where it cannot do what was asked it quietly does something else: two processes
that each believe they are alone and write into one folder, DDP in place of FSDP, no DeepSpeed
under ``ACCELERATE_USE_CPU``. :func:`check_launch` (before the ``Accelerator`` exists) and
:func:`check_accelerator` (right after) refuse those launches in one line, before anything is
written. :func:`configure_deepspeed` gives DeepSpeed the run's batch geometry and clipping from
the command line, :func:`frozen_components_outside_zero3` keeps the frozen networks out of
ZeRO-3's parameter partitioning, :func:`trainable_state_dict` gathers the full fp32 weights that
checkpoints write in the pipeline's layout, and :func:`restrict_deepspeed_loads` makes DeepSpeed
read its checkpoints weights-only.

FSDP shards the trainable module (:class:`~.objective.TryonTrainable`'s ``_no_split_modules`` name its
units) and nothing else: the frozen networks stay plain modules on every device.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ..enums import Choice
from ..errors import TrainConfigError

__all__ = [
    "LaunchRequest",
    "Strategy",
    "check_accelerator",
    "check_launch",
    "check_resume_strategy",
    "configure_deepspeed",
    "frozen_components_outside_zero3",
    "fsdp_full_state_dict",
    "load_deepspeed_file",
    "restrict_deepspeed_loads",
    "skip_shared_memory_kernel",
    "strategy_of",
    "trainable_state_dict",
]

_DOCS = "see docs/training.md, 'Several processes'"


class Strategy(Choice):
    """How the trainable TryonNet + Resampler are spread over processes."""

    SINGLE = "single"
    DDP = "ddp"
    ZERO2 = "deepspeed-zero2"
    ZERO3 = "deepspeed-zero3"
    FSDP = "fsdp"


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def _int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name, "").strip()
    return int(value) if value.isdigit() else None


def _float(environ: Mapping[str, str], name: str) -> float | None:
    try:
        return float(environ[name])
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True)
class LaunchRequest:
    """What the launcher asked of this process (from its environment).

    ``world_size``: the processes the launcher started (``WORLD_SIZE``; 1 when started plainly).
    ``deepspeed`` / ``fsdp``: the accelerate config's ``distributed_type``.
    ``cpu``: ``ACCELERATE_USE_CPU`` (accelerate's ``--cpu`` / ``use_cpu: true``).
    ``gradient_accumulation_steps`` / ``gradient_clipping``: values the accelerate config fixes
    (its ``deepspeed_config``), or None where it leaves them to the command line.
    """

    world_size: int = 1
    deepspeed: bool = False
    fsdp: bool = False
    cpu: bool = False
    gradient_accumulation_steps: int | None = None
    gradient_clipping: float | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> LaunchRequest:
        environ = os.environ if environ is None else environ
        return cls(
            world_size=_int(environ, "WORLD_SIZE") or 1,
            deepspeed=_flag(environ, "ACCELERATE_USE_DEEPSPEED"),
            fsdp=_flag(environ, "ACCELERATE_USE_FSDP"),
            cpu=_flag(environ, "ACCELERATE_USE_CPU"),
            gradient_accumulation_steps=_int(environ, "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"),
            gradient_clipping=_float(environ, "ACCELERATE_GRADIENT_CLIPPING"),
        )


def _deepspeed_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


def check_launch(request: LaunchRequest, device, config) -> None:
    """Refuse, before the ``Accelerator`` is built, a launch that accelerate would run otherwise
    than asked on ``device`` (the device the run will use), or whose accelerate config contradicts
    the command line ``config`` (a :class:`~.config.TrainConfig`)."""
    import torch

    on_cpu = torch.device(device).type == "cpu"
    if request.fsdp and on_cpu:
        raise TrainConfigError(
            "the FSDP configuration needs GPUs: accelerate shards with FSDP only on accelerators "
            "(on the CPU it would train unsharded, or stop); on the CPU use "
            "configs/accelerate/deepspeed_zero2.yaml or deepspeed_zero3.yaml with --num_processes "
            f"1, or DDP with ACCELERATE_USE_CPU=true ({_DOCS})"
        )
    if request.deepspeed and request.cpu:
        raise TrainConfigError(
            "accelerate ignores the DeepSpeed configuration when ACCELERATE_USE_CPU (--cpu, "
            "use_cpu) is set and would train without DeepSpeed: unset it (DeepSpeed uses the "
            f"CPU by itself where there is no GPU) ({_DOCS})"
        )
    steps = request.gradient_accumulation_steps
    if steps is not None and steps != config.gradient_accumulation_steps:
        raise TrainConfigError(
            f"the accelerate config sets gradient_accumulation_steps: {steps} but "
            f"--gradient-accumulation-steps is {config.gradient_accumulation_steps}: remove it "
            "from the config (the command line sets it)"
        )
    clipping = request.gradient_clipping
    wanted = max(config.max_grad_norm, 0.0)
    if request.deepspeed and clipping is not None and clipping != wanted:
        raise TrainConfigError(
            f"the accelerate config sets gradient_clipping: {clipping:g} but --max-grad-norm is "
            f"{config.max_grad_norm:g}: remove it from the config (the command line sets it)"
        )
    if request.deepspeed and not _deepspeed_installed():
        raise TrainConfigError(
            "the DeepSpeed configuration needs DeepSpeed: pip install '.[deepspeed]' in the "
            "idm-vton clone"
        )


def skip_shared_memory_kernel(request: LaunchRequest, device) -> None:
    """DeepSpeed on the CPU compiles a shared-memory all-reduce kernel when it starts (a minute or
    more, with a C++ compiler); one process communicates with no one, so skip it there."""
    import torch

    if not (request.deepspeed and request.world_size == 1 and torch.device(device).type == "cpu"):
        return
    import deepspeed.ops

    compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
    if isinstance(compatible, dict):
        compatible["deepspeed_shm_comm"] = False


def strategy_of(accelerator) -> Strategy:
    """The strategy accelerate actually set up."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        stage = accelerator.state.deepspeed_plugin.zero_stage
        return Strategy.ZERO3 if stage == 3 else Strategy.ZERO2
    if kind == DistributedType.FSDP:
        return Strategy.FSDP
    if kind == DistributedType.NO:
        return Strategy.SINGLE
    return Strategy.DDP


def check_accelerator(request: LaunchRequest, accelerator) -> None:
    """Refuse a launch that accelerate set up otherwise than the launcher asked: a different
    number of processes (each would train on its own into one output folder) or another
    strategy. Called on every process before anything is written."""
    strategy = strategy_of(accelerator)
    if request.world_size != accelerator.num_processes:
        if strategy in (Strategy.ZERO2, Strategy.ZERO3) and accelerator.device.type == "cpu":
            hint = "DeepSpeed through accelerate runs one process on the CPU: --num_processes 1"
        elif accelerator.device.type == "cpu" and not request.cpu:
            hint = (
                "accelerate sees no GPU and treats each process as alone; for several CPU "
                "processes (gloo) set ACCELERATE_USE_CPU=true"
            )
        else:
            hint = "check --num_processes, --num_machines and the visible GPUs"
        raise TrainConfigError(
            f"the launcher started {request.world_size} processes but accelerate runs this one "
            f"as process {accelerator.process_index} of {accelerator.num_processes}: they would "
            f"train independently into one output folder; {hint} ({_DOCS})"
        )
    expected = None
    if request.deepspeed and strategy not in (Strategy.ZERO2, Strategy.ZERO3):
        expected = "DeepSpeed"
    elif request.fsdp and strategy is not Strategy.FSDP:
        expected = "FSDP"
    if expected is not None:
        raise TrainConfigError(
            f"the launch asks for {expected} but accelerate set up {strategy.value} on "
            f"{accelerator.device.type}: refusing to train otherwise than configured ({_DOCS})"
        )


def _state_layout(strategy: Strategy) -> Strategy:
    """Strategies whose ``training_state/`` folders are interchangeable share a layout."""
    return Strategy.DDP if strategy is Strategy.SINGLE else strategy


def check_resume_strategy(saved: str | None, strategy: Strategy, checkpoint) -> None:
    """Refuse to resume a checkpoint whose training state another strategy wrote (DeepSpeed and
    FSDP write their own files; a single process and DDP share theirs). ``saved`` is the
    checkpoint's recorded strategy (absent in checkpoints written before it was recorded)."""
    from ..errors import CheckpointError

    if saved is None or saved not in Strategy.values():
        return
    if _state_layout(Strategy(saved)) is not _state_layout(strategy):
        raise CheckpointError(
            f"{checkpoint} holds the training state of {saved} training, this run is {strategy}: "
            "resume with the accelerate config it was written with (its unet/ and "
            "image_projection/ weights can start a new run: --model "
            f"{checkpoint})"
        )


def configure_deepspeed(accelerator, config) -> None:
    """Give DeepSpeed the run's micro-batch size, gradient accumulation and clipping (the command
    line's ``--batch-size``, ``--gradient-accumulation-steps``, ``--max-grad-norm``) before
    ``accelerator.prepare``: the training step feeds batches itself, so accelerate has no data
    loader to read them from. A DeepSpeed config file that fixes other values is refused."""
    plugin = accelerator.state.deepspeed_plugin
    wanted = {
        "train_micro_batch_size_per_gpu": (config.batch_size, "--batch-size"),
        "gradient_accumulation_steps": (
            config.gradient_accumulation_steps,
            "--gradient-accumulation-steps",
        ),
        # DeepSpeed clips inside its engine; 0 turns clipping off.
        "gradient_clipping": (max(config.max_grad_norm, 0.0), "--max-grad-norm"),
    }
    ds_config = plugin.deepspeed_config
    for key, (value, flag) in wanted.items():
        current = ds_config.get(key, "auto")
        if current not in ("auto", None) and float(current) != float(value):
            raise TrainConfigError(
                f"the DeepSpeed config sets {key}: {current} but {flag} gives {value}: set it "
                "to 'auto' there (the command line sets it)"
            )
        ds_config[key] = value
    ds_config["train_batch_size"] = (
        config.batch_size * config.gradient_accumulation_steps * accelerator.num_processes
    )
    # accelerate compares its own accumulation count with DeepSpeed's and silently keeps
    # DeepSpeed's: they are equal now.
    accelerator.gradient_accumulation_steps = config.gradient_accumulation_steps


@contextlib.contextmanager
def frozen_components_outside_zero3(accelerator) -> Iterator[None]:
    """Build models with ZeRO-3's parameter partitioning off.

    Under ZeRO-3, accelerate registers its DeepSpeed config with transformers, which then builds
    every model inside ``deepspeed.zero.Init`` (whatever ``zero3_init_flag`` says): the parameters
    become empty placeholders that only a DeepSpeed engine gathers. Only the trainable module goes
    through the engine; the frozen text encoders and image encoder run as plain modules and need
    their full weights (the pattern of diffusers' training examples). The trainable module is
    partitioned when the engine is built, from full weights.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        yield
        return
    from transformers.integrations import deepspeed as hf_deepspeed

    if not hf_deepspeed.is_deepspeed_zero3_enabled():
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        accelerator.state.deepspeed_plugin.set_deepspeed_weakref()


def trainable_state_dict(accelerator, model) -> dict:
    """The full state dict of the trainable module, in fp32 where training keeps fp32 weights;
    every process calls (gathering is collective), the main process gets the whole of it.

    DDP and a single process: the module's own. FSDP: accelerate gathers the full state dict
    (offloaded to the CPU, on the main process only) from the fp32 shards, whatever
    ``fsdp_state_dict_type`` says for ``training_state/``. DeepSpeed: the fp32 master weights the
    optimizer updates (in bf16/fp16 mode the module itself only holds a low-precision copy),
    assembled from the ZeRO partitions.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        return fsdp_full_state_dict(model)
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return accelerator.get_state_dict(model)
    from deepspeed.utils import safe_get_full_fp32_param

    module = accelerator.unwrap_model(model)
    state = {}
    for name, param in module.named_parameters():
        full = safe_get_full_fp32_param(param)
        assert full is not None, f"{name} has no DeepSpeed master weight (not trained?)"
        state[name] = full.detach().cpu()
    for name, buffer in module.named_buffers():
        state[name] = buffer.detach().cpu()
    return state


def fsdp_full_state_dict(model) -> dict:
    """The full state dict of an FSDP (version 1) module, gathered from the shards onto the CPU
    of the main process (the others get an empty dict); every process calls."""
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    # Offloading shards that already are on the CPU frees the memory the copies point to.
    on_accelerator = any(p.device.type != "cpu" for p in model.parameters())
    gather = FullStateDictConfig(offload_to_cpu=on_accelerator, rank0_only=True)
    with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, gather):
        return model.state_dict()


def _deepspeed_checkpoint_classes() -> list:
    """The DeepSpeed classes its ZeRO checkpoints pickle besides tensors and containers."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def load_deepspeed_file(path, map_location=None):
    """Read one file of a DeepSpeed checkpoint with ``torch.load(weights_only=True)``, allowing
    only the few DeepSpeed classes its checkpoints hold: nothing in it can run code."""
    import torch

    allowed = _deepspeed_checkpoint_classes()
    if not hasattr(torch.serialization, "safe_globals"):  # torch 2.4
        torch.serialization.add_safe_globals(allowed)
        return torch.load(path, map_location=map_location, weights_only=True)
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location=map_location, weights_only=True)


class _WeightsOnlyCheckpointEngine:
    """A DeepSpeed checkpoint engine that reads with :func:`load_deepspeed_file` (DeepSpeed's
    own unpickles everything, ``weights_only=False``) and does the rest as the engine it wraps."""

    def __init__(self, engine) -> None:
        self._engine = engine

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def load(self, path, map_location=None):
        return load_deepspeed_file(path, map_location=map_location)


def restrict_deepspeed_loads(model) -> None:
    """Make the prepared DeepSpeed engine ``model`` read its checkpoints weights-only."""
    if not isinstance(model.checkpoint_engine, _WeightsOnlyCheckpointEngine):
        model.checkpoint_engine = _WeightsOnlyCheckpointEngine(model.checkpoint_engine)
