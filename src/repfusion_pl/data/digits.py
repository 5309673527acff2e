"""scikit-learn's bundled handwritten digits: 1,797 real 8x8 images, 10 classes, no download."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

from repfusion_pl.data.base import BaseDataModule
from repfusion_pl.data.device_batches import BatchAugment
from repfusion_pl.data.labelled_images import TensorImageDataset
from repfusion_pl.data.splits import check_fractions, check_labelled, held_out_counts, seeded_split


def load_digits_tensors(image_size: int) -> tuple[Tensor, Tensor]:
    """All 1,797 digits as ``(N, 1, S, S)`` floats in [0, 1] and ``(N,)`` labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True)
    return images.clamp(0, 1), torch.as_tensor(digits.target, dtype=torch.long)


class DigitsDataModule(BaseDataModule):
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
        labels: ``False``: batches are images alone (the same images and split), for label-free
            distillation (e.g. `repfusion_pl.ContrastiveReward`).
        device_batches: Keep the training images on the trainer's device and cut and shift whole
            batches there.
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
        labels: bool = True,
        device_batches: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers, device_batches)
        check_fractions(val_fraction, test_fraction, labels_per_class)
        check_labelled(labels, labels_per_class)
        self.save_hyperparameters()
        self.image_size, self.seed = image_size, seed
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.labels_per_class, self.shift, self.labels = labels_per_class, shift, labels

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        images, labels = load_digits_tensors(self.image_size)
        generator = torch.Generator().manual_seed(self.seed)
        held_out = held_out_counts(len(labels), self.val_fraction, self.test_fraction)
        train_idx, val_idx, test_idx = seeded_split(
            len(labels), held_out, generator, labels, self.labels_per_class
        )
        augment = v2.RandomCrop(self.image_size, padding=self.shift) if self.shift > 0 else None
        parts = {"train": train_idx, "val": val_idx, "test": test_idx}
        self.splits = {
            name: TensorImageDataset(
                images[idx],
                labels[idx] if self.labels else None,
                augment if name == "train" else None,
                BatchAugment(shift=self.shift) if name == "train" else None,
            )
            for name, idx in parts.items()
        }
