"""Runs of a study: configs merged and written to disk, then run by the real ``repfusion`` CLI in-process."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule, LightningModule

import repfusion_pl.data  # noqa: F401  (registers the data modules for class_path resolution)
import repfusion_pl.tasks  # noqa: F401
from repfusion_pl.cli import build_cli

#: Trainer settings of every study run: one device, nothing written but what the study asks for.
QUIET_TRAINER = {
    "accelerator": "auto",
    "devices": 1,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "enable_checkpointing": False,
    "logger": False,
    "callbacks": None,
}


def merge(base: dict, update: dict) -> dict:
    """A deep copy of ``base`` with ``update`` merged in: nested dicts merge, other values replace.

    A dict that names a different ``class_path`` than the one it meets replaces it whole.
    """
    out = copy.deepcopy(base)
    for key, value in update.items():
        current = out.get(key)
        if isinstance(value, dict) and isinstance(current, dict) and _same_class(current, value):
            out[key] = merge(current, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _same_class(current: dict, update: dict) -> bool:
    # A new class_path replaces the whole block: the old init_args may not fit the new class.
    return update.get("class_path", current.get("class_path")) == current.get("class_path")


def write_yaml(config: dict, path: Path, header: str = "") -> Path:
    """Write ``config`` as YAML with a comment header; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


def fit_config(path: Path, test: bool = False, checkpoint: Path | None = None) -> dict[str, float]:
    """Run ``repfusion fit --config path`` in this process, then optionally test and save a checkpoint.

    Args:
        path: The config file.
        test: Run the test split on the final weights afterwards.
        checkpoint: Save the final state here (with the module's provenance, as `ModelCheckpoint` would).

    Returns:
        The trainer's final logged metrics (test metrics included when ``test``) as floats.
    """
    # Lightning's per-run banners (devices, seed, tips) would bury the study's own progress bar.
    chatty = logging.getLogger("lightning.pytorch")
    level = chatty.level
    chatty.setLevel(logging.WARNING)
    try:
        cli = build_cli(["--config", str(path)], run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if v.numel() == 1}
        if checkpoint is not None:
            cli.trainer.save_checkpoint(checkpoint, weights_only=False)  # full state: resumable
        if test:
            results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
            metrics.update({k: float(v) for k, v in results[0].items()})
    finally:
        chatty.setLevel(level)
    return metrics


def _instantiate(block: dict, base: type) -> Any:
    """Build a ``{"class_path": ..., "init_args": {...}}`` block with jsonargparse, as the CLI would."""
    parser = ArgumentParser()
    parser.add_subclass_arguments(base, "block")
    return parser.instantiate_classes(parser.parse_object({"block": block})).block


def instantiate_data(block: dict) -> LightningDataModule:
    """The data module of a config's ``data`` block."""
    return _instantiate(block, LightningDataModule)


def instantiate_model(block: dict) -> LightningModule:
    """The LightningModule of a config's ``model`` block."""
    return _instantiate(block, LightningModule)
