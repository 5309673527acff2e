"""Seeded train/val/test splits, shared by every data set that is not published already split."""

from __future__ import annotations

import torch
from torch import Tensor


def check_fractions(
    val_fraction: float = 0.0, test_fraction: float = 0.0, labels_per_class: int | None = None
) -> None:
    """Reject held-out fractions that leave no training data, and a ``labels_per_class`` below 1."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1")
    if labels_per_class is not None and labels_per_class < 1:
        raise ValueError(f"labels_per_class must be at least 1 or None, got {labels_per_class}")


def check_labelled(labels: bool, labels_per_class: int | None) -> None:
    """Refuse ``labels_per_class`` on data used without labels."""
    if labels_per_class is not None and not labels:
        raise ValueError("labels_per_class needs labels: remove it, or set labels: true")


def held_out_counts(count: int, val_fraction: float, test_fraction: float = 0.0) -> tuple[int, int]:
    """The ``(val, test)`` image counts that fractions of ``count`` images hold out (rounded down)."""
    return int(count * val_fraction), int(count * test_fraction)


def labels_per_class_subset(labels: Tensor, per_class: int, generator: torch.Generator) -> Tensor:
    """Sorted indices of ``per_class`` randomly chosen examples of every class (all of a smaller class)."""
    chosen = []
    for cls in labels.unique().tolist():
        members = (labels == cls).nonzero().squeeze(1)
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


def seeded_split(
    count: int,
    held_out: tuple[int, int],
    generator: torch.Generator,
    labels: Tensor | None = None,
    labels_per_class: int | None = None,
    num_train: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sorted train, val and test indices of ``range(count)`` from one shuffle drawn with ``generator``.

    Val is the first ``held_out[0]`` of the shuffle, test the next ``held_out[1]``, train the rest,
    cut to its first ``num_train`` when given. With ``labels_per_class``, train is then cut to that
    many images of each class of ``labels`` (the ``(count,)`` class labels), drawn with the same
    generator; val and test are unchanged. The generator is left advanced, so a caller can draw more
    from the same stream.

    Raises:
        ValueError: When nothing is left for training, or ``labels_per_class`` comes without ``labels``.
    """
    n_val, n_test = held_out
    if n_val + n_test >= count:
        raise ValueError(f"holding out {n_val + n_test} of {count} images leaves none for training")
    if labels_per_class is not None and labels is None:
        raise ValueError("labels_per_class needs the labels to balance")
    order = torch.randperm(count, generator=generator)
    val, test, train = order[:n_val], order[n_val : n_val + n_test], order[n_val + n_test :]
    if num_train is not None:
        train = train[:num_train]
    train = train.sort().values
    if labels is not None and labels_per_class is not None:
        train = train[labels_per_class_subset(labels[train], labels_per_class, generator)]
    return train, val.sort().values, test.sort().values
