"""A folder of teacher targets on disk: a manifest and memory-mapped ``.npy`` shards, written atomically.

Layout of a store folder::

    manifest.json                         what was cached: teacher, layers, grid, views, data, shapes
    <split>/<target>/<shard:05d>.npy       (images in the shard, views, grid points, *target shape)

Each shard holds ``shard_size`` images of one split (the last one fewer) for one target (a feature
pair's target, or the policy's ``head`` features). A shard is written to a temporary name and
renamed when complete, so a shard on disk is whole, and a build that stops resumes at the first
missing one. Reading memory-maps the shards: a data-loader worker reads only the rows of its
images.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"


class CacheError(ValueError):
    """A target store that cannot serve this run: missing, of another run, truncated or corrupt."""


def target_folder(name: str) -> str:
    """A target's folder name (``feature/up_blocks.1`` -> ``feature__up_blocks.1``)."""
    return name.replace("/", "__")


@dataclass(frozen=True)
class Shards:
    """How a split's images fall into shards."""

    images: int
    shard_size: int

    @property
    def count(self) -> int:
        return -(-self.images // self.shard_size)

    def rows(self, shard: int) -> range:
        """The image indices of one shard."""
        return range(shard * self.shard_size, min(self.images, (shard + 1) * self.shard_size))


class TargetStore:
    """Read and write the shards of one store folder.

    Args:
        root: The store folder.
        manifest: What the store holds (`read_manifest`, or a new build's).
    """

    def __init__(self, root: str | Path, manifest: dict[str, Any]) -> None:
        self.root, self.manifest = Path(root), manifest
        self._open: dict[Path, np.ndarray] = {}

    @classmethod
    def open(cls, root: str | Path) -> TargetStore:
        """The store in ``root``, refused when it has no manifest or was not finished."""
        manifest = read_manifest(root)
        if not manifest.get("complete"):
            raise CacheError(
                f"the teacher-target cache in {root} was not finished; run the command that built it again "
                f"(it resumes where it stopped): {manifest.get('command', 'repfusion cache ...')}"
            )
        return cls(root, manifest)

    def shards(self, split: str) -> Shards:
        return Shards(int(self.manifest["splits"][split]["images"]), int(self.manifest["shard_size"]))

    def shard_path(self, split: str, target: str, shard: int) -> Path:
        return self.root / split / target_folder(target) / f"{shard:05d}.npy"

    def shard_shape(self, split: str, target: str, shard: int) -> tuple[int, ...]:
        rows = len(self.shards(split).rows(shard))
        spec = self.manifest["targets"][target]
        views = int(self.manifest["splits"][split]["views"])
        return (rows, views, len(self.manifest["t_grid"]), *spec["shape"])

    def has_shard(self, split: str, shard: int) -> bool:
        """Whether every target of a shard is on disk, whole (its header and size as expected)."""
        try:
            for target in self.manifest["targets"]:
                self._checked(split, target, shard)
        except CacheError:
            return False
        return True

    def _checked(self, split: str, target: str, shard: int) -> np.ndarray:
        path = self.shard_path(split, target, shard)
        if path in self._open:
            return self._open[path]
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise CacheError(self._broken(path, str(err))) from err
        if array.shape != self.shard_shape(split, target, shard):
            raise CacheError(
                self._broken(path, f"shape {array.shape}, expected {self.shard_shape(split, target, shard)}")
            )
        self._open[path] = array
        return array

    def _broken(self, path: Path, why: str) -> str:
        return (
            f"teacher-target cache shard {path} is missing, truncated or corrupt ({why}); delete it and run "
            f"the command that built the cache again, which rebuilds only what is missing: "
            f"{self.manifest.get('command', 'repfusion cache ...')}"
        )

    def check(self, split: str) -> None:
        """Refuse a split with a missing or broken shard (before a run starts, not in its middle)."""
        for shard in range(self.shards(split).count):
            for target in self.manifest["targets"]:
                self._checked(split, target, shard)

    def read(self, split: str, target: str, index: int, view: int) -> np.ndarray:
        """``(grid points, *shape)`` targets of one image's view."""
        shard, row = divmod(index, int(self.manifest["shard_size"]))
        return np.array(self._checked(split, target, shard)[row, view])  # a copy: torch wants it writable

    def write(self, split: str, shard: int, arrays: dict[str, np.ndarray]) -> None:
        """Write one shard of every target: each to a temporary file, renamed once all are whole.

        Raises:
            CacheError: The disk filled up (the partial files are removed; the build resumes here).
        """
        written: list[tuple[Path, Path]] = []
        try:
            for target, array in arrays.items():
                path = self.shard_path(split, target, shard)
                path.parent.mkdir(parents=True, exist_ok=True)
                temporary = partial_path(path)
                np.save(temporary, array)
                written.append((temporary, path))
        except OSError as err:
            for target in arrays:  # every partial file of the shard, the one being written included
                partial_path(self.shard_path(split, target, shard)).unlink(missing_ok=True)
            if err.errno != errno.ENOSPC:
                raise
            need = sum(a.nbytes for a in arrays.values()) / 2**20
            free = shutil.disk_usage(self.root).free / 2**20
            raise CacheError(
                f"the disk under {self.root} filled up while writing {split} shard {shard} (it needs about "
                f"{need:.0f} MB, {free:.0f} MB are free); the partial shard was removed. Free some space and "
                f"run the same command again: it resumes at this shard"
            ) from err
        for temporary, path in written:
            os.replace(temporary, path)


def partial_path(path: Path) -> Path:
    """Where a shard file is written before it is whole (then renamed to ``path``)."""
    return path.with_name(path.stem + ".partial.npy")


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of a store folder, or one error naming the folder and how to make the cache."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise CacheError(
            f"no teacher-target cache in {root} (no {MANIFEST}); build it with `repfusion cache --config "
            "<your distillation config> --cache.dir <this folder> --cache.t_grid [...]`"
        )
    return json.loads(path.read_text())


def write_manifest(root: str | Path, manifest: dict[str, Any]) -> None:
    """Write (or replace) the manifest atomically."""
    path = Path(root) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".partial")
    temporary.write_text(json.dumps(manifest, indent=1))
    os.replace(temporary, path)


def differences(expected: dict[str, Any], found: dict[str, Any], prefix: str = "") -> list[str]:
    """Where two nested records differ, as ``key: cache has X, this run has Y`` lines."""
    lines = []
    for key in sorted(set(expected) | set(found)):
        mine, theirs = expected.get(key), found.get(key)
        name = f"{prefix}{key}"
        if isinstance(mine, dict) and isinstance(theirs, dict):
            lines += differences(mine, theirs, f"{name}.")
        elif mine != theirs:
            lines.append(f"{name}: cache has {theirs!r}, this run has {mine!r}")
    return lines
