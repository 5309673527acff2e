"""Students: the recognition backbones that learn from the teacher, their feature taps, and weight hand-off.

`Student` builds a torchvision or timm backbone from a `BackboneSpec` (random, or from pretrained
weights in the local cache: `repfusion_pl.students.pretrained`) and returns its tapped stages;
`repfusion_pl.students.taps` holds the forward hooks (shared with the teacher); and
`repfusion_pl.students.weights` is the one way distilled weights leave a checkpoint and enter a
downstream model; `repfusion_pl.students.hub` writes them as a Hub folder with a model card, and
`ExportOnFitEnd` does so when training ends.
"""

from repfusion_pl.students.backbones import (
    FIRST_CONV_PATHS,
    TORCHVISION_ARCHS,
    BackboneSpec,
    build_backbone,
    build_initialised_backbone,
    replace_first_conv,
    use_cifar_stem,
)
from repfusion_pl.students.export_callback import ExportOnFitEnd
from repfusion_pl.students.hub import HubFolderError, export_hub_folder, push_hub_folder
from repfusion_pl.students.pretrained import PretrainedWeightsError
from repfusion_pl.students.student import Student
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
    "ExportOnFitEnd",
    "FeatureTaps",
    "HubFolderError",
    "PretrainedWeightsError",
    "Student",
    "build_backbone",
    "build_initialised_backbone",
    "compile_untapped",
    "export_backbone",
    "export_hub_folder",
    "load_backbone_weights",
    "push_hub_folder",
    "read_backbone_weights",
    "replace_first_conv",
    "resolve_backbone",
    "resolve_module",
    "use_cifar_stem",
]
