"""A resumed run equals a straight one: weights, optimiser, EMA, chosen timesteps, every random stream."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from conftest import ROOT, distill_command, fit_with_checkpoints, quiet_trainer, run_repfusion
from repfusion_pl import DiffusionTeacher, PolicyTimestep, RepFusionDistillation, Student, TimestepTelemetry
from repfusion_pl.checkpoints import CONFIG_KEY, read_checkpoint
from repfusion_pl.cli import with_checkpoint_config
from repfusion_pl.data import DigitsDataModule
from repfusion_pl.data.labelled_images import TensorImageDataset
from repfusion_pl.optim import LRSchedule


def loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(24, 1, 16, 16, generator=g), torch.randint(0, 3, (24,), generator=g)
    # A random flip drawn from the global RNG: a resume must continue the augmentation stream too.
    train = TensorImageDataset(images, labels, v2.RandomHorizontalFlip())
    return DataLoader(train, batch_size=6, shuffle=True), DataLoader(
        TensorImageDataset(images, labels), batch_size=12
    )


def fit(
    teacher_dir: Path, root: Path, epochs: int, ckpt_path: Path | None = None
) -> tuple[RepFusionDistillation, TimestepTelemetry]:
    seed_everything(0)
    module = RepFusionDistillation(
        DiffusionTeacher(str(teacher_dir)),
        Student("resnet18", in_channels=1),
        PolicyTimestep(3, baseline="ema", entropy_end_epoch=3),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7),
        schedule=LRSchedule(warmup_steps=6, warmup_start_factor=0.1),
    )
    telemetry = TimestepTelemetry(plot=False)
    callbacks = [ModelCheckpoint(dirpath=root, save_last=True), EMAWeightAveraging(decay=0.9), telemetry]
    trainer = quiet_trainer(
        root, max_epochs=epochs, deterministic=True, callbacks=callbacks, enable_checkpointing=True
    )
    trainer.fit(module, *loaders(), ckpt_path=ckpt_path)
    return module, telemetry


def test_resume_at_an_epoch_boundary_equals_the_straight_run(gray_teacher_dir: Path, tmp_path: Path) -> None:
    straight, straight_telemetry = fit(gray_teacher_dir, tmp_path / "straight", epochs=4)
    fit(gray_teacher_dir, tmp_path / "first", epochs=2)
    resumed, resumed_telemetry = fit(
        gray_teacher_dir, tmp_path / "second", epochs=4, ckpt_path=tmp_path / "first" / "last.ckpt"
    )
    assert len(straight_telemetry.history) == 4
    # The same t for every draw, every epoch (the first two epochs' counts came back from the checkpoint).
    assert resumed_telemetry.history == straight_telemetry.history
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    first = read_checkpoint(tmp_path / "first" / "last.ckpt")
    final_straight, final_resumed = (
        read_checkpoint(p / "last.ckpt") for p in (tmp_path / "straight", tmp_path / "second")
    )
    assert first["epoch"] == 1 and final_resumed["global_step"] == final_straight["global_step"] == 16
    momentum = [s["momentum_buffer"] for s in final_straight["optimizer_states"][0]["state"].values()]
    resumed_momentum = [s["momentum_buffer"] for s in final_resumed["optimizer_states"][0]["state"].values()]
    for a, b in zip(momentum, resumed_momentum, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert final_resumed["lr_schedulers"] == final_straight["lr_schedulers"]


def fit_digits(
    teacher_dir: Path, root: Path, workers: int, max_steps: int = -1, ckpt_path: Path | None = None
) -> tuple[RepFusionDistillation, TimestepTelemetry]:
    """Two epochs of five batches of augmented digits, a checkpoint every three steps (mid-epoch)."""
    seed_everything(0)
    module = RepFusionDistillation(
        DiffusionTeacher(str(teacher_dir)), Student("resnet18", in_channels=1), PolicyTimestep(10)
    )
    data = DigitsDataModule(image_size=8, batch_size=16, num_workers=workers)  # random-crop augmentation
    telemetry = fit_with_checkpoints(module, data, root, max_steps, ckpt_path, limit_train_batches=5)
    return module, telemetry


@pytest.mark.parametrize("workers", [0, 2])
def test_mid_epoch_resume_continues_the_same_batches_and_augmentation(
    gray_teacher_dir: Path, tmp_path: Path, workers: int
) -> None:
    straight, straight_telemetry = fit_digits(gray_teacher_dir, tmp_path / "straight", workers)
    fit_digits(gray_teacher_dir, tmp_path / "first", workers, max_steps=7)
    first = read_checkpoint(tmp_path / "first" / "last.ckpt")
    # Saved after step 6: one batch into epoch 1; the loader's position is the trainer's, not its workers'.
    assert first["global_step"] == 6
    assert first["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 1}]
    resumed, resumed_telemetry = fit_digits(
        gray_teacher_dir, tmp_path / "second", workers, ckpt_path=tmp_path / "first" / "last.ckpt"
    )
    assert resumed_telemetry.history == straight_telemetry.history  # the interrupted epoch's counts too
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def distill_args(teacher_dir: Path, root: Path, *extra: str) -> list[str]:
    return distill_command(teacher_dir, root, ("distill_resume.yaml", "budget_cut.yaml"), *extra)


def timestep_history(checkpoint: dict) -> list[list[int]]:
    return checkpoint["callbacks"]["TimestepTelemetry"]["history"]


def compare_checkpoints(straight: Path, resumed: Path, steps: int) -> None:
    a, b = read_checkpoint(straight), read_checkpoint(resumed)
    assert a["global_step"] == b["global_step"] == steps
    assert timestep_history(b) == timestep_history(a)
    for name, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    ("devices", "confs"),
    [
        # All three in `make test-all` (1-2 min each): the fast suite resumes a CLI run from the
        # checkpoint alone in tests/test_crash_safety.py (SIGTERM, compared with a straight run) and
        # under DDP in tests/test_cli.py::test_two_process_ddp_on_cpu_then_resume.
        pytest.param(1, ("distill_resume.yaml",), marks=pytest.mark.slow),
        pytest.param(2, ("distill_resume.yaml",), marks=pytest.mark.slow),
        # configs/distill-no-labels.yaml: images alone, the contrastive reward (its projection is state).
        pytest.param(
            1,
            ("distill_resume.yaml", str(ROOT / "configs" / "distill-no-labels.yaml")),
            marks=pytest.mark.slow,
        ),
    ],
    ids=["one-process", "two-process-ddp", "unlabelled-contrastive-reward"],
)
def test_cli_resume_from_the_checkpoint_alone_equals_the_straight_run(
    gray_teacher_dir: Path, tmp_path: Path, devices: int, confs: tuple[str, ...]
) -> None:
    ddp = (
        ["--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2"] if devices == 2 else []
    )
    for root, epochs in (("straight", 2), ("first", 1)):
        cut = (*confs, "budget_cut.yaml")
        args = distill_command(gray_teacher_dir, tmp_path / root, cut, f"--trainer.max_epochs={epochs}", *ddp)
        done = run_repfusion(*args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    first = tmp_path / "first" / "last.ckpt"
    stored = yaml.safe_load(read_checkpoint(first)[CONFIG_KEY])
    assert stored["model"]["init_args"]["teacher"]["init_args"]["source"] == str(gray_teacher_dir)
    # No config and no repeated arguments: everything but the new epoch budget comes from the checkpoint.
    done = run_repfusion("fit", f"--ckpt_path={first}", "--trainer.max_epochs=2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    compare_checkpoints(tmp_path / "straight" / "last.ckpt", first, steps=4)


@pytest.mark.slow  # two processes, three runs: about two minutes on two cores
def test_two_process_ddp_mid_epoch_resume_equals_the_straight_run(
    gray_teacher_dir: Path, tmp_path: Path
) -> None:
    ddp = ["--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2"]
    every_step = "--trainer.callbacks.init_args.every_n_train_steps=1"
    for root, steps in (("straight", -1), ("first", 3)):  # step 3: one batch into epoch 1
        args = distill_args(gray_teacher_dir, tmp_path / root, "--trainer.max_epochs=2", every_step, *ddp)
        done = run_repfusion(*args, f"--trainer.max_steps={steps}", cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    first = tmp_path / "first" / "last.ckpt"
    assert read_checkpoint(first)["global_step"] == 3
    done = run_repfusion("fit", f"--ckpt_path={first}", "--trainer.max_steps=-1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    compare_checkpoints(tmp_path / "straight" / "last.ckpt", first, steps=4)


def test_checkpoint_config_is_injected_only_when_needed(gray_cifar_checkpoint: Path, tmp_path: Path) -> None:
    assert with_checkpoint_config(["fit", "--config", "x.yaml"]) == ["fit", "--config", "x.yaml"]
    assert with_checkpoint_config(["fit", "--ckpt_path", "last"]) == ["fit", "--ckpt_path", "last"]
    with pytest.raises(ValueError, match="does not record its run's config"):
        with_checkpoint_config(["fit", f"--ckpt_path={gray_cifar_checkpoint}"])  # written without the CLI
    truncated = tmp_path / "epoch=3.ckpt"
    truncated.write_bytes(gray_cifar_checkpoint.read_bytes()[:1000])
    (tmp_path / "epoch=2.ckpt").write_bytes(gray_cifar_checkpoint.read_bytes())
    with pytest.raises(ValueError, match=r"truncated.*Use an intact checkpoint.*epoch=2\.ckpt"):
        with_checkpoint_config(["fit", "--ckpt_path", str(truncated)])
