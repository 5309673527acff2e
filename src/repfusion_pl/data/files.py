"""Reading published data set folders: one layout error for every data set, and image decoding.

Every data module on disk fails the same way: a missing or empty folder is a `DatasetNotFoundError`
(a `FileNotFoundError`), files that are there but wrong are a `MalformedDatasetError` (a
`ValueError`), and both show the expected layout as an indented tree. Each data set module states its
layout once, as a `DatasetLayout`, and raises only through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode
from torchvision.transforms.v2 import functional as F


class DatasetLayoutError(Exception):
    """A data set folder that does not hold its published layout; the message shows that layout."""


class DatasetNotFoundError(DatasetLayoutError, FileNotFoundError):
    """A data set folder is missing, empty, or lacks a file or folder of the published layout."""


class MalformedDatasetError(DatasetLayoutError, ValueError):
    """A data set folder holds the files of the published layout, but what they say is wrong."""


class CorruptImageError(OSError, ValueError):
    """An image file of a data set cannot be decoded (an `OSError` reading it, a `ValueError` of data)."""


def _is_empty(path: Path) -> bool:
    if path.is_dir():
        return next(path.iterdir(), None) is None
    return path.stat().st_size == 0


@dataclass(frozen=True)
class DatasetLayout:
    """A data set's published folder layout, which every error about its folder shows.

    Attributes:
        name: Data set name, e.g. ``"WFLW"``.
        tree: The expected tree below ``<root>/``, one path per line, indented by depth.
    """

    name: str
    tree: str

    def error(self, root: Path, problems: str | Sequence[str], missing: bool = False) -> DatasetLayoutError:
        """The error for a malformed (with ``missing``, incomplete) ``root``: what is wrong, then the tree.

        Args:
            root: The folder that was given.
            problems: What is wrong, one line each.
            missing: Files or folders are missing or empty: a `DatasetNotFoundError`, not a
                `MalformedDatasetError`.
        """
        listed = "\n".join(
            f"  - {problem}" for problem in ([problems] if isinstance(problems, str) else problems)
        )
        tree = "\n".join("    " + line for line in [f"{root}/", *self.tree.strip("\n").splitlines()])
        kind: type[DatasetLayoutError] = DatasetNotFoundError if missing else MalformedDatasetError
        state = "incomplete" if missing else "malformed"
        return kind(f"{self.name} at {root} is {state}:\n{listed}\nExpected layout:\n{tree}")

    def check(self, root: str | Path, required: Sequence[str] = ()) -> Path:
        """Check that ``root`` holds every ``required`` entry, none of them empty; return it as a Path.

        Args:
            root: The data set folder.
            required: Paths relative to ``root``, folders ending in ``/``.

        Raises:
            DatasetNotFoundError: Listing every missing or empty entry at once.
        """
        root = Path(root).expanduser()
        if not root.is_dir():
            raise self.error(root, "the folder does not exist", missing=True)
        problems = []
        for entry in required:
            path = root / entry
            is_dir = entry.endswith("/")
            if not (path.is_dir() if is_dir else path.is_file()):
                problems.append(f"missing {'folder' if is_dir else 'file'} {path}")
            elif _is_empty(path):
                problems.append(f"empty {'folder' if is_dir else 'file'} {path}")
        if problems:
            raise self.error(root, problems, missing=True)
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
    return F.pil_to_tensor(open_image(path, _PIL_MODES[mode], str(path)))


def open_image(source: str | Path | IO[bytes], pil_mode: str, name: str) -> Image.Image:
    """A file or file object decoded in full as a PIL image of ``pil_mode`` (``RGB``, ``L``, ...).

    Raises:
        CorruptImageError: Naming the image (``name``) when it cannot be read or decoded.
    """
    try:
        with Image.open(source) as image:
            # convert() forces the full decode inside the try, so truncated files are caught here too.
            return image.convert(pil_mode)
    except (OSError, ValueError) as err:
        raise CorruptImageError(f"cannot decode image {name}: {err}") from err
