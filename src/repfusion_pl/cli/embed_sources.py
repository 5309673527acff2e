"""What ``repfusion embed`` reads: a folder of images, or a split of any data module, item by item.

Each item is read as a float ``(C, H, W)`` image in [0, 1] (the data modules' batch contract) and
named: by its path below the folder (or the data module's ``root``), else ``<split>/<index>``. An
image that cannot be decoded comes back as its reason instead (`ReadableItems`), for the run to skip
and list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.v2 import functional as F

from repfusion_pl.cli.embed_store import EmbedError
from repfusion_pl.data.files import CorruptImageError
from repfusion_pl.data.labelled_images import ImageFileDataset, image_transform, unlabelled_images
from repfusion_pl.data.views import labels_of, plain_image


@dataclass
class Source:
    """What to embed: how to read item ``i`` as a float ``(C, H, W)`` image, and every item's name."""

    read: Callable[[int], Tensor]
    names: list[str]
    labels: list[int] | None
    settings: dict[str, Any]


class ReadableItems(Dataset):
    """Items as ``(index, image, None)``, or ``(index, None, why)`` for an image that cannot be decoded."""

    def __init__(self, read: Callable[[int], Tensor], count: int) -> None:
        self.read, self.count = read, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[int, Tensor | None, str | None]:
        try:
            return index, self.read(index), None
        except CorruptImageError as err:
            cause = err.__cause__ or err  # the decoder's own words; the file is named beside them
            return index, None, " ".join(f"{type(cause).__name__}: {cause}".split())


def collate(items: list[tuple[int, Tensor | None, str | None]]) -> tuple[list[int], Tensor | None, list]:
    """A batch's decoded rows and images, and its skipped rows with their reasons."""
    decoded = [(index, image) for index, image, _ in items if image is not None]
    skipped = [(index, why) for index, image, why in items if image is None]
    images = torch.stack([image for _, image in decoded]) if decoded else None
    return [index for index, _ in decoded], images, skipped


def folder_source(root: str, image_size: int | None, in_channels: int) -> Source:
    """Every image below ``root``, sorted, named by its path below ``root``."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise EmbedError(f"--images {root} is not a folder")
    if image_size is None:
        raise EmbedError("give --image_size with --images: the side images are resized and cropped to")
    if in_channels not in (1, 3):
        raise EmbedError(
            f"the student takes {in_channels}-channel images; give a --data module that reads them"
        )
    samples = unlabelled_images(folder)
    if not samples:
        raise EmbedError(f"no images below {folder} (looked for {', '.join(IMG_EXTENSIONS)})")
    grayscale = in_channels == 1
    dataset = ImageFileDataset(samples, image_transform(image_size, False), grayscale, labelled=False)
    names = [Path(path).relative_to(folder).as_posix() for path, _ in samples]
    settings = {"images": str(folder.resolve()), "image_size": image_size, "grayscale": grayscale}
    return Source(dataset.__getitem__, names, None, settings)  # type: ignore[arg-type]


def data_source(data: LightningDataModule, split: str, data_config: dict[str, Any]) -> Source:
    """A data module's split, each image without the training augmentation where the data allows it."""
    data.setup("fit" if split != "test" else "test")
    # BaseDataModule's unshuffled loader of any split; another data module's own loader of it.
    ordered = getattr(data, "ordered_loader", None)
    loader = ordered(split) if ordered is not None else getattr(data, f"{split}_dataloader")()
    dataset = loader.dataset
    root = getattr(data, "root", None)
    paths = getattr(dataset, "paths", None)
    if paths is not None and root is not None:
        names = [_below(Path(path), Path(root)) for path in paths]
    else:
        names = [f"{split}/{index:07d}" for index in range(len(dataset))]
    labels = labels_of(dataset)
    settings = {"data": _content_config(data_config), "split": split}
    read = _UnaugmentedReader(dataset)
    return Source(read, names, labels.tolist() if labels is not None and labels.ndim == 1 else None, settings)


class _UnaugmentedReader:
    """Item ``i`` of a split as a float image: without augmentation where the dataset can, else as served."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __call__(self, index: int) -> Tensor:
        try:
            image = plain_image(self.dataset, index)
        except TypeError:  # a dataset that cannot skip its transform: its items as they are
            item = self.dataset[index]
            image = item[0] if isinstance(item, (tuple, list)) else item
        return image if image.is_floating_point() else F.to_dtype(image, torch.float32, scale=True)


def _below(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _content_config(config: dict[str, Any]) -> dict[str, Any]:
    """The data config without what does not change the images (a rerun may change them)."""
    init = {
        k: v for k, v in (config.get("init_args") or {}).items() if k not in ("batch_size", "num_workers")
    }
    return {**config, "init_args": init}
