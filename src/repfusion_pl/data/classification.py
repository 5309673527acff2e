"""Classification datasets read from disk in their published layouts: CIFAR-10, Tiny-ImageNet-200, folders.

Every module keeps the batch contract of `repfusion_pl.data.base`: float ``(N, C, H, W)`` images in
[0, 1] and long ``(N,)`` labels. Nothing is downloaded. A missing or malformed dataset fails when the
module is built, with the expected layout in the message (`repfusion_pl.data.files`), so a bad config
stops before training starts.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.io import ImageReadMode
from torchvision.transforms import v2

from repfusion_pl.data import files
from repfusion_pl.data.base import SplitDataModule
from repfusion_pl.data.digits import TensorImageDataset

#: ``(image path, class index)`` pairs.
Samples = list[tuple[Path, int]]

CIFAR10_LAYOUT = """\
    cifar-10-batches-py/
        data_batch_1
        data_batch_2
        data_batch_3
        data_batch_4
        data_batch_5
        test_batch
        batches.meta
"""
TINY_IMAGENET_LAYOUT = """\
    wnids.txt                (one wnid a line: class i is line i)
    train/
        <wnid>/
            images/
                <wnid>_<n>.JPEG
    val/
        images/
            val_<n>.JPEG
        val_annotations.txt  (<file> <wnid> <x0> <y0> <x1> <y1>, tab-separated)
"""
IMAGE_FOLDER_LAYOUT = """\
    <class>/                 (one folder per class), or
        <image>.jpg
    train/
        <class>/
            <image>.jpg
    val/
        <class>/
            <image>.jpg
    test/                    (optional)
        <class>/
            <image>.jpg
"""


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted so that seeded splits are reproducible."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)


def class_folders(folder: Path) -> list[str]:
    """Sorted sub-folder names of ``folder``; hidden ones (``.ipynb_checkpoints``) are not classes."""
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def image_transform(image_size: int, augment: bool, resize: bool = True) -> v2.Compose:
    """Uint8 image tensor -> float ``(C, S, S)`` tensor in [0, 1], augmented if ``augment``.

    Augmentation is a random shift of up to 1/8 of the side (CIFAR's 4 px at 32 px, Tiny-ImageNet's
    8 px at 64 px) and a horizontal flip.
    """
    steps: list[v2.Transform] = [v2.ToImage()]
    if resize:
        steps += [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    if augment:
        steps += [v2.RandomCrop(image_size, padding=image_size // 8), v2.RandomHorizontalFlip()]
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


class ImageFileDataset(Dataset):
    """Labelled image files, decoded on access (large datasets do not fit in memory decoded)."""

    def __init__(self, samples: Samples, transform: v2.Transform, grayscale: bool = False) -> None:
        # Strings, not Paths: workers read the list without touching thousands of Python objects.
        self.paths = [str(path) for path, _ in samples]
        self.labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        self.transform = transform
        self.mode = ImageReadMode.GRAY if grayscale else ImageReadMode.RGB

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.transform(files.read_image(self.paths[index], self.mode)), self.labels[index]


class FolderDataModule(SplitDataModule):
    """A data module over a dataset folder ``root`` that must hold ``layout`` (see `files.check_layout`)."""

    dataset_name: str
    layout: str
    root: Path

    def check_root(self, root: str | Path, required: Sequence[str] = ()) -> None:
        """Set ``self.root``, refusing a missing folder or a missing or empty ``required`` entry."""
        self.root = files.check_layout(self.dataset_name, root, required, self.layout)

    def malformed(self, problem: str) -> files.DatasetLayoutError:
        """The error for a dataset whose files exist but are wrong, showing ``layout``."""
        return files.layout_error(self.dataset_name, self.root, problem, self.layout)


class FileDataModule(FolderDataModule):
    """A data module over ``self.samples`` (file lists per split), split by ``setup`` with a seed.

    Subclasses fill ``samples`` (``train`` and any published split) and ``held_out`` (``val`` and/or
    ``test`` -> share of ``train``), and save ``labels_per_class``, ``seed``, ``image_size`` and
    ``augment`` as hyperparameters. A split that is neither published nor held out is ``val``.
    """

    in_channels = 3
    samples: dict[str, Samples]
    held_out: dict[str, float]

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        train = self.samples["train"]
        labels = torch.tensor([label for _, label in train], dtype=torch.long)
        fractions = (self.held_out.get("val", 0.0), self.held_out.get("test", 0.0))
        parts = files.seeded_split(len(train), *fractions, hp["seed"], labels, hp["labels_per_class"])
        drawn = dict(zip(("train", "val", "test"), parts, strict=True))
        splits = {
            **self.samples,
            **{n: [train[i] for i in drawn[n].tolist()] for n in ("train", *self.held_out)},
        }
        augment, plain = (image_transform(hp["image_size"], a) for a in (hp["augment"], False))
        gray = self.in_channels == 1
        self.splits = {
            "train": ImageFileDataset(splits["train"], augment, gray),
            "val": ImageFileDataset(splits["val"], plain, gray),
            "test": ImageFileDataset(splits.get("test", splits["val"]), plain, gray),
        }


class CIFAR10DataModule(FolderDataModule):
    """CIFAR-10 from its python pickle batches: a seeded train/val split of the 50,000, and the 10,000 test.

    Images are ``(3, 32, 32)``, held in memory as uint8 (CIFAR is small). torchvision checks the md5
    sums of the official batches, so altered files are reported as corrupt.

    Args:
        root: The folder holding ``cifar-10-batches-py/``, or that folder itself.
        batch_size: Batch size for every split.
        num_workers: DataLoader worker processes.
        val_size: Training images held out for validation.
        labels_per_class: Keep only this many labelled training images per class; ``None`` keeps all.
        seed: Seed of the split and of the label subset.
        augment: Random 4 px shifts and horizontal flips of training images.
    """

    in_channels = 3
    num_classes = 10
    dataset_name, layout = "CIFAR-10", CIFAR10_LAYOUT

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
        files.check_fractions(labels_per_class=labels_per_class)
        if val_size < 0:
            raise ValueError(f"val_size must be non-negative, got {val_size}")
        self.save_hyperparameters()
        path, folder = Path(root).expanduser(), CIFAR10.base_folder
        batches = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]
        self.check_root(path.parent if path.name == folder else path, [f"{folder}/{b}" for b in batches])

    def read(self, train: bool) -> tuple[Tensor, Tensor]:
        """The training or test batches as uint8 ``(N, 3, 32, 32)`` images and long labels."""
        try:
            dataset = CIFAR10(str(self.root), train=train, download=False)
        except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as error:
            # The files exist (checked in __init__), so torchvision's "not found or corrupted" means corrupt.
            raise self.malformed(f"not the official pickle batches ({error})") from error
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
        return images, torch.tensor(dataset.targets, dtype=torch.long)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        images, labels = self.read(train=True)
        train_idx, val_idx, _ = files.seeded_split_sizes(
            len(labels), (hp["val_size"], 0), hp["seed"], labels, hp["labels_per_class"]
        )
        plain, augment = (image_transform(32, a, resize=False) for a in (False, hp["augment"]))
        self.splits = {
            "train": TensorImageDataset(images[train_idx], labels[train_idx], augment),
            "val": TensorImageDataset(images[val_idx], labels[val_idx], plain),
            "test": TensorImageDataset(*self.read(train=False), plain),
        }


class TinyImageNetDataModule(FileDataModule):
    """Tiny-ImageNet-200: a seeded train/val split of ``train/``, and the labelled official val as test.

    Class ``i`` is the ``i``-th wnid of ``wnids.txt``. The file lists are read when the module is built
    (no image is decoded then), so a broken dataset fails before training.

    Args:
        root: The ``tiny-imagenet-200`` folder.
        batch_size: Batch size for every split.
        num_workers: DataLoader worker processes decoding the JPEGs.
        val_fraction: Share of the training images held out for validation.
        labels_per_class: Keep only this many labelled training images per class; ``None`` keeps all.
        seed: Seed of the split and of the label subset.
        augment: Random shifts of up to 1/8 of the side (8 px at 64 px) and horizontal flips in training.
        image_size: Side the 64 px images are resized to.
    """

    dataset_name, layout = "Tiny-ImageNet-200", TINY_IMAGENET_LAYOUT

    def __init__(
        self,
        root: str,
        batch_size: int = 64,
        num_workers: int = 4,
        val_fraction: float = 0.1,
        labels_per_class: int | None = None,
        seed: int = 0,
        augment: bool = True,
        image_size: int = 64,
    ) -> None:
        super().__init__(batch_size, num_workers)
        files.check_fractions(val_fraction, labels_per_class=labels_per_class)
        self.save_hyperparameters()
        self.check_root(root, ["wnids.txt", "train/", "val/images/", "val/val_annotations.txt"])
        self.wnids = (self.root / "wnids.txt").read_text().split()
        if not self.wnids:
            raise self.malformed("wnids.txt lists no classes")
        self.num_classes = len(self.wnids)
        self.samples = {"train": self.read_train(), "test": self.read_val()}
        self.held_out = {"val": val_fraction}

    def read_train(self) -> Samples:
        """``train/<wnid>/images/*`` of every wnid, labelled by its position in ``wnids.txt``."""
        samples: Samples = []
        for index, wnid in enumerate(self.wnids):
            folder = self.root / "train" / wnid / "images"
            images = image_files(folder)
            if not images:
                raise self.malformed(f"no images in {folder}")
            samples += [(path, index) for path in images]
        return samples

    def read_val(self) -> Samples:
        """The official val images, labelled by ``val/val_annotations.txt``."""
        annotations = self.root / "val" / "val_annotations.txt"
        class_index = {wnid: i for i, wnid in enumerate(self.wnids)}
        samples: Samples = []
        for number, line in enumerate(annotations.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in class_index:
                want = "<file>\\t<wnid of wnids.txt>\\t<x0>\\t<y0>\\t<x1>\\t<y1>"
                raise self.malformed(f"{annotations} line {number} is not {want}: {line!r}")
            path = self.root / "val" / "images" / fields[0]
            if not path.is_file():
                raise self.malformed(f"{annotations} line {number} names missing file {path}")
            samples.append((path, class_index[fields[1]]))
        if not samples:
            raise self.malformed(f"{annotations} lists no images")
        return samples


class ImageFolderDataModule(FileDataModule):
    """Any ``root/<class>/<image>`` tree, resized and split into train/val/test with a seed.

    If ``root`` holds ``train/`` and ``val/`` (and optionally ``test/``) folders of class folders, those
    are the splits and the fractions are unused; without ``test/``, ``val/`` doubles as the test split (as
    with ImageNet, whose test labels are not published). Classes are the sorted class folder names (of
    ``train/`` in that layout); files are listed when the module is built, so a broken tree fails early.

    Args:
        root: The dataset folder.
        batch_size: Batch size for every split.
        num_workers: DataLoader worker processes decoding the images.
        image_size: Side S: images are resized (shorter side) and centre-cropped to S x S.
        val_fraction: Share of the images held out for validation (flat layout).
        test_fraction: Share of the images held out for testing (flat layout).
        labels_per_class: Keep only this many labelled training images per class; ``None`` keeps all.
        seed: Seed of the split and of the label subset.
        augment: Random shifts of up to 1/8 of the side and horizontal flips of training images.
        grayscale: Decode to one channel (``in_channels`` becomes 1) instead of RGB.
    """

    dataset_name, layout = "Image folder dataset", IMAGE_FOLDER_LAYOUT

    def __init__(
        self,
        root: str,
        batch_size: int = 64,
        num_workers: int = 4,
        image_size: int = 32,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        labels_per_class: int | None = None,
        seed: int = 0,
        augment: bool = True,
        grayscale: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers)
        files.check_fractions(val_fraction, test_fraction, labels_per_class)
        self.save_hyperparameters()
        self.check_root(root)
        self.in_channels = 1 if grayscale else 3
        root_dir = self.root
        presplit = (root_dir / "train").is_dir() and (root_dir / "val").is_dir()
        train_dir = root_dir / "train" if presplit else root_dir
        self.classes = class_folders(train_dir)
        if not self.classes:
            raise self.malformed(f"no class folders in {train_dir}")
        self.num_classes = len(self.classes)
        self.samples = {"train": self.read_split(train_dir, every_class=True)}
        if presplit:
            named = [name for name in ("val", "test") if (root_dir / name).is_dir()]
            self.samples.update({name: self.read_split(root_dir / name) for name in named})
        self.held_out = {} if presplit else {"val": val_fraction, "test": test_fraction}

    def read_split(self, folder: Path, every_class: bool = False) -> Samples:
        """The images of ``folder/<class>/``; with ``every_class``, each class must have one."""
        index = {name: i for i, name in enumerate(self.classes)}
        samples: Samples = []
        for name in class_folders(folder):
            if name not in index:
                raise self.malformed(f"{folder / name} is not a class of {self.classes}")
            images = image_files(folder / name)
            if not images and every_class:
                raise self.malformed(f"no images in class folder {folder / name}")
            samples += [(path, index[name]) for path in images]
        if not samples:
            raise self.malformed(f"no images in {folder}/<class>/")
        return samples
