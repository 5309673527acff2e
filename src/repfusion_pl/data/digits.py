"""scikit-learn's bundled handwritten digits: 1,797 real 8x8 images, 10 classes, no download."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from repfusion_pl.data.base import SplitDataModule


def load_digits_tensors(image_size: int) -> tuple[Tensor, Tensor]:
    """All 1,797 digits as ``(N, 1, S, S)`` floats in [0, 1] and ``(N,)`` labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True)
    return images.clamp(0, 1), torch.as_tensor(digits.target, dtype=torch.long)


def labels_per_class_subset(labels: Tensor, per_class: int, generator: torch.Generator) -> Tensor:
    """Indices of ``per_class`` randomly chosen examples of every class (all of a smaller class)."""
    chosen = []
    for cls in labels.unique().tolist():
        members = (labels == cls).nonzero().squeeze(1)
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


class TensorImageDataset(Dataset):
    """In-memory images and labels with an optional per-sample transform."""

    def __init__(self, images: Tensor, labels: Tensor, transform: v2.Transform | None = None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.images[index]
        return (self.transform(image) if self.transform else image), self.labels[index]


class DigitsDataModule(SplitDataModule):
    """The scikit-learn digits, resized, split into train/val/test with a fixed seed.

    Images are ``(1, S, S)`` floats in [0, 1]; training images get a random shift of up to
    ``shift`` pixels (digits must not be flipped).

    Args:
        image_size: Side S the 8x8 digits are resized to.
        batch_size: Batch size for every split.
        val_fraction: Share of images held out for validation.
        test_fraction: Share of images held out for testing.
        labels_per_class: Keep only this many labelled training images per class (label-scarce
            runs); ``None`` keeps all.
        shift: Maximum random translation in pixels for training images.
        seed: Seed of the split and of the label subset.
        num_workers: DataLoader workers (0 is fastest for this in-memory data).
    """

    num_classes = 10
    in_channels = 1

    def __init__(
        self,
        image_size: int = 16,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        labels_per_class: int | None = None,
        shift: int = 1,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1")
        self.save_hyperparameters()
        self.image_size, self.seed = image_size, seed
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.labels_per_class, self.shift = labels_per_class, shift

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        images, labels = load_digits_tensors(self.image_size)
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(labels), generator=generator)
        n_val, n_test = int(len(order) * self.val_fraction), int(len(order) * self.test_fraction)
        val_idx, test_idx, train_idx = order[:n_val], order[n_val : n_val + n_test], order[n_val + n_test :]
        if self.labels_per_class is not None:
            keep = labels_per_class_subset(labels[train_idx], self.labels_per_class, generator)
            train_idx = train_idx[keep]
        augment = v2.RandomCrop(self.image_size, padding=self.shift) if self.shift > 0 else None
        self.splits = {
            "train": TensorImageDataset(images[train_idx], labels[train_idx], augment),
            "val": TensorImageDataset(images[val_idx], labels[val_idx]),
            "test": TensorImageDataset(images[test_idx], labels[test_idx]),
        }
