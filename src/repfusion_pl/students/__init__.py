"""Students: the recognition backbones that learn from the teacher, their feature taps, and weight hand-off.

`Student` builds a torchvision or timm backbone from a `BackboneSpec` and returns its tapped stages;
`repfusion_pl.students.taps` holds the forward hooks (shared with the teacher); and
`repfusion_pl.students.weights` is the one way distilled weights leave a checkpoint and enter a
downstream model.
"""

from repfusion_pl.students.backbones import (
    FIRST_CONV_PATHS,
    TORCHVISION_ARCHS,
    BackboneSpec,
    Student,
    build_backbone,
    replace_first_conv,
    use_cifar_stem,
)
from repfusion_pl.students.taps import FeatureTaps, compile_untapped, resolve_module
from repfusion_pl.students.weights import (
    BackboneWeights,
    export_backbone,
    load_backbone_weights,
    read_backbone_weights,
    resolve_backbone,
)

__all__ = [
    "FIRST_CONV_PATHS",
    "TORCHVISION_ARCHS",
    "BackboneSpec",
    "BackboneWeights",
    "FeatureTaps",
    "Student",
    "build_backbone",
    "compile_untapped",
    "export_backbone",
    "load_backbone_weights",
    "read_backbone_weights",
    "replace_first_conv",
    "resolve_backbone",
    "resolve_module",
    "use_cifar_stem",
]
