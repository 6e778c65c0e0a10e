"""The IDM-VTON training loop (paper Sec. 3) on ``accelerate``.

Differences from the official ``train_xl.py``, each a bug there (docs/training.md): gradients are
really clipped (the trainable parameters are kept in a list, not an exhausted iterator); the step
counter advances once per optimizer step; the loader shuffles; time ids are ``(H, W, 0, 0, H, W)``;
the VAE runs in fp32; the colour jitter runs on ``[0, 1]`` images (in the dataset).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from diffusers import DDPMScheduler

from ..devices import check_mixed_precision_on_device
from ..enums import DatasetKind
from ..errors import DatasetError, TrainConfigError
from ..files import (
    apply_umask,
    check_writable_output,
    make_folders,
    naming_write_errors,
    remove_empty_folders,
    replace_directory,
    write_json_atomic,
)
from ..progress import progress_bar, progress_bars_shown
from . import checkpointing as ckpt
from .config import OptimizerKind, TrainConfig
from .data import batch_stream, batches_per_epoch
from .distributed import (
    LaunchRequest,
    check_accelerator,
    check_launch,
    check_resume_strategy,
    configure_deepspeed,
    frozen_components_outside_zero3,
    restrict_deepspeed_loads,
    skip_shared_memory_kernel,
    strategy_of,
    trainable_state_dict,
)
from .objective import Conditioner, ObjectiveConfig, TrainingStep, TryonTrainable

logger = logging.getLogger(__name__)

__all__ = ["StepMetrics", "Trainer", "load_base_pipeline", "make_optimizer"]

_SHARDED = (DistributedType.DEEPSPEED, DistributedType.FSDP)


@dataclass
class StepMetrics:
    """What one optimizer step reports: mean loss, pre-clip gradient norm, learning rate."""

    step: int
    loss: float
    grad_norm: float | None
    lr: float


def load_base_pipeline(config: TrainConfig):
    """The starting model: a checkpoint (``--model``), the tiny random model, or SDXL parts."""
    if config.sdxl is not None:
        from .sdxl_init import build_from_sdxl

        s = config.sdxl
        return build_from_sdxl(s.sdxl_inpainting, s.sdxl_base, s.ip_adapter, s.image_encoder)
    if config.model == "tiny":
        from ..pipelines.loading import tiny_pipeline

        return tiny_pipeline(seed=config.seed)
    from ..pipelines.tryon import TryOnPipeline

    return TryOnPipeline.from_pretrained(config.model, torch_dtype=torch.float32)


def make_optimizer(kind: OptimizerKind, params: list[torch.nn.Parameter], config: TrainConfig):
    """AdamW (paper), or bitsandbytes' 8-bit AdamW when asked and installed."""
    kwargs = dict(
        lr=config.lr,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        weight_decay=config.weight_decay,
    )
    if kind is OptimizerKind.ADAMW8BIT:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise TrainConfigError(
                "--optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes; CUDA only)"
            ) from None
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def build_dataset(
    config: TrainConfig, clip_size: int, split: str = "train", augment: bool | None = None
):
    """The configured dataset; ``clip_size`` is the image encoder's input size (224 for ViT-H)."""
    from ..data.datasets import DressCodeDataset, VitonHDDataset

    common = dict(
        split=split,
        clip_size=clip_size,
        size=config.resolution,
        augment=config.augment if augment is None else augment,
        seed=config.seed,
        skip_bad_samples=config.skip_bad_samples,
    )
    if config.dataset is DatasetKind.VITONHD:
        return VitonHDDataset(config.data, **common)
    return DressCodeDataset(config.data, category=config.category, **common)


def _tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            return False
    return True


def _report_to(config: TrainConfig) -> str:
    """The tracker ``--report-to`` asks for: ``auto`` is tensorboard when installed."""
    report = config.report_to.value
    if report == "auto":
        report = "tensorboard" if _tensorboard_available() else "none"
    if report == "tensorboard" and not _tensorboard_available():
        raise TrainConfigError(
            "--report-to tensorboard needs tensorboard (pip install tensorboard)"
        )
    return report


def _launch_device() -> torch.device:
    """The device accelerate will train on, known before it starts: the CPU when asked
    (``ACCELERATE_USE_CPU``) or when there is no accelerator, else the accelerator."""
    from accelerate.utils import parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.accelerator.is_available():
        return torch.device("cpu")
    return torch.accelerator.current_accelerator()


def _resume_point(which: str | None) -> str | Path | None:
    """``--resume`` checked before anything is written: ``latest``, or a checkpoint folder."""
    if which is None or which == "latest":
        return which
    path = Path(which)
    if not (path / ckpt.TRAINER_STATE).is_file():
        raise TrainConfigError(
            f"--resume: {path} is not a training checkpoint folder (no {ckpt.TRAINER_STATE})"
        )
    return path


class Trainer:
    """Builds everything from a :class:`TrainConfig` and runs optimizer steps.

    ``pipe`` (optional) replaces the model named in the config, e.g. a pipeline built in memory.

    Nothing is written before the output folder, the resume point, the precision, the model and
    the dataset have been checked, so a typo leaves nothing behind; a run that fails before its
    first checkpoint removes what it wrote (:meth:`_discard_output`).
    """

    def __init__(self, config: TrainConfig, pipe=None) -> None:
        self.config = config
        report = _report_to(config)
        check_writable_output(config.output, kind="folder", flag="--output")
        resume_from = _resume_point(config.resume)
        # Before the Accelerator: it fixes the precision and the process layout for good.
        launch = LaunchRequest.from_environment()
        check_launch(launch, _launch_device(), config)
        skip_shared_memory_kernel(launch, _launch_device())
        check_mixed_precision_on_device(config.mixed_precision, _launch_device())
        self.accelerator = accel = Accelerator(
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=config.mixed_precision.value,
            log_with=None if report == "none" else report,
            project_config=ProjectConfiguration(
                project_dir=str(config.output), logging_dir=str(config.output / "logs")
            ),
            step_scheduler_with_optimizer=False,
        )
        check_accelerator(launch, accel)  # every process, before anything is written
        self.strategy = strategy_of(accel)
        if config.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
        set_seed(config.seed)

        # 1. Model and data, checked before anything is written.
        if pipe is None:
            with frozen_components_outside_zero3(accel):
                pipe = load_base_pipeline(config)
        self.pipe = pipe
        self._prepare_data()
        self._saved = False  # a checkpoint written by this run
        self._begin_output()
        try:
            trainable = self._prepare_model()  # 2. Frozen and trainable parts.
            self._prepare_optimization(trainable)  # 3. Optimizer, LR schedule, accelerate.

            # 4. Objective, step counters, resume, logging.
            objective = ObjectiveConfig(
                snr_gamma=config.snr_gamma,
                noise_offset=config.noise_offset,
                condition_dropout=config.condition_dropout,
            )
            self.step = TrainingStep(
                self.pipe,
                self.model,
                accel.device,
                objective,
                config.seed,
                text_cache_size=config.text_cache_size,
            )
            self.global_step = 0
            self.consumed = 0  # micro-batches consumed by this process
            self._stream = None
            if resume_from is not None:
                self.resume(resume_from)
            if accel.is_main_process:
                write_json_atomic(config.output / "train_config.json", config.to_json())
            if report != "none":
                config_record = {k: str(v) for k, v in config.to_json().items()}
                accel.init_trackers("idm-vton", config=config_record)
        except BaseException:
            self._discard_output()
            raise

    def _begin_output(self) -> None:
        """Create the output folder and write the frozen components once (original dtype),
        remembering what this run creates so that :meth:`_discard_output` can take it back."""
        output = self.config.output
        self.frozen_cache = output / ckpt.FROZEN_CACHE
        self._created_folders: list[Path] = []
        self._created_paths: list[Path] = []
        if not self.accelerator.is_main_process:
            return
        fresh = ("train_config.json", "logs", "validation", ckpt.FROZEN_CACHE)
        self._created_paths = [output / name for name in fresh if not (output / name).exists()]
        self._created_folders = make_folders(output)
        try:
            with naming_write_errors(self.frozen_cache):
                ckpt.write_frozen_components(self.pipe, self.frozen_cache)
        except BaseException:
            self._discard_output()
            raise

    def _discard_output(self) -> None:
        """Remove what this run wrote to the output folder (only while it saved no checkpoint)."""
        if self._saved or not self.accelerator.is_main_process:
            return
        for path in self._created_paths:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()
        if self._created_folders:  # the output folder itself is new: all in it is this run's
            shutil.rmtree(self._created_folders[-1], ignore_errors=True)
            remove_empty_folders(self._created_folders[:-1])

    @property
    def conditioner(self) -> Conditioner:
        """The frozen parts (VAE, text and image encoders, GarmentNet) of the training step."""
        return self.step.conditioner

    @property
    def noise_scheduler(self) -> DDPMScheduler:
        """The training noise schedule (zero terminal SNR) of the training step."""
        return self.step.noise_scheduler

    @property
    def objective(self) -> ObjectiveConfig:
        """The loss options of the training step."""
        return self.step.objective

    def _prepare_model(self) -> TryonTrainable:
        """Freeze the frozen parts in the mixed-precision dtype (the VAE in fp32) and return the
        trainable part in fp32."""
        config, accel = self.config, self.accelerator
        self.weight_dtype = config.mixed_precision.torch_dtype
        device = accel.device
        frozen = [self.pipe.garment_unet, self.pipe.image_encoder]
        frozen += [m for m in (self.pipe.text_encoder, self.pipe.text_encoder_2) if m is not None]
        for module in frozen:
            module.requires_grad_(False).eval().to(device=device, dtype=self.weight_dtype)
        self.pipe.vae.requires_grad_(False).eval().to(device=device, dtype=torch.float32)
        self.trainable_keys = ckpt.trainable_keys(self.pipe)  # before a strategy wraps them
        trainable = TryonTrainable(self.pipe.unet, self.pipe.image_projection).to(
            device=device, dtype=torch.float32
        )
        trainable.requires_grad_(True).train()
        if config.gradient_checkpointing:
            self.pipe.unet.enable_gradient_checkpointing()
        return trainable

    def _prepare_data(self) -> None:
        """The dataset and the run length in optimizer steps (``--max-steps`` or epochs)."""
        config = self.config
        self.clip_size = int(self.pipe.image_encoder.config.image_size)
        self.dataset = build_dataset(config, self.clip_size)
        self.per_epoch = batches_per_epoch(
            len(self.dataset), config.batch_size, self.accelerator.num_processes
        )
        steps_per_epoch = max(1, self.per_epoch // config.gradient_accumulation_steps)
        if config.max_steps is not None:
            self.max_steps = config.max_steps
        else:
            self.max_steps = (config.epochs or 1) * steps_per_epoch

    def _prepare_optimization(self, trainable: TryonTrainable) -> None:
        """Optimizer and LR schedule over the trainable parameters, prepared by accelerate."""
        from diffusers.optimization import get_scheduler

        config = self.config
        params = [p for p in trainable.parameters() if p.requires_grad]
        optimizer = make_optimizer(config.optimizer, params, config)
        lr_scheduler = get_scheduler(
            config.lr_scheduler.value,
            optimizer=optimizer,
            num_warmup_steps=config.lr_warmup_steps,
            num_training_steps=self.max_steps,
        )
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            configure_deepspeed(self.accelerator, config)
        self.model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(
            trainable, optimizer, lr_scheduler
        )
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            restrict_deepspeed_loads(self.model)
        # A list (not a generator that the first clip would exhaust, as in the official trainer).
        self.params_to_clip = list(self.model.parameters())
        self._register_hooks()

    # ------------------------------------------------------------------ checkpoint hooks
    def _register_hooks(self) -> None:
        accel = self.accelerator

        def save_hook(models, weights, output_dir):
            # The trainable weights go to unet/ and image_projection/ (pipeline layout) instead.
            weights.clear()

        def load_hook(models, input_dir):
            for model in list(models):
                ckpt.load_trainable_components(accel.unwrap_model(model), Path(input_dir).parent)
            models.clear()

        accel.register_save_state_pre_hook(save_hook)
        accel.register_load_state_pre_hook(load_hook)

    def save_checkpoint(self) -> Path:
        """Write ``checkpoint-<step>`` atomically (see :mod:`.checkpointing`), with the user's
        umask; all processes call. A failed write leaves no temporary folder and is an
        ``OSError`` naming the checkpoint."""
        accel, output = self.accelerator, self.config.output
        final = output / f"checkpoint-{self.global_step}"
        tmp = output / f".checkpoint-{self.global_step}.tmp"
        if accel.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        accel.wait_for_everyone()
        try:
            with naming_write_errors(final, tmp):
                self._write_checkpoint(tmp, final)
        except BaseException:
            if accel.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        accel.wait_for_everyone()
        return final

    def _write_checkpoint(self, tmp: Path, final: Path) -> None:
        accel, output = self.accelerator, self.config.output
        accel.save_state(str(tmp / ckpt.TRAINING_STATE))
        state = trainable_state_dict(accel, self.model)
        if accel.is_main_process:
            ckpt.link_or_copy_tree(self.frozen_cache, tmp)
            ckpt.write_trainable_components(self.pipe, state, tmp, self.trainable_keys)
            trainer_state = {
                "global_step": self.global_step,
                "consumed_micro_batches": self.consumed,
                "seed": self.config.seed,
                "batch_size": self.config.batch_size,
                "num_processes": accel.num_processes,
                "gradient_accumulation_steps": self.config.gradient_accumulation_steps,
                "max_steps": self.max_steps,
                "strategy": self.strategy.value,
            }
            (tmp / ckpt.TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2) + "\n")
            apply_umask(tmp)
            replace_directory(tmp, final)
            self._saved = True
            if self.config.checkpoints_total_limit:
                for path in ckpt.remove_old_checkpoints(
                    output, self.config.checkpoints_total_limit
                ):
                    logger.info("removed old checkpoint %s", path)

    def resume(self, which: str) -> Path | None:
        """Continue from ``latest`` (in the output folder) or a checkpoint folder."""
        if which == "latest":
            path = ckpt.latest_checkpoint(self.config.output)
            if path is None:
                self.accelerator.print("no checkpoint to resume from: starting a new run")
                return None
        else:
            path = Path(which)
            if not (path / ckpt.TRAINER_STATE).is_file():
                raise TrainConfigError(f"--resume: {path} is not a training checkpoint folder")
        state = ckpt.read_trainer_state(path)
        geometry = (self.config.batch_size, self.accelerator.num_processes,
                    self.config.gradient_accumulation_steps)  # fmt: skip
        saved = (state["batch_size"], state["num_processes"], state["gradient_accumulation_steps"])
        if geometry != saved:
            logger.warning(
                "resuming with batch/processes/accumulation %s instead of %s: the data order "
                "and noise draws will differ from an uninterrupted run",
                geometry,
                saved,
            )
        check_resume_strategy(state.get("strategy"), self.strategy, path)
        ckpt.load_training_state(self.accelerator, path)
        self.global_step = int(state["global_step"])
        self.consumed = self.global_step * self.config.gradient_accumulation_steps
        self._stream = None
        self.accelerator.print(f"resumed from {path} at step {self.global_step}")
        return path

    # ------------------------------------------------------------------ steps
    def _batches(self):
        if self._stream is None:
            self._stream = batch_stream(
                self.dataset,
                self.config.batch_size,
                seed=self.config.seed,
                start=self.consumed,
                num_processes=self.accelerator.num_processes,
                rank=self.accelerator.process_index,
                num_workers=self.config.num_workers,
            )
        return self._stream

    def compute_loss(self, batch: dict, micro_batch: int) -> torch.Tensor:
        """The objective of one micro-batch; its randomness depends only on (seed, index, rank)."""
        return self.step.loss(batch, micro_batch, self.accelerator.process_index)

    def clip_gradients(self) -> float | None:
        """Clip the global gradient norm to ``max_grad_norm``; returns the norm *before* clipping.

        (Under DeepSpeed the engine has already clipped, from ``gradient_clipping``, which
        :func:`~.distributed.configure_deepspeed` sets to ``max_grad_norm``; this returns the norm
        it measured.) ``max_grad_norm <= 0`` measures without clipping.
        """
        limit = self.config.max_grad_norm if self.config.max_grad_norm > 0 else math.inf
        norm = self.accelerator.clip_grad_norm_(self.params_to_clip, limit)
        return None if norm is None else float(norm)

    def train_step(self) -> StepMetrics:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches."""
        accel = self.accelerator
        stream = self._batches()
        losses, grad_norm = [], None
        for _ in range(self.config.gradient_accumulation_steps):
            index, batch = next(stream)
            with accel.accumulate(self.model):
                loss = self.compute_loss(batch, index)
                # Clip on the micro-batch that syncs gradients (the last one: the optimizer
                # really steps there), so its pre-clip norm is the step's.
                clip = self.clip_gradients if accel.sync_gradients else None
                grad_norm = self.step.update(loss, self.optimizer, accel.backward, clip)
            self.consumed = index + 1
            losses.append(loss.detach())
        assert accel.sync_gradients, "an optimizer step must end on a gradient sync"
        self.lr_scheduler.step()
        self.global_step += 1
        mean_loss = accel.reduce(torch.stack(losses).mean(), reduction="mean")
        return StepMetrics(
            step=self.global_step,
            loss=float(mean_loss),
            grad_norm=grad_norm,
            lr=float(self.lr_scheduler.get_last_lr()[0]),
        )

    # ------------------------------------------------------------------ validation
    def validate(self) -> list[Path]:
        """Render the first validation samples with the pipeline; PNGs under ``validation/``."""
        accel = self.accelerator
        if accel.distributed_type in _SHARDED or not accel.is_main_process:
            if accel.distributed_type in _SHARDED:
                logger.warning("validation rendering is skipped with sharded models")
            accel.wait_for_everyone()
            return []
        from ..data.datasets import collate, tensor_to_pil

        try:
            dataset = build_dataset(self.config, self.clip_size, split="test", augment=False)
        except (ValueError, OSError):
            dataset = build_dataset(self.config, self.clip_size, augment=False)
        n = min(self.config.num_validation_images, len(dataset))
        batch = collate([dataset[i] for i in range(n)])
        height, width = self.config.resolution
        unet = self.pipe.unet
        unet.eval()
        self.pipe.set_progress_bar_config(disable=not progress_bars_shown())  # as the train bar
        try:
            with torch.no_grad(), accel.autocast():
                images = self.pipe(
                    person_image=batch["person"],
                    garment_image=batch["garment"],
                    mask_image=batch["mask"],
                    pose_image=batch["pose"],
                    garment_description=batch["description"],
                    garment_clip_pixels=batch["garment_clip"],
                    num_inference_steps=self.config.validation_inference_steps,
                    height=height,
                    width=width,
                    generator=torch.Generator().manual_seed(self.config.seed),
                    output_type="pt",
                ).images
        finally:
            unet.train()
            self.pipe.garment_store.clear()
        folder = self.config.output / "validation"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, image in enumerate(images):
            path = folder / f"step-{self.global_step:07d}-{i}.png"
            tensor_to_pil(image.float().cpu()).save(path)
            paths.append(path)
        for tracker in accel.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_images(
                    "validation", images.float().cpu(), self.global_step, dataformats="NCHW"
                )
        accel.wait_for_everyone()
        return paths

    # ------------------------------------------------------------------ loop
    def train(self) -> list[StepMetrics]:
        """Run until ``max_steps`` (or ``stop_after``); checkpoint at the end.

        A bad dataset row (:class:`~idm_vton.errors.DatasetError`) after some steps saves a
        checkpoint of the steps done, then stops with the error naming the row and the
        checkpoint. A run that fails before saving any checkpoint removes what it wrote.
        """
        config, accel = self.config, self.accelerator
        end = (
            self.max_steps if config.stop_after is None else min(config.stop_after, self.max_steps)
        )
        history: list[StepMetrics] = []
        progress = progress_bar(
            total=self.max_steps,
            initial=self.global_step,
            desc="train",
            unit="step",
            show=accel.is_local_main_process,
        )
        saved_at = None
        start = time.perf_counter()
        try:
            while self.global_step < end:
                metrics = self._step_or_save(history)
                history.append(metrics)
                if not math.isfinite(metrics.loss):
                    logger.warning("step %d: non-finite loss %s", metrics.step, metrics.loss)
                logs = {"loss": metrics.loss, "lr": metrics.lr}
                if metrics.grad_norm is not None:
                    logs["grad_norm"] = metrics.grad_norm
                accel.log(logs, step=metrics.step)
                progress.update(1)
                progress.set_postfix(
                    loss=f"{metrics.loss:.4f}",
                    grad=f"{metrics.grad_norm:.3g}" if metrics.grad_norm is not None else "-",
                    lr=f"{metrics.lr:.2e}",
                )
                if (
                    config.checkpointing_steps
                    and self.global_step % config.checkpointing_steps == 0
                ):
                    self.save_checkpoint()
                    saved_at = self.global_step
                if config.validation_steps and self.global_step % config.validation_steps == 0:
                    self.validate()
            progress.close()
            if history and saved_at != self.global_step:
                path = self.save_checkpoint()
                accel.print(f"saved {path}")
        except BaseException:
            progress.close()
            self._discard_output()
            raise
        elapsed = time.perf_counter() - start
        if history:
            accel.print(
                f"{len(history)} steps in {elapsed:.1f} s, last loss {history[-1].loss:.4f}"
            )
        accel.end_training()
        return history

    def _step_or_save(self, history: list[StepMetrics]) -> StepMetrics:
        """:meth:`train_step`; on a bad row after steps of this run, save them first."""
        try:
            return self.train_step()
        except DatasetError as error:
            if not history:
                raise
            # The interrupted step's micro-batches are not part of the saved state.
            self.consumed = self.global_step * self.config.gradient_accumulation_steps
            path = self.save_checkpoint()
            raise DatasetError(
                f"{error}; the {len(history)} steps before it are saved in {path} (fix or remove "
                "the row, then continue with --resume latest)",
                path=error.path,
                row=error.row,
            ) from error
