"""Timestep telemetry: which timesteps the sampler drew, per epoch, as histograms, JSON and a figure."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import Logger
from torch import Tensor

from repfusion_pl.logged_figures import log_histogram, save_figure
from repfusion_pl.teachers import CachedTeacher, DiffusionTeacher

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class TimestepTelemetry(Callback):
    """Count the timesteps drawn in every training epoch, across all ranks.

    Reads the ``timesteps`` that `RepFusionDistillation.training_step` returns next to its loss.
    Each epoch adds a row to `history` and, for a TensorBoard logger, a histogram (``train/timesteps``);
    at the end of ``fit``, ``timestep_counts.json`` and ``timesteps.png`` (how the choice evolved) are
    written to the logger's folder, and the figure goes to every configured logger as
    ``figures/timesteps`` (`repfusion_pl.logged_figures`). The history is callback state, so a resumed
    run continues it.
    `RepFusionDistillation` adds this callback itself unless the trainer already has one.

    Args:
        plot: Write ``timesteps.png`` at the end of ``fit``.
    """

    def __init__(self, plot: bool = True) -> None:
        self.plot = plot
        #: Per epoch, how often each timestep 0..T-1 was drawn (summed over ranks).
        self.history: list[list[int]] = []
        # A plain tensor, not a module buffer: DDP would overwrite every rank's counts with rank 0's.
        self._counts: Tensor | None = None
        self._trainer: Trainer | None = None
        # A mid-epoch checkpoint's counts so far (all ranks summed), for the resumed epoch to continue.
        self._restored_counts: list[int] | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        teacher = getattr(pl_module, "teacher", None)
        if not isinstance(teacher, (DiffusionTeacher, CachedTeacher)):
            raise TypeError(
                f"TimestepTelemetry observes a distillation module with a DiffusionTeacher `teacher`, not "
                f"{type(pl_module).__name__}; remove it from trainer.callbacks"
            )
        self._counts = torch.zeros(teacher.num_train_timesteps, device=pl_module.device)
        self._restored_counts = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        timesteps = outputs.get("timesteps") if isinstance(outputs, Mapping) else None
        if timesteps is None:
            return
        if self._counts is None:  # resumed mid-epoch: no epoch start; rank 0 carries the saved counts
            restored = self._restored_counts if trainer.is_global_zero else None
            steps = int(getattr(pl_module, "teacher").num_train_timesteps)  # noqa: B009 (checked at epoch start)
            self._counts = torch.zeros(steps, device=pl_module.device)
            if restored:
                self._counts += torch.tensor(restored, device=pl_module.device)
            self._restored_counts = None
        # index_add_, not bincount: bincount reads the largest value back to size its output.
        self._counts.index_add_(0, timesteps, torch.ones_like(timesteps, dtype=self._counts.dtype))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._counts is None:
            return
        gathered = pl_module.all_gather(self._counts)
        assert isinstance(gathered, Tensor)
        counts = gathered.sum(0) if gathered.dim() > 1 else gathered
        self.history.append(counts.long().tolist())
        self._counts = None  # the epoch is in the history now; a checkpoint from here has no partial counts
        if counts.sum() > 0 and trainer.is_global_zero:
            log_histogram(trainer.loggers, "train/timesteps", counts, trainer.current_epoch)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks, before rank 0 writes
        if not trainer.is_global_zero or log_dir is None or not self.history:
            return
        folder = Path(log_dir)
        folder.mkdir(parents=True, exist_ok=True)
        record = {"num_train_timesteps": len(self.history[-1]), "per_epoch": self.history}
        (folder / "timestep_counts.json").write_text(json.dumps(record))
        if self.plot:
            plot_timestep_evolution(
                self.history, folder / "timesteps.png", loggers=trainer.loggers, step=trainer.global_step
            )

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "epoch_counts": self._epoch_counts_so_far()}

    def _epoch_counts_so_far(self) -> list[int] | None:
        """The unfinished epoch's counts, summed over ranks (every rank saves a checkpoint together)."""
        if self._counts is None:
            return None
        counts = self._counts
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts.clone(), reduce_op="sum")
        return counts.long().tolist()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [list(counts) for counts in state_dict.get("history", [])]
        self._restored_counts = state_dict.get("epoch_counts")


def plot_timestep_evolution(
    per_epoch: Sequence[Sequence[int]],
    path: str | Path,
    bins: int = 50,
    loggers: Sequence[Logger] = (),
    step: int | None = None,
) -> Path:
    """Save a PNG of the chosen-timestep distribution per epoch, with its mean and spread.

    Args:
        per_epoch: For each epoch, how often each timestep 0..T-1 was drawn.
        path: Where to write the PNG.
        bins: Timestep bins along the x axis.
        loggers: Loggers to send the figure to as well, as ``figures/timesteps``.
        step: The global step it belongs to, for the loggers.

    Returns:
        The written path.
    """
    return save_figure(timestep_figure(per_epoch, bins), path, loggers, "figures/timesteps", step)


def timestep_figure(per_epoch: Sequence[Sequence[int]], bins: int = 50) -> Figure:
    """The chosen-timestep distribution per epoch (a heatmap of binned shares) beside its mean and spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(per_epoch, dtype=float)
    epochs, num_timesteps = counts.shape
    edges = np.linspace(0, num_timesteps, bins + 1).astype(int)
    binned = np.stack(
        [counts[:, a:b].sum(axis=1) for a, b in zip(edges[:-1], edges[1:], strict=True)], axis=1
    )
    share = binned / np.maximum(binned.sum(axis=1, keepdims=True), 1)
    t = np.arange(num_timesteps)
    total = np.maximum(counts.sum(axis=1), 1)
    mean = (counts * t).sum(axis=1) / total
    std = np.sqrt((counts * (t - mean[:, None]) ** 2).sum(axis=1) / total)

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    image = left.imshow(
        share, aspect="auto", origin="lower", cmap="magma", extent=(0, num_timesteps, -0.5, epochs - 0.5)
    )
    left.set(xlabel="timestep t", ylabel="epoch", title="share of draws per timestep bin")
    fig.colorbar(image, ax=left, fraction=0.046)
    right.plot(range(epochs), mean, color="tab:blue", label="mean t")
    right.fill_between(range(epochs), mean - std, mean + std, color="tab:blue", alpha=0.2, label="± 1 std")
    right.set(xlabel="epoch", ylabel="timestep t", ylim=(0, num_timesteps), title="mean and spread")
    right.legend(loc="upper right")
    fig.tight_layout()
    return fig
