"""Image classification: a student backbone, global pooling and a linear head."""

from __future__ import annotations

from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from repfusion_pl.optim import LRSchedule
from repfusion_pl.students import BackboneSpec, Student
from repfusion_pl.tasks.base import BaseTask
from repfusion_pl.tasks.protocol import FineTuneProtocol


class ClassificationTask(BaseTask):
    """Classify images with a (distilled) backbone and a linear head; reports top-1/top-5 accuracy.

    Args:
        num_classes: Number of classes.
        label_smoothing: Cross-entropy label smoothing.
        backbone: Architecture, stem and input channels; default the distilled student's. See `BaseTask`.
        backbone_weights: Distillation checkpoint or exported file; see `BaseTask`.
        freeze_backbone: Linear probe instead of a full fine-tune.
        optimizer: Optimiser factory; default AdamW(lr=1e-3).
        lr_scheduler: Scheduler factory; default none.
        schedule: The scheduler's interval and a linear warm-up; see `BaseTask`.
        protocol: Lower backbone rate, layer-wise decay or LP-FT; see `FineTuneProtocol`.
    """

    def __init__(
        self,
        num_classes: int,
        label_smoothing: float = 0.0,
        backbone: BackboneSpec | None = None,
        backbone_weights: str | None = None,
        freeze_backbone: bool = False,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        schedule: LRSchedule | None = None,
        protocol: FineTuneProtocol | None = None,
    ) -> None:
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        super().__init__(
            backbone, backbone_weights, freeze_backbone, optimizer, lr_scheduler, schedule, protocol
        )

    def configure_models(self) -> None:
        self.encoder = Student.from_spec(self.backbone_spec)
        channels = self.encoder.feature_shapes(32)[self.encoder.taps[-1]][0]
        self.head = nn.Linear(channels, self.num_classes)

    def configure_losses(self) -> None:
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)

    def configure_metrics(self) -> MetricCollection:
        top1 = MulticlassAccuracy(self.num_classes, average="micro")
        metrics: dict[str, Metric | MetricCollection] = {"acc": top1}
        if self.num_classes > 5:
            metrics["acc_top5"] = MulticlassAccuracy(self.num_classes, top_k=5, average="micro")
        return MetricCollection(metrics)

    def backbone_module(self) -> nn.Module:
        return self.encoder.backbone

    def forward(self, images: Tensor) -> Tensor:
        """Class logits ``(N, num_classes)``."""
        features = self.encoder(images)[self.encoder.taps[-1]]
        return self.head(features.mean(dim=(2, 3)))

    def compute_loss(self, output: Tensor, target: Tensor) -> Tensor:
        if target.min() < 0 or target.max() >= self.num_classes:
            bad = int(target.max() if target.max() >= self.num_classes else target.min())
            raise ValueError(
                f"label {bad} is outside 0..{self.num_classes - 1}; set num_classes to the dataset's "
                "class count"
            )
        return self.criterion(output, target)
