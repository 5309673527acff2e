"""The reward's landscape: each reward trained at uniform t on cached features, then scored per t.

Per timestep of the grid: the mean reward over held-out images, the per-image spread, the standard
error of the mean, and the standard error of its paired difference from the best timestep (the same
images at both), which decides the top region: the timesteps within two of those of the best.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from repfusion_pl.timesteps import ContrastiveReward, LeastSquaresReward, TaskHeadReward, TimestepReward

REWARDS = {
    "task head": lambda classes: TaskHeadReward(classes, 256),
    "least squares": lambda classes: LeastSquaresReward(classes),
    "contrastive": lambda classes: ContrastiveReward(128, 0.1),
    "contrastive, whole batch": lambda classes: ContrastiveReward(128, 0.1, negatives=None),
}


def make_reward(name: str, num_classes: int, channels: int) -> TimestepReward:
    """A built reward component of that name."""
    reward = REWARDS[name](num_classes)
    reward.build(channels)
    return reward


def reward_optimizer(reward: TimestepReward, lr: float = 0.1) -> torch.optim.Optimizer | None:
    """The study's optimiser for a reward's own parameters (SGD 0.1, momentum 0.9); none without any."""
    params = list(reward.parameters())
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4) if params else None


def train_at_uniform_t(
    reward: TimestepReward, features: Tensor, labels: Tensor, steps: int, batch: int, seed: int
) -> None:
    """Train a reward's parameters on features ``(N, G, C)``, each image at a uniformly drawn grid point."""
    optimizer = reward_optimizer(reward)
    if optimizer is None:
        return
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(0, len(features), (batch,), generator=generator)
        point = torch.randint(0, features.shape[1], (batch,), generator=generator)
        out = reward.score(features[index, point], labels[index], point)
        optimizer.zero_grad(set_to_none=True)
        torch.stack(list(out.losses.values())).sum().backward()
        optimizer.step()


@torch.no_grad()
def score_per_t(reward: TimestepReward, features: Tensor, labels: Tensor, batch: int) -> Tensor:
    """Per-image rewards ``(N, G)``: batches of held-out images, all at one grid point."""
    rows = []
    for point in range(features.shape[1]):
        scores = [
            reward(features[start : start + batch, point], labels[start : start + batch]).reward
            for start in range(0, len(features) - batch + 1, batch)  # whole batches: in-batch rewards
        ]
        rows.append(torch.cat(scores))
    return torch.stack(rows, dim=1)


def summarise(scores: Tensor, grid: list[int]) -> dict:
    """Per-t mean, spread and standard errors of per-image rewards ``(N, G)``; the best t, the top region."""
    n = len(scores)
    mean, spread = scores.mean(0), scores.std(0)
    best = int(mean.argmax())
    paired = (scores - scores[:, best : best + 1]).std(0) / math.sqrt(n)
    top = [t for i, t in enumerate(grid) if float(mean[best] - mean[i]) <= 2 * float(paired[i])]
    return {
        "grid": grid,
        "images": n,
        "mean": [round(float(v), 4) for v in mean],
        "spread": [round(float(v), 4) for v in spread],
        "stderr": [round(float(v) / math.sqrt(n), 4) for v in spread],
        "paired_stderr": [round(float(v), 4) for v in paired],
        "best_t": grid[best],
        "top_region": top,
    }


def landscape(
    name: str, cache: dict[str, Tensor], read: str, steps: int, batch: int, seed: int = 0
) -> tuple[dict, TimestepReward]:
    """One reward's landscape on one read (``head`` or ``targets``) of a setup's cached features."""
    features, labels = cache[f"train/{read}"], cache["train/labels"]
    torch.manual_seed(seed)
    reward = make_reward(name, int(labels.max()) + 1, features.shape[-1])
    train_at_uniform_t(reward, features, labels, steps, batch, seed)
    scores = score_per_t(reward, cache[f"held_out/{read}"], cache["held_out/labels"], batch)
    return summarise(scores, [int(t) for t in cache["grid"]]), reward


@torch.no_grad()
def minority_reward(
    reward: TimestepReward, features: Tensor, labels: Tensor, batch: int, minority: int = 8
) -> list[dict]:
    """In-batch rewards: ``minority`` images at one grid point among a batch at another, against all at one.

    A reward that compares images within the batch pays an image for a timestep the others did not
    draw when this is higher than the same images' reward with the whole batch at that timestep.
    """
    rows = []
    for odd in range(features.shape[1]):
        for major in sorted({1, features.shape[1] // 2} - {odd}):
            mixed, alone = [], []
            for start in range(0, len(features) - batch + 1, batch):
                chunk, y = features[start : start + batch], labels[start : start + batch]
                points = torch.full((batch,), major)
                points[:minority] = odd
                scored = reward.score(chunk[torch.arange(batch), points], y, points)
                mixed.append(scored.reward[:minority].mean())
                together = reward.score(chunk[:, odd], y, torch.full((batch,), odd))
                alone.append(together.reward[:minority].mean())
            rows.append(
                {
                    "minority_point": odd,
                    "majority_point": major,
                    "minority_reward": round(float(torch.stack(mixed).mean()), 4),
                    "all_at_minority_point": round(float(torch.stack(alone).mean()), 4),
                }
            )
    return rows
