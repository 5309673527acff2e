"""Downstream tasks that start from distilled backbones."""

from repfusion_pl.tasks.base import BaseTask
from repfusion_pl.tasks.classification import ClassificationTask
from repfusion_pl.tasks.landmarks import LandmarkTask
from repfusion_pl.tasks.protocol import FineTuneProtocol
from repfusion_pl.tasks.segmentation import SegmentationTask

__all__ = ["BaseTask", "ClassificationTask", "FineTuneProtocol", "LandmarkTask", "SegmentationTask"]
