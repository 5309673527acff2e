"""RepFusionDistillation: a frozen diffusion teacher, a timestep sampler, a student and a feature loss."""

from __future__ import annotations

import warnings
from datetime import datetime, timezone
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from repfusion_pl._version import __version__
from repfusion_pl.checkpoints import PROVENANCE_KEY, RNG_KEY, check_resumable
from repfusion_pl.data.base import check_image_channels
from repfusion_pl.distillation.losses import FeatureLoss, PooledMSELoss
from repfusion_pl.distillation.projectors import build_projectors, concat_maps, concatenates_teacher
from repfusion_pl.distillation.rng import RandomStreams
from repfusion_pl.distillation.telemetry import TimestepTelemetry
from repfusion_pl.hparams import drop_live_object_hparams
from repfusion_pl.optim import LRSchedule, build_optimization, check_warmup_fits
from repfusion_pl.students import Student
from repfusion_pl.teachers import DiffusionTeacher
from repfusion_pl.timesteps import TimestepSampler, UniformTimestep


class RepFusionDistillation(LightningModule):
    """Distil a frozen diffusion UNet into a student backbone (RepFusion, ICCV 2023).

    Each step: a sampler picks t per image; the teacher returns features at its tapped layers;
    1x1 projectors map each student tap onto its paired teacher tap (or one student tap onto the
    concatenation of several teacher layers); the feature loss compares them. A learned sampler adds
    its own losses (task head, REINFORCE, entropy). Only the feature loss reaches the student; the
    teacher receives no gradient at all. `TimestepTelemetry` records the drawn timesteps (added
    unless the trainer has one).

    Args:
        teacher: The frozen diffusion teacher, its tapped layers and how it runs.
        student: The backbone to train and its taps, paired with the teacher's in order.
        sampler: Timestep selection; default `UniformTimestep` over [0, 50).
        feature_loss: Distance between projected student and teacher features; default pooled MSE.
        head_layer: Teacher layer whose pooled features feed a learned sampler's task head;
            default the first teacher layer.
        optimizer: Builds the optimiser from parameter groups (student + projectors, then the
            sampler); default SGD(lr=0.1, momentum=0.9, weight_decay=1e-4), the authors' choice.
        lr_scheduler: Builds a learning-rate scheduler from the optimiser; default none.
        schedule: The scheduler's interval (``epoch`` or ``step``) and a linear warm-up.
        sampler_lr: Learning rate of the sampler's group (policy + task head); default the
            optimiser's.
        channels_last: Keep student, teacher and images in channels-last memory format (faster
            convolutions on CPUs and tensor-core GPUs; see benchmarks/speed.py).
    """

    def __init__(
        self,
        teacher: DiffusionTeacher,
        student: Student,
        sampler: TimestepSampler | None = None,
        feature_loss: FeatureLoss | None = None,
        head_layer: str | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        schedule: LRSchedule | None = None,
        sampler_lr: float | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        with warnings.catch_warnings():  # live modules are dropped just below; no need to warn
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters()
        drop_live_object_hparams(self)
        self.teacher, self.student = teacher, student
        self.sampler = sampler if sampler is not None else UniformTimestep()
        self.feature_loss = feature_loss if feature_loss is not None else PooledMSELoss()
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.schedule = schedule or LRSchedule()
        self.sampler_lr = sampler_lr
        self.head_layer = head_layer or teacher.layers[0]
        if self.head_layer not in teacher.feature_shapes:
            raise ValueError(
                f"head_layer {self.head_layer!r} is not a teacher layer; choose from {teacher.layers}"
            )
        self.projectors = build_projectors(teacher, student, self.feature_loss)
        head_channels = teacher.feature_shapes[self.head_layer][0]
        self.sampler.build(teacher.num_train_timesteps, head_channels, teacher.in_channels)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:  # every 4-D weight (student, projectors, policy) and the teacher
            self.to(memory_format=torch.channels_last)
        self.rng = RandomStreams()

    # The step ------------------------------------------------------------------------------------

    def images_and_labels(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        """A batch of images, or of (images, labels), checked against the teacher's channels."""
        if isinstance(batch, Tensor):
            images, labels = batch, None
        elif isinstance(batch, (list, tuple)) and len(batch) == 2:
            images, labels = batch
        else:
            raise TypeError("distillation batches must be an image tensor or an (images, labels) pair")
        check_image_channels(images, self.teacher.in_channels, "the teacher and student")
        return images, labels

    def feature_losses(
        self, images: Tensor, timesteps: Tensor, labels: Tensor | None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The feature loss of every (student tap, teacher layer) pair, and the teacher's features."""
        images = images.contiguous(memory_format=self.memory_format)
        teacher_feats = self.teacher(images, timesteps, labels)
        student_feats = self.student(images)
        if concatenates_teacher(self.teacher, self.student):
            target = concat_maps([teacher_feats[layer] for layer in self.teacher.layers])
            projected = self.projectors[0](student_feats[self.student.taps[0]])
            return {"feature": self.feature_loss(projected, target)}, teacher_feats
        losses = {}
        pairs = zip(self.projectors, self.student.taps, self.teacher.layers, strict=True)
        for projector, s_name, t_name in pairs:
            key = "feature" if len(self.projectors) == 1 else f"feature/{t_name}"
            losses[key] = self.feature_loss(projector(student_feats[s_name]), teacher_feats[t_name])
        return losses, teacher_feats

    def training_losses(
        self, images: Tensor, labels: Tensor | None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
        """Every loss term of a training batch, the values to log, and the drawn timesteps."""
        draw = self.sampler.draw(images, self.rng.train)
        losses, teacher_feats = self.feature_losses(images, draw.timesteps, labels)
        sampler_terms = self.sampler.step_loss(draw, teacher_feats[self.head_layer], labels)
        losses.update(sampler_terms.losses)
        t = draw.timesteps.float()
        logs = {"t_mean": t.mean(), "t_std": t.std(unbiased=False), **sampler_terms.logs}
        return losses, logs, draw.timesteps

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        images, labels = self.images_and_labels(batch)
        losses, logs, timesteps = self.training_losses(images, labels)
        total = torch.stack(list(losses.values())).sum()
        if not torch.isfinite(total):
            bad = [name for name, value in losses.items() if not torch.isfinite(value)]
            raise FloatingPointError(
                f"non-finite distillation loss at step {self.global_step} (epoch {self.current_epoch}): "
                f"term(s) {bad} = {[losses[b].item() for b in bad]}. Lower the learning rate or the loss "
                "weight, or check the inputs for NaN/Inf."
            )
        for name, value in {"loss": total, **losses, **logs}.items():
            shown = name in ("feature", "head_ce", "t_mean")
            self.log(f"train/{name}", value, prog_bar=shown, sync_dist=True, batch_size=len(images))
        # The timesteps travel to callbacks (TimestepTelemetry) with the loss.
        return {"loss": total, "timesteps": timesteps}

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, labels = self.images_and_labels(batch)
        draw = self.sampler.draw(images, self.rng.validation)
        losses, _ = self.feature_losses(images, draw.timesteps, labels)
        loss = torch.stack(list(losses.values())).sum()
        self.log("val/feature", loss, prog_bar=True, sync_dist=True, batch_size=len(images))

    # Lightning hooks -----------------------------------------------------------------------------

    def configure_callbacks(self) -> list[Callback]:
        # A trainer's own TimestepTelemetry (with its settings) would be replaced by one returned here.
        callbacks = self.trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning's connector
        if any(isinstance(callback, TimestepTelemetry) for callback in callbacks):
            return []
        return [TimestepTelemetry()]

    def on_fit_start(self) -> None:
        self.rng.start(self.global_rank, self.device)

    def on_validation_epoch_start(self) -> None:
        self.rng.start_validation(self.device)

    def on_train_epoch_start(self) -> None:
        self.sampler.set_epoch(self.current_epoch)

    def provenance(self) -> dict[str, Any]:
        """What produced these weights: downstream loading and resuming check it."""
        return {
            "student": self.student.spec(),
            "teacher": self.teacher.fingerprint(),
            "package_version": __version__,
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        checkpoint[PROVENANCE_KEY] = {
            **self.provenance(),
            "sampler": self.sampler.summary(),
            "saved_at": saved_at,
        }
        checkpoint[RNG_KEY] = self.rng.state_dict(self.trainer.world_size)  # runs on every rank

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_resumable(checkpoint.get(PROVENANCE_KEY, {}), self.provenance())
        self.rng.load_state_dict(checkpoint.get(RNG_KEY, []), self.global_rank)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Student + projectors first; the learned sampler (policy, task head) second, if any."""
        student = [*self.student.parameters(), *self.projectors.parameters()]
        groups: list[dict[str, Any]] = [
            {"name": "student", "params": [p for p in student if p.requires_grad]}
        ]
        sampler = [p for p in self.sampler.parameters() if p.requires_grad]
        if sampler:
            groups.append({"name": "sampler", "params": sampler})
            if self.sampler_lr is not None:
                groups[-1]["lr"] = self.sampler_lr
        return groups

    def on_train_start(self) -> None:
        # Here, once the training data is set up: asking for the run's length any earlier would set
        # it up before a resume restores the random streams.
        check_warmup_fits(self.schedule, self.trainer)

    def configure_optimizers(self) -> Any:
        def authors_sgd(groups: Any) -> torch.optim.Optimizer:
            return torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-4)

        return build_optimization(
            self.parameter_groups(),
            self.optimizer_factory,
            self.lr_scheduler_factory,
            authors_sgd,
            self.schedule,
        )
