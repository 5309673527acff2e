"""Timestep selection: which diffusion timestep t the teacher sees for each image.

All samplers share one interface (`TimestepSampler`), so a YAML ``class_path`` swaps them:
`FixedTimestep`, `UniformTimestep`, `LinearDecayTimestep`, and `PolicyTimestep`, the paper's
REINFORCE actor, whose reward is itself a component (`repfusion_pl.timesteps.rewards`). The
gymnasium bandits in `repfusion_pl.timesteps.bandit` train the same policy outside distillation.
"""

from repfusion_pl.timesteps.base import SamplerOutput, TimestepDraw, TimestepSampler
from repfusion_pl.timesteps.policy import PolicyTimestep
from repfusion_pl.timesteps.rewards import (
    ContrastiveReward,
    LeastSquaresReward,
    RewardOutput,
    TaskHeadReward,
    TimestepReward,
)
from repfusion_pl.timesteps.samplers import FixedTimestep, LinearDecayTimestep, UniformTimestep

__all__ = [
    "ContrastiveReward",
    "FixedTimestep",
    "LeastSquaresReward",
    "LinearDecayTimestep",
    "PolicyTimestep",
    "RewardOutput",
    "SamplerOutput",
    "TaskHeadReward",
    "TimestepDraw",
    "TimestepReward",
    "TimestepSampler",
    "UniformTimestep",
]
