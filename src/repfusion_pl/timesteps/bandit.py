"""The timestep choice as a gymnasium contextual bandit, for tests and standalone study.

`TimestepBanditEnv` scores timesteps exactly as distillation does (the same `TimestepReward`
component, one implementation, two callers): observe images, pick a t for each, get the reward of
the teacher's features at those t. `PeakedTimestepBandit` has a known best timestep, so a policy's
learning can be checked against the optimum instead of trusted.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from repfusion_pl.teachers import DiffusionTeacher
from repfusion_pl.timesteps.rewards import TimestepReward


class TimestepBanditEnv(gym.Env):
    """One-step episodes: images are observed, a timestep chosen for each, the reward scores them.

    Args:
        teacher: The frozen diffusion teacher.
        reward: A built reward component (e.g. ``policy.reward`` of a built `PolicyTimestep`).
        images: ``(N, C, H, W)`` images in the teacher's ``input_range``.
        labels: ``(N,)`` class labels; ``None`` for rewards that need none.
        batch_size: ``None``: one image an episode (observation ``(C, H, W)``, action a timestep).
            ``B``: B distinct images an episode (observation ``(B, C, H, W)``, one timestep each, the
            episode's reward their mean); rewards that compare images (`ContrastiveReward`) need B >= 2.
        layer: Teacher layer the reward sees; default its first tapped layer.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        teacher: DiffusionTeacher,
        reward: TimestepReward,
        images: Tensor,
        labels: Tensor | None = None,
        batch_size: int | None = None,
        layer: str | None = None,
    ) -> None:
        if len(images) == 0 or (labels is not None and len(images) != len(labels)):
            count = "no" if labels is None else len(labels)
            raise ValueError(f"need as many labels as images (got {len(images)} images, {count} labels)")
        if reward.needs_labels and labels is None:
            raise ValueError(f"{type(reward).__name__} needs labels: give the images' labels")
        if batch_size is not None and not 1 <= batch_size <= len(images):
            raise ValueError(
                f"batch_size must be in 1..{len(images)} (the number of images), got {batch_size}"
            )
        self.teacher, self.reward_fn = teacher, reward
        self.images = images.float()
        self.labels = None if labels is None else labels.long()
        self.batch_size, self.layer = batch_size, layer or teacher.layers[0]
        low, high = teacher.input_range
        shape = tuple(images.shape[1:]) if batch_size is None else (batch_size, *images.shape[1:])
        self.observation_space = spaces.Box(low, high, shape=shape, dtype=np.float32)
        self.num_timesteps = teacher.num_train_timesteps
        self.action_space: spaces.Space = (
            spaces.Discrete(self.num_timesteps)
            if batch_size is None
            else spaces.MultiDiscrete([self.num_timesteps] * batch_size)
        )
        self._indices = np.zeros(1, dtype=np.int64)

    def _observation(self) -> np.ndarray:
        observed = self.images[torch.from_numpy(self._indices)].numpy().astype(np.float32)
        return observed[0] if self.batch_size is None else observed

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        count = 1 if self.batch_size is None else self.batch_size
        self._indices = self.np_random.choice(len(self.images), size=count, replace=False)
        info: dict[str, Any] = {"indices": self._indices.tolist()}
        if self.batch_size is None:
            info["index"] = int(self._indices[0])
        if self.labels is not None:
            info["labels"] = self.labels[torch.from_numpy(self._indices)].tolist()
        return self._observation(), info

    def rewards(self, indices: Tensor, timesteps: Tensor) -> Tensor:
        """Per-image rewards of images ``indices`` seen by the teacher at ``timesteps``."""
        features = self.teacher(self.images[indices], timesteps)[self.layer]
        labels = None if self.labels is None else self.labels[indices]
        with torch.no_grad():
            return self.reward_fn.score(features, labels, timesteps).reward.float()

    def step(self, action: Any):
        if not self.action_space.contains(action):
            raise ValueError(f"action {action} is not a timestep in 0..{self.num_timesteps - 1} per image")
        timesteps = torch.as_tensor(np.atleast_1d(action), dtype=torch.long)
        rewards = self.rewards(torch.from_numpy(self._indices), timesteps)
        info = {"indices": self._indices.tolist(), "rewards": rewards.tolist()}
        return self._observation(), float(rewards.mean()), True, False, info


class PeakedTimestepBandit(gym.Env):
    """A synthetic bandit whose reward peaks at a known timestep ``t_star``.

    The reward of t is ``exp(-((t - t_star) / width) ** 2)`` plus Gaussian noise; the observation is
    a random image-shaped tensor that carries no information (a plain bandit in contextual form).

    Args:
        num_timesteps: T, the number of actions.
        t_star: The best timestep.
        width: Width of the reward peak, in timesteps.
        noise: Standard deviation of the reward noise.
        image_shape: Shape of the observations.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        num_timesteps: int = 100,
        t_star: int = 30,
        width: float = 5.0,
        noise: float = 0.05,
        image_shape: tuple[int, int, int] = (1, 8, 8),
    ) -> None:
        if not 0 <= t_star < num_timesteps:
            raise ValueError(f"t_star={t_star} is outside 0..{num_timesteps - 1}")
        self.t_star, self.width, self.noise = t_star, width, noise
        self.observation_space = spaces.Box(0.0, 1.0, shape=image_shape, dtype=np.float32)
        self.num_timesteps = num_timesteps
        self.action_space = spaces.Discrete(num_timesteps)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return self.np_random.random(self.observation_space.shape, dtype=np.float32), {}

    def expected_reward(self, timesteps: Tensor) -> Tensor:
        """The noise-free reward of each timestep."""
        return torch.exp(-(((timesteps.float() - self.t_star) / self.width) ** 2))

    def step(self, action: int):
        if not self.action_space.contains(action):
            raise ValueError(f"action {action} is not in 0..{self.num_timesteps - 1}")
        reward = float(self.expected_reward(torch.tensor([action]))) + self.noise * float(
            self.np_random.normal()
        )
        observation = self.np_random.random(self.observation_space.shape, dtype=np.float32)
        return observation, reward, True, False, {}
