"""``repfusion optimize``: an image folder or a Hugging Face dataset written as an optimized LitData dataset.

Each item is ``{"image": bytes, "label": int, "name": str}`` (no ``label`` for unlabelled images).
Images are stored as the encoded bytes they came in: a PNG stays the same PNG, a JPEG the same JPEG,
never re-encoded. Against uint8 arrays this keeps every pixel as it was (no second lossy encoding)
and keeps the chunks as small as the source (a 256 px JPEG is typically 10-30 kB, its array 192 kB:
what crosses the network and fills the cache when nodes stream from an object store); the price is
decoding in the loader's workers, as an image folder does. Items are written in a seeded random
order, so that a chunk mixes classes and a cut by chunks (the data module's ``val_fraction``) is a
random sample.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from repfusion_pl.data.files import CorruptImageError, open_image
from repfusion_pl.data.image_folder import read_split, read_unlabelled, split_folders
from repfusion_pl.data.labelled_images import Samples, class_folders
from repfusion_pl.data.stream_index import METADATA

#: How litdata starts its writers: fork where there is one (a spawned writer spends seconds importing
#: torch before its first image), spawn elsewhere.
START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def check_decodes(data: bytes, name: str) -> None:
    """Refuse bytes that do not decode as an image, naming where they came from."""
    open_image(io.BytesIO(data), "RGB", name)


class Items:
    """The items of one split, as litdata writes them: ``items(i)`` is item ``i`` (picklable)."""

    labelled: bool

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, index: int) -> tuple[bytes, str, int]:
        """Item ``index``'s encoded image, the name stored with it, and its label."""
        raise NotImplementedError

    def where(self, index: int) -> str:
        """Where item ``index`` comes from, for error messages."""
        raise NotImplementedError

    def check(self, index: int) -> str | None:
        """What is wrong with item ``index``'s image, or ``None``."""
        try:
            check_decodes(self.read(index)[0], self.where(index))
        except CorruptImageError as err:
            return str(err)
        return None

    def __call__(self, index: int) -> dict[str, Any]:
        data, name, label = self.read(index)
        return (
            {"image": data, "label": label, "name": name} if self.labelled else {"image": data, "name": name}
        )


class FolderItems(Items):
    """Image files: their bytes, label and path below the split's folder."""

    def __init__(self, samples: Samples, root: Path, labelled: bool) -> None:
        self.paths, self.labels = [path for path, _ in samples], [label for _, label in samples]
        self.root, self.labelled = root, labelled

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> tuple[bytes, str, int]:
        path = Path(self.paths[index])
        return path.read_bytes(), str(path.relative_to(self.root)), self.labels[index]

    def where(self, index: int) -> str:
        return self.paths[index]


class HFItems(Items):
    """Rows of a Hugging Face dataset split: its image column undecoded and its label column.

    A memory-mapped dataset pickles as its arrow files, so a writing process reopens it cheaply.
    """

    def __init__(self, rows: Any, where: str, image_column: str, label_column: str | None):
        from datasets import Image as ImageFeature

        columns = [image_column] if label_column is None else [image_column, label_column]
        # decode=False: the bytes as stored, not a PIL image to encode again.
        self.rows = rows.select_columns(columns).cast_column(image_column, ImageFeature(decode=False))
        self.place, self.image_column, self.label_column = where, image_column, label_column
        self.labelled = label_column is not None

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, index: int) -> tuple[bytes, str, int]:
        row = self.rows[index]
        cell = row[self.image_column]
        data = cell["bytes"] if cell.get("bytes") is not None else Path(cell["path"]).read_bytes()
        label = int(row[self.label_column]) if self.label_column is not None else -1
        return data, cell.get("path") or self.where(index), label

    def where(self, index: int) -> str:
        return f"row {index} of {self.place}"


_CHECKED: Items | None = None  # the items a checking process reads (set once per process)


def _hold(items: Items) -> None:
    global _CHECKED
    _CHECKED = items


def _problem(index: int) -> str | None:
    assert _CHECKED is not None
    return _CHECKED.check(index)


def check_all(items: Items, num_workers: int) -> None:
    """Decode every image once, in ``num_workers`` processes, before litdata starts writing.

    A litdata worker that raises leaves its helper processes behind; checking first names a corrupt
    image before anything is written, and the pool's processes all end with it.

    Raises:
        CorruptImageError: Naming the first image (in index order) that does not decode.
    """
    from tqdm import tqdm

    context = multiprocessing.get_context(START_METHOD)
    with context.Pool(max(1, num_workers), initializer=_hold, initargs=(items,)) as pool:
        problems = pool.imap(_problem, range(len(items)), chunksize=64)
        for problem in tqdm(problems, total=len(items), desc="checking images", leave=False):
            if problem is not None:
                raise CorruptImageError(problem)


@dataclass
class Source:
    """What to write: an item reader per split (``""``: the output folder itself) and the class names."""

    splits: dict[str, Items]
    classes: list[str] | None


def folder_source(root: Path) -> Source:
    """An image folder: class folders give labels (sorted names), else every image unlabelled."""
    folders = split_folders(root)
    classes = class_folders(folders["train"])
    splits: dict[str, Items] = {}
    for name, folder in folders.items():
        samples = (
            read_split(root, folder, classes, name == "train") if classes else read_unlabelled(root, folder)
        )
        splits[name if len(folders) > 1 else ""] = FolderItems(samples, folder, bool(classes))
    return Source(splits, classes or None)


def hf_source(path: str, split: str | None, image_column: str, label_column: str | None) -> Source:
    """A Hugging Face dataset (``save_to_disk`` folder, parquet, arrow, imagefolder, cached hub id)."""
    from repfusion_pl.data.hf_images import check_columns, class_names, column_labels
    from repfusion_pl.data.hf_sources import load_splits

    loaded = load_splits(path)
    names = [split] if split is not None else list(loaded)
    if split is not None and split not in loaded:
        raise ValueError(f"{path} has no split {split!r} (its splits: {list(loaded)})")
    classes = None
    for name in names:
        check_columns(loaded[name], f"split {name!r} of {path}", image_column, label_column)
    if label_column is not None:
        first = loaded[names[0]]
        classes = class_names(first, label_column, column_labels(first, label_column))
    splits: dict[str, Items] = {
        (name if len(names) > 1 else ""): HFItems(
            loaded[name], f"split {name!r} of {path}", image_column, label_column
        )
        for name in names
    }
    return Source(splits, classes)


def check_output(output: Path) -> None:
    """Refuse an output folder that holds anything (never mix two datasets' chunks)."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(
            f"the output folder {output} exists and is not empty; give a new folder (or delete this one)"
        )


def write_split(items: Items, output: Path, num_workers: int, chunk_bytes: str, seed: int) -> None:
    """One split through ``litdata.optimize``, in a seeded random order (litdata prints its progress)."""
    from litdata import optimize

    check_all(items, num_workers)
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    # keep_data_ordered: each worker writes a fixed slice of the order, so a rerun writes the same.
    optimize(
        items, order, output_dir=str(output), chunk_bytes=chunk_bytes, num_workers=num_workers,
        keep_data_ordered=True, reorder_files=False, start_method=START_METHOD,
    )  # fmt: skip


def remove_written(output: Path, existed: bool) -> None:
    """Remove what a failed run wrote: the folder it made, or the contents of the empty one it was given."""
    if not output.exists():
        return
    for path in list(output.iterdir()) if existed else [output]:  # checked empty before: all ours
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def optimize_dataset(
    source: Source, output: Path, num_workers: int, chunk_bytes: str, seed: int, described: str
) -> dict[str, int]:
    """Write every split of ``source`` under ``output``; on any failure remove what was written.

    Returns:
        Images written per split folder.
    """
    check_output(output)
    existed, written = output.exists(), dict[str, int]()
    try:
        for split, items in source.splits.items():
            folder = output / split if split else output
            write_split(items, folder, num_workers, chunk_bytes, seed)
            metadata = {"classes": source.classes, "images": len(items), "source": described, "seed": seed}
            (folder / METADATA).write_text(json.dumps({**metadata, "split": split or None}, indent=1))
            written[str(folder)] = len(items)
    except BaseException:
        remove_written(output, existed)
        raise
    return written


def load_source(source: str, split: str | None, image_column: str, label_column: str | None) -> Source:
    """What ``source`` holds: an image folder, or else a Hugging Face dataset (path or cached hub id).

    Args:
        source: The image folder or dataset.
        split: Only this split (``train``, ``val``, ...); ``None``: every split it has.
        image_column: A Hugging Face dataset's image column.
        label_column: Its label column; ``None`` for images alone.
    """
    from repfusion_pl.data.hf_sources import is_saved_dataset

    root = Path(source).expanduser()
    # One walk, stopping at the first data file (an image folder is walked once here, once to list it).
    data_files = root.is_dir() and any(p.suffix in (".parquet", ".arrow") for p in root.rglob("*"))
    if not root.is_dir() or is_saved_dataset(root) or data_files:
        return hf_source(source, split, image_column, label_column)
    found = folder_source(root)
    if split is None:
        return found
    if split not in found.splits:
        raise ValueError(
            f"{root} has no split folder {split!r} (its splits: {[s or '.' for s in found.splits]})"
        )
    return Source({"": found.splits[split]}, found.classes)
