"""The paper's timestep policy: a small CNN pi(t | x) trained by REINFORCE on a pluggable reward."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from repfusion_pl.timesteps.actions import log_snr_grid
from repfusion_pl.timesteps.base import SamplerOutput, TimestepDraw, TimestepSampler
from repfusion_pl.timesteps.rewards import TaskHeadReward, TimestepReward


class PolicyTimestep(TimestepSampler):
    """The paper's actor: a small CNN policy pi(t | x) over timesteps, trained by REINFORCE.

    Each image's drawn t is scored by the ``reward`` component from the teacher's features at t
    (default: the paper's `TaskHeadReward`, minus a task head's cross-entropy on the labels). The
    policy loss is ``-mean(log pi(t|x) * advantage)`` plus an entropy bonus ``-beta * H(pi)`` whose
    weight falls linearly from ``entropy_weight`` to 0 (at ``entropy_end`` of the run, stepped per
    step, or at epoch ``entropy_end_epoch``). The reward's own loss terms (e.g. the head's
    ``head_ce``) join the total.

    The authors' setting (all T timesteps, no baseline) needs hundreds of draws per timestep to move;
    a grid of about ten points with the batch-normalised advantage settles within a few hundred
    updates at batch 64 (``docs/policy.md``: the landscape and settle benchmarks).

    Args:
        num_classes: Classes of the default task-head reward (leave out when ``reward`` is given).
        reward: How a drawn timestep is scored; default `TaskHeadReward(num_classes, head_hidden)`.
            For unlabelled data: `ContrastiveReward`.
        baseline: Reward baseline: ``"none"`` (the authors' choice), ``"batch_mean"``, or ``"ema"``.
        baseline_momentum: Weight of the old value in the ``"ema"`` baseline.
        normalize_advantage: Divide the advantage by the batch's reward spread, so one learning rate
            serves rewards of any scale (needs a baseline).
        entropy_weight: Entropy-bonus weight at the start (paper: 0.1).
        entropy_end_epoch: Epoch at which the bonus reaches 0 (paper: 100), when ``entropy_end`` is
            not given.
        entropy_end: Fraction of the run's optimiser steps, in (0, 1], at which the bonus reaches 0
            (the run's length from ``max_steps`` or ``max_epochs``); stepped every step.
        warmup_steps: Optimiser steps during which only the reward learns (its head sees the
            uniform draws of the untrained policy) and the policy stays where it starts.
        policy_channels: Width of the policy CNN.
        head_hidden: Hidden width of the default task-head reward (default 256).
        grid: Choose among these timesteps instead of all T (a discretised policy: a teacher-target
            cache's grid, and live as well).
        log_snr_bins: Choose among this many timesteps, one per equal-width bin of the teacher's
            log signal-to-noise ratio (instead of ``grid``; needs a live teacher's schedule).
        lr: Learning rate of the policy and its reward (their own optimiser group), so that a config
            that swaps the policy for a fixed sampler drops it too; default the module's
            ``sampler_lr``, else the optimiser's.
    """

    baseline_value: Tensor
    baseline_ready: Tensor
    _grid: Tensor
    _entropy_beta: Tensor
    _policy_gate: Tensor

    def __init__(
        self,
        num_classes: int | None = None,
        reward: TimestepReward | None = None,
        baseline: Literal["none", "batch_mean", "ema"] = "none",
        baseline_momentum: float = 0.9,
        normalize_advantage: bool = False,
        entropy_weight: float = 0.1,
        entropy_end_epoch: int = 100,
        entropy_end: float | None = None,
        warmup_steps: int = 0,
        policy_channels: int = 32,
        head_hidden: int | None = None,
        grid: list[int] | None = None,
        log_snr_bins: int | None = None,
        lr: float | None = None,
    ) -> None:
        super().__init__()
        self._check_options(baseline, normalize_advantage, entropy_end, warmup_steps, grid, log_snr_bins)
        self.reward = self._default_reward(reward, num_classes, head_hidden)
        self.baseline, self.normalize_advantage = baseline, normalize_advantage
        self.baseline_momentum = baseline_momentum
        self.entropy_weight = entropy_weight
        self.entropy_end_epoch = max(1, entropy_end_epoch)
        self.entropy_end, self.warmup_steps = entropy_end, warmup_steps
        self.policy_channels = policy_channels
        self.grid, self.log_snr_bins, self.lr = grid, log_snr_bins, lr
        self.actions: list[int] | None = grid  # the timesteps the actions stand for (None: all T)
        self.register_buffer("_grid", torch.tensor(grid or [0], dtype=torch.long), persistent=False)
        self.register_buffer("baseline_value", torch.zeros(()))
        self.register_buffer("baseline_ready", torch.zeros((), dtype=torch.bool))
        # The schedule's values as buffers: a captured step reads them without being traced again.
        self.register_buffer("_entropy_beta", torch.tensor(float(entropy_weight)), persistent=False)
        self.register_buffer("_policy_gate", torch.tensor(0.0 if warmup_steps else 1.0), persistent=False)
        self.policy: nn.Module | None = None

    @staticmethod
    def _check_options(
        baseline: str,
        normalize_advantage: bool,
        entropy_end: float | None,
        warmup_steps: int,
        grid: list[int] | None,
        log_snr_bins: int | None,
    ) -> None:
        if entropy_end is not None and not 0 < entropy_end <= 1:
            raise ValueError(
                f"PolicyTimestep.entropy_end={entropy_end} is a fraction of the run: give a value in "
                "(0, 1], e.g. 0.5 for a bonus that reaches 0 halfway"
            )
        if normalize_advantage and baseline == "none":
            raise ValueError(
                "PolicyTimestep.normalize_advantage divides the centred reward by its spread: give "
                "baseline: batch_mean (or ema) with it"
            )
        if warmup_steps < 0:
            raise ValueError(f"PolicyTimestep.warmup_steps must be >= 0, got {warmup_steps}")
        if grid is not None and log_snr_bins is not None:
            raise ValueError("PolicyTimestep takes grid or log_snr_bins, not both: leave one out")

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
        self._check_grid(self.grid)
        self.actions = self.grid
        if self.log_snr_bins is not None:
            if self.alphas_cumprod is None:
                raise ValueError(
                    "PolicyTimestep.log_snr_bins needs the teacher's noise schedule, which this teacher "
                    "does not give (a CachedTeacher): give `grid:` with the cache's timesteps instead"
                )
            self.actions = log_snr_grid(self.alphas_cumprod, self.log_snr_bins)
        if self.actions is not None:
            self._grid = torch.tensor(self.actions, dtype=torch.long, device=self._grid.device)
        width = self.policy_channels
        last = nn.Linear(2 * width, len(self.actions) if self.actions else num_train_timesteps)
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
        ).to(self._grid.device)
        self.reward.build(feature_channels)

    def summary(self) -> str:
        grid = f", grid={self.actions}" if self.actions else ""
        scaled = ", normalized" if self.normalize_advantage else ""
        return f"PolicyTimestep(reward={type(self.reward).__name__}, baseline={self.baseline}{scaled}{grid})"

    # The schedules -------------------------------------------------------------------------------

    @property
    def current_entropy_weight(self) -> float:
        """The entropy-bonus weight now: per step with ``entropy_end``, else per epoch."""
        if self.entropy_end is None:
            return self.entropy_weight * max(0.0, 1.0 - self.current_epoch / self.entropy_end_epoch)
        if not self.total_steps:
            return self.entropy_weight  # before the trainer has said how long the run is
        progress = self.current_step / (self.entropy_end * self.total_steps)
        return self.entropy_weight * max(0.0, 1.0 - progress)

    @property
    def warming_up(self) -> bool:
        """Whether the policy is still held at its start while the reward learns."""
        return self.current_step < self.warmup_steps

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._refresh_schedule()

    def set_progress(self, step: int, total_steps: int | None) -> None:
        if self.entropy_end is not None and total_steps is None:
            raise ValueError(
                "PolicyTimestep.entropy_end is a fraction of the run, but the trainer's run has no end: "
                "give trainer.max_steps or max_epochs, or use entropy_end_epoch"
            )
        super().set_progress(step, total_steps)
        self._refresh_schedule()

    def _refresh_schedule(self) -> None:
        self._entropy_beta.fill_(self.current_entropy_weight)
        self._policy_gate.fill_(0.0 if self.warming_up else 1.0)

    # Acting and learning -------------------------------------------------------------------------

    def distribution(self, images: Tensor) -> torch.distributions.Categorical:
        """pi(t | x) for each image, over the actions (`support` lists the timesteps they stand for)."""
        if self.policy is None:
            raise RuntimeError("PolicyTimestep.build() must run before use (RepFusionDistillation does this)")
        return torch.distributions.Categorical(logits=self.policy(images).float())

    def draw(self, images: Tensor, generator: torch.Generator | None = None) -> TimestepDraw:
        dist = self.distribution(images)
        action = torch.multinomial(dist.probs, 1, generator=generator).squeeze(1)
        t = self._grid[action] if self.actions else action
        return TimestepDraw(t, log_prob=dist.log_prob(action), entropy=dist.entropy())

    def support(self) -> list[int]:
        return list(self.actions) if self.actions else super().support()

    def advantage(self, reward: Tensor) -> Tensor:
        """Reward minus the chosen baseline (over the batch's spread when normalised)."""
        if self.baseline == "none":
            return reward
        batch_mean = reward.mean()
        if self.baseline == "batch_mean":
            advantage = reward - batch_mean
        else:
            # The first batch starts the average at its own mean; chosen on the device, without a host read.
            value = torch.where(self.baseline_ready, self.baseline_value, batch_mean.detach())
            advantage = reward - value
            momentum = self.baseline_momentum
            self.baseline_value.copy_(momentum * value + (1 - momentum) * batch_mean.detach())
            self.baseline_ready.fill_(True)
        if self.normalize_advantage:
            advantage = advantage / (reward.std(unbiased=False) + 1e-6)
        return advantage

    def reinforce(self, draw: TimestepDraw, reward: Tensor) -> SamplerOutput:
        """REINFORCE loss and entropy bonus for drawn timesteps and their (detached) rewards.

        The update itself, separate from where rewards come from: distillation passes its reward
        component's scores, the bandit environments of `repfusion_pl.timesteps.bandit` pass theirs.
        During ``warmup_steps`` both terms are zero: the policy keeps its start.
        """
        if draw.log_prob is None or draw.entropy is None:
            raise ValueError("reinforce needs a draw from this policy (with log_prob and entropy)")
        advantage = self.advantage(reward)
        beta, gate = self._entropy_beta, self._policy_gate
        entropy = draw.entropy.mean()
        losses = {
            "policy": -gate * (draw.log_prob * advantage).mean(),
            "entropy_bonus": -gate * beta * entropy,
        }
        logs = {"policy_entropy": entropy.detach(), "reward": reward.mean(), "entropy_weight": beta.clone()}
        return SamplerOutput(losses, logs)

    def step_loss(self, draw: TimestepDraw, features: Tensor, labels: Tensor | None) -> SamplerOutput:
        # The reward sees detached features: its own terms train only the reward's parameters.
        scored = self.reward.score(features.detach(), labels, draw.timesteps)
        out = self.reinforce(draw, scored.reward.detach())
        out.losses.update(scored.losses)
        out.logs.update(scored.logs)
        return out
