"""RepFusionDistillation: a frozen diffusion teacher, a timestep sampler, a student and a feature loss."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from repfusion_pl import rng
from repfusion_pl.data.base import check_image_channels
from repfusion_pl.hparams import drop_live_object_hparams
from repfusion_pl.losses import FeatureLoss, PooledMSELoss
from repfusion_pl.plots import plot_timestep_evolution
from repfusion_pl.students import Student
from repfusion_pl.taps import compile_untapped
from repfusion_pl.teachers import DiffusionTeacher
from repfusion_pl.timesteps import TimestepSampler, UniformTimestep
from repfusion_pl.weights import PROVENANCE_KEY

#: Checkpoint keys of every rank's RNG states and of the per-epoch timestep counts.
RNG_KEY = "rng_states"
HISTORY_KEY = "timestep_history"


def _split_batch(batch: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError("distillation batches must be an image tensor or an (images, labels) pair")


class RepFusionDistillation(LightningModule):
    """Distil a frozen diffusion UNet into a student backbone (RepFusion, ICCV 2023).

    Each step: a sampler picks t per image; the teacher returns features at its tapped layers;
    1x1 projectors map each student tap onto its paired teacher tap; the feature loss compares
    them. A learned sampler adds its own losses (task head, REINFORCE, entropy). Only the feature
    loss reaches the student; the teacher receives no gradient at all.

    Args:
        teacher: The frozen diffusion teacher and its tapped layers.
        student: The backbone to train and its taps, paired with the teacher's in order.
        sampler: Timestep selection; default `UniformTimestep` over [0, 50).
        feature_loss: Distance between projected student and teacher features; default pooled MSE.
        head_layer: Teacher layer whose pooled features feed a learned sampler's task head;
            default the first teacher layer.
        optimizer: Builds the optimiser from parameter groups (student + projectors, then the
            sampler); default SGD(lr=0.1, momentum=0.9, weight_decay=1e-4), the authors' choice.
        lr_scheduler: Builds a learning-rate scheduler from the optimiser; default none.
        sampler_lr: Learning rate of the sampler's group (policy + task head); default the
            optimiser's.
        truncate_teacher: Stop the teacher after its deepest tapped layer (else run the decoder too,
            as the authors' code did; kept for comparison).
        teacher_inference_mode: Run the teacher under ``torch.inference_mode`` (else ``no_grad``).
        channels_last: Keep student, teacher and images in channels-last memory format (faster
            convolutions on CPUs and tensor-core GPUs; see benchmarks/speed.py).
        compile_student: ``torch.compile`` the student backbone (opt-in; pays on GPUs).
        compile_teacher: ``torch.compile`` the teacher UNet (opt-in; pays on GPUs).
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
        sampler_lr: float | None = None,
        truncate_teacher: bool = True,
        teacher_inference_mode: bool = True,
        channels_last: bool = True,
        compile_student: bool = False,
        compile_teacher: bool = False,
    ) -> None:
        super().__init__()
        with warnings.catch_warnings():  # live modules are dropped just below; no need to warn
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters()
        drop_live_object_hparams(self)
        self.teacher = teacher
        self.student = student
        self.sampler = sampler if sampler is not None else UniformTimestep()
        self.feature_loss = feature_loss if feature_loss is not None else PooledMSELoss()
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.sampler_lr = sampler_lr
        self.truncate_teacher = truncate_teacher
        self.teacher_inference_mode = teacher_inference_mode
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.head_layer = head_layer or teacher.layers[0]
        if self.head_layer not in teacher.feature_shapes:
            raise ValueError(
                f"head_layer {self.head_layer!r} is not a teacher layer; choose from {teacher.layers}"
            )
        self.projectors = self._build_projectors()
        self.sampler.build(
            teacher.num_train_timesteps, teacher.feature_shapes[self.head_layer][0], teacher.in_channels
        )
        # A plain tensor, not a buffer: DDP would overwrite every rank's counts with rank 0's.
        self._epoch_counts = torch.zeros(teacher.num_train_timesteps)
        self.timestep_history: list[list[int]] = []
        if channels_last:  # every 4-D weight (student, projectors, policy) and the teacher
            self.to(memory_format=torch.channels_last)
        if compile_student:
            self.student.backbone.compile()
        if compile_teacher:
            compile_untapped(teacher.unet, teacher.layers)
        self._rng: torch.Generator | None = None
        self._val_rng: torch.Generator | None = None
        self._resumed_rng_state: dict[str, Tensor] | None = None

    def _build_projectors(self) -> nn.ModuleList:
        teacher, student = self.teacher, self.student
        if len(teacher.layers) != len(student.taps):
            raise ValueError(
                f"teacher taps {teacher.layers} and student taps {student.taps} must pair up one to one"
            )
        if student.in_channels != teacher.in_channels:
            raise ValueError(
                f"the student takes {student.in_channels}-channel images but the teacher takes "
                f"{teacher.in_channels}; both see the same batch, so set student in_channels to "
                f"{teacher.in_channels}"
            )
        student_shapes = student.feature_shapes(teacher.sample_size)
        projectors = []
        for s_name, t_name in zip(student.taps, teacher.layers, strict=True):
            (s_ch, *s_hw), (t_ch, *t_hw) = student_shapes[s_name], teacher.feature_shapes[t_name]
            if self.feature_loss.dense:
                self._check_matchable(s_name, tuple(s_hw), t_name, tuple(t_hw))
            projectors.append(nn.Conv2d(s_ch, t_ch, kernel_size=1))
        return nn.ModuleList(projectors)

    def _check_matchable(self, s_name: str, s_hw: tuple, t_name: str, t_hw: tuple) -> None:
        s_h, s_w = s_hw
        t_h, t_w = t_hw
        if s_h * t_w != s_w * t_h or (s_h * s_w == 1 and t_h * t_w > 1):
            raise ValueError(
                f"{type(self.feature_loss).__name__} compares maps position by position, but student tap "
                f"{s_name!r} gives {s_h}x{s_w} and teacher layer {t_name!r} gives {t_h}x{t_w} at "
                f"{self.teacher.sample_size} px: they cannot be matched by resizing. Tap an earlier "
                "student stage, use stem: cifar for small images, or use a pooled loss (PooledMSELoss)."
            )

    def feature_terms(
        self, images: Tensor, timesteps: Tensor, labels: Tensor | None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Feature-loss terms per tap pair, and the teacher features they were computed against."""
        images = images.contiguous(memory_format=self.memory_format)
        teacher_feats = self.teacher(
            images,
            timesteps,
            labels,
            truncate=self.truncate_teacher,
            inference_mode=self.teacher_inference_mode,
        )
        student_feats = self.student(images)
        terms: dict[str, Tensor] = {}
        for projector, s_name, t_name in zip(
            self.projectors, self.student.taps, self.teacher.layers, strict=True
        ):
            key = "feature" if len(self.projectors) == 1 else f"feature/{t_name}"
            terms[key] = self.feature_loss(projector(student_feats[s_name]), teacher_feats[t_name])
        return terms, teacher_feats

    def distillation_terms(self, images: Tensor, labels: Tensor | None) -> tuple[dict[str, Tensor], dict]:
        """All loss terms and log values for one training batch."""
        draw = self.sampler.draw(images, self._rng)
        terms, teacher_feats = self.feature_terms(images, draw.timesteps, labels)
        extra = self.sampler.step_loss(draw, teacher_feats[self.head_layer], labels)
        terms.update(extra.losses)
        t = draw.timesteps.float()
        logs = {"t_mean": t.mean(), "t_std": t.std(unbiased=False), **extra.logs}
        self._epoch_counts += torch.bincount(draw.timesteps, minlength=len(self._epoch_counts))
        return terms, logs

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, labels = _split_batch(batch)
        check_image_channels(images, self.teacher.in_channels, "the teacher and student")
        terms, logs = self.distillation_terms(images, labels)
        total = torch.stack(list(terms.values())).sum()
        if not torch.isfinite(total):
            bad = [name for name, value in terms.items() if not torch.isfinite(value)]
            raise FloatingPointError(
                f"non-finite distillation loss at step {self.global_step} (epoch {self.current_epoch}): "
                f"term(s) {bad} = {[terms[b].item() for b in bad]}. Lower the learning rate or the loss "
                "weight, or check the inputs for NaN/Inf."
            )
        batch_size = images.shape[0]
        self.log("train/loss", total, sync_dist=True, batch_size=batch_size)
        for name, value in {**terms, **logs}.items():
            shown = name in ("feature", "head_ce", "t_mean")
            self.log(f"train/{name}", value, prog_bar=shown, sync_dist=True, batch_size=batch_size)
        return total

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, labels = _split_batch(batch)
        check_image_channels(images, self.teacher.in_channels, "the teacher and student")
        draw = self.sampler.draw(images, self._val_rng)
        terms, _ = self.feature_terms(images, draw.timesteps, labels)
        loss = torch.stack(list(terms.values())).sum()
        self.log("val/feature", loss, prog_bar=True, sync_dist=True, batch_size=images.shape[0])

    def on_validation_epoch_start(self) -> None:
        # Validation draws from its own generator: the training stream stays the same however
        # often validation runs, and fixed samplers give comparable val losses across epochs.
        self._val_rng = torch.Generator(device=self.device).manual_seed(self.global_rank)

    def on_fit_start(self) -> None:
        # One generator per rank, so each DDP process draws its own timesteps.
        seed = (torch.initial_seed() + 7919 * self.global_rank) % 2**63
        self._rng = torch.Generator(device=self.device).manual_seed(seed)
        if self._resumed_rng_state is not None:
            # Restored here, not in on_load_checkpoint (the generator does not exist yet there) and not
            # later: Lightning builds the first resumed epoch's data iterator right after this hook.
            rng.restore(self._resumed_rng_state, self._rng)
            self._resumed_rng_state = None

    def on_train_epoch_start(self) -> None:
        self.sampler.set_epoch(self.current_epoch)
        self._epoch_counts = torch.zeros(self.teacher.num_train_timesteps, device=self.device)

    def on_train_epoch_end(self) -> None:
        gathered = self.all_gather(self._epoch_counts)
        assert isinstance(gathered, Tensor)
        counts = gathered.sum(0) if gathered.dim() > 1 else gathered
        self.timestep_history.append(counts.long().tolist())
        if isinstance(self.logger, TensorBoardLogger) and counts.sum() > 0:
            values = torch.repeat_interleave(torch.arange(len(counts)), counts.long().cpu())
            self.logger.experiment.add_histogram("train/timesteps", values, self.current_epoch)

    def on_train_end(self) -> None:
        log_dir = self.trainer.log_dir
        if self.trainer.is_global_zero and log_dir is not None and self.timestep_history:
            folder = Path(log_dir)
            folder.mkdir(parents=True, exist_ok=True)
            record = {"num_train_timesteps": len(self._epoch_counts), "per_epoch": self.timestep_history}
            (folder / "timestep_counts.json").write_text(json.dumps(record))
            plot_timestep_evolution(self.timestep_history, folder / "timesteps.png")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # What produced these weights, so downstream loading can check it and say what fits.
        from repfusion_pl import __version__

        checkpoint[PROVENANCE_KEY] = {
            "student": self.student.spec(),
            "teacher": {
                "source": self.teacher.source,
                "layers": self.teacher.layers,
                "unet": unet_fingerprint(self.teacher),
            },
            "package_version": __version__,
        }
        checkpoint[HISTORY_KEY] = self.timestep_history
        # Every rank's RNG states (this hook runs on all ranks), so a resume continues each stream.
        states = {key: value.cpu() for key, value in rng.capture(self._rng).items()}
        if (
            self.trainer.world_size > 1
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
        ):
            per_rank: list[Any] = [None] * self.trainer.world_size
            # all_gather_object, not self.all_gather: the states are uint8/int64 tensors of unequal kinds.
            torch.distributed.all_gather_object(per_rank, states)
            checkpoint[RNG_KEY] = per_rank
        else:
            checkpoint[RNG_KEY] = [states]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_compatible(self, checkpoint.get(PROVENANCE_KEY, {}))
        self.timestep_history = [list(counts) for counts in checkpoint.get(HISTORY_KEY, [])]
        per_rank = checkpoint.get(RNG_KEY)
        if per_rank:
            # A run resumed on more ranks than it was saved from reuses streams round-robin.
            self._resumed_rng_state = per_rank[self.global_rank % len(per_rank)]

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Student + projectors first; the learned sampler (policy, task head) second, if any."""

        def trainable(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
            return [p for p in params if p.requires_grad]

        groups: list[dict[str, Any]] = [
            {
                "name": "student",
                "params": trainable([*self.student.parameters(), *self.projectors.parameters()]),
            }
        ]
        sampler_params = trainable(self.sampler.parameters())
        if sampler_params:
            group: dict[str, Any] = {"name": "sampler", "params": sampler_params}
            if self.sampler_lr is not None:
                group["lr"] = self.sampler_lr
            groups.append(group)
        return groups

    def configure_optimizers(self) -> Any:
        groups = self.parameter_groups()
        optimizer: torch.optim.Optimizer
        if self.optimizer_factory is None:
            optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-4)
        else:
            optimizer = self.optimizer_factory(groups)
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler_factory(optimizer)}


def unet_fingerprint(teacher: DiffusionTeacher) -> dict[str, Any]:
    """The teacher UNet's architecture (its diffusers config, minus bookkeeping keys)."""
    config = {k: v for k, v in dict(teacher.unet.config).items() if not k.startswith("_")}
    return json.loads(json.dumps(config, default=str))  # plain lists and strings: comparable after a reload


def check_compatible(module: RepFusionDistillation, provenance: dict[str, Any]) -> None:
    """Refuse a checkpoint made by another student, other teacher layers or another teacher architecture.

    Raises:
        ValueError: Naming what differs and how to resume correctly.
    """
    saved_student = provenance.get("student")
    current_student = module.student.spec()
    fix = "resume with the checkpoint's own config (`repfusion fit --ckpt_path CKPT` restores it)"
    if saved_student and saved_student != current_student:
        raise ValueError(
            f"this checkpoint was made by student {saved_student}, but this run builds {current_student}; "
            + fix
        )
    saved_teacher = provenance.get("teacher", {})
    if saved_teacher.get("layers") and list(saved_teacher["layers"]) != list(module.teacher.layers):
        raise ValueError(
            f"this checkpoint distilled teacher layers {saved_teacher['layers']}, but this run taps "
            f"{module.teacher.layers}; {fix}"
        )
    saved_unet = saved_teacher.get("unet")
    if saved_unet and saved_unet != unet_fingerprint(module.teacher):
        current = unet_fingerprint(module.teacher)
        differs = sorted(k for k in set(saved_unet) | set(current) if saved_unet.get(k) != current.get(k))
        raise ValueError(
            f"this checkpoint was distilled from teacher {saved_teacher.get('source')!r}, whose UNet differs "
            f"from {module.teacher.source!r} in {', '.join(differs)}; point model.teacher.source at the "
            "original teacher"
        )
