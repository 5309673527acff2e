"""Streamed ridge probes: a least-squares classifier fitted from accumulated statistics, per layer.

The sufficient statistics ``X^T X`` and ``X^T Y`` are accumulated batch by batch in float64 on the
device the features come from, so memory stays flat however large the dataset and nothing crosses
to the host but the final hit counts. The ridge strength is chosen on the validation split and
accuracy reported on the test split. Used by the layer x timestep probe and the online monitor alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from repfusion_pl.accelerators import Precision, autocast
from repfusion_pl.students import Student

RIDGE_STRENGTHS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


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


def pooled_features(features: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each ``(N, C, h, w)`` map averaged to an ``(N, C)`` float32 vector, on the device it came from."""
    return {name: f.float().mean(dim=(2, 3)) for name, f in features.items()}


class LayerProbes:
    """Ridge probes of one feature extractor's layers: fitted on one split, scored on others.

    Hit counts stay on the features' device until `accuracy` and `best_strengths` read them: a GPU
    probe waits for the device once per split, not once per batch.
    """

    def __init__(self, layers: Sequence[str], num_classes: int) -> None:
        self.layers = list(layers)
        self.ridges = {layer: StreamingRidge(num_classes) for layer in layers}
        self.weights: dict[str, list[Tensor]] = {}
        self.correct: dict[tuple[str, int], Tensor] = {}
        self.seen = 0

    def fit(self) -> None:
        self.weights = {layer: [r.solve(s) for s in RIDGE_STRENGTHS] for layer, r in self.ridges.items()}

    def score(self, features: dict[str, Tensor], labels: Tensor, strengths: dict[str, int] | None) -> None:
        for layer in self.layers:
            chosen = range(len(RIDGE_STRENGTHS)) if strengths is None else [strengths[layer]]
            for index in chosen:
                hits = (_predict(self.weights[layer][index], features[layer]) == labels).sum()
                key = (layer, index)
                self.correct[key] = hits if key not in self.correct else self.correct[key] + hits
        self.seen += len(labels)

    def _hits(self, layer: str, index: int) -> int:
        return int(self.correct[(layer, index)]) if (layer, index) in self.correct else 0

    def best_strengths(self) -> dict[str, int]:
        best = {}
        for layer in self.layers:
            hits = [self._hits(layer, i) for i in range(len(RIDGE_STRENGTHS))]
            best[layer] = hits.index(max(hits))  # ties go to the weakest regularisation tried first
        return best

    def accuracy(self, strengths: dict[str, int]) -> dict[str, float]:
        return {layer: self._hits(layer, strengths[layer]) / max(self.seen, 1) for layer in self.layers}


def fit_ridge_probes(
    extract, loaders: dict[str, Iterable], layers: Sequence[str], num_classes: int
) -> dict[str, dict]:
    """Fit on ``train``, choose the ridge strength on ``val``, report ``val`` and ``test`` accuracy.

    Without a ``test`` loader the test pass is skipped and ``test_acc`` is ``None``.
    """
    grid = LayerProbes(layers, num_classes)
    for images, labels in loaders["train"]:
        for layer, feats in extract(images).items():
            grid.ridges[layer].update(feats, labels.to(feats.device, non_blocking=True))
    grid.fit()
    for images, labels in loaders["val"]:
        features = extract(images)
        grid.score(features, _on_device_of(labels, features), None)
    strengths = grid.best_strengths()
    val = grid.accuracy(strengths)
    test: dict[str, float | None] = dict.fromkeys(layers)
    if loaders.get("test") is not None:
        test_grid = LayerProbes(layers, num_classes)
        test_grid.weights = grid.weights
        for images, labels in loaders["test"]:
            features = extract(images)
            test_grid.score(features, _on_device_of(labels, features), strengths)
        test.update(test_grid.accuracy(strengths))
    return {
        layer: {"val_acc": val[layer], "test_acc": test[layer], "ridge": RIDGE_STRENGTHS[strengths[layer]]}
        for layer in layers
    }


def _on_device_of(labels: Tensor, features: dict[str, Tensor]) -> Tensor:
    return labels.to(next(iter(features.values())).device, non_blocking=True)


def probe_student(
    student: Student, loaders: dict[str, Iterable], num_classes: int, precision: Precision = "32"
) -> dict[str, Any]:
    """Linear-probe a student's pooled last-tap features (random-init or distilled) the same way.

    The feature pass runs on the student's device (move the student to choose it), in ``precision``.

    Returns:
        ``{"val_acc", "test_acc", "ridge"}``.
    """
    student.eval()
    tap, device = student.taps[-1], next(student.parameters()).device

    def student_features(images: Tensor) -> dict[str, Tensor]:
        with torch.no_grad(), autocast(device, precision):
            return pooled_features({tap: student(images.to(device, non_blocking=True))[tap]})

    return fit_ridge_probes(student_features, loaders, [tap], num_classes)[tap]
