"""RepresentationMonitor: the probe it reports, the bar it computes once, its state, and no side effects."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from conftest import distill_command, quiet_trainer, run_repfusion
from repfusion_pl import DiffusionTeacher, PolicyTimestep, RepFusionDistillation, Student
from repfusion_pl.checkpoints import read_checkpoint
from repfusion_pl.data import DigitsDataModule
from repfusion_pl.distillation import rng
from repfusion_pl.probing import probe_student
from repfusion_pl.probing.monitor import RepresentationMonitor


def make_module(teacher_dir: Path) -> RepFusionDistillation:
    torch.manual_seed(0)
    return RepFusionDistillation(
        DiffusionTeacher(str(teacher_dir)), Student("resnet18", in_channels=1), PolicyTimestep(num_classes=10)
    )


def digits() -> DigitsDataModule:
    return DigitsDataModule(image_size=8, batch_size=32, val_fraction=0.1, test_fraction=0.1)


def fit(teacher_dir, root, epochs, callbacks, ckpt_path=None, seed=0):
    torch.manual_seed(seed)
    module = make_module(teacher_dir)
    trainer = quiet_trainer(
        root,
        max_epochs=epochs,
        limit_train_batches=3,
        limit_val_batches=0,
        callbacks=callbacks,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
    )
    trainer.fit(module, datamodule=digits(), ckpt_path=ckpt_path)
    return module, trainer


def test_the_student_score_is_probe_student_and_the_bar_is_computed_once(
    gray_teacher_dir, tmp_path, monkeypatch
):
    calls = []
    original = RepresentationMonitor._random_bar
    monkeypatch.setattr(
        RepresentationMonitor, "_random_bar", staticmethod(lambda *a: calls.append(1) or original(*a))
    )
    monitor = RepresentationMonitor(max_images=64, knn_k=5)
    module, trainer = fit(gray_teacher_dir, tmp_path, 2, [monitor])
    assert [entry["epoch"] for entry in monitor.history] == [-1, 0, 1] and len(calls) == 1
    rng.seed_all(monitor.seed)  # the monitor's fixed probe images and augmentations
    loaders = monitor.loaders(trainer)
    assert monitor.history[-1]["student"] == probe_student(module.student, loaders, 10)["val_acc"]
    assert {"random", "teacher", "t", "student_knn"} <= set(monitor.history[-1])
    assert 0 <= monitor.history[-1]["teacher"] <= 1 and 0 <= monitor.history[-1]["t"] < 1000
    assert "probe/student" in trainer.callback_metrics and "probe/random" in trainer.callback_metrics
    assert (Path(trainer.log_dir) / "representation_probe.png").read_bytes()[:4] == b"\x89PNG"


def test_the_monitor_leaves_training_exactly_as_it_was(gray_teacher_dir, tmp_path):
    watched, _ = fit(gray_teacher_dir, tmp_path / "a", 2, [RepresentationMonitor(max_images=64)])
    plain, _ = fit(gray_teacher_dir, tmp_path / "b", 2, [])
    for (name, a), b in zip(watched.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_history_round_trips_through_a_checkpoint_and_the_bar_is_not_recomputed(gray_teacher_dir, tmp_path):
    first = RepresentationMonitor(max_images=64, teacher=False)
    fit(gray_teacher_dir, tmp_path, 1, [first, ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    stored = read_checkpoint(tmp_path / "last.ckpt")["callbacks"]["RepresentationMonitor"]
    assert stored["history"] == first.history and stored["random_bar"] == first.random_bar
    resumed = RepresentationMonitor(max_images=64, teacher=False)
    fit(
        gray_teacher_dir,
        tmp_path / "b",
        2,
        [resumed, ModelCheckpoint(dirpath=tmp_path / "b", save_last=True)],
        ckpt_path=tmp_path / "last.ckpt",
    )
    assert [entry["epoch"] for entry in resumed.history] == [-1, 0, 1]  # no second "before training"
    assert resumed.history[:2] == first.history


def test_unlabelled_probe_data_is_refused_with_the_fix(gray_teacher_dir, tmp_path):
    monitor = RepresentationMonitor(data=DigitsDataModule(image_size=8, labels=False))
    with pytest.raises(ValueError, match="labelled data module"):
        fit(gray_teacher_dir, tmp_path, 1, [monitor])


@pytest.mark.slow
def test_two_process_ddp_logs_one_value_per_evaluation(gray_teacher_dir, tmp_path):
    args = distill_command(
        gray_teacher_dir,
        tmp_path,
        "distill_resume.yaml",
        "--trainer.strategy=ddp",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.max_epochs=2",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={tmp_path}",
    )
    done = run_repfusion(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader(next(tmp_path.rglob("metrics.csv")).open()))
    logged = [row["probe/student"] for row in rows if row.get("probe/student")]
    assert len(logged) == 2  # two epochs, one evaluation each, whatever the number of ranks
    assert done.stderr.count("probe after epoch 1") == 1 or done.stdout.count("probe after epoch 1") == 1


def test_the_teacher_score_is_the_probe_of_all_taps_side_by_side(gray_teacher_dir):
    from repfusion_pl import FixedTimestep
    from repfusion_pl.probing import run_probe

    two = ["mid_block.resnets.0", "up_blocks.1.resnets.1"]
    module = RepFusionDistillation(
        DiffusionTeacher(str(gray_teacher_dir), layers=two),
        Student("resnet18", in_channels=1, taps=["layer3", "layer4"]),
        FixedTimestep(t=40),
        channels_last=False,
    )
    monitor = RepresentationMonitor(data=digits(), max_images=64)
    loaders = monitor.loaders(None)  # type: ignore[arg-type]  # the monitor's own data: no trainer needed
    torch.manual_seed(0)  # the same shuffled, augmented training images for both
    score = monitor._teacher_score(module, loaders, 10)
    torch.manual_seed(0)
    next(iter(loaders["val"]))  # the monitor's look at a batch to find the mode (a loader draws a seed)
    probed = run_probe(str(gray_teacher_dir), loaders, 10, [40], layers=two, layer_sets=[two], progress=False)
    assert score == {"teacher": probed["rows"][-1]["val_acc"], "t": 40}


def test_every_evaluation_probes_the_same_images(gray_teacher_dir, tmp_path):
    monitor = RepresentationMonitor(max_images=64)
    module, trainer = fit(gray_teacher_dir, tmp_path, 1, [monitor])
    torch.manual_seed(123)  # whatever state the run's streams are in
    again = monitor.evaluate(trainer, module, epoch=0)
    unchanged = {key: value for key, value in monitor.history[1].items() if key != "seconds"}
    assert {key: value for key, value in again.items() if key != "seconds"} == unchanged
