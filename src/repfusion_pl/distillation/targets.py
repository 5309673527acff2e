"""What each distillation pair compares with, and what a learned sampler's reward reads.

The reward reads either one named teacher layer (``head_layer``) or the targets the student
distils (``reward_reads: targets``, the authors' choice: their task head sat on the distilled
features), pooled and concatenated.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from repfusion_pl.distillation.losses import global_pool
from repfusion_pl.distillation.projectors import concat_maps, concatenates_teacher
from repfusion_pl.students import Student
from repfusion_pl.teachers import Teacher

RewardReads = Literal["head_layer", "targets"]


def live_targets(
    teacher: Teacher, student: Student, names: list[str], features: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Each pair's target from the teacher's features: several layers into one tap are concatenated."""
    if concatenates_teacher(teacher, student):
        return {names[0]: concat_maps([features[layer] for layer in teacher.layers])}
    return {name: features[layer] for name, layer in zip(names, teacher.layers, strict=True)}


def pooled_targets(targets: dict[str, Tensor], names: list[str]) -> Tensor:
    """The pairs' targets pooled to vectors and concatenated ``(N, sum of channels)``, in float32."""
    return torch.cat([global_pool(targets[name].float()) for name in names], dim=1)


def reward_channels(teacher: Teacher, reads: RewardReads, head_layer: str) -> int:
    """The width of what the reward reads: the head layer's channels, or all distilled channels."""
    if reads == "targets":
        return sum(teacher.feature_shapes[layer][0] for layer in teacher.layers)
    return teacher.feature_shapes[head_layer][0]


def check_reward_reads(reads: str, head_layer: str, layers: list[str]) -> None:
    """Refuse an unknown ``reward_reads`` or a head layer the teacher does not tap, with the fix."""
    if reads not in ("head_layer", "targets"):
        raise ValueError(f"reward_reads must be 'head_layer' or 'targets', got {reads!r}")
    if head_layer not in layers:
        raise ValueError(
            f"head_layer {head_layer!r} is not a teacher layer; choose from {layers} (or add it to the "
            "teacher's layers)"
        )
