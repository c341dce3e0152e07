"""The training loop behind ``adeblur train``: one process, or many under ``torchrun``.

:func:`train` runs a validated :class:`~adeblur.engine.config.TrainingConfig`: it builds the model, the
data pipeline (:mod:`adeblur.engine.data`), the optimiser and schedule (:mod:`adeblur.engine.optim`),
validates periodically, logs (:mod:`adeblur.engine.logging`) and checkpoints
(:mod:`adeblur.engine.checkpoint`) into the run folder::

    runs/<name>/config.yaml                  the config as run
    runs/<name>/checkpoints/step_*.safetensors   the last ``keep_last`` checkpoints
    runs/<name>/checkpoints/best.safetensors     the best validation score so far
    runs/<name>/train.csv, val.csv, events/      logs (CSV and TensorBoard event files)

Every random draw is a function of ``(seed, step, rank)``: the data (sample numbers, crops, blur, pool
draws), the M2AENet Gumbel noise and the pixel draws of adaptive sampling. A run resumed from the
checkpoint of step ``s`` therefore continues exactly as the uninterrupted run would (tests/test_train.py
and tests/test_train_adaptive_sampling.py check the weights).

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) each process trains on its own share of every
batch (``data.batch_size`` per process) with :class:`~torch.nn.parallel.DistributedDataParallel`
(NCCL on CUDA, gloo on CPU); only rank 0 logs and writes checkpoints.

The library never prints: progress goes to a ``callback`` as :class:`TrainEvent` objects, which the
command line renders.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from adeblur.engine.checkpoint import (
    CheckpointManager,
    capture_rng_states,
    checkpoint_step,
    load_checkpoint,
    restore_rng_states,
)
from adeblur.engine.config import TrainingConfig, config_from_dict, config_to_dict
from adeblur.data.synthetic import with_kernel_canvas
from adeblur.engine.data import (
    PairPool,
    SampleStream,
    build_source,
    collate_samples,
    finish_batch,
    make_generator,
    make_loader,
    pool_first_chunk,
    validation_batches,
)
from adeblur.engine.logging import TrainingLog
from adeblur.engine.optim import ExponentialMovingAverage, build_optimizer, learning_rate, set_learning_rate
from adeblur.engine.profile import resolve_device, synchronize
from adeblur.errors import ConfigError, TrainingError
from adeblur.io import write_text
from adeblur.losses import AdaptiveSamplingLoss, M2AENetLoss, psnr_loss, reconstruction_loss
from adeblur.metrics import psnr, ssim, weighted_psnr, weighted_ssim
from adeblur.models import M2AENet, build_model
from adeblur.models.saphnet_as import SampledHierarchy

__all__ = ["Objective", "TrainEvent", "TrainResult", "train", "validate", "validation_set"]

# Offsets that keep the random streams of the different uses of (seed, ...) apart.
_SYNTH_STREAM, _POOL_STREAM, _MODEL_STREAM, _VAL_STREAM = 11, 13, 17, 19


@dataclass
class TrainEvent:
    """Something the trainer reports: ``kind`` is ``start``, ``step``, ``validation``, ``checkpoint``,
    ``note`` or ``end``; ``data`` holds its numbers (see :func:`train`)."""

    kind: str
    step: int
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    """What a finished (or stopped) run leaves: its folder, last step, why it stopped, best score."""

    run_dir: Path
    step: int
    stopped: str  # "done", "time" (--max-minutes) or "interrupted"
    last_checkpoint: Path | None
    best: dict[str, Any] | None
    validation: dict[str, Any] | None
    timing: dict[str, float]


class Objective:
    """The training loss of a config: calls the model as the loss needs and returns its terms.

    ``loss="auto"`` picks ``m2aenet`` for :class:`~adeblur.models.M2AENet` models, ``adaptive-sampling``
    for SAPHNet / DMPHN with pixel-adaptive sampling, else ``reconstruction``.

    ``objective(network, batch, generator, step)``: ``network`` is ``model`` or its DDP / compiled
    wrapper, ``step`` the 0-based optimiser step. ``adaptive-sampling``
    (:class:`~adeblur.losses.AdaptiveSamplingLoss`) has two phases: before ``pretrain_steps`` it also sets
    ``model.policy = "uniform"``, so validation (eval mode) uses the uniform lattice the network is being
    pre-trained on; from then on the model's own ``policy`` option again (eval mode: top-K). Models built
    with ``sampling="uniform"`` (or with no sampled stage) only get the per-stage supervision.
    """

    def __init__(self, name: str, model: nn.Module, options: Mapping[str, Any]) -> None:
        if name == "auto":
            if isinstance(model, M2AENet):
                name = "m2aenet"
            else:
                name = "adaptive-sampling" if isinstance(model, SampledHierarchy) else "reconstruction"
        if name == "m2aenet" and not isinstance(model, M2AENet):
            raise ConfigError(f"config key 'loss.name': 'm2aenet' needs an M2AENet model, not {type(model).__name__}")
        if name == "adaptive-sampling" and not isinstance(model, SampledHierarchy):
            raise ConfigError(
                "config key 'loss.name': 'adaptive-sampling' needs a model with pixel-adaptive sampling "
                f"(saphnet-as, dmphn-as...), not {type(model).__name__}"
            )
        self.name = name
        self.model = model
        self.passes_generator = isinstance(model, M2AENet)
        try:
            if name == "m2aenet":
                self.m2aenet_loss = M2AENetLoss(**options)
            elif name == "adaptive-sampling":
                self.sampling_loss = AdaptiveSamplingLoss(**options)
            elif name == "reconstruction":
                self.fft_weight = float(options.get("fft_weight", 0.1))
                if set(options) - {"fft_weight"}:
                    raise TypeError(f"unexpected options {sorted(set(options) - {'fft_weight'})}")
            elif options:
                raise TypeError(f"the {name} loss takes no options, got {sorted(options)}")
        except (TypeError, ValueError) as error:
            raise ConfigError(f"config key 'loss.options': {error}") from None
        if name == "adaptive-sampling":
            self._check_sampling_options(model)
            self.set_phase(0)

    def _check_sampling_options(self, model: SampledHierarchy) -> None:
        stages = len(model.levels)
        if stages < 2:
            raise ConfigError(
                f"config key 'loss.name': 'adaptive-sampling' needs a sampled stage; levels {model.levels}"
            )
        weights = self.sampling_loss.stage_weights
        if weights is not None and len(weights) != stages:
            raise ConfigError(f"config key 'loss.options.stage_weights': {len(weights)} weights for {stages} stages")
        weights = self.sampling_loss.reward_stage_weights
        if weights is not None and len(weights) != stages - 1:
            raise ConfigError(
                f"config key 'loss.options.reward_stage_weights': {len(weights)} weights for "
                f"{stages - 1} sampled stages"
            )
        self.trains_policy = model.sampling == "adaptive"
        self.joint_policy = model.policy
        if self.trains_policy and model.policy == "uniform":
            raise ConfigError(
                "config key 'model.options.policy': 'uniform' would never use the trained policy; the "
                "adaptive-sampling loss pre-trains on the uniform lattice by itself (loss.options.pretrain_steps): "
                "use 'sample'"
            )

    def set_phase(self, step: int) -> str:
        """``adaptive-sampling``: the phase of ``step`` (``"uniform"`` or ``"sample"``), also set as the
        model's ``policy`` attribute (``"uniform"`` or the model's own)."""
        phase = self.sampling_loss.policy_at(step) if self.trains_policy else "uniform"
        if self.trains_policy:
            self.model.policy = "uniform" if phase == "uniform" else self.joint_policy
        return phase

    def ready_for_inference(self, step: int) -> bool:
        """Whether the weights after ``step`` optimiser steps make the finished model (best checkpoints are
        kept only then): False while ``adaptive-sampling`` pre-trains (the policy heads are untrained)."""
        if self.name != "adaptive-sampling" or not self.trains_policy:
            return True
        return step > self.sampling_loss.pretrain_steps or self.sampling_loss.pretrain_steps == 0

    def __call__(
        self, model: nn.Module, batch: Mapping[str, Tensor], generator: torch.Generator, step: int = 0
    ) -> dict[str, Tensor]:
        if self.name == "adaptive-sampling":
            return self.sampling_loss(model, batch, policy=self.set_phase(step), generator=generator)
        kwargs = {"generator": generator} if self.passes_generator else {}
        if self.name == "m2aenet":
            restored, aux = model(batch["blur"], return_aux=True, **kwargs)
            return self.m2aenet_loss(restored, aux, batch)
        restored = model(batch["blur"], **kwargs)
        if self.name == "reconstruction":
            loss = reconstruction_loss(restored, batch["sharp"], fft_weight=self.fft_weight)
        elif self.name == "l1":
            loss = F.l1_loss(restored, batch["sharp"])
        elif self.name == "psnr":
            loss = psnr_loss(restored, batch["sharp"])
        else:
            loss = F.mse_loss(restored, batch["sharp"])
        return {"loss": loss}


# --- distributed set-up --------------------------------------------------------------------------


@dataclass
class _Distributed:
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _set_up_distributed(device_name: str) -> _Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        use_cuda = device_name != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
        # NCCL for CUDA tensors; gloo for the few CPU tensors (validation sums, log averages)
        dist.init_process_group("cuda:nccl,cpu:gloo" if use_cuda else "gloo")
        owns = True
    return _Distributed(rank, local_rank, world, owns)


# --- the run -------------------------------------------------------------------------------------


def train(
    config: TrainingConfig,
    *,
    resume: str | os.PathLike[str] | None = None,
    max_minutes: float | None = None,
    callback: Callable[[TrainEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train the model of ``config``; return where it stopped.

    Args:
        config: a validated config (:func:`~adeblur.engine.config.load_config`).
        resume: a checkpoint file, or a run folder (its latest checkpoint). The model (name and options)
            must match; other changes (more steps, another learning rate...) are taken and reported.
        max_minutes: stop (with a checkpoint) after this much training time.
        callback: receives :class:`TrainEvent` s (rank 0 only): ``start`` (``steps``, ``start_step``,
            ``device``, ``world``, ``params``, ``run_dir``), ``step`` every ``log_every`` steps (loss terms,
            ``lr``, ``patches_per_second``, ``data_fraction``, ``eta_seconds``), ``validation``,
            ``checkpoint`` (``path``), ``note`` (``message``), ``end``.
        should_stop: polled every step; True stops the run after a checkpoint (e.g. on Ctrl-C).

    Raises:
        ConfigError, DatasetError, CheckpointError: bad config, data or checkpoint (one-line messages).
    """
    emit = callback or (lambda event: None)
    group = _set_up_distributed(config.device)
    try:
        return _Run(config, group, emit if group.main else (lambda event: None)).run(resume, max_minutes, should_stop)
    finally:
        if group.owns_group:
            dist.destroy_process_group()


class _Run:
    def __init__(self, config: TrainingConfig, group: _Distributed, emit: Callable[[TrainEvent], None]) -> None:
        self.config, self.group, self.emit = config, group, emit
        device = resolve_device(config.device)
        if device.type == "cuda" and group.world > 1:
            device = torch.device("cuda", group.local_rank)
        self.device = device
        if config.threads:
            torch.set_num_threads(config.threads)
        self.run_dir = config.run_dir
        with torch.random.fork_rng(devices=[]):  # the initial weights are a function of the seed
            torch.manual_seed(config.seed)
            self.model = build_model(config.model.name, **config.model.options).to(device)
        self.objective = Objective(config.loss.name, self.model, config.loss.options)
        self.amp_dtype = _amp_dtype(config.amp, device)
        self.channels_last = config.channels_last == "on" or (config.channels_last == "auto" and device.type == "cuda")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        opt = config.optimizer
        self.optimizer = build_optimizer(
            self.model.parameters(), opt.name, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay, eps=opt.eps
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = ExponentialMovingAverage(self.model, config.ema_decay) if config.ema_decay else None
        self.step = 0
        self.saved_step: int | None = None  # step of the last regular checkpoint written (or resumed from)
        self.best: dict[str, Any] | None = None

    # -- set-up ---------------------------------------------------------------------------------

    def _prepare_run_dir(self, resume: str | os.PathLike[str] | None) -> Path | None:
        """The checkpoint to resume from (None for a fresh run); refuses to reuse a run folder silently."""
        if resume is None:
            if self.run_dir.exists() and any(self.run_dir.iterdir()):
                raise ConfigError(
                    f"run folder {str(self.run_dir)!r} already holds a run; resume it with --resume "
                    f"{self.run_dir}, or pick another name (--set name=...) or output (--set output=...)"
                )
            return None
        path = Path(resume)
        if path.is_dir():
            found = CheckpointManager(path / "checkpoints" if (path / "checkpoints").is_dir() else path).latest()
            if found is None:
                raise ConfigError(f"--resume {str(path)!r}: no checkpoint in that folder")
            return found
        if not path.exists():
            raise ConfigError(f"--resume {str(path)!r}: no such file or folder")
        return path

    def _check_no_later_checkpoints(self) -> None:
        """Resuming from an older checkpoint into the same folder would mix two histories: refuse."""
        later = [p.name for p in self.checkpoints.checkpoints() if checkpoint_step(p) > self.step]
        if later:
            raise ConfigError(
                f"run folder {str(self.run_dir)!r} already has later checkpoints ({', '.join(later)}) than "
                f"the resumed step {self.step}; resume into a new folder with --set output=..."
            )

    def _load(self, path: Path) -> None:
        checkpoint = load_checkpoint(path)
        saved = checkpoint.metadata.get("config", {})
        saved_model = saved.get("model", {})
        ours = config_to_dict(self.config.model)
        if saved_model.get("name") != ours["name"] or _normalised(saved_model.get("options", {})) != _normalised(
            ours["options"]
        ):
            raise ConfigError(
                f"--resume {path}: the checkpoint is of model {saved_model.get('name')!r} "
                f"{saved_model.get('options', {})}, the config asks for {ours['name']!r} {ours['options']}"
            )
        self.model.load_state_dict(checkpoint.model_state)
        if checkpoint.optimizer_state is not None:
            self.optimizer.load_state_dict(checkpoint.optimizer_state)
        if self.ema is not None and checkpoint.ema_state is not None:
            self.ema.load_state_dict(checkpoint.ema_state)
            self.ema.num_updates = int(checkpoint.metadata.get("ema_updates", 0))
        restore_rng_states(checkpoint.rng_states)
        self.step = self.saved_step = int(checkpoint.metadata["step"])
        self.best = checkpoint.metadata.get("best")
        if "scaler" in checkpoint.metadata and self.scaler.is_enabled():
            self.scaler.load_state_dict(checkpoint.metadata["scaler"])
        try:
            changed = _changed_keys(config_to_dict(config_from_dict(saved)), config_to_dict(self.config))
        except ConfigError:
            changed = ["(the checkpoint's config no longer validates)"]
        if changed:
            self.emit(TrainEvent("note", self.step, {"message": f"resuming with changed settings: {', '.join(changed)}"}))

    def _data(self) -> None:
        config, data = self.config, self.config.data
        on_device = data.synthesize_on == "device"
        sources = [
            build_source(
                source, patch_size=data.patch_size, crop=data.crop, augment=data.augment,
                seed=config.seed, blur_on_device=on_device,
            )  # fmt: skip
            for source in data.train
        ]
        self.stream = SampleStream(sources, [s.weight for s in data.train], seed=config.seed)
        self.synth_options = _synth_options(data.train)
        self.pool = None
        if data.pool.size:
            self.pool = PairPool(data.pool.size, data.batch_size, self.device, augment=data.augment)
            start_chunk = pool_first_chunk(self.step, data.pool.reuse)
        else:
            start_chunk = self.step
        self.loader = make_loader(
            self.stream, start_chunk, data.batch_size, rank=self.group.rank, world=self.group.world,
            workers=data.workers, pin_memory=self.device.type == "cuda",
        )  # fmt: skip
        self.batches: Iterator[dict[str, Any]] = iter(self.loader)
        self.next_chunk = start_chunk
        self.fill_seconds = 0.0  # filling the pool is data time too: the first step pays it
        if self.pool is not None:
            started = time.perf_counter()
            self.pool.next_slot = start_chunk % self.pool.slots
            for _ in range(self.pool.slots):
                self.pool.put(self._fresh_batch())
            synchronize(self.device)
            self.fill_seconds = time.perf_counter() - started

    def _validation_set(self) -> None:
        rank, world = self.group.rank, self.group.world
        self.val_samples, self.val_share, self.val_total = validation_set(self.config, rank=rank, world=world)
        has_masks = all(bool(s["has_mask"]) for s in self.val_samples)
        if self.group.world > 1:  # the best-metric choice (and so the best-checkpoint barrier) must agree
            flag = torch.tensor([int(has_masks)])
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            has_masks = bool(int(flag))
        self.val_has_masks = has_masks

    # -- batches --------------------------------------------------------------------------------

    def _fresh_batch(self) -> dict[str, Tensor]:
        batch = next(self.batches)
        generator = make_generator(self.device, self.config.seed, _SYNTH_STREAM, self.next_chunk, self.group.rank)
        self.next_chunk += 1
        return finish_batch(batch, self.device, generator, **self.synth_options)

    def _batch(self, step: int) -> dict[str, Tensor]:
        if self.pool is None:
            return self._fresh_batch()
        if step > 0 and step % self.config.data.pool.reuse == 0:
            self.pool.put(self._fresh_batch())
        return self.pool.draw(make_generator("cpu", self.config.seed, _POOL_STREAM, step, self.group.rank))

    # -- the loop -------------------------------------------------------------------------------

    def run(self, resume: str | os.PathLike[str] | None, max_minutes: float | None, should_stop) -> TrainResult:
        config, group = self.config, self.group
        resume_from = self._prepare_run_dir(resume)
        group.barrier()  # every rank has seen the folder before rank 0 writes into it
        if resume_from is not None:
            self._load(resume_from)
        if group.main:
            (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            write_text(self.run_dir / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False), what="run config")
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", keep_last=config.keep_last)
        if resume_from is not None:
            self._check_no_later_checkpoints()
        self._data()
        self._validation_set()
        network: nn.Module = self.model
        if group.world > 1:
            # Depthwise weights with one input channel have two equivalent layouts; DDP warns about it.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            network = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                # adaptive sampling: the policy heads do not run in uniform passes (pre-training)
                find_unused_parameters=isinstance(self.model, SampledHierarchy),
            )
        if config.compile:
            network = torch.compile(network)
        self.network = network
        params = sum(p.numel() for p in self.model.parameters())
        self.emit(TrainEvent("start", self.step, {
            "steps": config.steps, "start_step": self.step, "device": str(self.device), "world": group.world,
            "params": params, "run_dir": str(self.run_dir), "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
            "batch_per_process": config.data.batch_size, "patch_size": config.data.patch_size,
        }))  # fmt: skip
        log = TrainingLog(self.run_dir, resume_step=self.step if resume_from else None) if group.main else None
        last_checkpoint = resume_from
        validation = None
        if resume_from is None and self.val_samples is not None and config.data.val is not None:
            validation = self._validate_and_log(log, initial=True)
        stopped = "done"
        started = time.perf_counter()
        totals = {"data": self.fill_seconds, "compute": 0.0, "steps": 0}
        window = {"data": self.fill_seconds, "compute": 0.0, "steps": 0, "terms": {}, "counts": {}}
        try:
            while self.step < config.steps:
                stop = 2 if should_stop is not None and should_stop() else 0
                if max_minutes is not None and (time.perf_counter() - started) > 60 * max_minutes:
                    stop = max(stop, 1)
                if group.world > 1:  # every process must stop at the same step
                    flag = torch.tensor([stop], device=self.device if self.device.type == "cuda" else "cpu")
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    stop = int(flag)
                if stop:
                    stopped = "interrupted" if stop == 2 else "time"
                    break
                t0 = time.perf_counter()
                batch = self._batch(self.step)
                synchronize(self.device)
                t1 = time.perf_counter()
                terms = self._update(batch)
                synchronize(self.device)
                t2 = time.perf_counter()
                self.step += 1
                for bucket in (totals, window):
                    bucket["data"] += t1 - t0
                    bucket["compute"] += t2 - t1
                    bucket["steps"] += 1
                for key, value in terms.items():  # a term may be missing at some steps (e.g. by phase)
                    window["terms"][key] = window["terms"].get(key, 0.0) + float(value)
                    window["counts"][key] = window["counts"].get(key, 0) + 1
                if self.step % config.log_every == 0 or self.step == config.steps:
                    self._log_window(log, window, totals)
                    window = {"data": 0.0, "compute": 0.0, "steps": 0, "terms": {}, "counts": {}}
                if config.data.val is not None and (self.step % config.val_every == 0 or self.step == config.steps):
                    validation = self._validate_and_log(log)
                if self.step % config.checkpoint_every == 0 and self.step < config.steps:
                    last_checkpoint = self._save()
            if self.saved_step != self.step:  # known on every rank (paths only on rank 0)
                last_checkpoint = self._save()
        finally:
            if log is not None:
                log.close()
            self.batches = iter(())  # shuts DataLoader workers down
        seconds = totals["data"] + totals["compute"]
        timing = {
            "steps": totals["steps"],
            "seconds": seconds,
            "data_seconds": totals["data"],
            "data_fraction": totals["data"] / seconds if seconds else 0.0,
            "pool_fill_seconds": self.fill_seconds,
            "patches_per_second": totals["steps"] * config.data.batch_size * group.world / seconds if seconds else 0.0,
        }
        self.emit(TrainEvent("end", self.step, {"stopped": stopped, **timing}))
        return TrainResult(self.run_dir, self.step, stopped, last_checkpoint, self.best, validation, timing)

    def _update(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        config = self.config
        lr = learning_rate(
            self.step, base_lr=config.optimizer.lr, schedule=config.schedule.name, total_steps=config.steps,
            min_lr=config.schedule.min_lr, step_size=config.schedule.step_size, gamma=config.schedule.gamma,
            warmup_steps=config.schedule.warmup_steps,
        )  # fmt: skip
        set_learning_rate(self.optimizer, lr)
        if self.channels_last:
            batch = {k: v.contiguous(memory_format=torch.channels_last) for k, v in batch.items()}
        self.network.train()
        generator = make_generator(self.device, config.seed, _MODEL_STREAM, self.step, self.group.rank)
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        )
        with autocast:
            terms = self.objective(self.network, batch, generator, self.step)
        loss = terms["loss"]
        finite = bool(torch.isfinite(loss))
        if self.group.world > 1:  # every process must stop, or the others wait in backward for ever
            flag = torch.tensor([0 if finite else 1], device=loss.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            finite = not int(flag)
        if not finite:
            raise TrainingError(
                f"the loss is {float(loss)} at step {self.step + 1}; the last checkpoint is intact: resume from "
                "it with a lower optimizer.lr, or set grad_clip"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
            terms = {**terms, "grad_norm": grad_norm}
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        return {**{k: v.detach() for k, v in terms.items()}, "lr": torch.tensor(lr)}

    def _log_window(self, log: TrainingLog | None, window: dict, totals: dict) -> None:
        means = {key: value / window["counts"][key] for key, value in window["terms"].items()}
        if self.group.world > 1:  # average the loss terms over processes and steps for the log
            named: list[Any] = [None] * self.group.world  # a process may lack a term another has
            dist.all_gather_object(named, sorted(window["terms"]))
            keys = sorted(set().union(*named) - {"lr"})
            totals_and_counts = torch.tensor(
                [[window["terms"].get(k, 0.0), float(window["counts"].get(k, 0))] for k in keys], dtype=torch.float64
            )
            dist.all_reduce(totals_and_counts)
            means.update({k: float(total / count) for k, (total, count) in zip(keys, totals_and_counts) if count > 0})
        seconds = window["data"] + window["compute"]
        patches = window["steps"] * self.config.data.batch_size * self.group.world
        per_step = (totals["data"] + totals["compute"]) / max(totals["steps"], 1)
        scalars = {
            **means,
            "patches_per_second": patches / seconds if seconds else 0.0,
            "data_fraction": window["data"] / seconds if seconds else 0.0,
        }
        if log is not None:
            log.log_train(self.step, scalars)
        self.emit(TrainEvent("step", self.step, {**scalars, "eta_seconds": per_step * (self.config.steps - self.step)}))

    def _validate_and_log(self, log: TrainingLog | None, initial: bool = False) -> dict[str, Any]:
        model = self.model
        context = self.ema.applied_to(model) if self.ema is not None else contextlib.nullcontext()
        with context:
            scores = validate(
                model, self.val_samples, self.val_share, self.val_total, self.device,
                include_input=initial,
            )  # fmt: skip
        metric = self.config.best_metric
        if metric == "auto":
            metric = "psnr_w" if self.val_has_masks else "psnr"
        value = scores.get(metric)
        improved = (
            not initial
            and self.objective.ready_for_inference(self.step)
            and value is not None
            and (self.best is None or value > self.best["value"])
        )  # the untrained model at step 0 (or a half-trained one, e.g. pre-training) is not worth keeping
        if improved:
            self.best = {"metric": metric, "value": value, "step": self.step}
        if log is not None:
            log.log_val(self.step, scores)
        if improved:
            self._save(best=True)
        self.emit(TrainEvent("validation", self.step, {**scores, "best": self.best, "improved": improved}))
        return scores

    def _save(self, best: bool = False) -> Path | None:
        path = None
        if self.group.main:
            metadata = {
                "config": config_to_dict(self.config),
                "step": self.step,
                "best": self.best,
                "world": self.group.world,
                "schedule": {"name": self.config.schedule.name, "step": self.step},
                "ema_updates": self.ema.num_updates if self.ema is not None else None,
            }
            if self.scaler.is_enabled():
                metadata["scaler"] = dict(self.scaler.state_dict())  # numbers only; JSON keeps ints as ints
            state = {
                "model_state": self.model.state_dict(),
                "optimizer_state": self.optimizer.state_dict(),
                "ema_state": self.ema.state_dict() if self.ema is not None else None,
                "rng_states": capture_rng_states(),
                "metadata": metadata,
            }
            if best:
                path = self.checkpoints.save_best(**state)
            else:
                path = self.checkpoints.save(self.step, **state)
                self.emit(TrainEvent("checkpoint", self.step, {"path": str(path)}))
        if not best:
            self.saved_step = self.step
        self.group.barrier()
        return path


def validation_set(
    config: TrainingConfig, *, rank: int = 0, world: int = 1
) -> tuple[list[dict[str, Tensor]], list[int], int]:
    """The validation samples of ``config`` as :func:`train` builds them: ``(samples, share, total)``.

    ``data.val`` read with crops of ``data.val_size`` (``data.val_count`` of them, evenly spread over a
    file dataset; generated from the seed stream ``seed + 19`` for a synthetic one), each a batch of one
    (``blur``, ``sharp``, ``mask`` (1, C, H, W), ``has_mask``); ``samples[i]`` is item ``share[i]`` of the
    ``total`` (this process's share, :func:`~adeblur.engine.data.validation_batches`). No ``data.val``:
    ``([], [], 0)``. The arguments of :func:`validate`.
    """
    data = config.data
    if data.val is None:
        return [], [], 0
    length = data.val_count if data.val.type == "synthetic" else None
    dataset = build_source(
        data.val, patch_size=data.val_size, crop="random", augment=False,
        seed=config.seed + _VAL_STREAM, blur_on_device=False, length=length, default_split="test",
    )  # fmt: skip
    indices, share = validation_batches(dataset, data.val_count, rank=rank, world=world)
    samples = []
    for position in share:
        sample = dataset[indices[position]]
        entry = {key: value for key, value in collate_samples([sample]).items() if key in ("blur", "sharp", "mask")}
        entry["has_mask"] = torch.tensor("mask" in sample)  # synthetic samples always have one
        samples.append(entry)
    return samples, list(share), len(indices)


@torch.no_grad()
def validate(
    model: nn.Module,
    samples: list[dict[str, Tensor]],
    share: list[int],
    total: int,
    device: torch.device,
    *,
    include_input: bool = False,
) -> dict[str, float | None]:
    """Mean PSNR/SSIM (and their mask-weighted versions where masks exist) of ``model`` on ``samples``.

    ``samples[i]`` is validation item ``share[i]`` of ``total`` (this process's share of the set, from
    :func:`~adeblur.engine.data.validation_batches`); in a distributed run the per-item scores are summed
    over processes, so items repeated by the sampler's padding count once. Outputs are clamped to [0, 1]
    as saved images would be. ``include_input``: also the blurred inputs' own scores (``input_*``).
    """
    keys = ["psnr", "ssim", "psnr_w", "ssim_w"] + (["input_psnr", "input_ssim", "input_psnr_w", "input_ssim_w"] if include_input else [])
    values = torch.zeros(total, len(keys), dtype=torch.float64)
    seen = torch.zeros(total, len(keys), dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        for position, sample in zip(share, samples):
            blur, sharp, mask = (sample[k].to(device) for k in ("blur", "sharp", "mask"))
            restored = model(blur).float().clamp(0, 1)
            pairs = [("", restored)] + ([("input_", blur)] if include_input else [])
            for prefix, image in pairs:
                row = {f"{prefix}psnr": psnr(image, sharp), f"{prefix}ssim": ssim(image, sharp)}
                if bool(sample["has_mask"]) and float(mask.sum()) > 0:
                    row[f"{prefix}psnr_w"] = weighted_psnr(image, sharp, mask)
                    row[f"{prefix}ssim_w"] = weighted_ssim(image, sharp, mask)
                for key, value in row.items():
                    values[position, keys.index(key)] = float(value)
                    seen[position, keys.index(key)] = 1.0
    finally:
        model.train(was_training)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
        dist.all_reduce(seen)
    scores: dict[str, float | None] = {}
    for column, key in enumerate(keys):
        counted = seen[:, column] > 0
        scores[key] = float((values[counted, column] / seen[counted, column]).mean()) if counted.any() else None
    scores["count"] = total
    return scores


# --- helpers -------------------------------------------------------------------------------------


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("config key 'amp': fp16 mixed precision needs CUDA (use bf16 or off on CPU)")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _synth_options(sources) -> dict[str, Any]:
    """Device-side blur options: those of the first synthetic source (they must agree)."""
    found = None
    for source in sources:
        if source.type == "synthetic":
            options = {k: source.options.get(k) for k in ("local_options", "global_options")}
            if found is not None and options != found:
                raise ConfigError(
                    "synthetic sources blurred on the device must share local_options/global_options "
                    "(or set data.synthesize_on: loader)"
                )
            found = options
    if found is None:
        return {}
    return {"local_options": found["local_options"] or {}, "global_options": with_kernel_canvas(found["global_options"])}


def _normalised(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [prefix.rstrip(".")] if old != new else []
