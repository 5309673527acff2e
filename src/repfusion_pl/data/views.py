"""The fixed views of a training image that a teacher-target cache holds, and a dataset that serves them.

A cached teacher saw each training image in a few fixed views only: view 0 is the image as it is
(no augmentation), view 1 its horizontal mirror (when ``flip``), and each further view one draw of
the data module's own augmentation under a seed of its own (so the cache and every epoch render the
same pixels). With a cache, every epoch picks one of these views per image (seeded by the resumable
loader's per-sample seed) and the batch carries the cached targets of that view at every grid point.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from repfusion_pl.data.resumable import sample_seed
from repfusion_pl.data.target_store import TargetStore


@dataclass(frozen=True)
class ViewSpec:
    """Which views of each image a cache holds.

    Args:
        flip: View 1 is the horizontal mirror of the un-augmented image.
        augmented: How many further views, each one seeded draw of the data's augmentation.
        seed: The seed of those draws.
    """

    flip: bool = True
    augmented: int = 0
    seed: int = 0

    @property
    def count(self) -> int:
        return 1 + int(self.flip) + self.augmented


def plain_image(dataset: Dataset, index: int) -> Tensor:
    """An image as it is, without the training augmentation."""
    images = getattr(dataset, "images", None)
    if isinstance(images, Tensor):
        return images[index]
    plain = getattr(dataset, "plain", None)
    if plain is None:
        raise TypeError(
            f"{type(dataset).__name__} cannot give an image without its augmentation, so its views cannot be "
            "cached; the cache serves in-memory image data and image folders"
        )
    return plain(index)


def augmented_image(dataset: Dataset, index: int) -> Tensor:
    """An image with the training augmentation, drawn from the global generator."""
    images, transform = getattr(dataset, "images", None), getattr(dataset, "transform", None)
    if isinstance(images, Tensor):
        return transform(images[index]) if transform is not None else images[index]
    sample = dataset[index]
    return sample[0] if isinstance(sample, tuple) else sample


def render_view(dataset: Dataset, index: int, view: int, spec: ViewSpec) -> Tensor:
    """View ``view`` of image ``index``: the same pixels whenever it is asked for."""
    if view == 0:
        return plain_image(dataset, index)
    if spec.flip and view == 1:
        return plain_image(dataset, index).flip(-1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sample_seed(spec.seed, view, index))
        return augmented_image(dataset, index)


def labels_of(dataset: Dataset) -> Tensor | None:
    """The dataset's labels tensor, or ``None`` for images alone."""
    if getattr(dataset, "labelled", True) is False:
        return None
    labels = getattr(dataset, "labels", None)
    return labels if isinstance(labels, Tensor) else None


class ViewsDataset(Dataset):
    """A split served as cached views: each item is its images, labels and cached targets.

    Args:
        dataset: The split (in-memory images, or image files that can be read without augmentation).
        store: The teacher-target cache.
        split: Which split of the cache (``train`` serves every view; ``val`` view 0).
        spec: The views the cache holds.
    """

    def __init__(self, dataset: Dataset, store: TargetStore, split: str, spec: ViewSpec) -> None:
        self.dataset, self.store, self.split, self.spec = dataset, store, split, spec
        self.labels = labels_of(dataset)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        # The resumable training loader seeds the global generator per (seed, epoch, index) before
        # each item: the view drawn here is the same whenever that epoch's item is asked for again.
        view = int(torch.randint(self.spec.count, ())) if self.split == "train" else 0
        item: dict[str, Any] = {"images": render_view(self.dataset, index, view, self.spec)}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        item["targets"] = {
            target: torch.from_numpy(self.store.read(self.split, target, index, view))
            for target in self.store.manifest["targets"]
        }
        return item


def data_fingerprint(splits: dict[str, Dataset], kind: str) -> dict[str, Any]:
    """What a cache records of its data: the data module, split sizes, image shape, a hash of images.

    The hash covers the first 16 training images (un-augmented) and their labels: another seed,
    subset or preprocessing changes it, while the check stays cheap.
    """
    train = splits["train"]
    first = [plain_image(train, index) for index in range(min(16, len(train)))]  # type: ignore[arg-type]
    digest = hashlib.sha256()
    for image in first:
        digest.update(image.float().contiguous().numpy().tobytes())
    labels = labels_of(train)
    if labels is not None:
        digest.update(labels[: len(first)].numpy().tobytes())
    return {
        "data_module": kind,
        "images": {name: len(split) for name, split in splits.items()},  # type: ignore[arg-type]
        "image_shape": list(first[0].shape),
        "sha256_first_16": digest.hexdigest(),
    }
