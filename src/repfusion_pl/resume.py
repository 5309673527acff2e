"""Resuming with nothing but a checkpoint: the run's config travels inside it, and bad files fail clearly.

``repfusion fit --ckpt_path CKPT`` (no ``--config``) rebuilds the run from the config stored in CKPT;
extra flags still override it. Lightning itself restores weights, optimisers, schedulers, loops and
callback state (EMA included); `repfusion_pl.rng` and the distillation module add the RNG streams.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback

#: Checkpoint key of the full YAML config of the run that wrote it.
CONFIG_KEY = "repfusion_config"


class RecordConfigCallback(SaveConfigCallback):
    """LightningCLI's config writer that also stores the config in every checkpoint."""

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CONFIG_KEY] = self.parser.dump(self.config, skip_none=False)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``, turning every failure into one actionable error.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is truncated, not a checkpoint, or a pickle that tries to run code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; give a .ckpt written by `repfusion fit`")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        earlier = sorted(str(p.name) for p in path.parent.glob("*.ckpt") if p != path)
        hint = f" (other checkpoints there: {', '.join(earlier[:5])})" if earlier else ""
        raise ValueError(
            f"cannot read checkpoint {path}: it is truncated, not a checkpoint, or holds objects that "
            f"weights_only=True refuses to unpickle ({type(err).__name__}: {str(err).splitlines()[0]}). "
            f"Resume from an intact checkpoint instead{hint}."
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(
            f"{path} is not a Lightning checkpoint (no 'state_dict'); give a .ckpt from `repfusion fit`"
        )
    return checkpoint


def _option(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def with_checkpoint_config(argv: list[str]) -> list[str]:
    """``fit --ckpt_path CKPT`` without a config gets CKPT's stored config; a file CKPT is checked first.

    Args:
        argv: The arguments after ``repfusion``.

    Returns:
        ``argv``, with ``--config <stored config>`` inserted after the subcommand when needed.
    """
    ckpt_path = _option(argv, "--ckpt_path")
    if not argv or argv[0] not in ("fit", "validate", "test") or ckpt_path in (None, "last", "best", "hpc"):
        return argv
    checkpoint = read_checkpoint(ckpt_path)
    if _option(argv, "--config") is not None or _option(argv, "-c") is not None:
        return argv
    stored = checkpoint.get(CONFIG_KEY)
    if not stored:
        raise ValueError(
            f"{ckpt_path} does not record its run's config (written by an older version or another tool); "
            "resume with --config <the run's config.yaml> --ckpt_path ..."
        )
    handle = tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="repfusion-resume-", delete=False)
    with handle:
        handle.write(stored)
    return [argv[0], "--config", handle.name, *argv[1:]]
