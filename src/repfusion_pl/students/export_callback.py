"""`ExportOnFitEnd`: hub folders of the distilled student, written when training ends (opt-in)."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from repfusion_pl.students.hub import check_target, export_hub_folder


class ExportOnFitEnd(Callback):
    """Export the student as hub folders (`repfusion export --hub-folder`) when training ends.

    ``last/`` holds the state at the end of training (a checkpoint of it is written beside, read and
    removed, so the card says all that a checkpoint records); ``best/`` holds the first
    ``ModelCheckpoint``'s ``best_model_path``, when it has one (with no ``monitor``, Lightning's
    "best" is its newest top-k file). Each folder is complete or absent; an earlier export in the
    same place is replaced, and a folder holding anything else is refused when ``fit`` starts, not
    after hours of training.

    Args:
        dirpath: Where ``last/`` and ``best/`` go; default ``hub/`` in the ``ModelCheckpoint``'s
            folder, or in the log folder when there is none.
        last: Export the state at the end of training.
        best: Export the best checkpoint.
        license: The Hub licence id written into the cards; ``None`` leaves it for the user.
    """

    def __init__(
        self, dirpath: str | None = None, last: bool = True, best: bool = True, license: str | None = None
    ) -> None:
        self.dirpath, self.last, self.best, self.license = dirpath, last, best, license

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for name in self._names():  # a folder holding other files is refused now, before training
            check_target(self.root(trainer) / name)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Here, not in on_fit_end: every rank must still take part in the checkpoint's collectives.
        root = self.root(trainer)
        if self.last:
            staged = root / ".fit-end.ckpt"
            trainer.save_checkpoint(staged)  # every rank calls it; rank 0 writes
            if trainer.is_global_zero:
                try:
                    self._export(staged, root / "last", "last")
                finally:
                    staged.unlink(missing_ok=True)
        best = self._best(trainer)
        if self.best and best is not None and trainer.is_global_zero:
            self._export(best, root / "best", "best")
        trainer.strategy.barrier("ExportOnFitEnd")

    def root(self, trainer: Trainer) -> Path:
        """The folder that holds ``last/`` and ``best/``."""
        if self.dirpath:
            return Path(self.dirpath)
        checkpoint = trainer.checkpoint_callback
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.dirpath:
            return Path(checkpoint.dirpath) / "hub"
        return Path(trainer.default_root_dir) / "hub"

    def _names(self) -> list[str]:
        return [name for name, wanted in (("last", self.last), ("best", self.best)) if wanted]

    @staticmethod
    def _best(trainer: Trainer) -> Path | None:
        checkpoint = trainer.checkpoint_callback
        path = Path(checkpoint.best_model_path) if isinstance(checkpoint, ModelCheckpoint) else None
        return path if path is not None and path.name and path.is_file() else None

    def _export(self, checkpoint: Path, folder: Path, which: str) -> None:
        export_hub_folder(checkpoint, folder, license=self.license)
        rank_zero_info(f"exported the {which} student to {folder}")
