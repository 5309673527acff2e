"""Which teacher layer and timestep carry the best features? A streamed linear probe over the grid.

For every (layer, timestep), pooled teacher features are fitted with a streamed ridge-regression
classifier (`repfusion_pl.probing.ridge`); one teacher forward per batch and timestep serves every
layer at once. A randomly initialised student is probed the same way: a teacher is only worth
distilling when its features clearly beat random ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.loggers import Logger
from torch import Tensor
from tqdm.auto import tqdm

from repfusion_pl.accelerators import Accelerator, Precision, autocast, resolve_device
from repfusion_pl.probing.report import (
    DISTILL_CONFIG,
    base_callbacks,
    distill_overrides,
    layers_of,
    print_probe_table,
    set_name,
    write_distill_overrides,
    write_report,
)
from repfusion_pl.probing.ridge import fit_ridge_probes, pooled_features, probe_student
from repfusion_pl.students import Student
from repfusion_pl.teachers import DiffusionTeacher, MissingClassLabelMapError


def candidate_layers(teacher: DiffusionTeacher) -> list[str]:
    """The layers the probe searches by default: encoder, middle and decoder of the teacher's family.

    For UNets: the last ResNet of every level going down, both mid-block ResNets, and every level
    coming up; for DiT: six blocks from first to last. Published probes of diffusion UNets (DDAE)
    find the best features in the decoder at small t, so the decoder is searched too (probing it
    runs the whole denoiser).
    """
    return teacher.family.candidate_layers()


def default_layer_sets(
    layers: Sequence[str], is_decoder: Callable[[str], bool] = lambda layer: layer.startswith("up_blocks")
) -> list[list[str]]:
    """Concatenations worth scoring: the encoder side (down and mid), the decoder side, and all layers."""
    encoder = [layer for layer in layers if not is_decoder(layer)]
    decoder = [layer for layer in layers if is_decoder(layer)]
    sets: list[list[str]] = []
    for group in (encoder, decoder, list(layers)):
        if len(group) > 1 and group not in sets:
            sets.append(group)
    return sets


def run_probe(
    teacher_source: str | dict[str, Any],
    loaders: dict[str, Iterable],
    num_classes: int,
    timesteps: Sequence[int],
    layers: Sequence[str] | None = None,
    student: Student | None = None,
    progress: bool = True,
    layer_sets: Sequence[Sequence[str]] | None = None,
    accelerator: Accelerator = "auto",
    precision: Precision = "32",
) -> dict[str, Any]:
    """Probe every (layer or layer set, timestep) of a teacher, and a random-init student as the bar.

    Args:
        teacher_source: What `DiffusionTeacher` loads: its ``source``, or a dict of its arguments.
        loaders: ``train``, ``val`` and ``test`` iterables of ``(images, labels)`` batches.
        num_classes: Number of classes.
        timesteps: Timesteps to probe.
        layers: Teacher layers to probe; default `candidate_layers`.
        student: A randomly initialised student to probe for comparison; ``None`` skips it.
        progress: Show a progress bar of the images streamed through (with images/s).
        layer_sets: Concatenations of ``layers`` to probe too (pooled features side by side);
            default `default_layer_sets`; ``[]`` for none.
        accelerator: Where teacher, student and the ridge statistics live: ``auto`` (the GPU when
            PyTorch sees one), ``cpu`` or ``gpu``.
        precision: The feature passes' precision, ``32`` or ``bf16`` (the ridge solve is float64).

    Returns:
        ``{"rows": [...], "random_student": {...} | None, "best": {...}}``; a row's ``layer`` is a
        layer path or a ``+``-joined layer set.
    """
    device = resolve_device(accelerator)
    options, teacher = load_probe_teacher(teacher_source, layers, device)
    if not layers:
        layers = candidate_layers(teacher)
        teacher.retap(layers)
    layers = list(layers)
    sets = checked_layer_sets(layers, layer_sets, teacher)
    names = [*layers, *(set_name(group) for group in sets)]
    passes = len(timesteps) + (student is not None)
    total = images_in(loaders, passes)
    bar = tqdm(total=total, desc="probe", unit="img", unit_scale=True, disable=not progress)
    counted = counting(loaders, bar)
    rows = []
    for t in timesteps:
        bar.set_postfix_str(f"t={t}")

        def extract(images: Tensor, t: int = t) -> dict[str, Tensor]:
            images = images.to(device, non_blocking=True)
            with autocast(device, precision):
                features = teacher(images, torch.full((len(images),), t, dtype=torch.long, device=device))
            pooled = pooled_features(features)
            pooled.update({set_name(g): torch.cat([pooled[layer] for layer in g], dim=1) for g in sets})
            return pooled

        for layer, scores in fit_ridge_probes(extract, counted, names, num_classes).items():
            rows.append({"layer": layer, "timestep": t, **scores})
    baseline = None
    if student is not None:
        bar.set_postfix_str(f"random-init {student.arch}")
        scores = probe_student(student.to(device), counted, num_classes, precision)
        baseline = {"arch": student.arch, "stem": student.stem, **scores}
    bar.close()
    best = dict(max(rows, key=lambda row: (row["val_acc"], -row["timestep"])))
    best["head_layer"] = best_single_layer(rows, best)
    return {
        "teacher": options["source"],
        "teacher_options": options,
        "rows": rows,
        "random_student": baseline,
        "best": best,
    }


def load_probe_teacher(
    teacher_source: str | dict[str, Any], layers: Sequence[str] | None, device: torch.device
) -> tuple[dict[str, Any], DiffusionTeacher]:
    """The teacher's options as recorded, and the teacher on ``device``, refusing label-conditioned probes."""
    options = dict(teacher_source) if isinstance(teacher_source, dict) else {"source": teacher_source}
    options.pop("layers", None)
    options.pop("compile", None)  # compiled regions would swallow the taps the probe moves around
    if options.get("class_label_map"):
        raise ValueError(
            "the probe scores features of images without their labels: remove class_label_map (a "
            "teacher conditioned on each image's true class would leak the label into its features; "
            "a DiT is probed on its null class)"
        )
    try:
        teacher = DiffusionTeacher(**options, layers=layers)
    except MissingClassLabelMapError:
        raise ValueError(
            f"teacher {options['source']!r} is class-conditional without a null class, so it has no "
            "label-free features to probe; probe an unconditional or classifier-free-guidance teacher"
        ) from None
    return options, teacher.to(device)


def checked_layer_sets(
    layers: list[str], layer_sets: Sequence[Sequence[str]] | None, teacher: DiffusionTeacher
) -> list[list[str]]:
    """The concatenations to score: ``layer_sets`` as given (each made of probed layers) or the defaults."""
    default_sets = default_layer_sets(layers, teacher.family.is_decoder_layer)
    sets = [list(group) for group in (default_sets if layer_sets is None else layer_sets)]
    for group in sets:
        if unknown := [layer for layer in group if layer not in layers]:
            raise ValueError(
                f"layer set {group} names {unknown}, which are not among the probed layers {layers}"
            )
    return sets


def images_in(loaders: dict[str, Iterable], passes: int) -> int | None:
    """Images streamed by ``passes`` passes over every loader (``None`` when a loader has no length)."""
    try:
        sizes = [len(loader.dataset) for loader in loaders.values()]  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        return None
    return passes * sum(sizes)


def counting(loaders: dict[str, Iterable], bar: tqdm) -> dict[str, Iterable]:
    """The loaders, each advancing ``bar`` by the images of every batch it yields."""

    class Counted:
        def __init__(self, loader: Iterable) -> None:
            self.loader = loader

        def __iter__(self) -> Iterator:
            for batch in self.loader:
                yield batch
                bar.update(len(batch[0]))

    return {split: Counted(loader) for split, loader in loaders.items()}


def best_single_layer(rows: Sequence[dict[str, Any]], best: dict[str, Any]) -> str:
    """The best-probing single layer of the best cell at its timestep: what a policy's task head reads.

    A learned sampler's reward sees one teacher layer (``head_layer``); when the best cell is a
    concatenation, its strongest member is the one to give it, not merely the first.
    """
    members = layers_of(best["layer"])
    scored = [row for row in rows if row["layer"] in members and row["timestep"] == best["timestep"]]
    return max(scored, key=lambda row: row["val_acc"])["layer"] if scored else members[0]


def split_loaders(data: LightningDataModule) -> dict[str, Iterable]:
    """The ``train``, ``val`` and ``test`` loaders of a data module (``val`` again when it has no test)."""
    data.setup("fit")
    loaders = {"train": data.train_dataloader(), "val": data.val_dataloader()}
    try:
        loaders["test"] = data.test_dataloader()
    except Exception:  # a data module without a test split: report validation accuracy twice
        loaders["test"] = loaders["val"]
    return loaders


def probe_teacher(
    teacher_source: str | dict[str, Any],
    data: LightningDataModule,
    data_config: dict[str, Any],
    timesteps: Sequence[int],
    out_dir: str | Path,
    student: Student,
    layers: Sequence[str] | None = None,
    num_classes: int | None = None,
    distill_config: str | Path = DISTILL_CONFIG,
    layer_sets: Sequence[Sequence[str]] | None = None,
    accelerator: Accelerator = "auto",
    precision: Precision = "32",
    loggers: Sequence[Logger] = (),
) -> dict[str, Any]:
    """The probe as ``repfusion probe`` runs it: grid, random-init bar, report and distillation configs.

    Args:
        teacher_source: What `DiffusionTeacher` loads: its ``source``, or a dict of its arguments.
        data: A labelled data module (every label is used).
        data_config: Its config block (``class_path`` + ``init_args``), for the written configs.
        timesteps: Timesteps of the grid.
        out_dir: Where ``probe.{csv,json,png}`` and the configs go.
        student: A randomly initialised student, the bar the teacher must beat.
        layers: Teacher layers; default `candidate_layers`.
        num_classes: Classes; default ``data.num_classes``.
        distill_config: The base distillation config the written overrides apply to.
        layer_sets: Concatenations to probe too; default `default_layer_sets`.
        accelerator: ``auto`` (the GPU when PyTorch sees one), ``cpu`` or ``gpu``.
        precision: The feature passes' precision, ``32`` or ``bf16``.
        loggers: Loggers that also receive the heatmap, as ``figures/probe``.

    Returns:
        What `run_probe` returns, with ``"files"``: the written paths by kind.
    """
    loaders = split_loaders(data)
    num_classes = num_classes or getattr(data, "num_classes", None)
    if not num_classes:
        raise ValueError(f"{type(data).__name__} has no num_classes attribute; give num_classes")
    result = run_probe(
        teacher_source,
        loaders,
        num_classes,
        timesteps,
        layers,
        student,
        layer_sets=layer_sets,
        accelerator=accelerator,
        precision=precision,
    )
    files = write_report(result, out_dir, loggers)
    spec, callbacks = student.backbone_spec.as_dict(), base_callbacks(distill_config)
    overrides = distill_overrides(result, data_config, spec, num_classes, out_dir, callbacks)
    files.update(write_distill_overrides(overrides, result, out_dir, distill_config))
    print_probe_table(result)
    return {**result, "files": files}
