"""Learning-rate schedules: per-iteration stepping, linear warm-up, and what they refuse."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning.pytorch import Callback
from torch.utils.data import DataLoader, TensorDataset

from conftest import quiet_trainer
from repfusion_pl import BackboneSpec, ClassificationTask
from repfusion_pl.optim import LRSchedule


class RecordLR(Callback):
    """The learning rate each optimiser step used, and the one after the last step."""

    def __init__(self) -> None:
        self.used: list[float] = []
        self.final = float("nan")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.used.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_end(self, trainer, pl_module) -> None:
        self.final = trainer.optimizers[0].param_groups[0]["lr"]


def train(tmp_path, steps: int, per_epoch: int, schedule: LRSchedule, scheduler=None) -> RecordLR:
    torch.manual_seed(0)
    task = ClassificationTask(
        2,
        backbone=BackboneSpec(in_channels=1),
        optimizer=partial(torch.optim.SGD, lr=0.1),
        lr_scheduler=scheduler,
        schedule=schedule,
    )
    data = TensorDataset(torch.rand(per_epoch * 2, 1, 8, 8), torch.randint(0, 2, (per_epoch * 2,)))
    record = RecordLR()
    trainer = quiet_trainer(tmp_path, max_steps=steps, callbacks=[record], limit_val_batches=0)
    trainer.fit(task, DataLoader(data, batch_size=2))
    return record


def test_poly_per_iteration_reaches_its_end_value_after_total_iters(tmp_path):
    poly = partial(torch.optim.lr_scheduler.PolynomialLR, total_iters=20, power=0.9)
    record = train(tmp_path, steps=20, per_epoch=5, schedule=LRSchedule(interval="step"), scheduler=poly)
    expected = [0.1 * (1 - i / 20) ** 0.9 for i in range(20)]
    assert record.used == pytest.approx(expected, rel=1e-6)
    assert record.final == pytest.approx(0.0, abs=1e-12)


def test_per_epoch_stepping_is_what_a_per_iteration_schedule_must_not_get(tmp_path):
    poly = partial(torch.optim.lr_scheduler.PolynomialLR, total_iters=20, power=0.9)
    record = train(tmp_path, steps=20, per_epoch=5, schedule=LRSchedule(interval="epoch"), scheduler=poly)
    assert record.final == pytest.approx(0.1 * (1 - 4 / 20) ** 0.9)  # four epochs: four steps of twenty


def test_warmup_reaches_the_base_rate_then_hands_over(tmp_path):
    warm = LRSchedule(warmup_steps=5, warmup_start_factor=0.1)
    record = train(tmp_path, steps=8, per_epoch=5, schedule=warm)
    expected = [0.1 * (0.1 + 0.9 * i / 5) for i in range(5)] + [0.1, 0.1, 0.1]
    assert record.used == pytest.approx(expected, rel=1e-6)


def test_warmup_multiplies_the_scheduled_rate(tmp_path):
    # mmcv's warm-up: the poly-scheduled rate times the linear warm-up factor.
    poly = partial(torch.optim.lr_scheduler.PolynomialLR, total_iters=10, power=1.0)
    schedule = LRSchedule(interval="step", warmup_steps=4, warmup_start_factor=0.5)
    record = train(tmp_path, steps=10, per_epoch=5, schedule=schedule, scheduler=poly)
    expected = [0.1 * (1 - i / 10) * (0.5 + 0.5 * min(i, 4) / 4) for i in range(10)]
    assert record.used == pytest.approx(expected, rel=1e-6)


def test_bad_schedules_are_explained(tmp_path):
    with pytest.raises(ValueError, match="'epoch' or 'step'"):
        LRSchedule(interval="batch")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"warm-up of 50 optimiser steps is longer than the run \(6 steps\)"):
        train(tmp_path, steps=6, per_epoch=3, schedule=LRSchedule(warmup_steps=50))


@pytest.mark.parametrize(("rule", "factor"), [("linear", 4.0), ("sqrt", 2.0)])
def test_the_batch_rule_scales_every_rate_to_the_global_batch(tmp_path, rule, factor):
    from repfusion_pl.data import DigitsDataModule

    torch.manual_seed(0)
    schedule = LRSchedule(reference_batch=4, batch_scaling=rule)
    task = ClassificationTask(10, backbone=BackboneSpec(in_channels=1), schedule=schedule)
    record = RecordLR()
    trainer = quiet_trainer(
        tmp_path, max_steps=1, accumulate_grad_batches=2, callbacks=[record], limit_val_batches=0
    )
    # Global batch: 8 per device x 1 device x 2 accumulated = 16, four times the reference 4.
    trainer.fit(task, datamodule=DigitsDataModule(image_size=8, batch_size=8))
    assert record.used[0] == pytest.approx(1e-3 * factor)


def test_a_batch_rule_without_a_batch_size_to_read_is_refused(tmp_path):
    task = ClassificationTask(
        2, backbone=BackboneSpec(in_channels=1), schedule=LRSchedule(reference_batch=64)
    )
    data = DataLoader(TensorDataset(torch.rand(4, 1, 8, 8), torch.randint(0, 2, (4,))), batch_size=2)
    with pytest.raises(ValueError, match=r"no integer batch_size.*reference_batch: null"):
        quiet_trainer(tmp_path, max_steps=1).fit(task, data)
    with pytest.raises(ValueError, match=r"reference_batch must be >= 1"):
        LRSchedule(reference_batch=0)
