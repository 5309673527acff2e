"""BaseTask: what every downstream task shares, from loading distilled weights to metrics."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics import MetricCollection

from repfusion_pl.data.base import check_image_channels
from repfusion_pl.hparams import drop_live_object_hparams
from repfusion_pl.optim import LRSchedule, build_optimization, check_warmup_fits
from repfusion_pl.students import BackboneSpec
from repfusion_pl.students.weights import BackboneWeights, load_backbone_weights, resolve_backbone
from repfusion_pl.tasks.protocol import FineTuneProtocol, protocol_param_groups


class BaseTask(LightningModule):
    """A downstream task on a (possibly distilled) backbone.

    Subclasses build their network in `configure_models` from `backbone_spec` (and say where the
    backbone sits through `backbone_module`), their loss in `configure_losses`, their metrics in
    `configure_metrics`, and implement `compute_loss`; `forward`, the three steps, weight loading,
    freezing and optimisers come from here.

    Args:
        backbone: The backbone's architecture, stem and input channels. Default: the spec recorded
            in ``backbone_weights`` (what the distilled student was), else `default_backbone`.
        backbone_weights: A distillation checkpoint (``.ckpt``) or a ``repfusion export`` file
            (``.safetensors``) to initialise the backbone from; ``None`` keeps random init.
        freeze_backbone: Linear probe: the backbone's weights and BatchNorm statistics stay fixed.
        optimizer: Builds the optimiser from the trainable parameters; default AdamW(lr=1e-3).
        lr_scheduler: Builds a learning-rate scheduler from the optimiser; default none.
        schedule: The scheduler's interval (``epoch`` or ``step``) and a linear warm-up.
        protocol: How the backbone is fine-tuned: a lower rate, layer-wise decay, head-only epochs
            first (LP-FT); default all at one rate from the start. See `FineTuneProtocol`.
    """

    #: The backbone when neither ``backbone`` nor ``backbone_weights`` says which.
    default_backbone = BackboneSpec()

    def __init__(
        self,
        backbone: BackboneSpec | None = None,
        backbone_weights: str | None = None,
        freeze_backbone: bool = False,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        schedule: LRSchedule | None = None,
        protocol: FineTuneProtocol | None = None,
    ) -> None:
        super().__init__()
        with warnings.catch_warnings():  # live modules are dropped just below
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters()
        drop_live_object_hparams(self)
        #: What the backbone is: given, else the distilled student's, else the defaults.
        self.backbone_spec, weights = resolve_backbone(backbone, backbone_weights, self.default_backbone)
        self.backbone_weights = backbone_weights
        self.freeze_backbone = freeze_backbone
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.schedule = schedule or LRSchedule()
        self.protocol = protocol or FineTuneProtocol()
        if freeze_backbone and protocol is not None:
            raise ValueError(
                "freeze_backbone: true is a linear probe, and a fine-tuning protocol needs a backbone that "
                "trains; drop one of them (protocol.probe_epochs trains the head alone first, then all)"
            )
        self.configure_models()
        self.configure_losses()
        metrics = self.configure_metrics()
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        if weights is not None:
            self.load_backbone(weights)
            # One line, so that weights from a stale or unexpected run are visible in every log.
            rank_zero_info(f"loaded {weights.describe()}")
        if freeze_backbone:
            # Lightning keeps each submodule's mode as set, so eval here holds for the whole fit.
            self.backbone_module().requires_grad_(False).eval()

    @property
    def in_channels(self) -> int:
        """Image channels the backbone takes; every batch is checked against it."""
        return self.backbone_spec.in_channels

    # Hooks for subclasses -------------------------------------------------------------------------

    def configure_models(self) -> None:
        """Build the network (the backbone and whatever sits on it)."""
        raise NotImplementedError

    def configure_losses(self) -> None:
        """Build the loss modules."""

    def configure_metrics(self) -> MetricCollection:
        """The metrics, once; they are cloned with ``train/``, ``val/`` and ``test/`` prefixes."""
        raise NotImplementedError

    def backbone_module(self) -> nn.Module:
        """The module that distilled weights load into and that ``freeze_backbone`` freezes."""
        raise NotImplementedError

    def compute_loss(self, output: Any, target: Tensor) -> Tensor:
        """The training loss for one batch."""
        raise NotImplementedError

    def update_stage_metrics(self, stage: str, output: Any, target: Tensor) -> None:
        """Extra per-stage metric updates beyond the shared collection (e.g. per-class scores)."""

    def predictions(self, output: Any) -> Any:
        """What the metrics compare against the target; default the raw output."""
        return output

    # Shared behaviour ----------------------------------------------------------------------------

    def load_backbone(self, weights: BackboneWeights) -> None:
        """Load distilled weights strictly into `backbone_module` (the one way in)."""
        load_backbone_weights(self.backbone_module(), weights, target=f"{type(self).__name__} backbone")

    @property
    def probing(self) -> bool:
        """Whether the backbone is held this epoch: frozen, or in LP-FT's head-only epochs."""
        epoch = self.trainer.current_epoch if self._trainer is not None else 0
        return self.freeze_backbone or epoch < self.protocol.probe_epochs

    def train(self, mode: bool = True) -> BaseTask:
        """Switch modes, keeping a held backbone in eval mode so its BatchNorm statistics stay put."""
        super().train(mode)
        self.hold_backbone()
        return self

    def hold_backbone(self) -> None:
        """The backbone in eval mode while it is held (its BatchNorm statistics fixed), else training."""
        if self.training:
            self.backbone_module().train(not self.probing)

    def on_train_start(self) -> None:
        # A mid-epoch resume skips on_train_epoch_start, and a fresh module's backbone is training.
        self.hold_backbone()
        # Here, once the training data is set up: asking for the run's length any earlier would set
        # it up before a resume restores the random streams.
        check_warmup_fits(self.schedule, self.trainer)
        self.check_protocol_fits()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.probing and not self.freeze_backbone:
            # LP-FT drops the backbone's gradients rather than freezing it: DDP registers the
            # parameters that require grad once, so one unfrozen later would train unsynchronised.
            for param in self.backbone_module().parameters():
                param.grad = None

    def _shared_step(self, batch: Any, stage: str) -> Tensor:
        if not isinstance(batch, (list, tuple)) or len(batch) != 2:
            raise TypeError(
                f"{type(self).__name__} trains on (images, targets) batches, but the data module yields "
                "images alone; set its labels: true (labels: false is for label-free distillation)"
            )
        images, target = batch
        check_image_channels(images, self.in_channels, f"{type(self).__name__} (model.backbone.in_channels)")
        output = self(images)
        loss = self.compute_loss(output, target)
        metrics = {"train": self.train_metrics, "val": self.val_metrics, "test": self.test_metrics}[stage]
        metrics.update(self.predictions(output), target)
        self.update_stage_metrics(stage, output, target)
        batch_size = images.shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch_size)
        self.log_dict(metrics, prog_bar=stage != "train", batch_size=batch_size)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def on_train_epoch_start(self) -> None:
        self.hold_backbone()  # after LP-FT's last head-only epoch the backbone's BatchNorm learns again

    def check_protocol_fits(self) -> None:
        """Refuse LP-FT's head-only epochs when the run has no more epochs than them."""
        epochs = self.trainer.max_epochs
        if self.protocol.probe_epochs and (
            epochs is None or epochs < 0 or self.protocol.probe_epochs >= epochs
        ):
            raise ValueError(
                f"protocol.probe_epochs is {self.protocol.probe_epochs} but trainer.max_epochs is {epochs}: "
                "LP-FT trains the head alone for probe_epochs and then all of it, within max_epochs; "
                "set max_epochs above probe_epochs"
            )

    def configure_optimizers(self) -> Any:
        def adamw(params: Any) -> torch.optim.Optimizer:
            return torch.optim.AdamW(params, lr=1e-3)

        params: Any = [p for p in self.parameters() if p.requires_grad]
        if self.protocol.changes_rates:
            backbone = self.backbone_module()
            prefix = next(name for name, module in self.named_modules() if module is backbone) + "."
            named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
            params = protocol_param_groups(self.protocol, backbone, named, prefix)
        return build_optimization(
            params, self.optimizer_factory, self.lr_scheduler_factory, adamw, self.schedule, self._trainer
        )
