"""The timestep sampler interface: which diffusion timestep t the teacher sees for each image.

All samplers share it, so a YAML ``class_path`` swaps them (`repfusion_pl.timesteps.samplers` for
fixed schedules, `repfusion_pl.timesteps.policy` for the paper's learned policy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


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
    the checkpoint where it stopped; `current_epoch` is its host copy, which schedules read without
    waiting for the device.
    """

    epoch: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.num_train_timesteps = 0
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        self.current_epoch = 0

    def build(self, num_train_timesteps: int, feature_channels: int, image_channels: int) -> None:
        """Bind to a teacher: T timesteps, teacher feature channels and image channels."""
        self.num_train_timesteps = num_train_timesteps

    def set_epoch(self, epoch: int) -> None:
        """Record the training epoch that is starting."""
        self.epoch.fill_(epoch)
        self.current_epoch = int(epoch)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "epoch" in state_dict:  # a checkpoint's epoch (read once, at load time)
            self.current_epoch = int(state_dict[prefix + "epoch"])

    def draw(self, images: Tensor, generator: torch.Generator | None = None) -> TimestepDraw:
        """Choose one timestep per image."""
        raise NotImplementedError

    def summary(self) -> str:
        """One line saying what this sampler does (recorded with the weights it distilled)."""
        return type(self).__name__

    def support(self) -> list[int]:
        """Every timestep this sampler can draw (a teacher-target cache must hold them all)."""
        return list(range(self.num_train_timesteps))

    def step_loss(self, draw: TimestepDraw, features: Tensor, labels: Tensor | None) -> SamplerOutput:
        """Extra losses for a learned sampler; fixed schedules have none."""
        return SamplerOutput()

    def _check_grid(self, grid: list[int] | None) -> None:
        if grid is not None and (not grid or not all(0 <= t < self.num_train_timesteps for t in grid)):
            last = self.num_train_timesteps - 1
            raise ValueError(
                f"{type(self).__name__}.grid={grid} must list timesteps in the teacher's 0..{last}"
            )

    def _uniform(self, images: Tensor, high: int, generator: torch.Generator | None) -> TimestepDraw:
        t = torch.randint(0, high, (images.shape[0],), device=images.device, generator=generator)
        return TimestepDraw(t)
