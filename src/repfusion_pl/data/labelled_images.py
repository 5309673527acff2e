"""Images for classification and distillation: in memory or as files, their transform, seeded file splits.

Batches follow the contract of `repfusion_pl.data.base`: float ``(N, C, H, W)`` images in [0, 1] and
long ``(N,)`` labels, or the images alone when the data is used without labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.io import ImageReadMode
from torchvision.transforms import v2

from repfusion_pl.data.device_batches import BatchAugment
from repfusion_pl.data.files import read_image
from repfusion_pl.data.splits import held_out_counts, seeded_split

#: ``(image path, class index)`` pairs, as torchvision's ``make_dataset`` lists them.
Samples = list[tuple[str, int]]


class TensorImageDataset(Dataset):
    """In-memory images, with labels or without (``labels=None``: samples are images alone).

    Args:
        images: ``(N, C, H, W)`` images.
        labels: ``(N,)`` labels, or ``None``.
        transform: Applied to each image as it is read (a DataLoader's per-image path).
        batch_augment: The same augmentation for whole batches, for `DeviceBatchLoader`.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | None,
        transform: v2.Transform | None = None,
        batch_augment: BatchAugment | None = None,
    ) -> None:
        self.images, self.labels, self.transform = images, labels, transform
        self.batch_augment = batch_augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor | tuple[Tensor, Tensor]:
        image = self.images[index]
        image = self.transform(image) if self.transform else image
        return image if self.labels is None else (image, self.labels[index])


class ImageFileDataset(Dataset):
    """Image files, decoded on access (large datasets do not fit in memory decoded).

    Args:
        samples: ``(path, label)`` pairs.
        transform: Uint8 image -> float tensor (`image_transform`).
        grayscale: Decode to one channel.
        labelled: Return ``(image, label)``; ``False`` returns images alone (labels ignored).
    """

    def __init__(
        self,
        samples: Samples,
        transform: v2.Transform,
        grayscale: bool = False,
        labelled: bool = True,
        plain_transform: v2.Transform | None = None,
    ) -> None:
        # Strings, not Paths: workers read the list without touching thousands of Python objects.
        self.paths = [str(path) for path, _ in samples]
        self.labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        self.transform = transform
        self.mode = ImageReadMode.GRAY if grayscale else ImageReadMode.RGB
        self.labelled = labelled
        self.plain_transform = plain_transform or transform

    def __len__(self) -> int:
        return len(self.paths)

    def plain(self, index: int) -> Tensor:
        """Image ``index`` without the training augmentation (resized as the evaluation splits are)."""
        return self.plain_transform(read_image(self.paths[index], self.mode))

    def __getitem__(self, index: int) -> Tensor | tuple[Tensor, Tensor]:
        image = self.transform(read_image(self.paths[index], self.mode))
        return (image, self.labels[index]) if self.labelled else image


def image_transform(
    image_size: int, augment: bool, resize: bool = True, crop: Literal["pad", "resized"] = "pad"
) -> v2.Compose:
    """Uint8 image tensor -> float ``(C, S, S)`` tensor in [0, 1], augmented if ``augment``.

    Augmentation is a horizontal flip after either a random shift of up to 1/8 of the side (``pad``:
    CIFAR's 4 px at 32 px, Tiny-ImageNet's 8 px at 64 px) or a ``RandomResizedCrop`` to S with its
    default scale (0.08, 1) and ratio (3/4, 4/3) (``resized``, the authors' Tiny-ImageNet and
    CelebA-HQ recipes), which replaces the resize of training images.
    """
    steps: list[v2.Transform] = [v2.ToImage()]
    if augment and crop == "resized":
        steps.append(v2.RandomResizedCrop(image_size, antialias=True))
    elif resize:
        steps += [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    if augment and crop == "pad":
        steps.append(v2.RandomCrop(image_size, padding=image_size // 8))
    if augment:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


def class_folders(folder: Path) -> list[str]:
    """Sorted class folder names of ``folder`` (torchvision's ``find_classes``), hidden ones left out."""
    try:
        classes, _ = find_classes(folder)
    except FileNotFoundError:  # no sub-folder at all: the caller says what that means for its data set
        return []
    # Hidden folders (Jupyter's .ipynb_checkpoints) are not classes.
    return [name for name in classes if not name.startswith(".")]


def class_images(folder: Path, class_to_idx: dict[str, int]) -> Samples:
    """The image files below ``folder/<class>/`` for every class of ``class_to_idx``.

    torchvision's ``make_dataset``: classes by name, then files sorted by path, sub-folders included
    except hidden ones (Jupyter's .ipynb_checkpoints holds copies). A class without images is simply
    absent, so that callers report it with their own layout error.
    """
    if not class_to_idx:
        return []  # make_dataset refuses an empty mapping
    samples = make_dataset(folder, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    return [(path, label) for path, label in samples if not _hidden(Path(path).relative_to(folder))]


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def split_samples(
    samples: Samples, held_out: tuple[float, float], seed: int, labels_per_class: int | None = None
) -> tuple[Samples, Samples, Samples]:
    """Train, val and test lists of ``samples`` by `seeded_split`, ``held_out`` the val and test fractions."""
    labels = torch.tensor([label for _, label in samples], dtype=torch.long)
    counts = held_out_counts(len(samples), *held_out)
    generator = torch.Generator().manual_seed(seed)
    train, val, test = (
        [samples[i] for i in part.tolist()]
        for part in seeded_split(len(samples), counts, generator, labels, labels_per_class)
    )
    return train, val, test


def image_file_splits(
    splits: dict[str, Samples],
    image_size: int,
    augment: bool,
    grayscale: bool = False,
    labelled: bool = True,
    crop: Literal["pad", "resized"] = "pad",
) -> dict[str, Dataset]:
    """A dataset per split of files, resized to ``image_size``; ``train`` augmented if asked."""
    train, plain = (image_transform(image_size, flag, crop=crop) for flag in (augment, False))
    return {
        name: ImageFileDataset(samples, train if name == "train" else plain, grayscale, labelled, plain)
        for name, samples in splits.items()
    }


def unlabelled_images(folder: Path) -> Samples:
    """Every image file below ``folder`` (sub-folders included, hidden ones not), sorted, label ``-1``."""
    paths = sorted(
        path
        for path in folder.rglob("*")
        if path.is_file() and path.suffix.lower() in IMG_EXTENSIONS and not _hidden(path.relative_to(folder))
    )
    return [(str(path), -1) for path in paths]
