"""Images held as a Hugging Face ``datasets`` dataset: a cached hub id, an imagefolder, parquet or arrow.

The splits, transforms, resumable mid-epoch order and DDP sharding are those of every data module
of the package (`BaseDataModule`, `image_transform`, `seeded_split`): only the reading differs. Rows
are decoded when a loader asks for them, from the memory-mapped arrow files ``datasets`` keeps, so
a dataset larger than memory trains as an image folder does.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from repfusion_pl.data.base import BaseDataModule
from repfusion_pl.data.files import open_image
from repfusion_pl.data.hf_sources import load_splits, require_datasets
from repfusion_pl.data.labelled_images import image_transform
from repfusion_pl.data.splits import check_fractions, check_labelled, held_out_counts, seeded_split

if TYPE_CHECKING:
    from datasets import Dataset as HFDataset
    from datasets import DatasetDict


class HFImageDataset(Dataset):
    """Rows of a Hugging Face dataset as image tensors, decoded on access, with labels or without.

    Args:
        rows: The split's rows, holding the image column (only it is decoded).
        image_column: The column of images (a ``datasets.Image`` feature).
        labels: ``(N,)`` class labels of the rows, or ``None`` (items are images alone).
        transform: PIL image -> float tensor (`image_transform`).
        plain_transform: The same without augmentation (the cache's un-augmented view).
        grayscale: Decode to one channel.
    """

    def __init__(
        self,
        rows: HFDataset,
        image_column: str,
        labels: Tensor | None,
        transform: v2.Transform,
        plain_transform: v2.Transform,
        grayscale: bool = False,
    ) -> None:
        self.rows, self.image_column = rows, image_column
        self.labels, self.labelled = labels, labels is not None
        self.transform, self.plain_transform = transform, plain_transform
        self.mode = "L" if grayscale else "RGB"

    def __len__(self) -> int:
        return len(self.rows)

    def _decoded(self, index: int) -> Image.Image:
        # The column is read undecoded (`Image(decode=False)`): the bytes are opened here.
        entry = self.rows[index][self.image_column]
        source = io.BytesIO(entry["bytes"]) if entry.get("bytes") is not None else entry["path"]
        return open_image(source, self.mode, f"of row {index}")

    def plain(self, index: int) -> Tensor:
        """Image ``index`` without the training augmentation (resized as the evaluation splits are)."""
        return self.plain_transform(self._decoded(index))

    def __getitem__(self, index: int) -> Tensor | tuple[Tensor, Tensor]:
        image = self.transform(self._decoded(index))
        return image if self.labels is None else (image, self.labels[index])


def check_columns(split: HFDataset, where: str, image_column: str, label_column: str | None) -> None:
    """Refuse a split without the named columns, with images of another type, or labels that are not classes.

    Raises:
        ValueError: Naming the column, the split's columns or the column's feature type, and the fix.
    """
    datasets = require_datasets()
    columns = ", ".join(split.column_names)
    if image_column not in split.features:
        raise ValueError(f"image_column {image_column!r} is not a column of {where} (its columns: {columns})")
    if label_column is not None and label_column not in split.features:
        raise ValueError(
            f"labels were asked for (label_column {label_column!r}) but {where} has no such column (its "
            f"columns: {columns}); name its label column, or set label_column: null for images alone"
        )
    feature = split.features[image_column]
    if not isinstance(feature, datasets.Image):
        raise ValueError(
            f"image_column {image_column!r} of {where} holds {feature}, not images (datasets.Image()); name "
            f"the column of images, or cast it first: dataset.cast_column({image_column!r}, datasets.Image())"
        )
    if label_column is not None:
        label = split.features[label_column]
        integer = isinstance(label, datasets.Value) and label.dtype.startswith(("int", "uint"))
        if not (isinstance(label, datasets.ClassLabel) or integer):
            raise ValueError(
                f"label_column {label_column!r} of {where} holds {label}, not class labels (a ClassLabel or "
                "integers); encode it first: dataset.class_encode_column(...)"
            )


def column_labels(split: HFDataset, label_column: str) -> Tensor:
    """A split's label column as int64, read as one arrow column: no image is decoded.

    Not ``with_format("numpy")[column]``: `datasets` returns a lazy column that `np.asarray` walks row
    by row (11 s for 200,000 labels, against a millisecond through arrow).
    """
    values = split.with_format("arrow")[label_column].to_numpy()
    return torch.from_numpy(np.asarray(values).astype(np.int64))


def class_names(split: HFDataset, label_column: str, labels: Tensor) -> list[str]:
    """A ``ClassLabel``'s names, or ``"0"``, ``"1"``, ... up to the largest integer label."""
    feature = split.features[label_column]
    names = getattr(feature, "names", None)
    return list(names) if names else [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]


class HFImageDataModule(BaseDataModule):
    """A Hugging Face ``datasets`` dataset of images, read from disk only, split and served like the rest.

    ``path`` is a hub id (read from the local Hugging Face cache: fetch it once with ``hf download
    --repo-type dataset ID``; nothing downloads here), a folder that ``datasets.load_dataset`` reads
    (an ``imagefolder``, or parquet files), parquet file(s) (a glob too), or a folder written by
    ``save_to_disk``. With ``val_split`` the dataset's own splits are used; without it, validation
    and test images are held out of ``train_split`` with a seed, as for an image folder.

    Args:
        path: Hub id or local path of the dataset.
        image_column: The column of images (a ``datasets.Image`` feature).
        label_column: The column of class labels (``ClassLabel`` or integers); ``null`` for images
            alone (label-free distillation).
        train_split: The dataset's split to train on.
        val_split: The dataset's validation split; ``None`` holds ``val_fraction`` of the training
            split out instead.
        test_split: The dataset's test split; ``None``: ``val_split`` when that is given, else
            ``test_fraction`` of the training split.
        subset: The dataset's configuration, for datasets that have several (``load_dataset``'s ``name``).
        revision: A hub dataset's branch, tag or commit, as fetched.
        cache_dir: Where ``datasets`` keeps the arrow files it prepares from parquet and image files
            (default: its own cache, ``HF_DATASETS_CACHE``).
        batch_size: Batch size for every split.
        num_workers: DataLoader worker processes decoding the images.
        image_size: Side S: images are resized (shorter side) and centre-cropped to S x S.
        val_fraction: Share of the training split held out for validation (without ``val_split``).
        test_fraction: Share of the training split held out for testing (without ``test_split``).
        labels_per_class: Keep only this many labelled training images per class; ``None`` keeps all.
        seed: Seed of the split and of the label subset.
        augment: Random crops and horizontal flips of training images.
        crop: How training images are cropped: ``pad`` or ``resized`` (as `ImageFolderDataModule`).
        grayscale: Decode to one channel (``in_channels`` becomes 1) instead of RGB.
        labels: ``False``: batches are images alone even with a label column (the switch every data
            module of the package has; ``configs/distill-no-labels.yaml`` sets it).
    """

    def __init__(
        self,
        path: str,
        image_column: str = "image",
        label_column: str | None = "label",
        train_split: str = "train",
        val_split: str | None = None,
        test_split: str | None = None,
        subset: str | None = None,
        revision: str | None = None,
        cache_dir: str | None = None,
        batch_size: int = 64,
        num_workers: int = 4,
        image_size: int = 32,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        labels_per_class: int | None = None,
        seed: int = 0,
        augment: bool = True,
        crop: Literal["pad", "resized"] = "pad",
        grayscale: bool = False,
        labels: bool = True,
    ) -> None:
        super().__init__(batch_size, num_workers)
        check_fractions(val_fraction, test_fraction, labels_per_class)
        self.labels = labels and label_column is not None
        check_labelled(self.labels, labels_per_class)
        self.save_hyperparameters()
        self.path, self.image_column = path, image_column
        self.label_column = label_column if self.labels else None
        self.split_names = {"train": train_split, "val": val_split, "test": test_split or val_split}
        self.image_size, self.val_fraction, self.test_fraction = image_size, val_fraction, test_fraction
        self.labels_per_class, self.seed, self.augment, self.crop = labels_per_class, seed, augment, crop
        self.in_channels = 1 if grayscale else 3
        self.grayscale = grayscale
        # Read (memory-mapped) and checked now, so that a wrong path or column fails before training.
        self.source = self._checked(load_splits(path, subset, revision, cache_dir))
        self.train_labels = self._labels(self.source[train_split])
        self.classes: list[str] = []
        self.num_classes: int | None = None
        if self.label_column is not None and self.train_labels is not None:
            self.classes = class_names(self.source[train_split], self.label_column, self.train_labels)
            self.num_classes = len(self.classes)

    def _checked(self, source: DatasetDict) -> DatasetDict:
        for role, name in self.split_names.items():
            if name is not None and name not in source:
                raise ValueError(
                    f"{role}_split {name!r} is not a split of {self.path} (its splits: {', '.join(source)})"
                )
            if name is not None:
                check_columns(source[name], f"{self.path} [{name}]", self.image_column, self.label_column)
        return source

    def _labels(self, split: HFDataset) -> Tensor | None:
        if self.label_column is None:
            return None
        return column_labels(split, self.label_column)

    def _dataset(self, split: HFDataset, rows: Tensor, labels: Tensor | None, train: bool) -> HFImageDataset:
        plain = image_transform(self.image_size, False, crop=self.crop)
        transform = image_transform(self.image_size, self.augment, crop=self.crop) if train else plain
        from datasets import Image as ImageFeature

        undecoded = split.select_columns([self.image_column]).cast_column(
            self.image_column, ImageFeature(decode=False)
        )
        kept = undecoded.select(rows.tolist())
        picked = None if labels is None else labels[rows]
        return HFImageDataset(kept, self.image_column, picked, transform, plain, self.grayscale)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        names = self.split_names
        train_split = self.source[names["train"]]
        own_val, own_test = names["val"] is not None, names["test"] is not None
        fractions = (0.0 if own_val else self.val_fraction, 0.0 if own_test else self.test_fraction)
        generator = torch.Generator().manual_seed(self.seed)
        train, val, test = seeded_split(
            len(train_split),
            held_out_counts(len(train_split), *fractions),
            generator,
            self.train_labels,
            self.labels_per_class,
        )
        own = self.train_labels
        parts = {
            "train": (train_split, train, own),
            "val": (train_split, val, own),
            "test": (train_split, test, own),
        }
        for role in ("val", "test"):
            if (name := names[role]) is None:
                continue
            if role == "test" and name == names["val"]:
                del parts["test"]  # the val split again: one dataset serves both (labels read once)
                continue
            split = self.source[name]
            parts[role] = (split, torch.arange(len(split)), self._labels(split))
        self.splits = {
            role: self._dataset(split, rows, labels, role == "train")
            for role, (split, rows, labels) in parts.items()
        }
        self.splits.setdefault("test", self.splits["val"])
