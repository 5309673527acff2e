"""Reading published data set folders: layout checks with one clear error, image decoding, splits.

Every data module on disk uses these, so that all of them fail the same way: a missing or empty
folder is a `DatasetNotFoundError` (a `FileNotFoundError`), files that are there but wrong are a
`MalformedDatasetError` (a `ValueError`), and both show the expected layout as an indented tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode
from torchvision.transforms.v2 import functional as F

from repfusion_pl.data.digits import labels_per_class_subset


class DatasetLayoutError(Exception):
    """A data set folder that does not hold its published layout; the message shows that layout."""


class DatasetNotFoundError(DatasetLayoutError, FileNotFoundError):
    """A data set folder is missing, empty, or lacks a file or folder of the published layout."""


class MalformedDatasetError(DatasetLayoutError, ValueError):
    """A data set folder holds the files of the published layout, but what they say is wrong."""


class CorruptImageError(OSError, ValueError):
    """An image file of a data set cannot be decoded (an `OSError` reading it, a `ValueError` of data)."""


def layout_error(
    name: str, root: Path, problems: str | Sequence[str], layout: str, missing: bool = False
) -> DatasetLayoutError:
    """The error for a malformed (or, with ``missing``, incomplete) ``root``: what is wrong, then the layout.

    Args:
        name: Data set name, e.g. ``"WFLW"``.
        root: The folder that was given.
        problems: What is wrong, one line each.
        layout: The expected tree, one path per line, indented by depth, below ``<root>/``.
        missing: Files or folders are missing or empty: a `DatasetNotFoundError`, not a
            `MalformedDatasetError`.
    """
    listed = "\n".join(
        f"  - {problem}" for problem in ([problems] if isinstance(problems, str) else problems)
    )
    tree = "\n".join("    " + line for line in [f"{root}/", *layout.strip("\n").splitlines()])
    kind, state = (DatasetNotFoundError, "incomplete") if missing else (MalformedDatasetError, "malformed")
    return kind(f"{name} at {root} is {state}:\n{listed}\nExpected layout:\n{tree}")


def _is_empty(path: Path) -> bool:
    if path.is_dir():
        return next(path.iterdir(), None) is None
    return path.stat().st_size == 0


def check_layout(name: str, root: str | Path, required: Sequence[str], layout: str) -> Path:
    """Check that ``root`` holds every ``required`` entry, none of them empty; return it as a Path.

    Args:
        name: Data set name for the error.
        root: The data set folder.
        required: Paths relative to ``root``, folders ending in ``/``.
        layout: The expected tree for the error (see `layout_error`).

    Raises:
        DatasetNotFoundError: Listing every missing or empty entry at once.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise layout_error(name, root, "the folder does not exist", layout, missing=True)
    problems = []
    for entry in required:
        path = root / entry
        is_dir = entry.endswith("/")
        if not (path.is_dir() if is_dir else path.is_file()):
            problems.append(f"missing {'folder' if is_dir else 'file'} {path}")
        elif _is_empty(path):
            problems.append(f"empty {'folder' if is_dir else 'file'} {path}")
    if problems:
        raise layout_error(name, root, problems, layout, missing=True)
    return root


_PIL_MODES = {
    ImageReadMode.RGB: "RGB",
    ImageReadMode.GRAY: "L",
    ImageReadMode.RGB_ALPHA: "RGBA",
    ImageReadMode.GRAY_ALPHA: "LA",
}


def read_image(path: str | Path, mode: ImageReadMode = ImageReadMode.RGB) -> Tensor:
    """Decode an image file to a ``(C, H, W)`` uint8 tensor (``mode``: RGB, GRAY, or either with alpha).

    PIL decodes it, so every format of torchvision's ``IMG_EXTENSIONS`` (BMP, TIFF, PPM, ...) reads.

    Raises:
        CorruptImageError: Naming ``path`` when the file cannot be read or decoded.
    """
    pil_mode = _PIL_MODES[mode]
    try:
        with Image.open(path) as image:
            # convert() forces the full decode inside the try, so truncated files are caught here too.
            decoded = image.convert(pil_mode)
    except (OSError, ValueError) as err:
        raise CorruptImageError(f"cannot decode image {path}: {err}") from err
    return F.pil_to_tensor(decoded)


def check_fractions(
    val_fraction: float = 0.0, test_fraction: float = 0.0, labels_per_class: int | None = None
) -> None:
    """Reject held-out fractions that leave no training data, and a ``labels_per_class`` below 1."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1")
    if labels_per_class is not None and labels_per_class < 1:
        raise ValueError(f"labels_per_class must be at least 1 or None, got {labels_per_class}")


def seeded_split(
    count: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    labels: Tensor | None = None,
    labels_per_class: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sorted train, val and test indices of ``range(count)``, the held-out shares given as fractions.

    See `seeded_split_sizes`, which this calls with ``int(count * fraction)`` images held out each.
    """
    sizes = (int(count * val_fraction), int(count * test_fraction))
    return seeded_split_sizes(count, sizes, seed, labels, labels_per_class)


def seeded_split_sizes(
    count: int,
    held_out: tuple[int, int],
    seed: int,
    labels: Tensor | None = None,
    labels_per_class: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sorted train, val and test indices of ``range(count)`` from a seeded shuffle.

    Val is the first ``held_out[0]`` of the shuffle, test the next ``held_out[1]``, train the rest.
    With ``labels_per_class``, train is cut to that many images of each class of ``labels`` (the
    ``(count,)`` class labels), drawn with the same seeded generator; val and test are unchanged.

    Raises:
        ValueError: When nothing is left for training, or ``labels_per_class`` comes without ``labels``.
    """
    n_val, n_test = held_out
    if n_val + n_test >= count:
        raise ValueError(f"holding out {n_val + n_test} of {count} images leaves none for training")
    if labels_per_class is not None and labels is None:
        raise ValueError("labels_per_class needs the labels to balance")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(count, generator=generator)
    val, test, train = order[:n_val], order[n_val : n_val + n_test], order[n_val + n_test :]
    train = train.sort().values
    if labels is not None and labels_per_class is not None:
        train = train[labels_per_class_subset(labels[train], labels_per_class, generator)]
    return train, val.sort().values, test.sort().values
