"""How fast the timestep policy settles: `PolicyTimestep` and its reward alone, on cached features.

Each update draws a batch of training images, lets the policy choose a timestep per image, scores
the choice with the reward on the cached features at the nearest grid point, and steps the policy
and the reward together, as one distillation step does (without the student), with the study's
SGD and configs/distill.yaml's cosine learning-rate schedule over the run. Every few updates,
the policy's mass over the batch is gathered on the landscape's grid; the policy has settled when
at least `SETTLED_SHARE` of it sits on one point or two adjacent ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from repfusion_pl.timesteps import PolicyTimestep
from repfusion_pl.timesteps.actions import SETTLED_SHARE, mass_on_grid, settled
from timestep_study.landscape import make_reward


@dataclass
class PolicySetting:
    """One way to run the policy: its ``PolicyTimestep`` options and its optimiser."""

    name: str
    policy: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "sgd"  # "sgd" (the study's: lr 0.1, momentum 0.9) or "adam" (lr 1e-3)
    lr: float | None = None
    read: str = "head"


def nearest_points(timesteps: Tensor, grid: Tensor) -> Tensor:
    """The index of the grid point nearest to each timestep."""
    return (timesteps[:, None].float() - grid[None].float()).abs().argmin(1)


def make_policy(setting: PolicySetting, reward_name: str, cache: dict[str, Tensor]) -> PolicyTimestep:
    """A built policy with a fresh reward, bound to the teacher's noise schedule and feature width."""
    labels, features = cache["train/labels"], cache[f"train/{setting.read}"]
    reward = make_reward(reward_name, int(labels.max()) + 1, features.shape[-1])
    options = {"entropy_weight": 0.1, "entropy_end": 0.5, **setting.policy}
    policy = PolicyTimestep(reward=reward, **options)
    policy.set_noise_schedule(cache["alphas_cumprod"])
    policy.build(len(cache["alphas_cumprod"]), features.shape[-1], cache["train/images"].shape[1])
    return policy


def policy_optimizer(setting: PolicySetting, policy: PolicyTimestep) -> torch.optim.Optimizer:
    """The sampler group's optimiser: the study's SGD (lr 0.1, momentum 0.9, wd 1e-4) or Adam."""
    if setting.optimizer == "adam":
        return torch.optim.Adam(policy.parameters(), lr=setting.lr or 1e-3)
    return torch.optim.SGD(policy.parameters(), lr=setting.lr or 0.1, momentum=0.9, weight_decay=1e-4)


def settle_run(
    setting: PolicySetting,
    reward_name: str,
    cache: dict[str, Tensor],
    updates: int,
    batch: int,
    seed: int,
    every: int = 10,
) -> dict[str, Any]:
    """One seeded run: the share and place of the policy's mass every ``every`` updates, and the end."""
    torch.manual_seed(seed)
    policy = make_policy(setting, reward_name, cache)
    optimizer = policy_optimizer(setting, policy)
    # configs/distill.yaml's cosine schedule over the run (the sampler's group follows it too).
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=updates)
    images, labels = cache["train/images"], cache["train/labels"]
    features, grid = cache[f"train/{setting.read}"], cache["grid"]
    generator = torch.Generator().manual_seed(seed)
    support = policy.support()
    trace: list[tuple[int, int, float]] = []
    for step in range(updates):
        policy.set_progress(step, updates)
        index = torch.randint(0, len(images), (batch,), generator=generator)
        draw = policy.draw(images[index], generator)
        out = policy.step_loss(draw, features[index, nearest_points(draw.timesteps, grid)], labels[index])
        optimizer.zero_grad(set_to_none=True)
        torch.stack(list(out.losses.values())).sum().backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % every == 0:
            with torch.no_grad():
                probs = policy.distribution(images[index]).probs
            point, share = settled(mass_on_grid(probs, support, grid.tolist()))
            trace.append((step + 1, int(grid[point]), round(share, 4)))
    return summarise_run(trace)


def summarise_run(trace: list[tuple[int, int, float]]) -> dict[str, Any]:
    """Where the run ended, its share there, and the first update from which it stayed settled."""
    settled_from = None
    for update, _, share in reversed(trace):
        if share < SETTLED_SHARE:
            break
        settled_from = update
    _, end_t, end_share = trace[-1]
    return {"settled_at": settled_from, "t": end_t, "share": end_share, "trace": trace}


def in_top(run: dict[str, Any], top_region: list[int]) -> bool:
    """Whether a run settled, on a timestep of the landscape's top region."""
    return run["settled_at"] is not None and run["t"] in top_region
