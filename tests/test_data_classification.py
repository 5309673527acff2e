"""Data modules over real dataset layouts, each written in miniature to ``tmp_path`` by the test itself."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar
from PIL import Image

from repfusion_pl.data import CIFAR10DataModule, ImageFolderDataModule, TinyImageNetDataModule
from repfusion_pl.data.files import (
    CorruptImageError,
    DatasetLayoutError,
    DatasetNotFoundError,
    MalformedDatasetError,
)
from repfusion_pl.data.splits import seeded_split

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]  # class i is dominated by channel i


def write_image(path: Path, colour: tuple[int, int, int], size=(64, 64), seed: int = 0) -> None:
    """A noisy solid-colour image, so a label can be checked against the pixels it came with."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def dominant_channel(images: torch.Tensor) -> torch.Tensor:
    return images.mean(dim=(2, 3)).argmax(dim=1)


# ---------------------------------------------------------------- CIFAR-10


def write_cifar(root: Path, per_batch: int = 20, n_test: int = 20) -> dict[str, np.ndarray]:
    """``root/cifar-10-batches-py`` as published: pickled dicts of uint8 (N, 3072) rows and labels.

    The official files are Python 2 pickles whose str keys load as str under the ``encoding="latin1"``
    torchvision uses, so the dicts here have str keys: torchvision reads ``entry["data"]``.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(i) for i in rng.permutation(np.arange(n) % 10)]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, f, protocol=2)
        written[name] = data
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, f, protocol=2)
    return written


@pytest.fixture
def cifar_root(tmp_path, monkeypatch) -> Path:
    """A 100 + 20 image CIFAR-10, with torchvision's md5 check reduced to "the file exists".

    ``CIFAR10(download=False)`` compares every batch with the md5 of the official file, which no
    synthetic fixture can match; only that check is patched, reading and decoding are torchvision's own.
    """
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    write_cifar(tmp_path)
    return tmp_path


def test_cifar_splits_shapes_and_pixels(cifar_root):
    data = CIFAR10DataModule(str(cifar_root), val_size=10, num_workers=0, batch_size=8)
    data.setup("fit")
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 90, "val": 10, "test": 20}
    assert data.num_classes == 10 and data.in_channels == 3
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.long
    assert 0 <= images.min() and images.max() <= 1 and set(labels.tolist()) <= set(range(10))
    # The test split is the raw test_batch: row = 1024 R, 1024 G, 1024 B values, scaled to [0, 1].
    with open(cifar_root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f)
    image, label = data.splits["test"][3]
    torch.testing.assert_close(image, torch.from_numpy(raw["data"][3].reshape(3, 32, 32)).float() / 255)
    assert label == raw["labels"][3]


def test_cifar_root_may_be_the_batches_folder_and_the_split_follows_the_seed(cifar_root):
    def val_labels(root: Path, seed: int) -> torch.Tensor:
        data = CIFAR10DataModule(str(root), val_size=30, seed=seed, num_workers=0)
        data.setup()
        return data.splits["val"].labels

    same = val_labels(cifar_root / "cifar-10-batches-py", 1)
    assert torch.equal(val_labels(cifar_root, 1), same)
    assert not torch.equal(val_labels(cifar_root, 2), same)


def test_cifar_labels_per_class_is_balanced(cifar_root):
    data = CIFAR10DataModule(str(cifar_root), val_size=10, labels_per_class=3, num_workers=0)
    data.setup()
    assert torch.bincount(data.splits["train"].labels).tolist() == [3] * 10
    assert len(data.splits["val"]) == 10


def test_cifar_missing_or_empty_folder_shows_the_layout(tmp_path):
    batches = tmp_path / "cifar-10-batches-py"
    for root, problem in [
        (tmp_path / "nowhere", "the folder does not exist"),
        (tmp_path, f"missing file {batches}/data_batch_1\n  - missing file {batches}/data_batch_2"),
    ]:
        with pytest.raises(FileNotFoundError) as error:
            CIFAR10DataModule(str(root))
        message = str(error.value)
        assert message.startswith(f"CIFAR-10 at {root} is incomplete:\n  - {problem}\n")
        assert (
            f"\nExpected layout:\n    {root}/\n        cifar-10-batches-py/\n            data_batch_1\n"
            in message
        )
        assert message.endswith("\n            batches.meta")


def test_cifar_incomplete_folder_names_the_missing_file(cifar_root):
    (cifar_root / "cifar-10-batches-py" / "test_batch").unlink()
    missing = re.escape(f"incomplete:\n  - missing file {cifar_root}/cifar-10-batches-py/test_batch\n")
    with pytest.raises(FileNotFoundError, match=missing + "Expected layout:\n"):
        CIFAR10DataModule(str(cifar_root))


def test_cifar_batches_that_are_not_the_official_files_are_refused(tmp_path):
    write_cifar(tmp_path)  # no patch: torchvision's md5 check runs and fails
    data = CIFAR10DataModule(str(tmp_path), val_size=10)
    with pytest.raises(ValueError, match="CIFAR-10 at .* is malformed:\n  - not the official pickle batches"):
        data.setup()


def test_cifar_garbage_batch_is_a_clear_error(cifar_root):
    (cifar_root / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="malformed") as error:
        CIFAR10DataModule(str(cifar_root), val_size=10).setup()
    assert f"Expected layout:\n    {cifar_root}/\n        cifar-10-batches-py/\n" in str(error.value)


# ---------------------------------------------------------------- Tiny-ImageNet-200

WNIDS = ["n03000000", "n01000000", "n02000000"]  # not sorted: the class is the position in wnids.txt


def write_tiny_imagenet(
    root: Path, per_class: int = 4, val_per_class: int = 2, wnids: list[str] = WNIDS
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for index, wnid in enumerate(wnids):
        for i in range(per_class):
            write_image(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", COLOURS[index], seed=i)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(val_per_class):
            name = f"val_{i * len(wnids) + index}.JPEG"
            write_image(root / "val" / "images" / name, COLOURS[index], seed=100 + i)
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(sorted(lines)) + "\n")
    return root


@pytest.fixture
def tiny_root(tmp_path) -> Path:
    return write_tiny_imagenet(tmp_path / "tiny-imagenet-200")


def test_tiny_imagenet_splits_labels_and_images(tiny_root):
    data = TinyImageNetDataModule(str(tiny_root), val_fraction=0.25, num_workers=0, image_size=32)
    assert data.num_classes == 3  # known before setup, from wnids.txt
    data.setup("fit")
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 9, "val": 3, "test": 6}
    for name in ("train", "val", "test"):
        images, labels = next(iter(data.ordered_loader(name)))
        assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.float32
        assert 0 <= images.min() and images.max() <= 1 and labels.dtype == torch.long
        assert torch.equal(dominant_channel(images), labels), name  # labels follow wnids.txt order
    assert torch.bincount(data.splits["test"].labels).tolist() == [2, 2, 2]


def test_tiny_imagenet_split_follows_the_seed_and_labels_per_class(tiny_root):
    def val_paths(seed: int, **kwargs) -> list[str]:
        data = TinyImageNetDataModule(str(tiny_root), val_fraction=0.25, seed=seed, **kwargs)
        data.setup()
        return data.splits["val"].paths

    assert val_paths(0) == val_paths(0) != val_paths(3)
    data = TinyImageNetDataModule(str(tiny_root), val_fraction=0.25, labels_per_class=2)
    data.setup()
    assert torch.bincount(data.splits["train"].labels).tolist() == [2, 2, 2]


def test_tiny_imagenet_missing_folder_shows_the_layout(tmp_path):
    root = tmp_path / "x"
    with pytest.raises(FileNotFoundError) as error:
        TinyImageNetDataModule(str(root))
    assert str(error.value) == (
        f"Tiny-ImageNet-200 at {root} is incomplete:\n  - the folder does not exist\nExpected layout:\n"
        f"    {root}/\n"
        "        wnids.txt                (one wnid a line: class i is line i)\n"
        "        train/\n"
        "            <wnid>/\n"
        "                images/\n"
        "                    <wnid>_<n>.JPEG\n"
        "        val/\n"
        "            images/\n"
        "                val_<n>.JPEG\n"
        "            val_annotations.txt  (<file> <wnid> <x0> <y0> <x1> <y1>, tab-separated)"
    )
    root.mkdir()  # an empty folder is no dataset either
    with pytest.raises(
        FileNotFoundError,
        match=r"(?s)incomplete:\n  - missing file .*wnids.txt\n.*"
        r"Expected layout:\n    .*/\n        wnids.txt ",
    ):
        TinyImageNetDataModule(str(root))


def test_tiny_imagenet_malformed_files_are_named(tiny_root):
    annotations = tiny_root / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + "val_99.JPEG\tn09999999\t0\t0\t1\t1\n")
    with pytest.raises(
        ValueError, match=r"val_annotations.txt line 7 is not .*n09999999.*\nExpected layout:\n"
    ):
        TinyImageNetDataModule(str(tiny_root))
    annotations.unlink()
    with pytest.raises(
        FileNotFoundError, match=r"incomplete:\n  - missing file .*/val/val_annotations.txt\n"
    ):
        TinyImageNetDataModule(str(tiny_root))


def test_tiny_imagenet_class_without_images_is_refused(tiny_root):
    for path in (tiny_root / "train" / WNIDS[1] / "images").iterdir():
        path.unlink()
    with pytest.raises(ValueError, match=f"malformed:\n  - no images in .*{WNIDS[1]}/images"):
        TinyImageNetDataModule(str(tiny_root))


def test_corrupt_image_error_names_the_file(tiny_root):
    bad = tiny_root / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_2.JPEG"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    data = TinyImageNetDataModule(str(tiny_root), val_fraction=0.25, num_workers=0, batch_size=12)
    data.setup()
    with pytest.raises(CorruptImageError, match=f"cannot decode image {bad}") as error:
        for split in ("train", "val"):
            list(data.ordered_loader(split))
    assert isinstance(error.value, ValueError)  # a corrupt file is malformed data, not a missing one


# ---------------------------------------------------------------- image folders


def write_flat_folder(root: Path, per_class: int = 10) -> Path:
    for index, name in enumerate(["red", "green", "blue"]):
        for i in range(per_class):
            write_image(root / name / f"{i}.png", COLOURS[index], size=(40, 30), seed=i)
    (root / "README.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "README.txt").write_text("not a class")
    (root / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    # ... nor samples: Jupyter keeps copies of a class's images there.
    write_image(root / "red" / ".ipynb_checkpoints" / "0-checkpoint.png", COLOURS[0], size=(40, 30), seed=0)
    return root


def test_image_folder_flat_layout_is_split_with_the_seed(tmp_path):
    root = write_flat_folder(tmp_path / "flat")
    data = ImageFolderDataModule(str(root), image_size=16, val_fraction=0.2, test_fraction=0.1, num_workers=0)
    assert data.num_classes == 3 and data.classes == ["blue", "green", "red"]
    data.setup()
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 21, "val": 6, "test": 3}
    images, labels = next(iter(data.val_dataloader()))
    assert images.shape == (6, 3, 16, 16) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    assert torch.equal(dominant_channel(images), 2 - labels)  # classes sorted: blue, green, red
    again = ImageFolderDataModule(str(root), val_fraction=0.2, test_fraction=0.1, seed=0)
    other = ImageFolderDataModule(str(root), val_fraction=0.2, test_fraction=0.1, seed=1)
    again.setup()
    other.setup()
    assert again.splits["val"].paths == data.splits["val"].paths != other.splits["val"].paths
    every = [p for split in data.splits.values() for p in split.paths]
    assert len(set(every)) == 30


def test_image_folder_labels_per_class_and_grayscale(tmp_path):
    root = write_flat_folder(tmp_path / "flat")
    data = ImageFolderDataModule(str(root), image_size=8, labels_per_class=2, grayscale=True, num_workers=0)
    data.setup()
    assert data.in_channels == 1 and ImageFolderDataModule.in_channels == 3
    assert torch.bincount(data.splits["train"].labels).tolist() == [2, 2, 2]
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (6, 1, 8, 8) and labels.dtype == torch.long


def test_image_folder_train_val_test_folders_are_the_splits(tmp_path):
    root = tmp_path / "presplit"
    for split, n in [("train", 3), ("val", 2)]:
        for index, name in enumerate(["a", "b"]):
            for i in range(n):
                write_image(root / split / name / f"{i}.jpg", COLOURS[index], size=(20, 20), seed=i)
    data = ImageFolderDataModule(str(root), image_size=16, num_workers=0)
    data.setup()
    assert data.num_classes == 2
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 6, "val": 4, "test": 4}
    assert data.splits["test"].paths == data.splits["val"].paths  # no test/: val doubles as test
    write_image(root / "test" / "b" / "0.jpg", COLOURS[1], size=(20, 20))
    data = ImageFolderDataModule(str(root), image_size=16, num_workers=0)
    data.setup()
    assert len(data.splits["test"]) == 1 and data.splits["test"].labels.tolist() == [1]
    images, _ = next(iter(data.test_dataloader()))
    assert images.shape == (1, 3, 16, 16)


def test_image_folder_missing_empty_and_stray_class_folders(tmp_path):
    root = tmp_path / "images"
    tree = (
        re.escape(f"\nExpected layout:\n    {root}/\n        <class>/ ") + r" +\(one folder per class\), or\n"
    )
    tree += re.escape("            <image>.jpg\n")
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"{root} is incomplete:\n  - the folder does not exist") + tree
    ):
        ImageFolderDataModule(str(root))
    root.mkdir()
    with pytest.raises(ValueError, match=re.escape(f"malformed:\n  - no class folders in {root}") + tree):
        ImageFolderDataModule(str(root))
    (root / "empty_class").mkdir()
    with pytest.raises(ValueError, match="no images in class folder .*empty_class"):
        ImageFolderDataModule(str(root))
    write_image(root / "train" / "a" / "0.png", COLOURS[0], size=(8, 8))
    write_image(root / "val" / "zebra" / "0.png", COLOURS[0], size=(8, 8))
    with pytest.raises(ValueError, match=r"val/zebra is not a class of \['a'\]"):
        ImageFolderDataModule(str(root))


def test_bad_options_are_refused(tmp_path):
    root = write_flat_folder(tmp_path / "flat")
    with pytest.raises(ValueError, match="sum to less than 1"):
        ImageFolderDataModule(str(root), val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="labels_per_class must be at least 1"):
        ImageFolderDataModule(str(root), labels_per_class=0)


def test_layout_errors_share_one_hierarchy(tmp_path):
    with pytest.raises(DatasetNotFoundError) as missing:
        ImageFolderDataModule(str(tmp_path / "nowhere"))
    with pytest.raises(MalformedDatasetError) as malformed:
        ImageFolderDataModule(str(tmp_path))
    assert isinstance(missing.value, DatasetLayoutError) and isinstance(missing.value, FileNotFoundError)
    assert isinstance(malformed.value, DatasetLayoutError) and not isinstance(malformed.value, OSError)


def test_seeded_split_partitions_sorted_and_balances_the_training_rest():
    def seeded(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    labels = torch.arange(40) % 4
    train, val, test = seeded_split(40, (5, 7), seeded(3))
    assert (len(train), len(val), len(test)) == (28, 5, 7)
    assert sorted(torch.cat([train, val, test]).tolist()) == list(range(40))
    assert all(torch.equal(part, part.sort().values) for part in (train, val, test))
    small, same_val, _ = seeded_split(40, (5, 7), seeded(3), labels, labels_per_class=2)
    assert torch.equal(same_val, val) and set(small.tolist()) <= set(train.tolist())
    assert torch.bincount(labels[small]).tolist() == [2, 2, 2, 2]
    with pytest.raises(ValueError, match="leaves none for training"):
        seeded_split(10, (6, 4), seeded(0))


def test_a_folder_of_unlabelled_images_feeds_label_free_distillation(tmp_path):
    root = tmp_path / "photos"
    for i in range(10):
        write_image(
            root / ("day1" if i < 6 else "day2/more") / f"{i}.png", COLOURS[i % 3], size=(20, 20), seed=i
        )
    write_image(root / ".cache" / "thumb.png", COLOURS[0], size=(20, 20))  # hidden: not an image of the set
    flat = tmp_path / "flat"
    write_image(flat / "a.png", COLOURS[0], size=(20, 20))
    with pytest.raises(MalformedDatasetError, match="no class folders.*set labels: false"):
        ImageFolderDataModule(str(flat))  # images but no classes: the fix is named
    data = ImageFolderDataModule(
        str(root), image_size=8, val_fraction=0.2, test_fraction=0.1, labels=False, num_workers=0
    )
    assert data.num_classes is None
    data.setup()
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 7, "val": 2, "test": 1}
    batch = next(iter(data.val_dataloader()))
    assert isinstance(batch, torch.Tensor) and batch.shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="labels_per_class needs labels"):
        ImageFolderDataModule(str(root), labels=False, labels_per_class=2)


def test_resized_crop_is_what_the_recipes_ask_for(tiny_root):
    from torchvision.transforms import v2

    from repfusion_pl.data.labelled_images import image_transform

    steps = [type(t) for t in image_transform(64, augment=True, crop="resized").transforms]
    assert v2.RandomResizedCrop in steps and v2.RandomCrop not in steps and v2.Resize not in steps
    data = TinyImageNetDataModule(str(tiny_root), crop="resized", val_fraction=0.0, num_workers=0)
    data.setup()
    assert len(data.splits["val"]) == len(data.splits["test"]) == 6  # validation on the official val images
    assert next(iter(data.train_dataloader()))[0].shape[1:] == (3, 64, 64)
