"""Optimisers and learning-rate schedulers from LightningCLI factories, with a default per module."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable


def build_optimization(
    params: Iterable[Any],
    optimizer: OptimizerCallable | None,
    lr_scheduler: LRSchedulerCallable | None,
    default: Callable[[Iterable[Any]], torch.optim.Optimizer],
) -> Any:
    """What ``configure_optimizers`` returns: the optimiser, with its scheduler when one is given.

    Args:
        params: Parameters or parameter groups.
        optimizer: The configured optimiser factory; ``None`` uses ``default``.
        lr_scheduler: The configured scheduler factory; ``None`` for a constant learning rate.
        default: Builds the module's default optimiser.
    """
    built = default(params) if optimizer is None else optimizer(params)
    if lr_scheduler is None:
        return built
    return {"optimizer": built, "lr_scheduler": lr_scheduler(built)}
