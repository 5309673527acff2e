"""The timestep sampler interface: which diffusion timestep t the teacher sees for each image.

All samplers share it, so a YAML ``class_path`` swaps them (`repfusion_pl.timesteps.samplers` for
fixed schedules, `repfusion_pl.timesteps.policy` for the paper's learned policy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from repfusion_pl.timesteps.actions import check_timestep_grid


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
    waiting for the device. `set_progress` gives the optimiser step and the run's length before each
    training step (from the trainer, which restores its step on resume), for schedules that count
    steps; `set_noise_schedule` gives the teacher's cumulative alphas before `build`, when known.
    """

    epoch: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.num_train_timesteps = 0
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        self.current_epoch = 0
        self.current_step = 0
        self.total_steps: int | None = None
        self.alphas_cumprod: Tensor | None = None

    def set_noise_schedule(self, alphas_cumprod: Tensor | None) -> None:
        """The teacher's cumulative alphas per timestep (``None``: not known, e.g. a cached teacher)."""
        self.alphas_cumprod = None if alphas_cumprod is None else alphas_cumprod.detach().cpu()

    def set_progress(self, step: int, total_steps: int | None) -> None:
        """Record the optimiser step about to run and the run's total (``None``: unknown)."""
        self.current_step, self.total_steps = int(step), total_steps

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
        check_timestep_grid(grid, self.num_train_timesteps, f"{type(self).__name__}.grid")

    def _uniform(self, images: Tensor, high: int, generator: torch.Generator | None) -> TimestepDraw:
        t = torch.randint(0, high, (images.shape[0],), device=images.device, generator=generator)
        return TimestepDraw(t)
