"""Optimisers and learning-rate schedules from LightningCLI factories, with a default per module.

The schedule is Lightning's scheduler config: the configured scheduler steps every ``epoch`` or every
optimiser ``step`` (`LRSchedule.interval`), and an optional linear warm-up (`torch.optim.lr_scheduler.
LinearLR`, stepped per optimiser step) is chained in front of it. PyTorch's step, multi-step,
polynomial, exponential and cosine schedulers are chainable, so during warm-up the learning rate is
the scheduled one times the warm-up factor, as in mmcv's warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn


@dataclass(frozen=True)
class LRSchedule:
    """How the learning rate moves besides the scheduler's own rule.

    Args:
        interval: Step the configured ``lr_scheduler`` every ``epoch`` or every optimiser ``step``
            (per-iteration schedules such as ``PolynomialLR(total_iters=<iterations>)`` need ``step``).
        warmup_steps: Optimiser steps of linear warm-up (0: none).
        warmup_start_factor: The warm-up's first learning rate as a fraction of the scheduled one.
        reference_batch: The global batch the configured learning rates were chosen for (images per
            optimiser step); with it, every rate is scaled to the run's global batch (per-device
            batch x devices x nodes x ``accumulate_grad_batches``) by ``batch_scaling``. ``None``:
            the rates as configured, whatever the world size.
        batch_scaling: ``linear`` (Goyal et al., 2017: SGD) or ``sqrt`` (often better for Adam).
    """

    interval: Literal["epoch", "step"] = "epoch"
    warmup_steps: int = 0
    warmup_start_factor: float = 0.001
    reference_batch: int | None = None
    batch_scaling: Literal["linear", "sqrt"] = "linear"

    def __post_init__(self) -> None:
        if self.interval not in ("epoch", "step"):
            raise ValueError(
                f"schedule.interval must be 'epoch' or 'step', got {self.interval!r}: 'step' for "
                "per-iteration schedules (poly, warm-up), 'epoch' for per-epoch milestones"
            )
        if self.warmup_steps < 0:
            raise ValueError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 < self.warmup_start_factor <= 1:
            raise ValueError(
                f"schedule.warmup_start_factor must be in (0, 1], got {self.warmup_start_factor}"
            )
        if self.reference_batch is not None and self.reference_batch < 1:
            raise ValueError(f"schedule.reference_batch must be >= 1 (or null), got {self.reference_batch}")


def batch_scale(schedule: LRSchedule, trainer: Trainer | None) -> float:
    """The factor ``schedule`` applies to every learning rate for the run's global batch."""
    if schedule.reference_batch is None or trainer is None:
        return 1.0
    batch = getattr(trainer.datamodule, "batch_size", None)  # type: ignore[attr-defined]
    if not isinstance(batch, int):
        raise ValueError(
            "schedule.reference_batch scales the learning rate to the global batch, but the data module "
            "has no integer batch_size to read it from; give it one or set reference_batch: null"
        )
    global_batch = batch * trainer.world_size * trainer.accumulate_grad_batches
    ratio = global_batch / schedule.reference_batch
    return ratio if schedule.batch_scaling == "linear" else math.sqrt(ratio)


def check_warmup_fits(schedule: LRSchedule, trainer: Trainer | None) -> int | None:
    """Refuse a warm-up longer than the trainer's run (not checked in ``fast_dev_run``); the run's length.

    Call it once the training data is set up (``on_train_start``): `Trainer.estimated_stepping_batches`
    sets the data up when it is not, which must not happen before a resume restores the RNG streams.

    Returns:
        The run's optimiser steps; ``None`` without a trainer or for a run without an end.
    """
    if trainer is None:
        return None
    total = trainer.estimated_stepping_batches
    total_steps = None if total == float("inf") else int(total)
    if not schedule.warmup_steps or trainer.fast_dev_run:  # type: ignore[attr-defined]
        return total_steps
    if total_steps is not None and schedule.warmup_steps > total_steps:
        raise ValueError(
            f"the warm-up of {schedule.warmup_steps} optimiser steps is longer than the run "
            f"({total_steps} steps); lower model.schedule.warmup_steps or train longer"
        )
    return total_steps


def authors_sgd(params: Iterable[Any], fused: bool = False) -> torch.optim.Optimizer:
    """The authors' optimiser: SGD(lr=0.1, momentum=0.9, weight_decay=1e-4); fused on a GPU."""
    # One fused kernel per step on a GPU instead of a loop of small ones.
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4, fused=fused or None)


def build_optimization(
    params: Iterable[Any],
    optimizer: OptimizerCallable | None,
    lr_scheduler: LRSchedulerCallable | None,
    default: Callable[[Iterable[Any]], torch.optim.Optimizer],
    schedule: LRSchedule | None = None,
    trainer: Trainer | None = None,
) -> Any:
    """What ``configure_optimizers`` returns: the optimiser and its scheduler configs, if any.

    Args:
        params: Parameters or parameter groups; a group's ``lr_scale`` multiplies the optimiser's rate.
        optimizer: The configured optimiser factory; ``None`` uses ``default``.
        lr_scheduler: The configured scheduler factory; ``None`` for a constant learning rate.
        default: Builds the module's default optimiser.
        schedule: The scheduler's interval, the warm-up and the batch rule; default per epoch, none.
        trainer: The run's trainer, for the global batch the rule scales to.
    """
    schedule = schedule or LRSchedule()
    built = default(params) if optimizer is None else optimizer(params)
    scale = batch_scale(schedule, trainer)
    for group in built.param_groups:  # a group's multiple of the configured rate (timm's convention)
        group["lr"] = group["lr"] * group.get("lr_scale", 1.0) * scale
    configs = []
    if schedule.warmup_steps:
        warmup = torch.optim.lr_scheduler.LinearLR(
            built, start_factor=schedule.warmup_start_factor, total_iters=schedule.warmup_steps
        )
        configs.append({"scheduler": warmup, "interval": "step", "name": "lr-warmup"})
    if lr_scheduler is not None:
        configs.append({"scheduler": lr_scheduler(built), "interval": schedule.interval})
    if not configs:
        return built
    if len(configs) == 1:
        return {"optimizer": built, "lr_scheduler": configs[0]}
    return [built], configs


def check_sampler_lr(sampler_lr: float | None, sampler: nn.Module) -> None:
    """Refuse a learning rate for a timestep sampler that has no parameters to learn."""
    if sampler_lr is not None and not any(True for _ in sampler.parameters()):
        summary = getattr(sampler, "summary", lambda: type(sampler).__name__)()
        raise ValueError(
            f"sampler_lr={sampler_lr} is for a learned sampler, but {summary} learns nothing: leave "
            "sampler_lr out, or use PolicyTimestep"
        )


def learner_groups(
    student: Iterable[nn.Parameter], sampler: nn.Module, sampler_lr: float | None
) -> list[dict[str, Any]]:
    """Parameter groups: the student's first, a learned sampler's second, if any.

    The sampler's group takes the sampler's own ``lr`` when it has one, else ``sampler_lr``.
    """
    groups: list[dict[str, Any]] = [{"name": "student", "params": [p for p in student if p.requires_grad]}]
    learned = [p for p in sampler.parameters() if p.requires_grad]
    own = getattr(sampler, "lr", None)
    lr = own if own is not None else sampler_lr
    if learned:
        groups.append({"name": "sampler", "params": learned})
        if lr is not None:
            groups[-1]["lr"] = lr
    return groups
