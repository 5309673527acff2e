"""Distillation: the LightningModule that composes teacher, student, sampler and loss, and its parts.

`RepFusionDistillation` does the composition and the step, nothing else; the feature losses, the
1x1 projectors that match student to teacher channels, the timestep telemetry callback and the
per-rank random streams live beside it.
"""

from repfusion_pl.distillation.losses import (
    AttentionTransferLoss,
    DenseL1Loss,
    DenseMSELoss,
    FeatureLoss,
    InfoNCELoss,
    NormalizedMSELoss,
    PooledMSELoss,
    RKDLoss,
)
from repfusion_pl.distillation.module import RepFusionDistillation
from repfusion_pl.distillation.rng import RandomStreams
from repfusion_pl.distillation.telemetry import TimestepTelemetry

__all__ = [
    "AttentionTransferLoss",
    "DenseL1Loss",
    "DenseMSELoss",
    "FeatureLoss",
    "InfoNCELoss",
    "NormalizedMSELoss",
    "PooledMSELoss",
    "RKDLoss",
    "RandomStreams",
    "RepFusionDistillation",
    "TimestepTelemetry",
]
