"""The timestep policy's action space and how to tell whether a policy has settled on it.

A policy over all T timesteps has T independent logits; with a few hundred updates and a flat,
noisy reward it stays near uniform (``docs/policy.md``). A short list of timesteps (a grid) settles
in that budget. `log_snr_grid` spaces such a list evenly in log signal-to-noise ratio, which means
the same thing for a DDPM's linear schedule, Stable Diffusion's scaled one and DiT's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

#: A policy has settled when this share of its mass sits on one grid point or two adjacent ones.
SETTLED_SHARE = 0.8


def check_timestep_grid(grid: Sequence[int] | None, num_train_timesteps: int, key: str) -> None:
    """Refuse a grid that is empty, unsorted, repeats a point or leaves ``[0, T)``; ``None`` passes."""
    if grid is None:
        return
    last = num_train_timesteps - 1
    fix = f"list distinct timesteps in increasing order within the teacher's 0..{last}"
    if not grid:
        raise ValueError(f"{key} is empty: {fix}, or leave it out")
    if any(not 0 <= int(t) <= last for t in grid):
        raise ValueError(f"{key}={list(grid)} leaves the teacher's timesteps: {fix}")
    if any(b <= a for a, b in zip(grid, grid[1:], strict=False)):
        problem = "repeats a point" if len(set(grid)) < len(grid) else "is not sorted"
        raise ValueError(f"{key}={list(grid)} {problem}: {fix}")


def log_snr(alphas_cumprod: Tensor) -> Tensor:
    """``log(alpha_bar / (1 - alpha_bar))`` per timestep: falls from clean to pure noise."""
    alpha = alphas_cumprod.double().clamp(1e-12, 1 - 1e-12)
    return (alpha / (1 - alpha)).log()


def log_snr_grid(alphas_cumprod: Tensor, bins: int) -> list[int]:
    """``bins`` timesteps at the centres of equal-width bins of log-SNR between t = 0 and t = T - 1.

    Raises:
        ValueError: Fewer than 2 bins, or more bins than distinct timesteps they can land on.
    """
    if bins < 2:
        raise ValueError(f"PolicyTimestep.log_snr_bins must be at least 2, got {bins}")
    curve = log_snr(alphas_cumprod)
    edges = torch.linspace(float(curve[0]), float(curve[-1]), bins + 1, dtype=torch.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    grid = sorted({int((curve - c).abs().argmin()) for c in centres})
    if len(grid) < bins:
        raise ValueError(
            f"PolicyTimestep.log_snr_bins={bins} puts several bins on one of the teacher's "
            f"{len(curve)} timesteps (only {len(grid)} distinct): use fewer bins or give a grid"
        )
    return grid


def mass_on_grid(probs: Tensor, support: Sequence[int], grid: Sequence[int]) -> Tensor:
    """A policy's mass over its ``support`` timesteps, each moved to the nearest point of ``grid``.

    Args:
        probs: ``(K,)`` or ``(N, K)`` probabilities over the support (rows are averaged).
        support: The K timesteps the probabilities are over.
        grid: Sorted timesteps to gather the mass on.
    """
    mass = probs.float().reshape(-1, len(support)).mean(0)
    points = torch.tensor(list(grid), dtype=torch.float32)
    nearest = (torch.tensor(list(support), dtype=torch.float32)[:, None] - points).abs().argmin(1)
    return torch.zeros(len(grid)).index_add_(0, nearest, mass.cpu())


def settled(mass: Tensor) -> tuple[int, float]:
    """Where a policy's mass over sorted grid points concentrates, and the share it holds there.

    The share is the larger of the largest single point and the largest pair of adjacent points;
    the index is that point (of a pair, its heavier member). The policy has settled when the share
    is at least `SETTLED_SHARE`.
    """
    mass = mass.float().flatten()
    best = int(mass.argmax())
    share = float(mass[best])
    if len(mass) > 1:
        pairs = mass[:-1] + mass[1:]
        pair = int(pairs.argmax())
        if float(pairs[pair]) > share:
            share = float(pairs[pair])
            best = pair if mass[pair] >= mass[pair + 1] else pair + 1
    return best, share
