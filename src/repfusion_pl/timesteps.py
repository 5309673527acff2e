"""Timestep selection: which diffusion timestep t the teacher sees for each image.

All samplers share one interface, so a YAML ``class_path`` swaps them: `FixedTimestep`,
`UniformTimestep`, `LinearDecayTimestep`, and `PolicyTimestep`, the paper's REINFORCE actor, whose
reward is itself a component (`repfusion_pl.rewards`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from repfusion_pl.rewards import TaskHeadReward, TimestepReward


@dataclass
class TimestepDraw:
    """One timestep per image, with what a learned sampler needs to score its choice."""

    timesteps: Tensor
    log_prob: Tensor | None = None
    entropy: Tensor | None = None


@dataclass
class SamplerOutput:
    """Loss terms to add to the total (all differentiable) and scalars to log."""

    losses: dict[str, Tensor] = field(default_factory=dict)
    logs: dict[str, Tensor] = field(default_factory=dict)


class TimestepSampler(nn.Module):
    """Base class: chooses a timestep per image and may learn from the teacher's features.

    Subclasses implement `draw`; learned ones also override `build` (to create parameters once the
    teacher is known) and `step_loss`. The current epoch is a buffer, so a schedule resumes from
    the checkpoint where it stopped.
    """

    epoch: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.num_train_timesteps = 0
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))

    def build(self, num_train_timesteps: int, feature_channels: int, image_channels: int) -> None:
        """Bind to a teacher: T timesteps, teacher feature channels and image channels."""
        self.num_train_timesteps = num_train_timesteps

    def set_epoch(self, epoch: int) -> None:
        """Record the training epoch that is starting."""
        self.epoch.fill_(epoch)

    def draw(self, images: Tensor, generator: torch.Generator | None = None) -> TimestepDraw:
        """Choose one timestep per image."""
        raise NotImplementedError

    def summary(self) -> str:
        """One line saying what this sampler does (recorded with the weights it distilled)."""
        return type(self).__name__

    def step_loss(self, draw: TimestepDraw, features: Tensor, labels: Tensor | None) -> SamplerOutput:
        """Extra losses for a learned sampler; fixed schedules have none."""
        return SamplerOutput()

    def _uniform(self, images: Tensor, high: int, generator: torch.Generator | None) -> TimestepDraw:
        t = torch.randint(0, high, (images.shape[0],), device=images.device, generator=generator)
        return TimestepDraw(t)


class FixedTimestep(TimestepSampler):
    """The same timestep for every image (the authors' CelebA-HQ recipe used t = 0).

    Args:
        t: The timestep, in ``[0, T)``.
    """

    def __init__(self, t: int = 0) -> None:
        super().__init__()
        self.t = t

    def build(self, num_train_timesteps: int, feature_channels: int, image_channels: int) -> None:
        super().build(num_train_timesteps, feature_channels, image_channels)
        if not 0 <= self.t < num_train_timesteps:
            raise ValueError(
                f"FixedTimestep.t={self.t} is outside the teacher's 0..{num_train_timesteps - 1}"
            )

    def draw(self, images: Tensor, generator: torch.Generator | None = None) -> TimestepDraw:
        return TimestepDraw(torch.full((images.shape[0],), self.t, dtype=torch.long, device=images.device))

    def summary(self) -> str:
        return f"FixedTimestep(t={self.t})"


class UniformTimestep(TimestepSampler):
    """t drawn uniformly from ``[0, max_t)`` for each image.

    Args:
        max_t: Exclusive upper bound, at most T.
    """

    def __init__(self, max_t: int = 50) -> None:
        super().__init__()
        self.max_t = max_t

    def build(self, num_train_timesteps: int, feature_channels: int, image_channels: int) -> None:
        super().build(num_train_timesteps, feature_channels, image_channels)
        if not 0 < self.max_t <= num_train_timesteps:
            raise ValueError(f"UniformTimestep.max_t={self.max_t} must be in 1..{num_train_timesteps}")

    def draw(self, images: Tensor, generator: torch.Generator | None = None) -> TimestepDraw:
        return self._uniform(images, self.max_t, generator)

    def summary(self) -> str:
        return f"UniformTimestep(max_t={self.max_t})"


class LinearDecayTimestep(TimestepSampler):
    """t uniform in ``[0, max_t)``, with max_t moving linearly from ``start`` to ``end`` over ``epochs``.

    Args:
        start: max_t at epoch 0.
        end: max_t from epoch ``epochs`` on.
        epochs: Length of the linear schedule.
    """

    def __init__(self, start: int = 100, end: int = 1, epochs: int = 100) -> None:
        super().__init__()
        if epochs < 1:
            raise ValueError(f"LinearDecayTimestep.epochs must be >= 1, got {epochs}")
        self.start, self.end, self.epochs = start, end, epochs

    def build(self, num_train_timesteps: int, feature_channels: int, image_channels: int) -> None:
        super().build(num_train_timesteps, feature_channels, image_channels)
        for name in ("start", "end"):
            value = getattr(self, name)
            if not 0 < value <= num_train_timesteps:
                raise ValueError(f"LinearDecayTimestep.{name}={value} must be in 1..{num_train_timesteps}")

    def summary(self) -> str:
        return f"LinearDecayTimestep({self.start} -> {self.end} over {self.epochs} epochs)"

    @property
    def max_t(self) -> int:
        """The current exclusive upper bound."""
        progress = min(int(self.epoch) / self.epochs, 1.0)
        return max(1, round(self.start + (self.end - self.start) * progress))

    def draw(self, images: Tensor, generator: torch.Generator | None = None) -> TimestepDraw:
        return self._uniform(images, self.max_t, generator)


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
    """

    baseline_value: Tensor
    baseline_ready: Tensor

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
    ) -> None:
        super().__init__()
        self.reward = self._default_reward(reward, num_classes, head_hidden)
        self.baseline = baseline
        self.baseline_momentum = baseline_momentum
        self.entropy_weight = entropy_weight
        self.entropy_end_epoch = max(1, entropy_end_epoch)
        self.policy_channels = policy_channels
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
        last = nn.Linear(2 * width, num_train_timesteps)
        # A zero last layer starts the policy at the uniform distribution over all T timesteps.
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
        return f"PolicyTimestep(reward={type(self.reward).__name__}, baseline={self.baseline})"

    @property
    def current_entropy_weight(self) -> float:
        """The entropy-bonus weight for the current epoch."""
        return self.entropy_weight * max(0.0, 1.0 - int(self.epoch) / self.entropy_end_epoch)

    def distribution(self, images: Tensor) -> torch.distributions.Categorical:
        """pi(t | x) for each image."""
        if self.policy is None:
            raise RuntimeError("PolicyTimestep.build() must run before use (RepFusionDistillation does this)")
        return torch.distributions.Categorical(logits=self.policy(images).float())

    def draw(self, images: Tensor, generator: torch.Generator | None = None) -> TimestepDraw:
        dist = self.distribution(images)
        t = torch.multinomial(dist.probs, 1, generator=generator).squeeze(1)
        return TimestepDraw(t, log_prob=dist.log_prob(t), entropy=dist.entropy())

    def advantage(self, reward: Tensor) -> Tensor:
        """Reward minus the chosen baseline; updates the moving average for ``"ema"``."""
        if self.baseline == "none":
            return reward
        batch_mean = reward.mean()
        if self.baseline == "batch_mean":
            return reward - batch_mean
        if not bool(self.baseline_ready):
            self.baseline_value.copy_(batch_mean)
            self.baseline_ready.fill_(True)
        advantage = reward - self.baseline_value
        momentum = self.baseline_momentum
        self.baseline_value.mul_(momentum).add_((1 - momentum) * batch_mean)
        return advantage

    def reinforce(self, draw: TimestepDraw, reward: Tensor) -> SamplerOutput:
        """REINFORCE loss and entropy bonus for drawn timesteps and their (detached) rewards.

        The update itself, separate from where rewards come from: distillation passes its reward
        component's scores, the bandit environments of `repfusion_pl.rl` pass theirs.
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
            "entropy_weight": reward.new_tensor(beta),
        }
        return SamplerOutput(losses, logs)

    def step_loss(self, draw: TimestepDraw, features: Tensor, labels: Tensor | None) -> SamplerOutput:
        # The reward sees detached features: its own terms train only the reward's parameters.
        scored = self.reward(features.detach(), labels)
        out = self.reinforce(draw, scored.reward.detach())
        out.losses.update(scored.losses)
        out.logs.update(scored.logs)
        return out
