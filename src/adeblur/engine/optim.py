"""Optimisers, learning-rate schedules and an exponential moving average of the weights.

* :func:`build_optimizer` makes Adam, AdamW or SGD from configuration values, checked.
* :func:`learning_rate` is the schedule as a pure function of the step: resuming at step ``s`` needs
  nothing but ``s`` to continue the schedule exactly. :func:`set_learning_rate` applies it.
* :class:`ExponentialMovingAverage` keeps a float32 running average of a model's parameters, for
  validation and checkpoints.

The papers' settings: SAPHNet, Adam at 1e-4 halved every 2e5 iterations
(``learning_rate(step, base_lr=1e-4, schedule="step", step_size=200_000, gamma=0.5, ...)``); M2AENet,
AdamW with betas (0.9, 0.9) and weight decay 1e-3, cosine from 1e-3 to 1e-6
(``learning_rate(step, base_lr=1e-3, schedule="cosine", min_lr=1e-6, total_steps=...)``).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from adeblur.errors import ConfigError

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "ExponentialMovingAverage",
    "build_optimizer",
    "learning_rate",
    "set_learning_rate",
    "unwrap_model",
]

#: Names accepted by :func:`build_optimizer`.
OPTIMIZERS = ("adam", "adamw", "sgd")
#: Names accepted by :func:`learning_rate`.
SCHEDULES = ("constant", "cosine", "step")


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def build_optimizer(
    parameters: Iterable[Tensor] | Iterable[dict[str, Any]],
    name: str,
    *,
    lr: float,
    betas: Sequence[float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    eps: float = 1e-8,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """The optimiser ``name`` over ``parameters`` (tensors or parameter groups).

    ``name`` (case-insensitive): ``"adam"`` (:class:`torch.optim.Adam`; its ``weight_decay`` is an L2
    term added to the gradient), ``"adamw"`` (:class:`torch.optim.AdamW`, decoupled weight decay) or
    ``"sgd"`` (:class:`torch.optim.SGD` with heavy-ball ``momentum`` and L2 ``weight_decay``). ``betas``
    and ``eps`` apply to Adam/AdamW, ``momentum`` to SGD. Raises :class:`~adeblur.errors.ConfigError` for
    an unknown name or a value out of range (``lr > 0``, ``0 <= beta < 1``, ``weight_decay >= 0``,
    ``eps > 0``, ``0 <= momentum < 1``).

    >>> model = torch.nn.Linear(2, 2)
    >>> optimizer = build_optimizer(model.parameters(), "adamw", lr=1e-3, betas=(0.9, 0.9), weight_decay=1e-3)
    >>> type(optimizer).__name__, optimizer.defaults["betas"]
    ('AdamW', (0.9, 0.9))
    """
    if not isinstance(name, str) or name.lower() not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    name = name.lower()
    if not _is_real(lr) or lr <= 0:
        raise ConfigError(f"optimizer lr must be a positive number, got {lr!r}")
    if not _is_real(weight_decay) or weight_decay < 0:
        raise ConfigError(f"optimizer weight_decay must be a number >= 0, got {weight_decay!r}")
    if name == "sgd":
        if not _is_real(momentum) or not 0 <= momentum < 1:
            raise ConfigError(f"optimizer momentum must be in [0, 1), got {momentum!r}")
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) != 2:
        raise ConfigError(f"optimizer betas must be two numbers, got {betas!r}")
    if not all(_is_real(beta) and 0 <= beta < 1 for beta in betas):
        raise ConfigError(f"optimizer betas must be in [0, 1), got {list(betas)!r}")
    if not _is_real(eps) or eps <= 0:
        raise ConfigError(f"optimizer eps must be a positive number, got {eps!r}")
    optimizer_class = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    betas = (float(betas[0]), float(betas[1]))
    return optimizer_class(parameters, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def learning_rate(
    step: int,
    *,
    base_lr: float,
    schedule: str,
    total_steps: int,
    min_lr: float = 0.0,
    step_size: int | None = None,
    gamma: float = 0.5,
    warmup_steps: int = 0,
) -> float:
    """The learning rate of the update made at ``step`` (counted from 0: the update that produces step + 1).

    A pure function of ``step``, so a resumed run continues the schedule exactly. Schedules:

    * ``"constant"``: ``base_lr``.
    * ``"cosine"`` (SGDR's annealing, Loshchilov & Hutter 2017, Eq. 5, without restarts):
      ``min_lr + (base_lr - min_lr) * (1 + cos(pi * t)) / 2`` with
      ``t = (step - warmup_steps) / (total_steps - warmup_steps)`` clipped to [0, 1]: ``base_lr`` when the
      warm-up ends, ``min_lr`` at ``step = total_steps`` and after (the same values as
      :class:`torch.optim.lr_scheduler.CosineAnnealingLR` with ``T_max = total_steps`` and no warm-up).
    * ``"step"``: ``max(min_lr, base_lr * gamma ** (step // step_size))`` (SAPHNet: 1e-4, halved every
      2e5 iterations).

    Warm-up, for every schedule: during the first ``warmup_steps`` updates the rate is multiplied by
    ``(step + 1) / warmup_steps``, rising linearly from ``base_lr / warmup_steps`` (not 0: no wasted
    update) to the schedule's own value. ``total_steps`` is only used by ``"cosine"`` (it must exceed
    ``warmup_steps`` there). Bad configuration values raise :class:`~adeblur.errors.ConfigError`.

    >>> learning_rate(0, base_lr=1e-3, schedule="cosine", total_steps=100, min_lr=1e-6)
    0.001
    >>> learning_rate(100, base_lr=1e-3, schedule="cosine", total_steps=100, min_lr=1e-6)
    1e-06
    >>> learning_rate(200_000, base_lr=1e-4, schedule="step", total_steps=600_000, step_size=200_000)
    5e-05
    """
    step = operator.index(step)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if schedule not in SCHEDULES:
        choices = ", ".join(SCHEDULES)
        raise ConfigError(f"unknown learning-rate schedule {schedule!r}; choose one of {choices}")
    if not _is_real(base_lr) or base_lr <= 0:
        raise ConfigError(f"base_lr must be a positive number, got {base_lr!r}")
    if not _is_real(min_lr) or not 0 <= min_lr <= base_lr:
        raise ConfigError(f"min_lr must be a number in [0, base_lr = {base_lr!r}], got {min_lr!r}")
    if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
        raise ConfigError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps < 1:
        raise ConfigError(f"total_steps must be an integer >= 1, got {total_steps!r}")

    if schedule == "constant":
        rate = float(base_lr)
    elif schedule == "cosine":
        if warmup_steps >= total_steps:
            raise ConfigError(f"warmup_steps ({warmup_steps}) must be less than total_steps ({total_steps})")
        progress = min(max(step - warmup_steps, 0) / (total_steps - warmup_steps), 1.0)
        if progress == 1.0:
            rate = float(min_lr)  # exact, not within rounding of it
        else:
            rate = min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2
    else:
        if not isinstance(step_size, int) or isinstance(step_size, bool) or step_size < 1:
            raise ConfigError(f"the step schedule needs step_size, an integer >= 1, got {step_size!r}")
        if not _is_real(gamma) or not 0 < gamma <= 1:
            raise ConfigError(f"gamma must be a number in (0, 1], got {gamma!r}")
        rate = max(float(min_lr), base_lr * gamma ** (step // step_size))

    if step < warmup_steps:
        rate *= (step + 1) / warmup_steps
    return rate


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group of ``optimizer`` to ``lr`` (in place).

    A group whose ``lr`` is a tensor (capturable/compiled optimisers) has it filled, keeping the tensor.

    >>> optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    >>> set_learning_rate(optimizer, 0.05)
    >>> optimizer.param_groups[0]["lr"]
    0.05
    """
    for group in optimizer.param_groups:
        if isinstance(group["lr"], Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` (``.module``) and
    ``torch.compile`` (``._orig_mod``) wrappers, however nested.

    >>> linear = torch.nn.Linear(2, 2)
    >>> unwrap_model(torch.nn.DataParallel(linear)) is linear
    True
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


class ExponentialMovingAverage:
    """EMA of a model's parameters (buffers copied), for evaluation and checkpoints.

    Each update does ``average = decay_n * average + (1 - decay_n) * parameter`` for every parameter,
    with ``decay_n = min(decay, (1 + n) / (10 + n))`` when ``warmup`` (the warm-up of TensorFlow's
    ``ExponentialMovingAverage`` with ``num_updates``; ``n`` = updates done before this one, so the first
    update uses 0.1 and ``decay`` is reached after about ``9 / (1 - decay)`` updates) and
    ``decay_n = decay`` otherwise. Buffers (e.g. batch-norm statistics) are copied, not averaged.

    The average lives on the model's device (it follows the model there if the model moves) in float32,
    or float64 for float64 parameters. Wrappers (``DistributedDataParallel``, ``torch.compile``) are looked
    through, for the model given here and to every method.

    :meth:`state_dict` has exactly the keys of the model's ``state_dict`` (it loads into the model). The
    update count is not in it: :attr:`num_updates` is a plain ``int`` attribute that a checkpoint saves
    and restores beside it, so that a resumed run continues with the same decay:

    >>> model = torch.nn.Linear(2, 1)
    >>> ema = ExponentialMovingAverage(model, decay=0.999)
    >>> with torch.no_grad():
    ...     _ = model.weight.add_(1.0)
    >>> ema.update(model)
    >>> checkpoint = {"ema": ema.state_dict(), "ema_num_updates": ema.num_updates}
    >>> resumed = ExponentialMovingAverage(model)
    >>> resumed.load_state_dict(checkpoint["ema"])
    >>> resumed.num_updates = checkpoint["ema_num_updates"]
    >>> _ = torch.nn.Linear(2, 1).load_state_dict(resumed.state_dict())
    >>> with ema.applied_to(model):  # validate with the averaged weights
    ...     pass
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not _is_real(decay) or not 0 <= decay <= 1:
            raise ConfigError(f"EMA decay must be a number in [0, 1], got {decay!r}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        #: Updates made so far (drives the warm-up); save and restore it with the state dict.
        self.num_updates = 0
        model = unwrap_model(model)
        parameter_names = {name for name, _ in model.named_parameters(remove_duplicate=False)}
        self._parameter_names: list[str] = []
        self._buffer_names: list[str] = []
        self._average: dict[str, Tensor] = {}
        for name, tensor in model.state_dict(keep_vars=True).items():
            if not isinstance(tensor, Tensor):
                continue  # extra state (get_extra_state) is not a tensor; it is not averaged
            if name in parameter_names:
                self._parameter_names.append(name)
                dtype = torch.promote_types(tensor.dtype, torch.float32)
                self._average[name] = tensor.detach().to(dtype=dtype, copy=True)
            else:
                self._buffer_names.append(name)
                self._average[name] = tensor.detach().clone()

    def _model_tensors(self, model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
        """The model's parameters and buffers, in the order of the averaged ones."""
        model = unwrap_model(model)
        parameters = dict(model.named_parameters(remove_duplicate=False))
        buffers = dict(model.named_buffers(remove_duplicate=False))
        try:
            return (
                [parameters[name].detach() for name in self._parameter_names],
                [buffers[name].detach() for name in self._buffer_names],
            )
        except KeyError as error:
            raise ValueError(f"the model has no {error.args[0]!r}: not the model this EMA averages") from None

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current parameters into the average and copy its buffers (one foreach op)."""
        parameters, buffers = self._model_tensors(model)
        decay = self.decay
        if self.warmup:
            decay = min(decay, (1 + self.num_updates) / (10 + self.num_updates))
        averages = [self._average[name] for name in self._parameter_names]
        if averages and averages[0].device != parameters[0].device:
            self._average = {name: tensor.to(parameters[0].device) for name, tensor in self._average.items()}
            averages = [self._average[name] for name in self._parameter_names]
        targets = [p if p.dtype == a.dtype else p.to(a.dtype) for p, a in zip(parameters, averages)]
        if averages:
            torch._foreach_lerp_(averages, targets, 1.0 - decay)
        for name, buffer in zip(self._buffer_names, buffers):
            self._average[name].copy_(buffer)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged weights under the model's ``state_dict`` names (parameters in float32)."""
        return dict(self._average)

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Load averaged weights (from :meth:`state_dict`, or a model's ``state_dict``). :attr:`num_updates`
        is not changed. Raises :class:`~adeblur.errors.ConfigError` when keys or shapes do not match."""
        missing = [name for name in self._average if name not in state]
        unexpected = [name for name in state if name not in self._average]
        if missing or unexpected:
            raise ConfigError(
                f"EMA state does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        for name, average in self._average.items():
            if tuple(state[name].shape) != tuple(average.shape):
                raise ConfigError(
                    f"EMA state {name!r} has shape {tuple(state[name].shape)}, the model {tuple(average.shape)}"
                )
        with torch.no_grad():
            for name, average in self._average.items():
                average.copy_(state[name])

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's parameters and buffers with the averaged ones (cast to their dtype)."""
        parameters, buffers = self._model_tensors(model)
        for name, tensor in zip(self._parameter_names + self._buffer_names, parameters + buffers):
            tensor.copy_(self._average[name])

    @contextmanager
    def applied_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Context in which ``model`` holds the averaged weights; its own are restored exactly on exit
        (also on an exception). Yields ``model``."""
        parameters, buffers = self._model_tensors(model)
        saved = [tensor.clone() for tensor in parameters + buffers]
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for tensor, original in zip(parameters + buffers, saved):
                    tensor.copy_(original)
