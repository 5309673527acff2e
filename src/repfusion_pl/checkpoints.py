"""Checkpoints: the keys this package adds, one safe reader, and writes that are complete or absent.

Every checkpoint is read through `read_checkpoint` (``weights_only=True``, so a pickle that tries to
run code is refused), which turns every failure into a `CheckpointError` naming the file and the fix.
Writes go through `atomic_write_bytes`: Lightning's default writer stages local files in the system
temp folder and moves them, which is a copy (not atomic) whenever that folder and the checkpoint
folder sit on different file systems, as with node-local /tmp and network storage on clusters. Here
the temporary file lives in the target's own folder, is flushed to disk, and ``os.replace`` swaps
it in: a process killed at any moment leaves the previous checkpoint intact.
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

#: Where a distillation checkpoint records what produced it (student spec, teacher, package version).
PROVENANCE_KEY = "repfusion"
#: The full YAML config of the run that wrote the checkpoint (written by the CLI).
CONFIG_KEY = "repfusion_config"
#: Every rank's random-number states (`repfusion_pl.distillation.rng.RandomStreams`).
RNG_KEY = "rng_states"
#: Key prefix of the student backbone inside a `RepFusionDistillation` state dict.
STUDENT_PREFIX = "student.backbone."


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, unsafe, or not what the caller needs."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (the previous file at that path is left intact)."""


def read_checkpoint(path: str | Path, *, expected: str = "a .ckpt written by `repfusion fit`") -> dict:
    """Load a Lightning checkpoint with ``weights_only=True``; every failure is one clear `CheckpointError`.

    Args:
        path: The ``.ckpt`` file.
        expected: What the caller needs, for the messages (e.g. "a distillation checkpoint").

    Raises:
        CheckpointNotFoundError: The file does not exist.
        CheckpointError: The file is truncated, not a Lightning checkpoint, or a pickle that runs code.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist; give {expected}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated file and a pickle with code both land here
        earlier = sorted(p.name for p in path.parent.glob("*.ckpt") if p != path)
        hint = f" (other checkpoints there: {', '.join(earlier[:5])})" if earlier else ""
        raise CheckpointError(
            f"cannot read checkpoint {path} safely (weights_only=True): it is truncated, not a checkpoint, "
            f"or holds objects that weights_only=True refuses to unpickle ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Use an intact checkpoint from a trusted "
            f"source instead{hint}; never load it with weights_only=False."
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict'); give {expected}")
    return checkpoint


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A bare torch state dict (name -> tensor), read with ``weights_only=True``.

    Raises:
        CheckpointError: The file is truncated, a pickle that runs code, or not a bare state dict.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated file and a pickle with code both land here
        raise CheckpointError(
            f"cannot read {path} safely as a state dict (weights_only=True; {type(err).__name__}); use an "
            "intact file from a trusted source, or convert it to .safetensors"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path} is not a bare state dict (name -> tensor); a Lightning checkpoint is read as .ckpt"
        )
    return state


def check_resumable(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint made by another student, other teacher layers or another teacher.

    Args:
        saved: The checkpoint's provenance (``checkpoint[PROVENANCE_KEY]``; empty for foreign files).
        current: The provenance of the module being resumed, in the same format.

    Raises:
        ValueError: Naming what differs and how to resume correctly.
    """
    fix = "resume with the checkpoint's own config (`repfusion fit --ckpt_path CKPT` restores it)"
    if saved.get("student") and saved["student"] != current["student"]:
        raise ValueError(
            f"this checkpoint was made by student {saved['student']}, but this run builds "
            f"{current['student']}; {fix}"
        )
    teacher, now = saved.get("teacher", {}), current["teacher"]
    if teacher.get("layers") and list(teacher["layers"]) != list(now["layers"]):
        raise ValueError(
            f"this checkpoint distilled teacher layers {teacher['layers']}, but this run taps "
            f"{now['layers']}; {fix}"
        )
    if teacher.get("unet") and teacher["unet"] != now["unet"]:
        differs = sorted(
            k for k in {*teacher["unet"], *now["unet"]} if teacher["unet"].get(k) != now["unet"].get(k)
        )
        raise ValueError(
            f"this checkpoint was distilled from teacher {teacher.get('source')!r}, whose UNet differs "
            f"from {now['source']!r} in {', '.join(differs)}; point model.teacher.source at the "
            "original teacher"
        )


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
        local = Path(get_filesystem(path)._strip_protocol(str(path)))
        try:
            atomic_write_bytes(local, buffer.getvalue())
        except OSError as err:  # ENOSPC, a quota, a read-only or vanished folder
            size = buffer.getbuffer().nbytes
            raise CheckpointWriteError(
                err.errno,
                f"cannot write checkpoint {local} ({err.strerror or err}): the folder {local.parent} needs "
                f"about {size / 2**20:.1f} MB free for it (the size of this checkpoint). The previous "
                f"{local.name}, if any, is intact and no partial file was left. Free space there, or point "
                "the ModelCheckpoint's dirpath at another disk, then resume from the newest checkpoint.",
            ) from err
