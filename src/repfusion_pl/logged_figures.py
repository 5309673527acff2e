"""Figures and histograms to every configured logger, as well as to files.

The timestep telemetry, the representation monitor and the probe draw matplotlib figures. Each is
saved as a PNG (the record that works with any logger, or none) and then handed to each logger of
the run through that logger's own API:

* `TensorBoardLogger`: ``experiment.add_figure`` (and ``add_histogram`` for histograms);
* `WandbLogger`: ``log_image`` (the figure's pixels);
* `MLFlowLogger`: ``experiment.log_figure`` into the run's artifacts;
* `CSVLogger` and any other logger: nothing more; the PNG beside its logs is the figure.

Dispatch is by ``isinstance`` on Lightning's logger classes, which import their libraries (tensorboard,
wandb, mlflow) only when such a logger is built: none of them is needed unless it is configured.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: The resolution of every saved figure.
DPI = 110


def figure_pixels(figure: Figure) -> np.ndarray:
    """The figure rendered as an ``(H, W, 3)`` uint8 RGB array (what image loggers take)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def log_figure(loggers: Iterable[Logger], key: str, figure: Figure, step: int | None = None) -> list[str]:
    """Send ``figure`` to every logger that takes figures.

    Args:
        loggers: The run's loggers (``trainer.loggers``); any mix of kinds.
        key: The figure's name, e.g. ``figures/timesteps`` (MLflow stores ``<key>.png``).
        figure: A matplotlib figure (left open: the caller closes it).
        step: The global step it belongs to.

    Returns:
        The class names of the loggers that received it.
    """
    received = []
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            # close=False: the caller saves the file and may hand the same figure to other loggers.
            logger.experiment.add_figure(key, figure, global_step=step, close=False)
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[figure_pixels(figure)], step=step)
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_figure(logger.run_id, figure, f"{key}.png")
        else:
            continue
        received.append(type(logger).__name__)
    return received


def log_histogram(loggers: Iterable[Logger], key: str, counts: Tensor, step: int | None = None) -> list[str]:
    """Send a histogram, value ``i`` seen ``counts[i]`` times, to each logger that keeps one (TensorBoard).

    The other loggers get the end-of-run figure of the same data instead (`log_figure`); the values
    are only expanded for a logger that takes them.

    Returns:
        The class names of the loggers that received it.
    """
    received, values = [], None
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            if values is None:
                values = torch.repeat_interleave(torch.arange(len(counts)), counts.long().cpu())
            logger.experiment.add_histogram(key, values, step)
            received.append(type(logger).__name__)
    return received


def save_figure(
    figure: Figure,
    path: str | Path,
    loggers: Iterable[Logger] = (),
    key: str | None = None,
    step: int | None = None,
) -> Path:
    """Save ``figure`` as a PNG, send it to ``loggers`` under ``key``, and close it.

    Args:
        figure: A matplotlib figure.
        path: The PNG to write (parent folders are created).
        loggers: Loggers to send it to as well (see `log_figure`).
        key: Its name for the loggers; default the file's stem.
        step: The global step it belongs to.

    Returns:
        The written path.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # The file first: it is the record even if a remote logger fails.
        figure.savefig(path, dpi=DPI)
        log_figure(loggers, key or path.stem, figure, step)
    finally:
        plt.close(figure)
    return path
