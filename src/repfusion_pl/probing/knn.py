"""Cosine k-NN accuracy of a student's pooled features: the monitor's second, parameter-free probe."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from repfusion_pl.probing.ridge import pooled_features
from repfusion_pl.students import Student


def student_features(student: Student, loaders: dict[str, Iterable]) -> dict[str, tuple[Tensor, Tensor]]:
    """Pooled last-tap features and labels of the ``train`` and ``val`` loaders (eval mode, no grad)."""
    student.eval()
    tap, device = student.taps[-1], next(student.parameters()).device
    out = {}
    for split in ("train", "val"):
        feats, labels = [], []
        with torch.no_grad():
            for images, target in loaders[split]:
                feats.append(pooled_features({tap: student(images.to(device))[tap]})[tap].cpu())
                labels.append(target)
        out[split] = (torch.cat(feats), torch.cat(labels))
    return out


def knn_accuracy(features: dict[str, tuple[Tensor, Tensor]], k: int) -> float:
    """Cosine k-NN accuracy of ``val`` against ``train`` (scikit-learn's classifier)."""
    from sklearn.neighbors import KNeighborsClassifier

    (train_x, train_y), (val_x, val_y) = features["train"], features["val"]
    knn = KNeighborsClassifier(n_neighbors=min(k, len(train_x)), metric="cosine").fit(
        train_x.numpy(), train_y.numpy()
    )
    return float((knn.predict(val_x.numpy()) == val_y.numpy()).mean())
