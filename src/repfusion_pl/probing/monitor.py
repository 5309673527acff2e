"""Does distillation pay while it runs? A linear probe of the student next to random and teacher features."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from repfusion_pl.data.base import BaseDataModule
from repfusion_pl.distillation import rng
from repfusion_pl.distillation.module import RepFusionDistillation
from repfusion_pl.logged_figures import save_figure
from repfusion_pl.probing.knn import knn_accuracy, student_features
from repfusion_pl.probing.ridge import fit_ridge_probes, pooled_features, probe_student
from repfusion_pl.probing.verdict import verdict_line
from repfusion_pl.students import Student


class LimitedLoader:
    """The first ``batches`` batches of a loader, every time it is iterated."""

    def __init__(self, loader: Iterable, batches: int, source: str = "its data") -> None:
        self.loader, self.batches, self.source = loader, batches, source

    def __iter__(self) -> Iterator:
        for batch in itertools.islice(self.loader, self.batches):
            if isinstance(batch, dict) and "labels" in batch:  # cached views: the images and their labels
                batch = (batch["images"], batch["labels"])
            if not isinstance(batch, (list, tuple)) or len(batch) != 2:
                raise ValueError(
                    f"RepresentationMonitor probes with labels, but {self.source} yields images alone; give "
                    "the monitor `data:` a labelled data module (labels: true), as "
                    "configs/distill-no-labels.yaml does, or remove it from trainer.callbacks"
                )
            yield batch


class RepresentationMonitor(Callback):
    """Linear-probe the student every few epochs, next to a random-init copy and the teacher.

    Before the first epoch and every ``every_n_epochs`` epochs after, the streamed ridge probe of
    `repfusion_pl.probing` is fitted on the probe data's training split and scored on its validation
    split, for the student's pooled features, for a freshly initialised copy of the student (same
    architecture and taps, seed 0; once: the bar to beat),
    and for the teacher's tapped features (all taps' pooled features side by side, what the student
    is distilled to) at the timestep the sampler currently draws most.
    The scores go to the logger (``probe/student``, ``probe/random``, ``probe/teacher``), to the
    progress bar (``probe``) and to one console line; at the end of ``fit`` the history is written
    as ``representation_probe.json`` and ``.png`` next to the logs (the figure also to every logger:
    `repfusion_pl.logged_figures`). The history is callback state, so it survives a resume. The probe
    draws no random numbers from the run's streams (they are saved and restored around it), so a run
    with the monitor trains exactly as one without.

    Args:
        data: A labelled data module to probe on; default the trainer's own.
        every_n_epochs: Evaluate after every this many epochs.
        max_images: Images of each split used (the first ones), to bound the cost.
        knn_k: Also report cosine k-NN accuracy with this many neighbours (``None``: no k-NN).
        teacher: Also probe the teacher's features (one more forward per image; once per timestep).
        random_inits: Random initialisations the bar is the mean of (seeds 0, 1, ...); with more
            than one, their spread is part of the noise the last line compares the gap with
            (`repfusion_pl.probing.verdict`).
        seed: Seeds the probe's shuffling and augmentation, the same at every evaluation.
    """

    def __init__(
        self,
        data: LightningDataModule | None = None,
        every_n_epochs: int = 1,
        max_images: int = 2000,
        knn_k: int | None = None,
        teacher: bool = True,
        random_inits: int = 1,
        seed: int = 0,
    ) -> None:
        if every_n_epochs < 1 or max_images < 1 or random_inits < 1:
            raise ValueError(
                "RepresentationMonitor needs every_n_epochs >= 1, max_images >= 1 and random_inits >= 1"
            )
        self.random_inits = random_inits
        self.val_images = 0  # validation images each score is measured on (set by `loaders`)
        self.data, self.every_n_epochs, self.max_images = data, every_n_epochs, max_images
        self.knn_k, self.probe_teacher, self.seed = knn_k, teacher, seed
        #: One entry per evaluation: epoch, accuracies, the teacher's timestep.
        self.history: list[dict[str, Any]] = []
        self.random_bar: dict[str, float] | None = None
        #: The teacher's score per timestep: it is frozen and probed on the same images each time, so
        #: a timestep scored once need not be scored again (a teacher forward costs several students').
        self.teacher_scores: dict[int, float] = {}

    # Lightning hooks -----------------------------------------------------------------------------

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.history:
            self.evaluate(trainer, pl_module, epoch=-1)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.evaluate(trainer, pl_module, epoch=trainer.current_epoch)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks, before rank 0 writes
        if self.history and self.random_bar is not None:
            rank_zero_info(verdict_line(self.history[-1], self.random_bar, self.val_images))
        if trainer.is_global_zero and log_dir is not None and self.history:
            write_history(self.history, Path(log_dir), trainer.loggers, trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "random_bar": self.random_bar, "teacher_scores": self.teacher_scores}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.random_bar = state_dict.get("random_bar")
        self.teacher_scores = {int(t): float(v) for t, v in state_dict.get("teacher_scores", {}).items()}

    # The probe -----------------------------------------------------------------------------------

    def loaders(self, trainer: Trainer) -> dict[str, Iterable]:
        """Training (fit) and validation (score) loaders of the probe data, each cut to ``max_images``."""
        data = self.data if self.data is not None else trainer.datamodule  # type: ignore[attr-defined]
        if data is None:
            raise ValueError("RepresentationMonitor needs `data:` when the trainer has no data module")
        data.setup("fit")
        # Every rank probes all the probe images (the trainer's loader is this rank's share under DDP).
        train = (
            data.train_dataloader(shard=False)
            if isinstance(data, BaseDataModule)
            else data.train_dataloader()
        )
        val = data.val_dataloader()
        batches = max(1, -(-self.max_images // (train.batch_size or 1)))
        scored = batches * (val.batch_size or 1)
        # A stream may not know its length: then the batches taken say how many images are scored.
        self.val_images = min(scored, len(val.dataset)) if hasattr(val.dataset, "__len__") else scored
        source = "its `data:`" if self.data is not None else "the trainer's data"
        fit, score = LimitedLoader(train, batches, source), LimitedLoader(val, batches, source)
        return {"train": fit, "val": score}  # no test split: the monitor reports validation accuracy

    def evaluate(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> dict[str, Any]:
        """Probe student, bar and teacher now; log, print and record the result."""
        saved = rng.capture()  # the probe's shuffles and augmentations must not shift the run's streams
        start = time.perf_counter()
        try:
            # The same probe images and augmentations at every evaluation, in every run and on every
            # rank: scores move only when the features do.
            rng.seed_all(self.seed)
            entry = self._scores(trainer, pl_module, epoch)
        finally:
            rng.restore(saved)
        entry["seconds"] = round(time.perf_counter() - start, 2)  # what the monitor costs, per evaluation
        self.history.append(entry)
        self._report(pl_module, entry)
        return entry

    def _scores(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> dict[str, Any]:
        if not isinstance(pl_module, RepFusionDistillation):
            raise TypeError(
                f"RepresentationMonitor watches RepFusionDistillation, not {type(pl_module).__name__}"
            )
        student = pl_module.student
        loaders = self.loaders(trainer)
        num_classes = self._num_classes(trainer, loaders)
        was_training = student.training
        entry: dict[str, Any] = {
            "epoch": epoch,
            "student": probe_student(student, loaders, num_classes)["val_acc"],
        }
        student.train(was_training)
        if self.random_bar is None:
            self.random_bar = self._random_bar(student, loaders, num_classes, self.random_inits)
        entry["random"] = self.random_bar["val_acc"]
        if self.probe_teacher and getattr(pl_module.teacher, "live", True):  # a cache cannot be probed
            entry.update(self._teacher_score(pl_module, loaders, num_classes))
        if self.knn_k:
            entry["student_knn"] = knn_accuracy(student_features(student, loaders), self.knn_k)
            student.train(was_training)
        return entry

    def _num_classes(self, trainer: Trainer, loaders: dict[str, Iterable]) -> int:
        data = self.data if self.data is not None else trainer.datamodule  # type: ignore[attr-defined]
        known = getattr(data, "num_classes", None)
        if known:
            return int(known)
        return int(max(int(labels.max()) for _, labels in loaders["train"])) + 1

    @staticmethod
    def _random_bar(
        student: Student, loaders: dict[str, Iterable], num_classes: int, inits: int
    ) -> dict[str, Any]:
        # The same architecture and taps, freshly initialised from fixed seeds (identical on every rank).
        scores = []
        for seed in range(inits):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                fresh = Student.from_spec(student.backbone_spec, student.taps)
            fresh = fresh.to(next(student.parameters()).device)
            scores.append(float(probe_student(fresh, loaders, num_classes)["val_acc"]))
        spread = float(torch.tensor(scores).std()) if inits > 1 else 0.0
        return {"val_acc": sum(scores) / inits, "std": spread, "inits": inits, "scores": scores}

    def _teacher_score(
        self, pl_module: RepFusionDistillation, loaders: dict[str, Iterable], num_classes: int
    ) -> dict[str, Any]:
        teacher, device = pl_module.teacher, pl_module.device
        images = next(iter(loaders["val"]))[0].to(device)
        sampler, was_training = pl_module.sampler, pl_module.sampler.training
        sampler.eval()  # a policy's BatchNorm must not learn from the probe's images
        with torch.no_grad():  # the timestep the sampler favours now, from a private generator
            drawn = sampler.draw(images, torch.Generator(device=device).manual_seed(0))
        sampler.train(was_training)
        t = int(torch.mode(drawn.timesteps).values)
        if t in self.teacher_scores:
            return {"teacher": self.teacher_scores[t], "t": t}
        layers = list(teacher.layers)  # what the student is distilled to: every tap, side by side

        def extract(batch: Tensor) -> dict[str, Tensor]:
            batch = batch.to(device)
            features = teacher(batch, torch.full((len(batch),), t, device=device, dtype=torch.long))
            pooled = pooled_features({name: features[name] for name in layers})
            return {"taps": torch.cat([pooled[name] for name in layers], dim=1)}

        scores = fit_ridge_probes(extract, loaders, ["taps"], num_classes)["taps"]
        self.teacher_scores[t] = float(scores["val_acc"])
        return {"teacher": self.teacher_scores[t], "t": t}

    def _report(self, pl_module: LightningModule, entry: dict[str, Any]) -> None:
        # The evaluation before training goes to the console and the history only: the logger gets
        # one value per key and epoch.
        for key in ("student", "random", "teacher", "student_knn"):
            if key in entry and entry["epoch"] >= 0 and training(pl_module):
                shown = key == "student"
                pl_module.log(f"probe/{key}", float(entry[key]), prog_bar=shown, on_epoch=True, batch_size=1)
        teacher = f" | teacher {entry['teacher']:.3f} (t={entry['t']})" if "teacher" in entry else ""
        knn = f" | student k-NN {entry['student_knn']:.3f}" if "student_knn" in entry else ""
        when = "before training" if entry["epoch"] < 0 else f"after epoch {entry['epoch']}"
        rank_zero_info(
            f"probe {when}: student {entry['student']:.3f} | random {entry['random']:.3f}{teacher}{knn} "
            f"({entry['seconds']:.1f} s)"
        )


def training(pl_module: LightningModule) -> bool:
    """Whether the module is inside ``fit``'s training loop, where ``log`` has somewhere to go."""
    return pl_module._trainer is not None and pl_module.trainer.training


def write_history(
    history: list[dict[str, Any]], folder: Path, loggers: Sequence[Logger] = (), step: int | None = None
) -> Path:
    """``representation_probe.json`` and a ``.png`` of the accuracies over the epochs, also to ``loggers``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "representation_probe.json").write_text(json.dumps(history, indent=1))
    epochs = [entry["epoch"] + 1 for entry in history]
    fig, axis = plt.subplots(figsize=(6, 3.6))
    for key, style in (("student", "-o"), ("random", "--"), ("teacher", ":s"), ("student_knn", "-.")):
        values = [float("nan") if entry.get(key) is None else float(entry[key]) for entry in history]
        if any(key in entry for entry in history):
            axis.plot(epochs, values, style, label=key.replace("_", " "), markersize=3)
    axis.set(xlabel="epochs trained", ylabel="linear-probe val accuracy", title="representation monitor")
    axis.legend(fontsize=8)
    fig.tight_layout()
    key = "figures/representation_probe"
    return save_figure(fig, folder / "representation_probe.png", loggers, key, step)
