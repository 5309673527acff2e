"""Checkpoints that are either complete or absent: written beside their target, then renamed into place.

Lightning's default writer stages local files in the system temp folder and moves them, which is a
copy (not atomic) whenever that folder and the checkpoint folder sit on different file systems, as
with node-local /tmp and network storage on clusters. Here the temporary file lives in the target's
own folder, is flushed to disk, and ``os.replace`` swaps it in: a process killed at any moment
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO


def temporary_path(path: Path) -> Path:
    """The hidden staging file for ``path``, unique to this process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_temporary(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to disk."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a same-folder temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    staging = temporary_path(path)
    try:
        write_temporary(staging, data)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local saves are atomic (remote URLs keep Lightning's fsspec path)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options for local files")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        local = get_filesystem(path)._strip_protocol(str(path))
        atomic_write_bytes(local, buffer.getvalue())
