"""1x1 projectors from each student tap onto its paired teacher layer, checked before training starts."""

from __future__ import annotations

from torch import nn

from repfusion_pl.losses import FeatureLoss
from repfusion_pl.students import Student
from repfusion_pl.teachers import DiffusionTeacher


def build_projectors(teacher: DiffusionTeacher, student: Student, loss: FeatureLoss) -> nn.ModuleList:
    """One ``Conv2d(student channels, teacher channels, 1)`` per (student tap, teacher layer) pair.

    Raises:
        ValueError: When the taps do not pair up one to one, the two models take different image
            channels, or a dense loss meets maps that no resizing can match position by position.
    """
    if len(teacher.layers) != len(student.taps):
        raise ValueError(
            f"teacher taps {teacher.layers} and student taps {student.taps} must pair up one to one"
        )
    if student.in_channels != teacher.in_channels:
        raise ValueError(
            f"the student takes {student.in_channels}-channel images but the teacher takes "
            f"{teacher.in_channels}; both see the same batch, so set student in_channels to "
            f"{teacher.in_channels}"
        )
    student_shapes = student.feature_shapes(teacher.sample_size)
    projectors = []
    for s_name, t_name in zip(student.taps, teacher.layers, strict=True):
        (s_channels, *s_size), (t_channels, *t_size) = student_shapes[s_name], teacher.feature_shapes[t_name]
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
