"""Frozen diffusion teachers: pixel UNets, Stable Diffusion's latent UNet and DiT behind one interface.

Also here: training a small pixel teacher of one's own (`DiffusionTeacherTraining`) and converting
OpenAI guided-diffusion checkpoints (`repfusion_pl.teachers.adm`).
"""

from repfusion_pl.teachers.cached import CachedTeacher
from repfusion_pl.teachers.class_labels import (
    MissingClassLabelMapError,
    read_class_label_map,
    read_class_names,
)
from repfusion_pl.teachers.family import TeacherFamily
from repfusion_pl.teachers.latent import LatentDiT, LatentUNet
from repfusion_pl.teachers.loading import load_family
from repfusion_pl.teachers.pixel import PixelUNet
from repfusion_pl.teachers.sources import EXPECTED_LAYOUTS, detect_family, resolve_source
from repfusion_pl.teachers.teacher import DEFAULT_TEACHER_LAYER, DiffusionTeacher
from repfusion_pl.teachers.training import DiffusionTeacherTraining

#: What a distillation module takes as its teacher: the live model, or its targets read from a cache.
Teacher = DiffusionTeacher | CachedTeacher

__all__ = [
    "CachedTeacher",
    "DEFAULT_TEACHER_LAYER",
    "EXPECTED_LAYOUTS",
    "DiffusionTeacher",
    "DiffusionTeacherTraining",
    "LatentDiT",
    "LatentUNet",
    "MissingClassLabelMapError",
    "PixelUNet",
    "Teacher",
    "TeacherFamily",
    "detect_family",
    "load_family",
    "read_class_label_map",
    "read_class_names",
    "resolve_source",
]
