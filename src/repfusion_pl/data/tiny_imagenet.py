"""Tiny-ImageNet-200 from its published folder: 200 classes of 64 px JPEGs; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from repfusion_pl.data.base import BaseDataModule
from repfusion_pl.data.files import DatasetLayout
from repfusion_pl.data.labelled_images import Samples, class_images, image_file_splits, split_samples
from repfusion_pl.data.splits import check_fractions

LAYOUT = DatasetLayout(
    "Tiny-ImageNet-200",
    """\
    wnids.txt                (one wnid a line: class i is line i)
    train/
        <wnid>/
            images/
                <wnid>_<n>.JPEG
    val/
        images/
            val_<n>.JPEG
        val_annotations.txt  (<file> <wnid> <x0> <y0> <x1> <y1>, tab-separated)
""",
)
REQUIRED = ("wnids.txt", "train/", "val/images/", "val/val_annotations.txt")


def read_wnids(root: Path) -> list[str]:
    """The wnids of ``wnids.txt``: class ``i`` is the ``i``-th."""
    wnids = (root / "wnids.txt").read_text().split()
    if not wnids:
        raise LAYOUT.error(root, "wnids.txt lists no classes")
    return wnids


def read_train(root: Path, wnids: list[str]) -> Samples:
    """``train/<wnid>/images/*`` of every wnid, labelled by its position in ``wnids``, in that order.

    Raises:
        MalformedDatasetError: When a wnid has no images.
    """
    samples: Samples = []
    for index, wnid in enumerate(wnids):
        # The class folder of make_dataset is images/ below train/<wnid>/, labelled with the wnid's index.
        images = class_images(root / "train" / wnid, {"images": index})
        if not images:
            raise LAYOUT.error(root, f"no images in {root / 'train' / wnid / 'images'}")
        samples += images
    return samples


def read_val(root: Path, wnids: list[str]) -> Samples:
    """The official val images, labelled by ``val/val_annotations.txt``.

    Raises:
        MalformedDatasetError: Naming the line that lists an unknown wnid or a missing file.
    """
    annotations = root / "val" / "val_annotations.txt"
    class_index = {wnid: i for i, wnid in enumerate(wnids)}
    samples: Samples = []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in class_index:
            want = "<file>\\t<wnid of wnids.txt>\\t<x0>\\t<y0>\\t<x1>\\t<y1>"
            raise LAYOUT.error(root, f"{annotations} line {number} is not {want}: {line!r}")
        path = root / "val" / "images" / fields[0]
        if not path.is_file():
            raise LAYOUT.error(root, f"{annotations} line {number} names missing file {path}")
        samples.append((str(path), class_index[fields[1]]))
    if not samples:
        raise LAYOUT.error(root, f"{annotations} lists no images")
    return samples


class TinyImageNetDataModule(BaseDataModule):
    """Tiny-ImageNet-200: a seeded train/val split of ``train/``, and the labelled official val as test.

    Class ``i`` is the ``i``-th wnid of ``wnids.txt``. The file lists are read when the module is built
    (no image is decoded then), so a broken dataset fails before training.

    Args:
        root: The ``tiny-imagenet-200`` folder.
        batch_size: Batch size for every split.
        num_workers: DataLoader worker processes decoding the JPEGs.
        val_fraction: Share of the training images held out for validation; 0 trains on all of them
            and validates on the official val images (the test split), as the authors did.
        labels_per_class: Keep only this many labelled training images per class; ``None`` keeps all.
        seed: Seed of the split and of the label subset.
        augment: Random crops and horizontal flips of training images.
        crop: How training images are cropped: ``pad`` (a random shift of up to 1/8 of the side) or
            ``resized`` (``RandomResizedCrop``, the authors' Tiny-ImageNet and CelebA-HQ recipes).
        image_size: Side the 64 px images are resized to.
    """

    in_channels = 3

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
        crop: Literal["pad", "resized"] = "pad",
    ) -> None:
        super().__init__(batch_size, num_workers)
        check_fractions(val_fraction, labels_per_class=labels_per_class)
        self.save_hyperparameters()
        self.root = LAYOUT.check(root, REQUIRED)
        self.wnids = read_wnids(self.root)
        self.num_classes = len(self.wnids)
        self.train_samples = read_train(self.root, self.wnids)
        self.test_samples = read_val(self.root, self.wnids)
        self.val_fraction, self.labels_per_class, self.seed = val_fraction, labels_per_class, seed
        self.augment, self.image_size, self.crop = augment, image_size, crop

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        train, val, _ = split_samples(
            self.train_samples, (self.val_fraction, 0.0), self.seed, self.labels_per_class
        )
        parts = {"train": train, "val": val or self.test_samples, "test": self.test_samples}
        self.splits = image_file_splits(parts, self.image_size, self.augment, crop=self.crop)
