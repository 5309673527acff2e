"""Pre-emption: a scheduler's SIGTERM (or SLURM's SIGUSR1 warning) ends in a checkpoint and a resume command.

Lightning already turns SIGTERM into an exception at the next step boundary, on every rank at the
same step (`SIGTERMException`), and calls ``on_exception`` on the callbacks; this callback saves the
checkpoint there and says how to resume. SIGUSR1 (SLURM's warning before the time limit) is
forwarded to SIGTERM unless a handler was set before the fit; it is taken before Lightning registers
its SLURM auto-requeue handler, so that a job script requeues on exit 143 and resumes exactly.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException


def _forward_to_sigterm(signum: int, frame: FrameType | None) -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def preemption_checkpoint_path(trainer: Trainer) -> Path:
    """Where the pre-emption checkpoint goes: ``last.ckpt`` in the first ModelCheckpoint's folder."""
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath) / "last.ckpt"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


class Preemption(Callback):
    """Save ``last.ckpt`` at the step boundary after SIGTERM or SIGUSR1, then stop with the resume command.

    Added by the ``repfusion`` command to every fit. ``repfusion fit --ckpt_path <it>`` continues
    from that step (weights, optimiser, schedulers, loops, RNG streams, and the training loader's
    position, so the rest of the interrupted epoch comes as an uninterrupted run would draw it).
    """

    def __init__(self) -> None:
        #: The checkpoint written on pre-emption, if any.
        self.saved: Path | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):  # a handler set before the fit stays
            signal.signal(signal.SIGUSR1, _forward_to_sigterm)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        path = preemption_checkpoint_path(trainer)
        trainer.save_checkpoint(path)  # every rank calls it: the RNG states are gathered
        self.saved = path
        rank_zero_info(
            f"pre-empted at step {trainer.global_step} (epoch {trainer.current_epoch}): saved {path}. "
            f"Resume with: repfusion fit --ckpt_path {path}"
        )
