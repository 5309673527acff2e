"""Figures people would rather look at than read: how the timestep policy evolved."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def plot_timestep_evolution(per_epoch: Sequence[Sequence[int]], path: str | Path, bins: int = 50) -> Path:
    """Save a PNG of the chosen-timestep distribution per epoch, with its mean and spread.

    Args:
        per_epoch: For each epoch, how often each timestep 0..T-1 was drawn.
        path: Where to write the PNG.
        bins: Timestep bins along the x axis.

    Returns:
        The written path.
    """
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
