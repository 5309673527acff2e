"""What a teacher-target cache reads of a data module, and how a cached run is served from it.

The cache addresses every training image by its index, so what it needs of a data module is its
training (and validation) images by index. The package's data modules (`BaseDataModule`) hold them
as their splits, and give each image without its augmentation. Any other ``LightningDataModule`` is
read through its own loaders: the dataset behind ``train_dataloader()`` (and ``val_dataloader()``,
when it has one) must have ``len`` and ``[index]``, and each item must be a float ``(C, H, W)``
image tensor, an ``(image, label, ...)`` tuple, or a dict with an ``images``/``image`` entry (and
``labels``/``label``); such a dataset (or a split of the package's that cannot give an image
un-augmented) is read through `IndexedImages`. Anything else is refused with what is missing. A
cached run of a module read that way is served through the package's resumable, sharded loader
(`BaseDataModule`'s), at the batch size and workers of the module's own training loader.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor
from torch.utils.data import Dataset

from repfusion_pl.data.base import BaseDataModule
from repfusion_pl.data.target_store import CacheError, TargetStore
from repfusion_pl.data.views import ViewSpec

IMAGE_KEYS = ("images", "image")
LABEL_KEYS = ("labels", "label")
ITEMS = "a float (C, H, W) image tensor, an (image, label) tuple, or a dict with an 'images' or 'image' entry"


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(value)}"
    name = type(value).__name__
    return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"


def image_and_label(item: Any, where: str) -> tuple[Tensor, Tensor | None]:
    """The image and the label (``None`` without one) of one item of a dataset.

    Raises:
        CacheError: The item holds no float ``(C, H, W)`` image (what it holds is named).
    """
    image, label = None, None
    if isinstance(item, Tensor):
        image = item
    elif isinstance(item, (tuple, list)) and item:
        image, label = item[0], item[1] if len(item) > 1 else None
    elif isinstance(item, dict):
        image = next((item[key] for key in IMAGE_KEYS if key in item), None)
        label = next((item[key] for key in LABEL_KEYS if key in item), None)
    if not (isinstance(image, Tensor) and image.ndim == 3 and image.is_floating_point()):
        found = _describe(item)
        if image is not None and image is not item:
            found += f" whose image is {_describe(image)}"
        raise CacheError(
            f"{where} gives {found}; a teacher-target cache needs each item to be {ITEMS} (give the "
            "dataset a transform that ends in v2.ToImage(), v2.ToDtype(torch.float32, scale=True))"
        )
    return image, None if label is None else torch.as_tensor(label, dtype=torch.long)


class IndexedImages(Dataset):
    """A dataset of images by index that cannot give them un-augmented, read as the cache reads the rest.

    Such a dataset cannot leave its augmentation out, so an image's un-augmented view (view 0) is its
    item drawn under a seed of its own: the same pixels whenever it is read. Labels come from the
    dataset's ``targets`` or ``labels`` list when it keeps one (torchvision's do), else from one pass
    over its items.

    Args:
        dataset: Any dataset with ``len`` and ``[index]``.
        where: What to call it in errors (``MyData.train_dataloader()``).

    Raises:
        CacheError: Its first item holds no image (`image_and_label`).
    """

    def __init__(self, dataset: Any, where: str) -> None:
        self.dataset, self.where = dataset, where
        self.labelled = len(dataset) > 0 and image_and_label(dataset[0], where)[1] is not None
        self.labels = self._read_labels() if self.labelled else None

    def _read_labels(self) -> Tensor:
        for name in ("targets", "labels"):
            listed = getattr(self.dataset, name, None)
            if listed is not None and not isinstance(listed, str) and len(listed) == len(self):
                return torch.as_tensor(list(listed), dtype=torch.long)
        return torch.stack([self._item(index)[1] for index in range(len(self))])  # type: ignore[misc]

    def _item(self, index: int) -> tuple[Tensor, Tensor | None]:
        return image_and_label(self.dataset[index], self.where)

    def __len__(self) -> int:
        return len(self.dataset)

    def plain(self, index: int) -> Tensor:
        """Image ``index`` as the dataset gives it, drawn under the seed ``index`` (the same every time)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(index)
            return self._item(index)[0]

    def __getitem__(self, index: int) -> Tensor | tuple[Tensor, Tensor]:
        image, label = self._item(index)
        return image if label is None else (image, label)


def loader_dataset(data: LightningDataModule, hook: str) -> Any:
    """The dataset behind ``data``'s ``train_dataloader`` or ``val_dataloader``.

    Raises:
        CacheError: The loader has no dataset.
    """
    loader = getattr(data, hook)()
    if getattr(loader, "dataset", None) is None:
        raise CacheError(
            f"a teacher-target cache reads each training image by its index, but {type(data).__name__}."
            f"{hook}() gives {_describe(loader)}, not a DataLoader over a dataset"
        )
    return loader.dataset


def readable(split: Any, where: str) -> Dataset:
    """``split`` if the cache reads it as it is (un-augmented images on request), else an `IndexedImages`.

    Raises:
        CacheError: The split has no ``len()`` and ``[index]`` (a stream read only in order).
    """
    # torch's Dataset has a __getitem__ that only raises: an IterableDataset inherits it.
    getitem = getattr(type(split), "__getitem__", Dataset.__getitem__)
    if not hasattr(split, "__len__") or getitem is Dataset.__getitem__:
        raise CacheError(
            f"a teacher-target cache reads each training image by its index, but {where} is "
            f"{_describe(split)}, which has no len() and [index]: give it a map-style Dataset, or use one "
            "of the package's data modules (ImageFolderDataModule, HFImageDataModule, ...)"
        )
    if hasattr(split, "plain") or isinstance(getattr(split, "images", None), Tensor):
        return split
    return IndexedImages(split, where)


def cache_splits(data: LightningDataModule) -> dict[str, Dataset]:
    """The ``train`` (and any ``val``) images a cache of ``data`` is built over and checked against.

    Raises:
        CacheError: What ``data`` lacks for a cache (see the module's docstring).
    """
    data.setup("fit")
    name = type(data).__name__
    found: dict[str, tuple[Any, str]] = {}
    if isinstance(data, BaseDataModule):
        found = {split: (data.splits[split], f"the {split} split of {name}") for split in ("train", "val")}
        found = {split: value for split, value in found.items() if split in data.splits}
    else:
        found["train"] = (loader_dataset(data, "train_dataloader"), f"{name}.train_dataloader()")
        if is_overridden("val_dataloader", data):
            found["val"] = (loader_dataset(data, "val_dataloader"), f"{name}.val_dataloader()")
    return {split: readable(dataset, where) for split, (dataset, where) in found.items()}


def batch_size_of(data: LightningDataModule) -> int:
    """The batch size of ``data``'s training loader (the package's data modules say it themselves)."""
    if isinstance(data, BaseDataModule):
        return data.batch_size
    return int(getattr(data.train_dataloader(), "batch_size", None) or 1)


class _Served(BaseDataModule):
    """Another data module's images, served as cached views by the package's own loaders."""

    def __init__(self, splits: dict[str, Dataset], batch_size: int, num_workers: int) -> None:
        super().__init__(batch_size, num_workers)
        self.splits = dict(splits)


def serve_cached_views(
    data: LightningDataModule, splits: dict[str, Dataset], store: TargetStore, spec: ViewSpec
) -> None:
    """Make ``data`` serve its ``splits`` (`cache_splits`) as the cached views of ``store``.

    A data module of the package serves them itself (`BaseDataModule.serve_views`, which may refuse,
    saying why); any other is served by the package's loaders in place of its own.
    """
    if isinstance(data, BaseDataModule):
        data.serve_views(store, spec, splits)
        return
    loader = data.train_dataloader()
    served = _Served(splits, int(getattr(loader, "batch_size", None) or 1), int(loader.num_workers))
    served.trainer = data.trainer
    served.serve_views(store, spec)
    # Its own loaders know nothing of views and targets; the trainer asks for the loaders after the
    # model's setup (where a CachedTeacher attaches), so these are the ones it gets.
    data.train_dataloader = served.train_dataloader  # type: ignore[method-assign]
    if "val" in splits:
        data.val_dataloader = served.val_dataloader  # type: ignore[method-assign]
