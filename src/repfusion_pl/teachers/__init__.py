"""Frozen diffusion teachers: pixel UNets, Stable Diffusion's latent UNet and DiT behind one interface."""

from repfusion_pl.teachers.families import PixelUNet, TeacherFamily
from repfusion_pl.teachers.sources import EXPECTED_LAYOUTS, detect_family, resolve_source
from repfusion_pl.teachers.teacher import DEFAULT_TEACHER_LAYER, DiffusionTeacher, read_class_label_map

__all__ = [
    "DEFAULT_TEACHER_LAYER",
    "EXPECTED_LAYOUTS",
    "DiffusionTeacher",
    "PixelUNet",
    "TeacherFamily",
    "detect_family",
    "read_class_label_map",
    "resolve_source",
]
