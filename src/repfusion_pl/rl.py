"""The timestep choice as a gymnasium contextual bandit, for tests and standalone study.

`TimestepBanditEnv` scores a timestep exactly as distillation does (`task_head_loss`, one
implementation, two callers): observe an image, pick t, get minus the task head's cross-entropy on
the teacher's features at t. `PeakedTimestepBandit` has a known best timestep, so a policy's
learning can be checked against the optimum instead of trusted.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from repfusion_pl.teachers import DiffusionTeacher
from repfusion_pl.timesteps import task_head_loss


class TimestepBanditEnv(gym.Env):
    """One-step episodes: an image is observed, a timestep chosen, the task head's loss is the cost.

    Args:
        teacher: The frozen diffusion teacher.
        head: A task head on pooled teacher features (e.g. `PolicyTimestep.head`).
        images: ``(N, C, H, W)`` images in the teacher's ``input_range``.
        labels: ``(N,)`` class labels.
        layer: Teacher layer feeding the head; default its first tapped layer.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        teacher: DiffusionTeacher,
        head: nn.Module,
        images: Tensor,
        labels: Tensor,
        layer: str | None = None,
    ) -> None:
        if len(images) != len(labels) or len(images) == 0:
            raise ValueError(
                f"need as many labels as images (got {len(images)} images, {len(labels)} labels)"
            )
        self.teacher, self.head = teacher, head
        self.images, self.labels = images.float(), labels.long()
        self.layer = layer or teacher.layers[0]
        low, high = teacher.input_range
        self.observation_space = spaces.Box(low, high, shape=tuple(images.shape[1:]), dtype=np.float32)
        self.num_timesteps = teacher.num_train_timesteps
        self.action_space = spaces.Discrete(self.num_timesteps)
        self._index = 0

    def _observation(self) -> np.ndarray:
        return self.images[self._index].numpy().astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._index = int(self.np_random.integers(len(self.images)))
        return self._observation(), {"index": self._index, "label": int(self.labels[self._index])}

    def reward(self, index: int, timestep: int) -> float:
        """Minus the task head's cross-entropy on image ``index`` seen by the teacher at ``timestep``."""
        image = self.images[index : index + 1]
        features = self.teacher(image, torch.tensor([timestep]))[self.layer]
        with torch.no_grad():
            return -float(task_head_loss(self.head, features, self.labels[index : index + 1]))

    def step(self, action: int):
        if not self.action_space.contains(action):
            raise ValueError(f"action {action} is not a timestep in 0..{self.num_timesteps - 1}")
        reward = self.reward(self._index, int(action))
        return self._observation(), reward, True, False, {"index": self._index}


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
