"""The output folder of ``repfusion embed``: chunks written as they finish, one array at the end.

While it runs, the folder holds ``embed.json`` (what is being embedded: the weights' hash, taps,
image size, source, and a hash of the ordered file list) and ``chunks/`` (the full file list and one
``.npz`` per finished chunk, each written atomically). A finished chunk file is the progress record:
a rerun skips the chunks that exist and redoes at most the one it was writing when stopped. When
every chunk is there they are assembled into

* ``embeddings.npy``: float32 ``(N, D)``, row ``i`` the pooled features of ``index.csv`` row ``i``;
* ``index.csv``: ``row,file`` (and ``label`` when the data has class labels);
* ``skipped.txt``: ``file<TAB>reason`` per image that could not be decoded (empty when none);

``embed.json`` then says ``complete`` and ``chunks/`` is removed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from repfusion_pl.checkpoints import atomic_write_bytes

RECORD = "embed.json"
CHUNKS = "chunks"
FILES = "files.txt"


class EmbedError(ValueError):
    """An embedding run that cannot start or finish; the message says why and what to do."""


def names_digest(names: list[str]) -> str:
    """A hash of the ordered item names: another listing of the folder changes it."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def file_digest(path: str | Path) -> str:
    """The sha256 of a file (the weights), read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class EmbeddingStore:
    """The output folder of one embedding run, new or resumed.

    Args:
        folder: The output folder (created; an existing one must hold this same run).
        names: Every item's name (its path below the image folder), in embedding order.
        settings: What makes the numbers (weights hash, taps, image size, source, ...): a rerun must
            match them.
        chunk_size: Items per chunk file.

    Raises:
        EmbedError: The folder holds something else, another run's settings, or a run over another
            file list (with what changed).
    """

    def __init__(
        self, folder: str | Path, names: list[str], settings: dict[str, Any], chunk_size: int
    ) -> None:
        if chunk_size < 1:
            raise EmbedError(f"--chunk_size must be at least 1, got {chunk_size}")
        self.folder, self.names = Path(folder), names
        self.settings = {**settings, "chunk_size": chunk_size}
        self.chunk_size = chunk_size
        self.record = self._open()

    @property
    def complete(self) -> bool:
        """Whether this run has already finished (its arrays are in the folder)."""
        return self.record.get("state") == "complete"

    def _open(self) -> dict[str, Any]:
        path = self.folder / RECORD
        if not path.is_file():
            if self.folder.exists() and any(self.folder.iterdir()):
                raise EmbedError(
                    f"{self.folder} exists and holds other files (no {RECORD}); give a new or empty "
                    "output folder"
                )
            return self._start()
        record = json.loads(path.read_text())
        if record.get("files_sha256") != names_digest(self.names):
            raise EmbedError(self._changed_files(record))
        changed = [
            f"{key} {record['settings'].get(key)!r} -> {value!r}"
            for key, value in self.settings.items()
            if record["settings"].get(key) != value
        ]
        if changed:
            raise EmbedError(
                f"{self.folder} holds embeddings made with other settings ({'; '.join(changed)}); rerun with "
                "the same ones to continue, or give a new output folder"
            )
        return record

    def _start(self) -> dict[str, Any]:
        (self.folder / CHUNKS).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.folder / CHUNKS / FILES, "\n".join(self.names).encode())
        record = {
            "state": "running",
            "files": len(self.names),
            "files_sha256": names_digest(self.names),
            "settings": self.settings,
        }
        self._write_record(record)
        return record

    def _write_record(self, record: dict[str, Any]) -> None:
        atomic_write_bytes(self.folder / RECORD, json.dumps(record, indent=1).encode())

    def _recorded_names(self) -> list[str]:
        listing = self.folder / CHUNKS / FILES
        if listing.is_file():
            return listing.read_text().splitlines() if listing.stat().st_size else []
        if not (self.folder / "index.csv").is_file():
            return []
        # A finished run: its embedded and skipped files together are the list it was given.
        with (self.folder / "index.csv").open(newline="") as handle:
            names = [row["file"] for row in csv.DictReader(handle)]
        skipped = (self.folder / "skipped.txt").read_text().splitlines()
        return names + [line.split("\t", 1)[0] for line in skipped]

    def _changed_files(self, record: dict[str, Any]) -> str:
        before, now = set(self._recorded_names()), set(self.names)
        added, removed = sorted(now - before), sorted(before - now)
        parts = [f"{len(added)} added (first: {added[0]})" if added else ""]
        parts.append(f"{len(removed)} removed (first: {removed[0]})" if removed else "")
        what = ", ".join(p for p in parts if p) or "the same files in another order"
        return (
            f"the images changed since the embedding in {self.folder} began ({record.get('files')} files "
            f"then, {len(self.names)} now: {what}); give a new output folder, or delete {self.folder} to "
            "start over"
        )

    # Chunks ---------------------------------------------------------------------------------------

    def chunk_ranges(self) -> list[range]:
        """The item indices of every chunk, in order."""
        size, total = self.chunk_size, len(self.names)
        return [range(start, min(start + size, total)) for start in range(0, total, size)]

    def chunk_path(self, chunk: int) -> Path:
        """The file of chunk ``chunk``."""
        return self.folder / CHUNKS / f"{chunk:06d}.npz"

    def pending(self) -> list[int]:
        """The chunks not written yet."""
        return [k for k in range(len(self.chunk_ranges())) if not self.chunk_path(k).is_file()]

    def write_chunk(
        self, chunk: int, rows: list[int], features: np.ndarray, skipped: list[tuple[int, str]]
    ) -> None:
        """Record one finished chunk atomically: its embedded rows and features, and its skipped rows."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            rows=np.asarray(rows, dtype=np.int64),
            features=np.asarray(features, dtype=np.float32),
            skipped_rows=np.asarray([row for row, _ in skipped], dtype=np.int64),
            skipped_reasons=np.asarray([reason for _, reason in skipped], dtype=np.str_),
        )
        atomic_write_bytes(self.chunk_path(chunk), buffer.getvalue())

    def _read_chunk(self, chunk: int, *keys: str) -> dict[str, np.ndarray]:
        # An .npz reads each array on access: the features stay on disk until they are copied out.
        with np.load(self.chunk_path(chunk), allow_pickle=False) as data:
            return {key: data[key] for key in keys}

    # The end --------------------------------------------------------------------------------------

    def finish(self, labels: list[int] | None = None) -> dict[str, Any]:
        """Assemble the chunks into ``embeddings.npy``, ``index.csv`` and ``skipped.txt``; mark complete.

        Args:
            labels: Each item's class label (by item index), for an ``index.csv`` label column.

        Returns:
            The final record (``embed.json``): the settings, counts and the feature width ``dim``.

        Raises:
            EmbedError: A chunk is missing, or no image at all could be read.
        """
        if missing := self.pending():
            raise EmbedError(f"{len(missing)} chunks of {self.folder} are not written yet")
        chunks = [
            self._read_chunk(k, "rows", "skipped_rows", "skipped_reasons")
            for k in range(len(self.chunk_ranges()))
        ]
        rows = [int(row) for chunk in chunks for row in chunk["rows"]]
        skipped = [
            (int(row), str(reason))
            for chunk in chunks
            for row, reason in zip(chunk["skipped_rows"], chunk["skipped_reasons"], strict=True)
        ]
        if not rows:
            first = f" (first: {self.names[skipped[0][0]]}: {skipped[0][1]})" if skipped else ""
            raise EmbedError(f"none of the {len(self.names)} images could be read{first}")
        first_full = next(k for k, chunk in enumerate(chunks) if len(chunk["rows"]))
        width = self._read_chunk(first_full, "features")["features"].shape[1]
        self._write_array(len(rows), width)
        self._write_index(rows, labels)
        lines = "".join(f"{self.names[row]}\t{reason}\n" for row, reason in skipped)
        atomic_write_bytes(self.folder / "skipped.txt", lines.encode())
        counts = {"embedded": len(rows), "skipped": len(skipped), "dim": width}
        record = {**self.record, "state": "complete", **counts}
        self._write_record(record)
        shutil.rmtree(self.folder / CHUNKS)
        self.record = record
        return record

    def _write_array(self, count: int, width: int) -> None:
        staged = self.folder / ".embeddings.npy.tmp"
        # Written through a memory map, chunk by chunk: the whole array never has to fit in memory.
        array = np.lib.format.open_memmap(staged, mode="w+", dtype=np.float32, shape=(count, width))
        start = 0
        for chunk in range(len(self.chunk_ranges())):
            features = self._read_chunk(chunk, "features")["features"].reshape(-1, width)
            array[start : start + len(features)] = features
            start += len(features)
        array.flush()
        del array
        staged.replace(self.folder / "embeddings.npy")

    def _write_index(self, rows: list[int], labels: list[int] | None) -> None:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["row", "file", *(["label"] if labels is not None else [])])
        for position, row in enumerate(rows):
            writer.writerow([position, self.names[row], *([labels[row]] if labels is not None else [])])
        atomic_write_bytes(self.folder / "index.csv", text.getvalue().encode())
