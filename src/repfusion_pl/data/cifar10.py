"""CIFAR-10 from its published python pickle batches, read by torchvision; nothing is downloaded."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import Tensor
from torchvision.datasets import CIFAR10

from repfusion_pl.data.base import BaseDataModule
from repfusion_pl.data.files import DatasetLayout
from repfusion_pl.data.labelled_images import TensorImageDataset, image_transform
from repfusion_pl.data.splits import check_fractions, seeded_split

LAYOUT = DatasetLayout(
    "CIFAR-10",
    """\
    cifar-10-batches-py/
        data_batch_1
        data_batch_2
        data_batch_3
        data_batch_4
        data_batch_5
        test_batch
        batches.meta
""",
)
BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")


def check_root(root: str | Path) -> Path:
    """The folder holding a complete ``cifar-10-batches-py/``; ``root`` may also be that folder itself.

    Raises:
        DatasetNotFoundError: Listing every missing or empty batch file.
    """
    path, folder = Path(root).expanduser(), CIFAR10.base_folder
    return LAYOUT.check(path.parent if path.name == folder else path, [f"{folder}/{b}" for b in BATCHES])


def read_cifar10(root: Path, train: bool) -> tuple[Tensor, Tensor]:
    """The training or test batches as uint8 ``(N, 3, 32, 32)`` images and long labels.

    Raises:
        MalformedDatasetError: When torchvision refuses or cannot unpickle the batches.
    """
    try:
        dataset = CIFAR10(str(root), train=train, download=False)
    except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as error:
        # The files exist (`check_root`), so torchvision's "not found or corrupted" means corrupt.
        raise LAYOUT.error(root, f"not the official pickle batches ({error})") from error
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(dataset.targets, dtype=torch.long)


class CIFAR10DataModule(BaseDataModule):
    """CIFAR-10 from its python pickle batches: a seeded train/val split of the 50,000, and the 10,000 test.

    Images are ``(3, 32, 32)``, held in memory as uint8 (CIFAR is small). torchvision checks the md5
    sums of the official batches, so altered files are reported as corrupt.

    Args:
        root: The folder holding ``cifar-10-batches-py/``, or that folder itself.
        batch_size: Batch size for every split.
        num_workers: DataLoader worker processes.
        val_size: Training images held out for validation; 0 trains on all 50,000 and validates on the
            test set, as the authors did.
        labels_per_class: Keep only this many labelled training images per class; ``None`` keeps all.
        seed: Seed of the split and of the label subset.
        augment: Random 4 px shifts and horizontal flips of training images.
    """

    in_channels = 3
    num_classes = 10

    def __init__(
        self,
        root: str,
        batch_size: int = 128,
        num_workers: int = 2,
        val_size: int = 5000,
        labels_per_class: int | None = None,
        seed: int = 0,
        augment: bool = True,
    ) -> None:
        super().__init__(batch_size, num_workers)
        check_fractions(labels_per_class=labels_per_class)
        if val_size < 0:
            raise ValueError(f"val_size must be non-negative, got {val_size}")
        self.save_hyperparameters()
        self.root = check_root(root)
        self.val_size, self.labels_per_class = val_size, labels_per_class
        self.seed, self.augment = seed, augment

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        images, labels = read_cifar10(self.root, train=True)
        generator = torch.Generator().manual_seed(self.seed)
        train_idx, val_idx, _ = seeded_split(
            len(labels), (self.val_size, 0), generator, labels, self.labels_per_class
        )
        plain, augment = (image_transform(32, flag, resize=False) for flag in (False, self.augment))
        test = TensorImageDataset(*read_cifar10(self.root, train=False), plain)
        val = TensorImageDataset(images[val_idx], labels[val_idx], plain) if self.val_size else test
        self.splits = {
            "train": TensorImageDataset(images[train_idx], labels[train_idx], augment),
            "val": val,
            "test": test,
        }
