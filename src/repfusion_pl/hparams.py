"""Hyperparameter hygiene shared by every LightningModule of the package."""

from __future__ import annotations

import dataclasses
from typing import Any

from lightning.pytorch import LightningModule
from torch import nn


def drop_live_object_hparams(module: LightningModule) -> None:
    """Keep only hyperparameters that a weights-only checkpoint can hold.

    Under LightningCLI, component arguments arrive in ``hparams`` as ``class_path`` dicts, which
    rebuild the run on resume. Built in plain Python they are live modules and callables: those are
    dropped here rather than pickled into every checkpoint, and dataclass specs become plain dicts
    (what the CLI records for them too).
    """
    hparams: dict[str, Any] = dict(module.hparams)
    live = [key for key, value in hparams.items() if isinstance(value, nn.Module) or callable(value)]
    module.remove_ignored_hparams(live)
    initial: dict[str, Any] = module._hparams_initial  # type: ignore[assignment]
    for key in live:
        initial.pop(key, None)
    for key, value in hparams.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            module.hparams[key] = dataclasses.asdict(value)
            if key in initial:
                initial[key] = dataclasses.asdict(value)
