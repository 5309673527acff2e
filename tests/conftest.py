"""Shared fixtures: tiny diffusers UNets saved in every layout the teacher loader accepts, and CLI runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler

from repfusion_pl.teachers.training import build_unet

ROOT = Path(__file__).resolve().parents[1]
#: Committed tiny configs, applied on top of the project's own (`--config A --config B`).
CONF = Path(__file__).resolve().parent / "conf"

TINY_UNET = dict(block_out_channels=(8, 16), layers_per_block=1, attention_levels=(1,), norm_num_groups=4)


def make_tiny_unet(in_channels: int = 1, sample_size: int = 8, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    unet = build_unet(sample_size=sample_size, in_channels=in_channels, **{**TINY_UNET, **overrides})
    # Random, non-zero weights everywhere (diffusers zero-inits some output convs).
    with torch.no_grad():
        for param in unet.parameters():
            param.normal_(0, 0.2)
    return unet.eval()


def save_pipeline(directory: Path, unet, num_train_timesteps: int = 1000) -> Path:
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=num_train_timesteps)).save_pretrained(
        directory
    )
    return directory


@pytest.fixture(scope="session")
def gray_teacher_dir(tmp_path_factory) -> Path:
    """A 1-channel 8 px DDPMPipeline folder (unet/ + scheduler/)."""
    return save_pipeline(tmp_path_factory.mktemp("gray-teacher"), make_tiny_unet(1))


@pytest.fixture(scope="session")
def rgb_teacher_dir(tmp_path_factory) -> Path:
    """A 3-channel 8 px DDPMPipeline folder."""
    return save_pipeline(tmp_path_factory.mktemp("rgb-teacher"), make_tiny_unet(3, seed=1))


@pytest.fixture
def offline_hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, with the hub switched offline."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_hub_repo(cache: Path, repo_id: str, populate) -> Path:
    """Lay out ``repo_id`` in a hub cache exactly as ``huggingface_hub`` stores a download."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    populate(snapshot)
    return snapshot


def quiet_trainer(root: Path, **kwargs):
    """A Trainer with no logger, checkpoints, progress bar or summary, writing under ``root``."""
    from lightning.pytorch import Trainer

    defaults = dict(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    return Trainer(**{**defaults, **kwargs})


def fit_with_checkpoints(
    model, data, root: Path, max_steps: int = -1, ckpt_path: Path | None = None, **kwargs
):
    """Fit ``model`` two epochs, deterministic, a checkpoint every three steps; its TimestepTelemetry.

    The mid-epoch resume tests run it straight, cut (``max_steps``) and resumed (``ckpt_path``).
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    from repfusion_pl import TimestepTelemetry

    telemetry = TimestepTelemetry(plot=False)
    callbacks = [ModelCheckpoint(dirpath=root, every_n_train_steps=3, save_last=True), telemetry]
    trainer = quiet_trainer(
        root,
        max_epochs=2,
        max_steps=max_steps,
        limit_val_batches=0,
        deterministic=True,
        callbacks=callbacks,
        enable_checkpointing=True,
        **kwargs,
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return telemetry


def make_distill_checkpoint(teacher_dir: Path, out: Path, stem: str, arch: str = "resnet18") -> Path:
    """A real RepFusionDistillation checkpoint after two optimiser steps on random images."""
    from torch.utils.data import DataLoader, TensorDataset

    from repfusion_pl import DiffusionTeacher, RepFusionDistillation, Student, UniformTimestep

    torch.manual_seed(0)
    teacher = DiffusionTeacher(str(teacher_dir))
    student = Student(arch, stem=stem, in_channels=teacher.in_channels)
    module = RepFusionDistillation(teacher, student, sampler=UniformTimestep(100))
    images = torch.rand(8, teacher.in_channels, 16, 16)
    trainer = quiet_trainer(out, max_steps=2)
    trainer.fit(module, DataLoader(TensorDataset(images, torch.zeros(8, dtype=torch.long)), batch_size=4))
    path = out / f"{arch}-{stem}-{teacher.in_channels}ch.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def gray_cifar_checkpoint(tmp_path_factory, gray_teacher_dir) -> Path:
    """Distilled ResNet-18, CIFAR stem, 1 channel."""
    return make_distill_checkpoint(gray_teacher_dir, tmp_path_factory.mktemp("ckpt-gray"), "cifar")


@pytest.fixture(scope="session")
def rgb_imagenet_checkpoint(tmp_path_factory, rgb_teacher_dir) -> Path:
    """Distilled ResNet-18, ImageNet stem, 3 channels."""
    return make_distill_checkpoint(rgb_teacher_dir, tmp_path_factory.mktemp("ckpt-rgb"), "imagenet")


def distill_command(
    teacher: Path, root: Path, conf: str | tuple[str, ...], *extra: str, checkpoints: Path | None = None
) -> list[str]:
    """``repfusion fit`` arguments: configs/distill.yaml + ``tests/conf/<conf>``, writing under ``root``.

    Args:
        teacher: The teacher source.
        root: The run's ``default_root_dir``.
        conf: File(s) of tests/conf applied in order on top of configs/distill.yaml.
        *extra: More arguments, last (they override everything).
        checkpoints: The ModelCheckpoint folder; default ``root`` (never the repository's artifacts/).
    """
    confs = (conf,) if isinstance(conf, str) else conf
    return [
        "fit",
        "--config",
        str(ROOT / "configs" / "distill.yaml"),
        *(arg for name in confs for arg in ("--config", str(CONF / name))),
        f"--model.init_args.teacher.init_args.source={teacher}",
        f"--trainer.default_root_dir={root}",
        f"--trainer.callbacks.init_args.dirpath={checkpoints or root}",
        *extra,
    ]


def shapes_distill_command(teacher: Path, root: Path, *extra: str) -> list[str]:
    """``repfusion fit`` arguments: configs/shapes-distill.yaml + tests/conf/shapes_distill_tiny.yaml (16 px,
    two steps), writing under ``root`` (checkpoints in ``root/ckpts``); ``extra`` last."""
    return [
        "fit",
        "--config",
        str(ROOT / "configs/shapes-distill.yaml"),
        "--config",
        str(CONF / "shapes_distill_tiny.yaml"),
        *extra,
        f"--model.init_args.teacher.init_args.source={teacher}",
        f"--trainer.callbacks.init_args.dirpath={root / 'ckpts'}",
        f"--trainer.default_root_dir={root}",
    ]


def run_repfusion(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``repfusion`` in a fresh Python process (DDP, resumes and kills need their own process)."""
    command = [sys.executable, "-m", "repfusion_pl.cli", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
