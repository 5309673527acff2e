"""RepFusion in PyTorch Lightning: distil a diffusion model into a recognition backbone."""

from repfusion_pl._version import __version__
from repfusion_pl.distill import RepFusionDistillation
from repfusion_pl.losses import (
    AttentionTransferLoss,
    DenseL1Loss,
    DenseMSELoss,
    FeatureLoss,
    InfoNCELoss,
    NormalizedMSELoss,
    PooledMSELoss,
    RKDLoss,
)
from repfusion_pl.monitor import RepresentationMonitor
from repfusion_pl.rewards import (
    ContrastiveReward,
    LeastSquaresReward,
    RewardOutput,
    TaskHeadReward,
    TimestepReward,
)
from repfusion_pl.students import BackboneSpec, Student
from repfusion_pl.tasks import BaseTask, ClassificationTask, LandmarkTask, SegmentationTask
from repfusion_pl.teacher_training import DiffusionTeacherTraining
from repfusion_pl.teachers import DiffusionTeacher
from repfusion_pl.telemetry import TimestepTelemetry
from repfusion_pl.timesteps import (
    FixedTimestep,
    LinearDecayTimestep,
    PolicyTimestep,
    TimestepSampler,
    UniformTimestep,
)

__all__ = [
    "__version__",
    "BaseTask",
    "ClassificationTask",
    "LandmarkTask",
    "SegmentationTask",
    "AttentionTransferLoss",
    "BackboneSpec",
    "ContrastiveReward",
    "DenseL1Loss",
    "DenseMSELoss",
    "DiffusionTeacher",
    "DiffusionTeacherTraining",
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
