"""RepFusionDistillation: a frozen diffusion teacher, a timestep sampler, a student and a feature loss."""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

import repfusion_pl.optim as optim
from repfusion_pl._version import __version__
from repfusion_pl.checkpoints import PROVENANCE_KEY, RNG_KEY, check_resumable
from repfusion_pl.distillation.cached_targets import check_cached_run, split_batch
from repfusion_pl.distillation.cadence import finite_check_interval, should_log_step
from repfusion_pl.distillation.capture import StepCapture
from repfusion_pl.distillation.finite import NonFiniteWatch
from repfusion_pl.distillation.losses import FeatureLoss, PooledMSELoss
from repfusion_pl.distillation.projectors import build_projectors, pair_names
from repfusion_pl.distillation.record import run_record
from repfusion_pl.distillation.rng import RandomStreams
from repfusion_pl.distillation.targets import (
    RewardReads,
    check_reward_reads,
    live_targets,
    pooled_targets,
    reward_channels,
)
from repfusion_pl.distillation.telemetry import TimestepTelemetry
from repfusion_pl.hparams import drop_live_object_hparams
from repfusion_pl.students import Student
from repfusion_pl.teachers import CachedTeacher, Teacher
from repfusion_pl.timesteps import TimestepDraw, TimestepSampler, UniformTimestep


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
        head_layer: Teacher layer whose pooled features feed a learned sampler's reward;
            default the first teacher layer.
        reward_reads: What that reward reads: ``head_layer``, or ``targets`` (the pooled targets
            the student distils, concatenated: the authors' choice).
        optimizer: Builds the optimiser from parameter groups (student + projectors, then the
            sampler); default SGD(lr=0.1, momentum=0.9, weight_decay=1e-4), the authors' choice.
        lr_scheduler: Builds a learning-rate scheduler from the optimiser; default none.
        schedule: The scheduler's interval (``epoch`` or ``step``) and a linear warm-up.
        sampler_lr: Learning rate of the sampler's group (policy + task head); default the
            optimiser's. Refused for a sampler without parameters.
        channels_last: Keep student, teacher and images in channels-last memory format; default
            (``None``): on a CPU, where it is faster, and off on a GPU, where it measured slower
            (benchmarks/speed.py on an H200: 0.0220 s/step without, 0.0235 s with, bf16, batch 64).
        finite_check_every: Read the non-finite-loss record every this many steps; default 1 on a
            CPU and ``log_every_n_steps`` on an accelerator (the read waits for the device).
        compile_step: Capture the step's forward and backward (teacher, student, projectors,
            losses, reward) with ``torch.compile``: CUDA graphs on a GPU (`StepCapture`). Opt-in.
        compile_options: ``torch.compile`` arguments for ``compile_step``; default
            ``mode="reduce-overhead"`` on a GPU.
    """

    def __init__(
        self,
        teacher: Teacher,
        student: Student,
        sampler: TimestepSampler | None = None,
        feature_loss: FeatureLoss | None = None,
        head_layer: str | None = None,
        reward_reads: RewardReads = "head_layer",
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        schedule: optim.LRSchedule | None = None,
        sampler_lr: float | None = None,
        channels_last: bool | None = None,
        finite_check_every: int | None = None,
        compile_step: bool = False,
        compile_options: dict[str, Any] | None = None,
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
        self.schedule = schedule or optim.LRSchedule()
        self.sampler_lr = sampler_lr
        self.head_layer, self.reward_reads = head_layer or teacher.layers[0], reward_reads
        check_reward_reads(reward_reads, self.head_layer, list(teacher.feature_shapes))
        self.projectors = build_projectors(teacher, student, self.feature_loss)
        self.target_names = pair_names(teacher, student)  # each pair's loss term and cached target
        if isinstance(teacher, CachedTeacher):
            head = self.head_layer if reward_reads == "head_layer" else None
            check_cached_run(teacher, self.sampler, self.feature_loss, self.target_names, head)
        self.sampler.set_noise_schedule(getattr(getattr(teacher, "scheduler", None), "alphas_cumprod", None))
        reads = reward_channels(teacher, reward_reads, self.head_layer)
        self.sampler.build(teacher.num_train_timesteps, reads, teacher.in_channels)
        optim.check_sampler_lr(sampler_lr, self.sampler)
        self.channels_last = channels_last
        self.memory_format = torch.contiguous_format
        if channels_last:
            self.use_channels_last()
        if finite_check_every is not None and finite_check_every < 1:
            raise ValueError(f"finite_check_every must be >= 1 or None, got {finite_check_every}")
        self.finite_check_every = finite_check_every
        self.non_finite = NonFiniteWatch()
        self.capture = StepCapture(self.step_terms, compile_options) if compile_step else None
        self.rng = RandomStreams()
        self._total_steps: int | None = None  # the run's optimiser steps, known once training starts

    def use_channels_last(self) -> None:
        """Every 4-D weight (student, projectors, policy), the teacher and the images, channels-last."""
        self.memory_format = torch.channels_last
        self.to(memory_format=torch.channels_last)

    # The step ------------------------------------------------------------------------------------

    def images_and_labels(self, batch: Any) -> tuple[Tensor, Tensor | None, dict[str, Tensor] | None]:
        """A batch's images (checked against the teacher's channels), labels and cached targets."""
        return split_batch(batch, self.teacher.in_channels)

    def feature_losses(
        self,
        images: Tensor,
        timesteps: Tensor,
        labels: Tensor | None,
        cached: dict[str, Tensor] | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The feature loss of every (student tap, teacher target) pair, and the targets (with ``head``)."""
        images = images.contiguous(memory_format=self.memory_format)
        targets = self.teacher_targets(images, timesteps, labels, cached)
        student_feats = self.student(images)
        pairs = zip(self.projectors, self.student.taps, self.target_names, strict=True)
        losses = {name: self.feature_loss(p(student_feats[tap]), targets[name]) for p, tap, name in pairs}
        return losses, targets

    def teacher_targets(
        self,
        images: Tensor,
        timesteps: Tensor,
        labels: Tensor | None,
        cached: dict[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """What each pair's loss compares with, and ``head`` (what a learned sampler's reward reads).

        From a batch's cached targets when the teacher is a `CachedTeacher`, else from the teacher's
        features (`live_targets`); ``head`` is the head layer or, by ``reward_reads``, the targets.
        """
        if isinstance(self.teacher, CachedTeacher):
            if cached is None:
                raise ValueError(
                    "a CachedTeacher's batches bring their targets: attach it to its data module"
                )
            targets = self.teacher.select(cached, timesteps)
        else:
            features = self.teacher(images, timesteps, labels)
            targets = live_targets(self.teacher, self.student, self.target_names, features)
            targets["head"] = features[self.head_layer]
        if self.reward_reads == "targets":
            targets["head"] = pooled_targets(targets, self.target_names)
        return targets

    def training_losses(
        self, images: Tensor, labels: Tensor | None, cached: dict[str, Tensor] | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
        """Every loss term of a training batch, the values to log, and the drawn timesteps."""
        draw = self.sampler.draw(images, self.rng.train)
        terms = self.capture if self.capture is not None else self.step_terms
        losses, sampler_logs = terms(images, draw.timesteps, labels, draw.log_prob, draw.entropy, cached)
        t = draw.timesteps.float()
        logs = {"t_mean": t.mean(), "t_std": t.std(unbiased=False), **sampler_logs}
        return losses, logs, draw.timesteps

    def step_terms(
        self,
        images: Tensor,
        timesteps: Tensor,
        labels: Tensor | None,
        log_prob: Tensor | None = None,
        entropy: Tensor | None = None,
        cached: dict[str, Tensor] | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Feature losses and the sampler's terms for drawn timesteps: what ``compile_step`` captures."""
        losses, targets = self.feature_losses(images, timesteps, labels, cached)
        draw = TimestepDraw(timesteps, log_prob, entropy)
        sampler_terms = self.sampler.step_loss(draw, targets["head"], labels)
        return {**losses, **sampler_terms.losses}, sampler_terms.logs

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        images, labels, cached = self.images_and_labels(batch)
        losses, logs, timesteps = self.training_losses(images, labels, cached)
        total = torch.stack(list(losses.values())).sum()
        # Recorded on the device and read back only every `finite_check_every` steps: the step
        # itself never waits for the GPU (on a CPU that costs nothing, so it is read every step).
        self.non_finite.record(losses, self.global_step, self.current_epoch)
        self.non_finite.check_every(finite_check_interval(self, self.finite_check_every))
        if should_log_step(self, batch_idx):
            for name, value in {"loss": total, **losses, **logs}.items():
                shown = name in ("feature", "head_ce", "t_mean")
                # No sync_dist: one all-reduce per value and step would stall every DDP rank; each
                # rank's progress bar and rank 0's logger show that rank's values.
                self.log(f"train/{name}", value, prog_bar=shown, batch_size=len(images))
        # The timesteps travel to callbacks (TimestepTelemetry) with the loss.
        return {"loss": total, "timesteps": timesteps}

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, labels, cached = self.images_and_labels(batch)
        draw = self.sampler.draw(images, self.rng.validation)
        losses, _ = self.feature_losses(images, draw.timesteps, labels, cached)
        loss = torch.stack(list(losses.values())).sum()
        self.log("val/feature", loss, prog_bar=True, sync_dist=True, batch_size=len(images))

    # Lightning hooks -----------------------------------------------------------------------------

    def configure_callbacks(self) -> list[Callback]:
        # A trainer's own TimestepTelemetry (with its settings) would be replaced by one returned here.
        callbacks = self.trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning's connector
        if any(isinstance(callback, TimestepTelemetry) for callback in callbacks):
            return []
        return [TimestepTelemetry()]

    def setup(self, stage: str) -> None:
        # Before the strategy wraps the module (DDP) and a checkpoint's optimiser state is restored:
        # switched later, a resumed 2-process run drifted from the straight one (tests/test_resume.py).
        if self.channels_last is None and self.trainer.strategy.root_device.type == "cpu":
            self.use_channels_last()  # measured faster on CPUs; on GPUs it measured slower
        if isinstance(self.teacher, CachedTeacher) and stage == "fit":
            data = self.trainer.datamodule  # type: ignore[attr-defined]
            if data is None:
                raise ValueError(
                    "a CachedTeacher serves the data module it was cached from: give the run `data:`"
                )
            self.teacher.attach(data)

    def on_fit_start(self) -> None:
        self.rng.start(self.global_rank, self.device)

    def on_train_epoch_end(self) -> None:
        self.non_finite.check()

    def on_validation_epoch_start(self) -> None:
        self.rng.start_validation(self.device)

    def on_train_epoch_start(self) -> None:
        self.sampler.set_epoch(self.current_epoch)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.sampler.set_progress(self.global_step, self._total_steps)

    def provenance(self) -> dict[str, Any]:
        """What produced these weights: downstream loading and resuming check it."""
        return {
            "student": self.student.spec(),
            "teacher": self.teacher.fingerprint(),
            "package_version": __version__,
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.non_finite.check()  # never a checkpoint of a run that has diverged
        # The run's record (time, versions, data, loss) feeds the model card of an export.
        checkpoint[PROVENANCE_KEY] = {
            **self.provenance(),
            "sampler": self.sampler.summary(),
            **run_record(self),
        }
        checkpoint[RNG_KEY] = self.rng.state_dict(self.trainer.world_size)  # runs on every rank

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_resumable(checkpoint.get(PROVENANCE_KEY, {}), self.provenance())
        self.rng.load_state_dict(checkpoint.get(RNG_KEY, []), self.global_rank)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Student + projectors first; the learned sampler (policy, task head) second, if any."""
        student = [*self.student.parameters(), *self.projectors.parameters()]
        return optim.learner_groups(student, self.sampler, self.sampler_lr)

    def on_train_start(self) -> None:
        # Here, once the training data is set up: asking for the run's length any earlier would set
        # it up before a resume restores the random streams.
        self._total_steps = optim.check_warmup_fits(self.schedule, self.trainer)

    def configure_optimizers(self) -> Any:
        default = partial(optim.authors_sgd, fused=self.device.type == "cuda")
        groups, factories = self.parameter_groups(), (self.optimizer_factory, self.lr_scheduler_factory)
        return optim.build_optimization(groups, *factories, default, self.schedule, self._trainer)
