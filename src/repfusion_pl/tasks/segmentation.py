"""Semantic segmentation: an segmentation-models-pytorch network whose encoder is the distilled backbone."""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassJaccardIndex
from torchmetrics.wrappers import ClasswiseWrapper

from repfusion_pl.data.base import IGNORE_INDEX
from repfusion_pl.optim import LRSchedule
from repfusion_pl.students import BackboneSpec, Student, use_cifar_stem
from repfusion_pl.students.weights import BackboneWeights, load_backbone_weights
from repfusion_pl.tasks.base import BaseTask
from repfusion_pl.tasks.bisenet import BiSeNetV1
from repfusion_pl.tasks.protocol import FineTuneProtocol


class SegmentationTask(BaseTask):
    """Per-pixel classification with ``smp.create_model`` or BiSeNetV1; reports mIoU and per-class F1.

    The distilled backbone loads into ``model.encoder``: smp's ResNet and MobileNetV2 encoders use
    torchvision's key names, and timm students go through smp's ``tu-`` encoders. A CIFAR-stem
    student's 3x3 first convolution is kept but given stride 2, so the encoder keeps the stride
    layout (2, 4, ..., 32) that smp decoders are built for. ``decoder: bisenetv1`` builds the paper's
    face-parsing network (`BiSeNetV1`) on a ResNet student; its two auxiliary heads add their
    cross-entropy (times ``aux_weight``) in training.

    Args:
        num_classes: Number of classes (19 for CelebAMask-HQ face parsing).
        decoder: smp architecture name, e.g. ``unet``, ``fpn``, ``deeplabv3plus``, or ``bisenetv1``.
        decoder_args: Extra keyword arguments of the decoder (smp's ``create_model`` or `BiSeNetV1`,
            e.g. the ResNet-50 widths ``{context_channels: 512, out_channels: 1024, ...}``).
        aux_weight: Weight of each auxiliary head's loss (BiSeNetV1).
        ignore_index: Mask value excluded from loss and metrics.
        dice_weight: Weight of an added Dice loss (0 = cross-entropy only).
        class_names: Names for the per-class F1 log; default ``class_<i>``.
        backbone: The encoder's architecture, stem and input channels; default the distilled
            student's. See `BaseTask`.
        backbone_weights: Distillation checkpoint or exported file; see `BaseTask`.
        freeze_backbone: Keep the encoder fixed.
        optimizer: Optimiser factory; default AdamW(lr=1e-3).
        lr_scheduler: Scheduler factory; default none.
        schedule: The scheduler's interval and a linear warm-up; see `BaseTask`.
        protocol: Lower backbone rate, layer-wise decay or LP-FT; see `FineTuneProtocol`.
    """

    #: smp encoders are built for ImageNet-size inputs: their own stem unless told otherwise.
    default_backbone = BackboneSpec(stem="imagenet")

    def __init__(
        self,
        num_classes: int,
        decoder: str = "unet",
        decoder_args: dict[str, Any] | None = None,
        aux_weight: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        dice_weight: float = 0.0,
        class_names: list[str] | None = None,
        backbone: BackboneSpec | None = None,
        backbone_weights: str | None = None,
        freeze_backbone: bool = False,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        schedule: LRSchedule | None = None,
        protocol: FineTuneProtocol | None = None,
    ) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes")
        self.num_classes, self.decoder, self.ignore_index = num_classes, decoder, ignore_index
        self.decoder_args, self.aux_weight = dict(decoder_args or {}), aux_weight
        self.dice_weight = dice_weight
        self.class_names = class_names or [f"class_{i}" for i in range(num_classes)]
        super().__init__(
            backbone, backbone_weights, freeze_backbone, optimizer, lr_scheduler, schedule, protocol
        )

    def configure_models(self) -> None:
        spec = self.backbone_spec
        if self.decoder.lower() == "bisenetv1":
            self.model = BiSeNetV1(spec, self.num_classes, **self.decoder_args)
            return
        self.model = smp.create_model(
            self.decoder,
            encoder_name=spec.arch if spec.library == "torchvision" else f"tu-{spec.arch}",
            encoder_weights=None,
            in_channels=spec.in_channels,
            classes=self.num_classes,
            **self.decoder_args,
        )
        if spec.stem == "cifar":
            use_cifar_stem(self.model.encoder, spec.in_channels, stride=2)

    def configure_losses(self) -> None:
        self.dice = (
            smp.losses.DiceLoss("multiclass", ignore_index=self.ignore_index) if self.dice_weight else None
        )

    def configure_metrics(self) -> MetricCollection:
        n, ignore = self.num_classes, self.ignore_index
        per_class = MulticlassF1Score(n, average="none", ignore_index=ignore)
        self.val_class_f1 = ClasswiseWrapper(per_class, labels=self.class_names, prefix="f1_")
        self.test_class_f1 = ClasswiseWrapper(per_class.clone(), labels=self.class_names, prefix="f1_")
        return MetricCollection(
            {
                "miou": MulticlassJaccardIndex(n, average="macro", ignore_index=ignore),
                "f1": MulticlassF1Score(n, average="macro", ignore_index=ignore),
                "pixel_acc": MulticlassAccuracy(n, average="micro", ignore_index=ignore),
            }
        )

    def backbone_module(self) -> nn.Module:
        encoder = self.model.encoder
        return encoder.backbone if isinstance(encoder, Student) else encoder

    def load_backbone(self, weights: BackboneWeights) -> None:
        if self.backbone_spec.library == "timm" and not isinstance(
            self.model, BiSeNetV1
        ):  # smp's tu- encoders hold the timm model under `model.`
            renamed = {f"model.{k}": v for k, v in weights.state_dict.items()}
            weights = BackboneWeights(renamed, weights.provenance, weights.path)
        load_backbone_weights(self.backbone_module(), weights, target="smp encoder")

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Per-pixel class logits ``(N, num_classes, H, W)`` (BiSeNetV1 in training: and its aux heads')."""
        return self.model(images)

    def predictions(self, output: Tensor | tuple[Tensor, ...]) -> Tensor:
        return output[0] if isinstance(output, tuple) else output

    def compute_loss(self, output: Tensor | tuple[Tensor, ...], target: Tensor) -> Tensor:
        main, *aux = output if isinstance(output, tuple) else (output,)
        loss = F.cross_entropy(main, target, ignore_index=self.ignore_index)
        if self.dice is not None:
            loss = loss + self.dice_weight * self.dice(main, target)
        for logits in aux:
            loss = loss + self.aux_weight * F.cross_entropy(logits, target, ignore_index=self.ignore_index)
        return loss

    def update_stage_metrics(self, stage: str, output: Tensor, target: Tensor) -> None:
        if stage != "train":
            (self.val_class_f1 if stage == "val" else self.test_class_f1).update(output, target)

    def on_validation_epoch_end(self) -> None:
        self._log_class_f1(self.val_class_f1, "val")

    def on_test_epoch_end(self) -> None:
        self._log_class_f1(self.test_class_f1, "test")

    def _log_class_f1(self, metric: ClasswiseWrapper, stage: str) -> None:
        if metric.update_count:
            self.log_dict({f"{stage}/{k}": v for k, v in metric.compute().items()})
        metric.reset()
