"""RepFusion in PyTorch Lightning: distil a diffusion model into a recognition backbone.

Every public class is importable from here, and YAML configs name them so
(``class_path: repfusion_pl.RepFusionDistillation``). The subpackages, in the order they may
import each other: `data`, `students`, `teachers`, `timesteps`, `distillation`, `probing`,
`tasks`, `cli` (see ``docs/architecture.md``).
"""

from repfusion_pl import _deprecated
from repfusion_pl._version import __version__
from repfusion_pl.distillation import (
    AttentionTransferLoss,
    DenseL1Loss,
    DenseMSELoss,
    FeatureLoss,
    InfoNCELoss,
    NormalizedMSELoss,
    PooledMSELoss,
    RepFusionDistillation,
    RKDLoss,
    TimestepTelemetry,
)
from repfusion_pl.probing import RepresentationMonitor
from repfusion_pl.students import BackboneSpec, ExportOnFitEnd, Student
from repfusion_pl.tasks import BaseTask, ClassificationTask, FineTuneProtocol, LandmarkTask, SegmentationTask
from repfusion_pl.teachers import CachedTeacher, DiffusionTeacher, DiffusionTeacherTraining
from repfusion_pl.timesteps import (
    ContrastiveReward,
    FixedTimestep,
    LeastSquaresReward,
    LinearDecayTimestep,
    PolicyTimestep,
    RewardOutput,
    TaskHeadReward,
    TimestepReward,
    TimestepSampler,
    UniformTimestep,
)

_deprecated.install()

__all__ = [
    "__version__",
    "BaseTask",
    "ClassificationTask",
    "FineTuneProtocol",
    "LandmarkTask",
    "SegmentationTask",
    "AttentionTransferLoss",
    "BackboneSpec",
    "CachedTeacher",
    "ContrastiveReward",
    "DenseL1Loss",
    "DenseMSELoss",
    "DiffusionTeacher",
    "DiffusionTeacherTraining",
    "ExportOnFitEnd",
    "FeatureLoss",
    "FixedTimestep",
    "InfoNCELoss",
    "LeastSquaresReward",
    "LinearDecayTimestep",
    "NormalizedMSELoss",
    "PolicyTimestep",
    "PooledMSELoss",
    "RKDLoss",
    "RepresentationMonitor",
    "RewardOutput",
    "RepFusionDistillation",
    "Student",
    "TaskHeadReward",
    "TimestepReward",
    "TimestepSampler",
    "TimestepTelemetry",
    "UniformTimestep",
]
