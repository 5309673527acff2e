"""Which teacher layer and timestep carry the best features? A streamed linear probe over the grid.

For every (layer, timestep), pooled teacher features are fitted with a ridge-regression classifier
(least squares onto one-hot labels). Its sufficient statistics ``X^T X`` and ``X^T Y`` are
accumulated batch by batch, so memory stays flat however large the dataset; one teacher forward per
batch and timestep serves every layer at once. The ridge strength is chosen on the validation split
and accuracy reported on the test split. A randomly initialised student is probed the same way: a
teacher is only worth distilling when its features clearly beat random ones.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from repfusion_pl.students import Student
from repfusion_pl.teachers import DiffusionTeacher

RIDGE_STRENGTHS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def candidate_layers(teacher: DiffusionTeacher) -> list[str]:
    """The last ResNet of every encoder level, both mid-block ResNets and the default tap."""
    unet = teacher.unet
    layers = [f"down_blocks.{i}.resnets.{len(block.resnets) - 1}" for i, block in enumerate(unet.down_blocks)]
    layers += ["mid_block.resnets.0", "mid_block.resnets.1.conv2"]
    return layers


class StreamingRidge:
    """Least-squares classifier fitted from accumulated ``X^T X`` and ``X^T Y`` (bias included)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.xtx: Tensor | None = None
        self.xty: Tensor | None = None

    def update(self, features: Tensor, labels: Tensor) -> None:
        """Add a batch of ``(N, D)`` features and ``(N,)`` labels."""
        x = torch.cat([features.double(), features.new_ones(len(features), 1, dtype=torch.float64)], dim=1)
        y = F.one_hot(labels, self.num_classes).double()
        self.xtx = x.T @ x if self.xtx is None else self.xtx + x.T @ x
        self.xty = x.T @ y if self.xty is None else self.xty + x.T @ y

    def solve(self, strength: float) -> Tensor:
        """Weights ``(D + 1, K)`` for a ridge strength relative to the mean feature energy."""
        assert self.xtx is not None and self.xty is not None, "no data seen"
        dim = self.xtx.shape[0] - 1
        scale = self.xtx.diagonal()[:dim].mean().clamp(min=1e-12)
        penalty = torch.eye(dim + 1, dtype=torch.float64, device=self.xtx.device) * strength * scale
        penalty[dim, dim] = 0  # the bias is not penalised
        return torch.linalg.solve(self.xtx + penalty, self.xty)


def _predict(weights: Tensor, features: Tensor) -> Tensor:
    return (features.double() @ weights[:-1] + weights[-1]).argmax(dim=1)


def _pooled(features: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name: f.float().mean(dim=(2, 3)) for name, f in features.items()}


class _Grid:
    """Probe state for one feature extractor over several layers."""

    def __init__(self, layers: Sequence[str], num_classes: int) -> None:
        self.layers = list(layers)
        self.ridges = {layer: StreamingRidge(num_classes) for layer in layers}
        self.weights: dict[str, list[Tensor]] = {}
        self.correct: dict[tuple[str, int], int] = {}
        self.seen = 0

    def fit(self) -> None:
        self.weights = {layer: [r.solve(s) for s in RIDGE_STRENGTHS] for layer, r in self.ridges.items()}

    def score(self, features: dict[str, Tensor], labels: Tensor, strengths: dict[str, int] | None) -> None:
        for layer in self.layers:
            chosen = range(len(RIDGE_STRENGTHS)) if strengths is None else [strengths[layer]]
            for index in chosen:
                hits = int((_predict(self.weights[layer][index], features[layer]) == labels).sum())
                self.correct[(layer, index)] = self.correct.get((layer, index), 0) + hits
        self.seen += len(labels)

    def best_strengths(self) -> dict[str, int]:
        best = {}
        for layer in self.layers:
            hits = [self.correct.get((layer, i), 0) for i in range(len(RIDGE_STRENGTHS))]
            best[layer] = hits.index(max(hits))  # ties go to the weakest regularisation tried first
        return best

    def accuracy(self, strengths: dict[str, int]) -> dict[str, float]:
        return {layer: self.correct[(layer, strengths[layer])] / max(self.seen, 1) for layer in self.layers}


def _probe(extract, loaders: dict[str, Iterable], layers: Sequence[str], num_classes: int) -> dict[str, dict]:
    """Fit on ``train``, choose the ridge strength on ``val``, report ``val`` and ``test`` accuracy."""
    grid = _Grid(layers, num_classes)
    for images, labels in loaders["train"]:
        for layer, feats in extract(images).items():
            grid.ridges[layer].update(feats, labels)
    grid.fit()
    for images, labels in loaders["val"]:
        grid.score(extract(images), labels, None)
    strengths = grid.best_strengths()
    val = grid.accuracy(strengths)
    test_grid = _Grid(layers, num_classes)
    test_grid.weights = grid.weights
    for images, labels in loaders["test"]:
        test_grid.score(extract(images), labels, strengths)
    test = test_grid.accuracy(strengths)
    return {
        layer: {"val_acc": val[layer], "test_acc": test[layer], "ridge": RIDGE_STRENGTHS[strengths[layer]]}
        for layer in layers
    }


def probe_student(student: Student, loaders: dict[str, Iterable], num_classes: int) -> dict[str, Any]:
    """Linear-probe a student's pooled last-tap features (random-init or distilled) the same way.

    Returns:
        ``{"val_acc", "test_acc", "ridge"}``.
    """
    student.eval()
    tap = student.taps[-1]

    def student_features(images: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            return _pooled({tap: student(images)[tap]})

    return _probe(student_features, loaders, [tap], num_classes)[tap]


def run_probe(
    teacher_source: str,
    loaders: dict[str, Iterable],
    num_classes: int,
    timesteps: Sequence[int],
    layers: Sequence[str] | None = None,
    student: Student | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Probe every (layer, timestep) of a teacher, and a random-init student as the bar to beat.

    Args:
        teacher_source: What `DiffusionTeacher` loads.
        loaders: ``train``, ``val`` and ``test`` iterables of ``(images, labels)`` batches.
        num_classes: Number of classes.
        timesteps: Timesteps to probe.
        layers: Teacher layers to probe; default `candidate_layers`.
        student: A randomly initialised student to probe for comparison; ``None`` skips it.
        progress: Show a progress bar over the grid.

    Returns:
        ``{"rows": [...], "random_student": {...} | None, "best": {...}}``.
    """
    layers = list(layers) if layers else candidate_layers(DiffusionTeacher(teacher_source))
    teacher = DiffusionTeacher(teacher_source, layers=layers)
    rows = []
    bar = tqdm(total=len(timesteps) + (student is not None), desc="probe", disable=not progress)
    for t in timesteps:
        bar.set_postfix_str(f"t={t}")

        def extract(images: Tensor, t: int = t) -> dict[str, Tensor]:
            return _pooled(teacher(images, torch.full((len(images),), t, dtype=torch.long)))

        for layer, scores in _probe(extract, loaders, layers, num_classes).items():
            rows.append({"layer": layer, "timestep": t, **scores})
        bar.update()
    baseline = None
    if student is not None:
        baseline = {
            "arch": student.arch,
            "stem": student.stem,
            **probe_student(student, loaders, num_classes),
        }
        bar.update()
    bar.close()
    best = max(rows, key=lambda row: (row["val_acc"], -row["timestep"]))
    return {"teacher": teacher_source, "rows": rows, "random_student": baseline, "best": best}


def write_report(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``probe.csv``, ``probe.json`` and the ``probe.png`` heatmap (validation accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "probe.csv", "json": out / "probe.json", "png": out / "probe.png"}
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["layer", "timestep", "val_acc", "test_acc", "ridge"])
        writer.writeheader()
        writer.writerows(result["rows"])
    paths["json"].write_text(json.dumps(result, indent=2))

    layers = list(dict.fromkeys(row["layer"] for row in result["rows"]))
    timesteps = list(dict.fromkeys(row["timestep"] for row in result["rows"]))
    grid = np.zeros((len(layers), len(timesteps)))
    for row in result["rows"]:
        grid[layers.index(row["layer"]), timesteps.index(row["timestep"])] = row["val_acc"]
    fig, axis = plt.subplots(figsize=(1.2 * len(timesteps) + 3, 0.6 * len(layers) + 1.8))
    image = axis.imshow(grid, cmap="viridis", aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        axis.text(j, i, f"{value:.3f}", ha="center", va="center", color="w" if value < grid.max() else "k")
    axis.set_xticks(range(len(timesteps)), [str(t) for t in timesteps])
    axis.set_yticks(range(len(layers)), layers)
    axis.set_xlabel("timestep t")
    baseline = result.get("random_student")
    bar = f"; random-init {baseline['arch']}: {baseline['val_acc']:.3f}" if baseline else ""
    axis.set_title(f"linear-probe val accuracy of {result['teacher']}{bar}", fontsize=9)
    fig.colorbar(image, ax=axis, fraction=0.03)
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=110)
    plt.close(fig)
    return paths


def print_probe_table(result: dict[str, Any]) -> None:
    """Print validation/test accuracy per layer and timestep, the best cell and the random bar."""
    print(f"\n{'layer':<34} {'t':>5} {'val acc':>8} {'test acc':>9}")
    for row in result["rows"]:
        print(f"{row['layer']:<34} {row['timestep']:>5} {row['val_acc']:8.3f} {row['test_acc']:9.3f}")
    best, baseline = result["best"], result["random_student"]
    scores = f"val {best['val_acc']:.3f}, test {best['test_acc']:.3f}"
    print(f"best: {best['layer']} at t={best['timestep']} ({scores})")
    if baseline:
        margin = best["val_acc"] - baseline["val_acc"]
        verdict = "worth distilling" if margin > 0.02 else "NOT clearly better than random features"
        print(
            f"random-init {baseline['arch']} ({baseline['stem']} stem): val {baseline['val_acc']:.3f}, "
            f"test {baseline['test_acc']:.3f} -> teacher margin {margin:+.3f}: {verdict}"
        )


def write_distill_configs(
    result: dict[str, Any], data_config: dict, student: dict, num_classes: int, out_dir: str | Path
) -> dict[str, Path]:
    """Write a fixed-t and a policy distillation config at the probe's best layer and timestep."""
    import yaml

    best = result["best"]
    out = Path(out_dir)

    def config(sampler: dict, name: str) -> dict:
        return {
            "seed_everything": 0,
            "trainer": {
                "max_epochs": 30,
                "callbacks": [
                    {
                        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {"dirpath": str(out / f"{name}-checkpoints"), "save_last": True},
                    }
                ],
            },
            "model": {
                "class_path": "repfusion_pl.RepFusionDistillation",
                "init_args": {
                    "teacher": {
                        "class_path": "repfusion_pl.DiffusionTeacher",
                        "init_args": {"source": result["teacher"], "layers": [best["layer"]]},
                    },
                    "student": {"class_path": "repfusion_pl.Student", "init_args": student},
                    "sampler": sampler,
                },
            },
            "data": data_config,
        }

    fixed = {"class_path": "repfusion_pl.FixedTimestep", "init_args": {"t": best["timestep"]}}
    policy = {
        "class_path": "repfusion_pl.PolicyTimestep",
        "init_args": {"num_classes": num_classes, "baseline": "batch_mean"},
    }
    paths = {"fixed config": out / "distill-fixed.yaml", "policy config": out / "distill-policy.yaml"}
    header = (
        f"# Written by `repfusion probe`: best layer {best['layer']} at t={best['timestep']} "
        f"(val acc {best['val_acc']:.3f}). Run: repfusion fit --config {{path}}\n"
    )
    for path, sampler in zip(paths.values(), (fixed, policy), strict=True):
        body = yaml.safe_dump(config(sampler, path.stem), sort_keys=False)
        path.write_text(header.format(path=path) + body)
    return paths
