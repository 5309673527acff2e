"""Fixed timestep schedules: one t for all, uniform over [0, T), and a linearly shrinking range."""

from __future__ import annotations

import torch
from torch import Tensor

from repfusion_pl.timesteps.base import TimestepDraw, TimestepSampler


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

    def support(self) -> list[int]:
        return [self.t]


class UniformTimestep(TimestepSampler):
    """t drawn uniformly from ``[0, max_t)``, or from the points of ``grid``, for each image.

    Args:
        max_t: Exclusive upper bound, at most T.
        grid: Draw among these timesteps instead (a teacher-target cache's grid; works live too).
    """

    _grid: Tensor

    def __init__(self, max_t: int = 50, grid: list[int] | None = None) -> None:
        super().__init__()
        self.max_t, self.grid = max_t, grid
        self.register_buffer("_grid", torch.tensor(grid or [0], dtype=torch.long), persistent=False)

    def build(self, num_train_timesteps: int, feature_channels: int, image_channels: int) -> None:
        super().build(num_train_timesteps, feature_channels, image_channels)
        self._check_grid(self.grid)
        if self.grid is None and not 0 < self.max_t <= num_train_timesteps:
            raise ValueError(f"UniformTimestep.max_t={self.max_t} must be in 1..{num_train_timesteps}")

    def draw(self, images: Tensor, generator: torch.Generator | None = None) -> TimestepDraw:
        if self.grid is None:
            return self._uniform(images, self.max_t, generator)
        index = self._uniform(images, len(self.grid), generator).timesteps
        return TimestepDraw(self._grid[index])

    def summary(self) -> str:
        return f"UniformTimestep(grid={self.grid})" if self.grid else f"UniformTimestep(max_t={self.max_t})"

    def support(self) -> list[int]:
        return list(self.grid) if self.grid else list(range(self.max_t))


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
        progress = min(self.current_epoch / self.epochs, 1.0)
        return max(1, round(self.start + (self.end - self.start) * progress))

    def draw(self, images: Tensor, generator: torch.Generator | None = None) -> TimestepDraw:
        return self._uniform(images, self.max_t, generator)

    def support(self) -> list[int]:
        return list(range(max(self.start, self.end)))
