"""The paper's timestep policy: a small CNN pi(t | x) trained by REINFORCE on a pluggable reward."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from repfusion_pl.timesteps.base import SamplerOutput, TimestepDraw, TimestepSampler
from repfusion_pl.timesteps.rewards import TaskHeadReward, TimestepReward


class PolicyTimestep(TimestepSampler):
    """The paper's actor: a small CNN policy pi(t | x) over all T timesteps, trained by REINFORCE.

    Each image's drawn t is scored by the ``reward`` component from the teacher's features at t
    (default: the paper's `TaskHeadReward`, minus a task head's cross-entropy on the labels). The
    policy loss is ``-mean(log pi(t|x) * (reward - baseline))`` plus an entropy bonus
    ``-beta * H(pi)`` whose weight falls linearly from ``entropy_weight`` to 0 at
    ``entropy_end_epoch``. The reward's own loss terms (e.g. the head's ``head_ce``) join the total.

    Args:
        num_classes: Classes of the default task-head reward (leave out when ``reward`` is given).
        reward: How a drawn timestep is scored; default `TaskHeadReward(num_classes, head_hidden)`.
            For unlabelled data: `ContrastiveReward`.
        baseline: Reward baseline: ``"none"`` (the authors' choice), ``"batch_mean"``, or ``"ema"``.
        baseline_momentum: Weight of the old value in the ``"ema"`` baseline.
        entropy_weight: Entropy-bonus weight at epoch 0 (paper: 0.1).
        entropy_end_epoch: Epoch at which the bonus reaches 0 (paper: 100).
        policy_channels: Width of the policy CNN.
        head_hidden: Hidden width of the default task-head reward (default 256).
        grid: Choose among these timesteps instead of all T (a discretised policy: a teacher-target
            cache's grid, and live as well).
    """

    baseline_value: Tensor
    baseline_ready: Tensor
    _grid: Tensor

    def __init__(
        self,
        num_classes: int | None = None,
        reward: TimestepReward | None = None,
        baseline: Literal["none", "batch_mean", "ema"] = "none",
        baseline_momentum: float = 0.9,
        entropy_weight: float = 0.1,
        entropy_end_epoch: int = 100,
        policy_channels: int = 32,
        head_hidden: int | None = None,
        grid: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.reward = self._default_reward(reward, num_classes, head_hidden)
        self.baseline = baseline
        self.baseline_momentum = baseline_momentum
        self.entropy_weight = entropy_weight
        self.entropy_end_epoch = max(1, entropy_end_epoch)
        self.policy_channels = policy_channels
        self.grid = grid
        self.register_buffer("_grid", torch.tensor(grid or [0], dtype=torch.long), persistent=False)
        self.register_buffer("baseline_value", torch.zeros(()))
        self.register_buffer("baseline_ready", torch.zeros((), dtype=torch.bool))
        self.policy: nn.Module | None = None

    @staticmethod
    def _default_reward(
        reward: TimestepReward | None, num_classes: int | None, head_hidden: int | None
    ) -> TimestepReward:
        if reward is not None:
            if num_classes is not None or head_hidden is not None:
                raise ValueError(
                    "PolicyTimestep's num_classes and head_hidden configure its default TaskHeadReward; "
                    f"with reward {type(reward).__name__} set them on the reward instead (in YAML over a "
                    "config that sets them: num_classes: null)"
                )
            return reward
        if num_classes is None:
            raise ValueError(
                "PolicyTimestep needs a reward: give num_classes for the paper's task-head reward, or "
                "`reward: {class_path: repfusion_pl.ContrastiveReward}` for data without labels"
            )
        return TaskHeadReward(num_classes, 256 if head_hidden is None else head_hidden)

    def build(self, num_train_timesteps: int, feature_channels: int, image_channels: int) -> None:
        super().build(num_train_timesteps, feature_channels, image_channels)
        width = self.policy_channels
        self._check_grid(self.grid)
        last = nn.Linear(2 * width, len(self.grid) if self.grid else num_train_timesteps)
        # A zero last layer starts the policy at the uniform distribution over its actions.
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.policy = nn.Sequential(
            nn.Conv2d(image_channels, width, 3, stride=2, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            last,
        )
        self.reward.build(feature_channels)

    def summary(self) -> str:
        grid = f", grid={self.grid}" if self.grid else ""
        return f"PolicyTimestep(reward={type(self.reward).__name__}, baseline={self.baseline}{grid})"

    @property
    def current_entropy_weight(self) -> float:
        """The entropy-bonus weight for the current epoch."""
        return self.entropy_weight * max(0.0, 1.0 - self.current_epoch / self.entropy_end_epoch)

    def distribution(self, images: Tensor) -> torch.distributions.Categorical:
        """pi(t | x) for each image."""
        if self.policy is None:
            raise RuntimeError("PolicyTimestep.build() must run before use (RepFusionDistillation does this)")
        return torch.distributions.Categorical(logits=self.policy(images).float())

    def draw(self, images: Tensor, generator: torch.Generator | None = None) -> TimestepDraw:
        dist = self.distribution(images)
        action = torch.multinomial(dist.probs, 1, generator=generator).squeeze(1)
        t = self._grid[action] if self.grid else action
        return TimestepDraw(t, log_prob=dist.log_prob(action), entropy=dist.entropy())

    def support(self) -> list[int]:
        return list(self.grid) if self.grid else super().support()

    def advantage(self, reward: Tensor) -> Tensor:
        """Reward minus the chosen baseline; updates the moving average for ``"ema"``."""
        if self.baseline == "none":
            return reward
        batch_mean = reward.mean()
        if self.baseline == "batch_mean":
            return reward - batch_mean
        # The first batch starts the average at its own mean; chosen on the device, without a host read.
        value = torch.where(self.baseline_ready, self.baseline_value, batch_mean.detach())
        advantage = reward - value
        momentum = self.baseline_momentum
        self.baseline_value.copy_(momentum * value + (1 - momentum) * batch_mean.detach())
        self.baseline_ready.fill_(True)
        return advantage

    def reinforce(self, draw: TimestepDraw, reward: Tensor) -> SamplerOutput:
        """REINFORCE loss and entropy bonus for drawn timesteps and their (detached) rewards.

        The update itself, separate from where rewards come from: distillation passes its reward
        component's scores, the bandit environments of `repfusion_pl.timesteps.bandit` pass theirs.
        """
        if draw.log_prob is None or draw.entropy is None:
            raise ValueError("reinforce needs a draw from this policy (with log_prob and entropy)")
        advantage = self.advantage(reward)
        beta = self.current_entropy_weight
        entropy = draw.entropy.mean()
        losses = {"policy": -(draw.log_prob * advantage).mean(), "entropy_bonus": -beta * entropy}
        logs = {
            "policy_entropy": entropy.detach(),
            "reward": reward.mean(),
            "entropy_weight": reward.new_full((), beta),  # a fill on the device, not a host copy
        }
        return SamplerOutput(losses, logs)

    def step_loss(self, draw: TimestepDraw, features: Tensor, labels: Tensor | None) -> SamplerOutput:
        # The reward sees detached features: its own terms train only the reward's parameters.
        scored = self.reward(features.detach(), labels)
        out = self.reinforce(draw, scored.reward.detach())
        out.losses.update(scored.losses)
        out.logs.update(scored.logs)
        return out
