"""Fashion-MNIST from its four IDX files, written in miniature by the test in the published format."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from repfusion_pl.data import FashionMNISTDataModule
from repfusion_pl.data import fashion_mnist as fm
from repfusion_pl.data.files import DatasetNotFoundError, MalformedDatasetError


def write_idx(path: Path, array: np.ndarray, magic: int | None = None, gz: bool = True) -> None:
    """Write ``array`` (uint8) as an IDX file: big-endian magic, one big-endian int per dimension."""
    magic = magic if magic is not None else (2051 if array.ndim == 3 else 2049)
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def class_images(labels: np.ndarray) -> np.ndarray:
    """28x28 images whose brightness encodes the label (20 * label + 10), so pairs can be checked."""
    return np.broadcast_to((20 * labels + 10)[:, None, None], (len(labels), 28, 28)).astype(np.uint8)


@pytest.fixture
def fashion_root(tmp_path: Path) -> Path:
    root = tmp_path / "fashion"
    train_labels = np.arange(120) % 10
    test_labels = np.arange(40) % 10
    write_idx(root / "train-images-idx3-ubyte.gz", class_images(train_labels))
    write_idx(root / "train-labels-idx1-ubyte.gz", train_labels)
    write_idx(root / "t10k-images-idx3-ubyte.gz", class_images(test_labels))
    write_idx(root / "t10k-labels-idx1-ubyte.gz", test_labels)
    return root


def check_pairs(dataset) -> None:
    for image, label in dataset:
        # Brightness 20 * label + 10 survives resizing and padding (the centre pixel is never padding).
        centre = image[0, image.shape[1] // 2, image.shape[2] // 2]
        assert round(float(centre) * 255) == 20 * int(label) + 10


def test_reads_the_idx_files_with_seeded_splits(fashion_root: Path) -> None:
    data = FashionMNISTDataModule(str(fashion_root), image_size=28, num_val=20, num_test=30, flip=False)
    data.setup()
    sizes = {split: len(dataset) for split, dataset in data.splits.items()}
    assert sizes == {"train": 100, "val": 20, "test": 30}
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape[1:] == (1, 28, 28) and images.dtype == torch.float32
    assert labels.dtype == torch.long and 0 <= images.min() and images.max() <= 1
    for split in data.splits.values():
        check_pairs(split)
    again = FashionMNISTDataModule(str(fashion_root), image_size=28, num_val=20, num_test=30, flip=False)
    again.setup()
    assert torch.equal(again.splits["val"].labels, data.splits["val"].labels)


def test_pads_to_32_and_resizes_to_16(fashion_root: Path) -> None:
    padded = FashionMNISTDataModule(str(fashion_root), image_size=32, num_val=10, flip=False)
    padded.setup()
    image = padded.splits["val"][0][0]
    assert image.shape == (1, 32, 32)
    assert image[:, :2].abs().sum() == 0 and image[:, :, -2:].abs().sum() == 0  # 2 px of zero padding
    small = FashionMNISTDataModule(str(fashion_root), image_size=16, num_val=10, flip=False)
    small.setup()
    assert small.splits["train"][0][0].shape == (1, 16, 16)
    check_pairs(small.splits["train"])


def test_labels_per_class_and_num_train(fashion_root: Path) -> None:
    data = FashionMNISTDataModule(str(fashion_root), num_val=20, num_train=80, labels_per_class=3)
    data.setup()
    counts = torch.bincount(data.splits["train"].labels, minlength=10)
    assert counts.tolist() == [3] * 10
    assert len(data.splits["val"]) == 20


def test_uncompressed_and_torchvision_layouts(tmp_path: Path, fashion_root: Path) -> None:
    raw = tmp_path / "tv" / "FashionMNIST" / "raw"
    for gz in fashion_root.iterdir():
        with gzip.open(gz, "rb") as handle:
            (raw / gz.stem).parent.mkdir(parents=True, exist_ok=True)
            (raw / gz.stem).write_bytes(handle.read())
    data = FashionMNISTDataModule(str(tmp_path / "tv"), num_val=20, flip=False)
    data.setup()
    assert len(data.splits["test"]) == 40


def test_missing_files_show_the_layout_and_both_fixes(tmp_path: Path, fashion_root: Path) -> None:
    (fashion_root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        FashionMNISTDataModule(str(fashion_root)).setup()
    message = str(err.value)
    assert "t10k-labels-idx1-ubyte" in message and "dataset-fashion-mnist" in message
    assert "download: true" in message and "train-images-idx3-ubyte.gz" in message
    with pytest.raises(DatasetNotFoundError, match="does not exist|missing file"):
        FashionMNISTDataModule(str(tmp_path / "nowhere")).setup()


def test_truncated_and_foreign_files_are_named(fashion_root: Path) -> None:
    path = fashion_root / "train-images-idx3-ubyte.gz"
    truncated = gzip.decompress(path.read_bytes())[:-100]
    path.write_bytes(gzip.compress(truncated))
    with pytest.raises(MalformedDatasetError, match="truncated"):
        FashionMNISTDataModule(str(fashion_root)).setup()
    write_idx(path, class_images(np.arange(120) % 10), magic=2049)
    with pytest.raises(MalformedDatasetError, match="magic"):
        FashionMNISTDataModule(str(fashion_root)).setup()
    write_idx(path, class_images(np.arange(119) % 10))
    with pytest.raises(MalformedDatasetError, match="119 train images but 120 labels"):
        FashionMNISTDataModule(str(fashion_root)).setup()


def test_default_root_prefers_the_debian_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fm, "DEBIAN_ROOT", tmp_path)
    assert FashionMNISTDataModule().root == tmp_path
    monkeypatch.setattr(fm, "DEBIAN_ROOT", tmp_path / "absent")
    assert FashionMNISTDataModule().root == fm.FALLBACK_ROOT


def test_downloads_only_when_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []

    class FakeDownloader:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((root, train, download))

    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeDownloader)
    with pytest.raises(DatasetNotFoundError):
        FashionMNISTDataModule(str(tmp_path)).setup()
    assert calls == []
    with pytest.raises(DatasetNotFoundError):  # the fake fetched nothing, so the files are still missing
        FashionMNISTDataModule(str(tmp_path), download=True).setup()
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]


def test_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="num_train"):
        FashionMNISTDataModule(num_train=0)
    with pytest.raises(ValueError, match="labels_per_class"):
        FashionMNISTDataModule(labels_per_class=0)


def test_without_labels_batches_are_the_same_images_alone(fashion_root: Path) -> None:
    settings = dict(image_size=28, num_val=20, num_test=30, flip=False)
    labelled = FashionMNISTDataModule(str(fashion_root), **settings)
    unlabelled = FashionMNISTDataModule(str(fashion_root), labels=False, **settings)
    labelled.setup()
    unlabelled.setup()
    images = next(iter(unlabelled.val_dataloader()))
    assert isinstance(images, torch.Tensor)
    assert torch.equal(images, next(iter(labelled.val_dataloader()))[0])
    with pytest.raises(ValueError, match="labels_per_class needs labels"):
        FashionMNISTDataModule(str(fashion_root), labels=False, labels_per_class=3)
