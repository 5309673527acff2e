"""1x1 projectors from each student tap onto its paired teacher layer, checked before training starts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repfusion_pl.distillation.losses import FeatureLoss
from repfusion_pl.students import Student
from repfusion_pl.teachers import Teacher


def concatenates_teacher(teacher: Teacher, student: Student) -> bool:
    """Whether several teacher layers feed one student tap (their maps concatenated)."""
    return len(student.taps) == 1 and len(teacher.layers) > 1


def pair_names(teacher: Teacher, student: Student) -> list[str]:
    """The name of each (student tap, teacher target) pair: its loss term, and a cache's target name."""
    if len(teacher.layers) == 1 or concatenates_teacher(teacher, student):
        return ["feature"]
    return [f"feature/{layer}" for layer in teacher.layers]


def concat_maps(maps: list[Tensor]) -> Tensor:
    """Maps resized (bilinearly) to the first one's size and stacked along channels."""
    size = maps[0].shape[-2:]
    resized = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear") for m in maps]
    return torch.cat(resized, dim=1)


def build_projectors(teacher: Teacher, student: Student, loss: FeatureLoss) -> nn.ModuleList:
    """One ``Conv2d(student channels, teacher channels, 1)`` per (student tap, teacher layer) pair.

    Taps pair up in order; one student tap against several teacher layers is matched with their
    concatenation (at the first layer's size), through one projector.

    Raises:
        ValueError: When the taps do not pair up, the two models take different image channels, or
            a dense loss meets maps that no resizing can match position by position.
    """
    if len(teacher.layers) != len(student.taps) and not concatenates_teacher(teacher, student):
        raise ValueError(
            f"teacher taps {teacher.layers} and student taps {student.taps} must pair up one to one "
            "(or give the student one tap to match the concatenation of several teacher layers)"
        )
    if student.in_channels != teacher.in_channels:
        raise ValueError(
            f"the student takes {student.in_channels}-channel images but the teacher takes "
            f"{teacher.in_channels}; both see the same batch, so set student in_channels to "
            f"{teacher.in_channels}"
        )
    student_shapes = student.feature_shapes(teacher.sample_size)
    shapes = teacher.feature_shapes
    if concatenates_teacher(teacher, student):
        first = shapes[teacher.layers[0]]
        targets = [("+".join(teacher.layers), (sum(shapes[t][0] for t in teacher.layers), *first[1:]))]
    else:
        targets = [(t, shapes[t]) for t in teacher.layers]
    projectors = []
    for s_name, (t_name, t_shape) in zip(student.taps, targets, strict=True):
        (s_channels, *s_size), (t_channels, *t_size) = student_shapes[s_name], t_shape
        if loss.dense:
            check_matchable(loss, (s_name, tuple(s_size)), (t_name, tuple(t_size)), teacher.sample_size)
        projectors.append(nn.Conv2d(s_channels, t_channels, kernel_size=1))
    return nn.ModuleList(projectors)


def check_matchable(
    loss: FeatureLoss, student_map: tuple[str, tuple], teacher_map: tuple[str, tuple], image_size: int
) -> None:
    """Refuse a dense loss between maps of other aspect ratios, or a 1x1 student map and a larger one."""
    (s_name, (s_h, s_w)), (t_name, (t_h, t_w)) = student_map, teacher_map
    if s_h * t_w != s_w * t_h or (s_h * s_w == 1 and t_h * t_w > 1):
        raise ValueError(
            f"{type(loss).__name__} compares maps position by position, but student tap {s_name!r} gives "
            f"{s_h}x{s_w} and teacher layer {t_name!r} gives {t_h}x{t_w} at {image_size} px: they cannot "
            "be matched by resizing. Tap an earlier student stage, use stem: cifar for small images, or "
            "use a pooled loss (PooledMSELoss)."
        )
