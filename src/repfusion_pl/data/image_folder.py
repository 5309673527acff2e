"""Any ``<class>/<image>`` folder tree (flat, or split into ``train/``, ``val/``, ``test/``), or images."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

from repfusion_pl.data.base import BaseDataModule
from repfusion_pl.data.files import DatasetLayout
from repfusion_pl.data.labelled_images import (
    Samples,
    class_folders,
    class_images,
    image_file_splits,
    split_samples,
    unlabelled_images,
)
from repfusion_pl.data.splits import check_fractions, check_labelled

LAYOUT = DatasetLayout(
    "Image folder dataset",
    """\
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
  (with labels: false, any folder of images: <image>.jpg anywhere below <root>/, or below its
   train/, val/ and test/ folders)
""",
)


def split_folders(root: Path) -> dict[str, Path]:
    """The folder of each published split: ``train/``, ``val/`` and any ``test/``, or ``root`` as ``train``.

    ``root`` counts as split when it holds both ``train/`` and ``val/``.
    """
    if (root / "train").is_dir() and (root / "val").is_dir():
        return {name: root / name for name in ("train", "val", "test") if (root / name).is_dir()}
    return {"train": root}


def read_classes(root: Path, folder: Path) -> list[str]:
    """The sorted class folder names of ``folder`` (hidden folders are not classes).

    Raises:
        MalformedDatasetError: When there are none (with the fix for a folder of unlabelled images).
    """
    classes = class_folders(folder)
    if not classes:
        hint = "; for a folder of unlabelled images set labels: false" if unlabelled_images(folder) else ""
        raise LAYOUT.error(root, f"no class folders in {folder}{hint}")
    return classes


def read_unlabelled(root: Path, folder: Path) -> Samples:
    """Every image below ``folder`` (label -1).

    Raises:
        MalformedDatasetError: When there is none.
    """
    samples = unlabelled_images(folder)
    if not samples:
        raise LAYOUT.error(root, f"no images below {folder}")
    return samples


def read_split(root: Path, folder: Path, classes: list[str], every_class: bool = False) -> Samples:
    """The images of ``folder/<class>/``, sorted by class then path; with ``every_class``, each class has one.

    Raises:
        MalformedDatasetError: For a class folder not among ``classes``, a class without images (with
            ``every_class``), or no image at all; the first problem in class-name order.
    """
    index = {name: i for i, name in enumerate(classes)}
    present = class_folders(folder)
    samples = class_images(folder, {name: index[name] for name in present if name in index})
    found = Counter(label for _, label in samples)
    for name in present:
        if name not in index:
            raise LAYOUT.error(root, f"{folder / name} is not a class of {classes}")
        if every_class and not found[index[name]]:
            raise LAYOUT.error(root, f"no images in class folder {folder / name}")
    if not samples:
        raise LAYOUT.error(root, f"no images in {folder}/<class>/")
    return samples


class ImageFolderDataModule(BaseDataModule):
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
        augment: Random crops and horizontal flips of training images.
        crop: How training images are cropped: ``pad`` (a random shift of up to 1/8 of the side) or
            ``resized`` (``RandomResizedCrop``, the authors' Tiny-ImageNet and CelebA-HQ recipes).
        grayscale: Decode to one channel (``in_channels`` becomes 1) instead of RGB.
        labels: ``False``: a folder of unlabelled images (no class folders needed); batches are images
            alone, for label-free distillation (e.g. `repfusion_pl.ContrastiveReward`).
    """

    in_channels = 3

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
        labels: bool = True,
        crop: Literal["pad", "resized"] = "pad",
    ) -> None:
        super().__init__(batch_size, num_workers)
        check_fractions(val_fraction, test_fraction, labels_per_class)
        check_labelled(labels, labels_per_class)
        self.save_hyperparameters()
        self.root = LAYOUT.check(root)
        self.in_channels = 1 if grayscale else 3
        self.labels = labels
        folders = split_folders(self.root)
        if labels:
            self.classes = read_classes(self.root, folders["train"])
            self.num_classes: int | None = len(self.classes)
            self.samples = {
                name: read_split(self.root, folder, self.classes, every_class=name == "train")
                for name, folder in folders.items()
            }
        else:
            self.classes, self.num_classes = [], None
            self.samples = {name: read_unlabelled(self.root, folder) for name, folder in folders.items()}
        self.image_size, self.val_fraction, self.test_fraction = image_size, val_fraction, test_fraction
        self.labels_per_class, self.seed, self.augment = labels_per_class, seed, augment
        self.crop = crop
        self.grayscale = grayscale

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        published = "val" in self.samples
        held_out = (0.0, 0.0) if published else (self.val_fraction, self.test_fraction)
        train, val, test = split_samples(self.samples["train"], held_out, self.seed, self.labels_per_class)
        if published:
            # Without test/, val/ doubles as the test split (ImageNet publishes no test labels).
            val = self.samples["val"]
            test = self.samples.get("test", val)
        parts = {"train": train, "val": val, "test": test}
        self.splits = image_file_splits(
            parts, self.image_size, self.augment, self.grayscale, self.labels, self.crop
        )
