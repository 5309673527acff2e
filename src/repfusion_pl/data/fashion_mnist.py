"""Fashion-MNIST: 70,000 real 28x28 grey images of clothes, 10 classes, read from its four IDX files.

The Debian/Ubuntu package ``dataset-fashion-mnist`` installs the files under
`DEBIAN_ROOT`, the default root when present. torchvision's downloader fetches them only when the
user sets ``download: true``; nothing is downloaded otherwise.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

from repfusion_pl.data.base import BaseDataModule
from repfusion_pl.data.device_batches import BatchAugment
from repfusion_pl.data.files import DatasetLayout
from repfusion_pl.data.labelled_images import TensorImageDataset
from repfusion_pl.data.splits import check_fractions, check_labelled, seeded_split

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
FALLBACK_ROOT = Path("data/fashion-mnist")
#: The subset the package ships (7,000 training and 1,000 test images, balanced; ``root: embedded``),
#: written by benchmarks/make_fashion_subset.py. Fashion-MNIST is MIT-licensed (the folder's README.md).
EMBEDDED_ROOT = Path(__file__).resolve().parent / "fashion_subset"
EMBEDDED = "embedded"
#: The published file names; each may also be stored without ``.gz``.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
LAYOUT = DatasetLayout(
    "Fashion-MNIST",
    """\
    train-images-idx3-ubyte.gz   (60,000 images)
    train-labels-idx1-ubyte.gz
    t10k-images-idx3-ubyte.gz    (10,000 images)
    t10k-labels-idx1-ubyte.gz
(install the Debian/Ubuntu package dataset-fashion-mnist for /usr/share/datasets/fashion-mnist,
 or set download: true to fetch them with torchvision)
""",
)
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_MAGIC = {3: 2051, 1: 2049}  # IDX magic numbers: unsigned bytes, 3 dims (images) or 1 dim (labels)


def default_root() -> Path:
    """The Debian package's folder when it is installed, else ``data/fashion-mnist``."""
    return DEBIAN_ROOT if DEBIAN_ROOT.is_dir() else FALLBACK_ROOT


def resolve_root(root: str | None) -> Path:
    """``root`` as a folder: ``None`` is `default_root`, ``"embedded"`` the shipped subset."""
    if root is None:
        return default_root()
    return EMBEDDED_ROOT if root == EMBEDDED else Path(root).expanduser()


def read_idx(path: Path, dims: int) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped or not) as an array with ``dims`` dimensions.

    Raises:
        ValueError: Naming the file when it cannot be read, or its header does not match its data.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    magic = int.from_bytes(data[:4], "big")
    if magic != _MAGIC[dims]:
        raise ValueError(
            f"{path} is not an IDX file of {dims}-d unsigned bytes (magic {magic}, expected {_MAGIC[dims]})"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise ValueError(
            f"{path} is truncated: its header says {shape}, {int(np.prod(shape))} bytes; it holds {body.size}"
        )
    return body.reshape(shape)


def _find(root: Path, stem: str) -> Path | None:
    # torchvision's downloader leaves the files under FashionMNIST/raw/, unzipped next to the .gz.
    for folder in (root, root / "FashionMNIST" / "raw"):
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def load_fashion_mnist(root: str | Path, split: str) -> tuple[Tensor, Tensor]:
    """The ``train`` (60,000) or ``test`` (10,000) split as uint8 ``(N, 1, 28, 28)`` and long ``(N,)``.

    Raises:
        DatasetNotFoundError: A file is missing; the message shows the layout and both fixes.
        MalformedDatasetError: A file is corrupt or images and labels disagree in count.
    """
    root = Path(root).expanduser()
    image_stem, label_stem = IDX_FILES[split]
    found = {stem: _find(root, stem) for stem in (image_stem, label_stem)}
    missing = [f"missing file {root / stem}.gz" for stem, path in found.items() if path is None]
    if missing:
        raise LAYOUT.error(root, missing, missing=True)
    try:
        images = read_idx(found[image_stem], 3)  # type: ignore[arg-type]
        labels = read_idx(found[label_stem], 1)  # type: ignore[arg-type]
    except ValueError as err:
        raise LAYOUT.error(root, str(err)) from err
    if len(images) != len(labels):
        raise LAYOUT.error(root, f"{len(images)} {split} images but {len(labels)} labels")
    if labels.max() >= len(CLASSES):
        raise LAYOUT.error(root, f"label {labels.max()} outside 0..9")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def read_splits(
    root: Path,
    seed: int,
    num_val: int,
    num_train: int | None = None,
    num_test: int | None = None,
    labels_per_class: int | None = None,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Seeded ``train``/``val`` subsets of the training file and a ``test`` subset of the test file.

    One seeded generator draws the split and label subset (`seeded_split`), then the test subset.

    Returns:
        Per split, uint8 ``(N, 1, 28, 28)`` images and long ``(N,)`` labels.

    Raises:
        ValueError: When ``num_val`` leaves no training image.
    """
    train_images, train_labels = load_fashion_mnist(root, "train")
    test_images, test_labels = load_fashion_mnist(root, "test")
    if num_val >= len(train_labels):
        raise ValueError(f"num_val={num_val} leaves no Fashion-MNIST training images")
    generator = torch.Generator().manual_seed(seed)
    count = len(train_labels)
    train, val, _ = seeded_split(count, (num_val, 0), generator, train_labels, labels_per_class, num_train)
    test = torch.randperm(len(test_labels), generator=generator)[:num_test].sort().values
    return {
        "train": (train_images[train], train_labels[train]),
        "val": (train_images[val], train_labels[val]),
        "test": (test_images[test], test_labels[test]),
    }


def resize_images(images: Tensor, image_size: int) -> Tensor:
    """uint8 28x28 images as floats in [0, 1] at ``image_size`` (zero-padded if larger, else resized)."""
    images = images.float() / 255.0
    side = images.shape[-1]
    if image_size > side:
        pad = image_size - side
        images = F.pad(images, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    elif image_size < side:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True)
    return images.clamp(0, 1)


class FashionMNISTDataModule(BaseDataModule):
    """Fashion-MNIST from its IDX files, with seeded subsets for quick or label-scarce runs.

    Validation images are held out of the 60,000 training images; test images come from the official
    10,000-image test set. Images are ``(1, S, S)`` floats in [0, 1].

    Args:
        root: Folder of the four IDX files (``.gz`` or not); ``None`` uses `default_root`;
            ``"embedded"`` the subset the package ships (7,000 training and 1,000 test images,
            700 and 100 per class), which needs no download.
        image_size: Side S: 28 keeps the originals, 32 zero-pads them, smaller sides resize.
        batch_size: Batch size for every split.
        num_train: Training images drawn (seeded) from the training set; ``None`` keeps all.
        num_val: Training images held out for validation.
        num_test: Test images drawn (seeded) from the test set; ``None`` keeps all 10,000.
        labels_per_class: Keep only this many labelled training images per class.
        flip: Randomly mirror training images left-right (clothes are left-right symmetric).
        shift: Maximum random translation in pixels for training images.
        download: Fetch the files with torchvision into ``root`` when they are missing.
        seed: Seed of the subsets, the split and the label subset.
        num_workers: DataLoader workers.
        labels: ``False``: batches are images alone (the same images and split), for label-free
            distillation (e.g. `repfusion_pl.ContrastiveReward`).
        device_batches: Keep the training images on the trainer's device and cut, flip and shift
            whole batches there (for GPUs, where per-image loading is the bottleneck).
    """

    num_classes = 10
    in_channels = 1

    def __init__(
        self,
        root: str | None = None,
        image_size: int = 28,
        batch_size: int = 64,
        num_train: int | None = None,
        num_val: int = 5000,
        num_test: int | None = None,
        labels_per_class: int | None = None,
        flip: bool = True,
        shift: int = 0,
        download: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        labels: bool = True,
        device_batches: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers, device_batches)
        check_fractions(labels_per_class=labels_per_class)
        check_labelled(labels, labels_per_class)
        for name, value in (("num_train", num_train), ("num_test", num_test)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 or None, got {value}")
        self.save_hyperparameters()
        self.root = resolve_root(root)
        self.image_size, self.num_train, self.num_val, self.num_test = (
            image_size,
            num_train,
            num_val,
            num_test,
        )
        self.labels_per_class, self.flip, self.shift = labels_per_class, flip, shift
        self.download, self.seed, self.labels = download, seed, labels

    def prepare_data(self) -> None:
        if self.download and any(
            _find(self.root, stem) is None for pair in IDX_FILES.values() for stem in pair
        ):
            from torchvision.datasets import FashionMNIST

            for train in (True, False):
                FashionMNIST(str(self.root), train=train, download=True)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if self.download:
            self.prepare_data()
        parts = read_splits(
            self.root, self.seed, self.num_val, self.num_train, self.num_test, self.labels_per_class
        )
        augment: list[v2.Transform] = []
        if self.flip:
            augment.append(v2.RandomHorizontalFlip())
        if self.shift > 0:
            augment.append(v2.RandomCrop(self.image_size, padding=self.shift))
        train = v2.Compose(augment) if augment else None
        batched = BatchAugment(self.flip, self.shift)
        self.splits = {
            name: TensorImageDataset(
                resize_images(images, self.image_size),
                labels if self.labels else None,
                train if name == "train" else None,
                batched if name == "train" else None,
            )
            for name, (images, labels) in parts.items()
        }
