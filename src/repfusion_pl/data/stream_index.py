"""The index of an optimized LitData dataset: reading it (local or remote), checking it, cutting it.

An optimized folder holds ``index.json`` (written last, naming every chunk with its item count and
size) and the chunk files; ``repfusion optimize`` adds ``repfusion.json`` with the class names.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from repfusion_pl.checkpoints import CheckpointError
from repfusion_pl.data.files import DatasetLayout
from repfusion_pl.data.splits import held_out_counts

LAYOUT = DatasetLayout(
    "Optimized LitData dataset",
    """\
    index.json               (written last, when every chunk is whole)
    chunk-<worker>-<n>.bin   (every chunk index.json names)
    repfusion.json           (optional: class names, written by repfusion optimize)
""",
)
#: The sidecar ``repfusion optimize`` writes next to ``index.json``: class names and provenance.
METADATA = "repfusion.json"
#: A chunk list and its cut: ``(chunk file names, (first, end) item range in each)``.
Cut = tuple[list[str], list[tuple[int, int]]]


class StreamChangedError(CheckpointError):
    """A checkpoint's training stream is not the stream this run reads (other data, or another cut)."""


def is_url(path: str) -> bool:
    """Whether ``path`` names an object store (``s3://``, ``gs://``, ...) rather than a local folder."""
    return "://" in path


def optimize_hint(root: str) -> str:
    """The command that writes an optimized dataset into ``root``."""
    return f"write it with `repfusion optimize <image folder or Hugging Face dataset> {root}`"


def read_local_index(root: Path) -> dict[str, Any]:
    """The index of a local optimized folder, refused when it was not optimized or lost chunks.

    Raises:
        DatasetNotFoundError: No folder, no ``index.json`` (never optimized, or stopped before the end)
            or missing or truncated chunks; each named, with the command that writes the dataset.
    """
    if not root.is_dir():
        raise LAYOUT.error(root, ["the folder does not exist", optimize_hint(str(root))], missing=True)
    if not (root / "index.json").is_file():
        shards = sorted(path.name for path in root.glob("*index.json"))
        why = f"worker index shards {shards} only: optimize stopped early" if shards else "not optimized"
        problems = [f"no index.json ({why})", optimize_hint(str(root))]
        raise LAYOUT.error(root, problems, missing=True)
    index = json.loads((root / "index.json").read_text())
    broken = []
    for chunk in index["chunks"]:
        path = root / chunk["filename"]
        if not path.is_file():
            broken.append(f"missing chunk {path}")
        elif path.stat().st_size != chunk["chunk_bytes"]:
            broken.append(f"truncated chunk {path} ({path.stat().st_size} of {chunk['chunk_bytes']} bytes)")
    if broken:
        raise LAYOUT.error(root, [*broken, f"copy the folder again, or {optimize_hint(str(root))}"], True)
    return index


def read_index(input_dir: str, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(index.json, repfusion.json or {})`` of a local folder or URL (a URL's are fetched to the cache).

    Raises:
        DatasetNotFoundError: When the folder or URL holds no complete optimized dataset.
    """
    if not is_url(input_dir):
        root = Path(input_dir).expanduser()
        sidecar = root / METADATA
        return read_local_index(root), json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    from litdata import StreamingDataset
    from litdata.streaming.downloader import get_downloader
    from litdata.utilities.dataset_utilities import load_index_file

    try:  # litdata fetches index.json into its cache
        cached = StreamingDataset(input_dir, **options).input_dir.path
        index = load_index_file(cached)
    except Exception as err:  # the object store's own error type varies with the store
        raise LAYOUT.error(Path(input_dir), [f"cannot read {input_dir}/index.json: {err}"], True) from err
    sidecar = Path(cached) / METADATA
    try:
        get_downloader(input_dir, cached, [], options.get("storage_options")).download_file(
            f"{input_dir}/{METADATA}", str(sidecar)
        )
    except Exception:  # noqa: BLE001 - optional: a dataset optimized elsewhere has none
        return index, {}
    return index, json.loads(sidecar.read_text())


def item_fields(index: dict[str, Any]) -> list[str]:
    """The field names of the dataset's items."""
    config = index.get("config", {})
    if isinstance(config.get("types"), dict):
        return list(config["types"])
    spec = json.loads(config.get("data_spec") or "[0, {}]")[1]
    return list(json.loads(spec.get("context") or "[]"))


def seeded_cut(index: dict[str, Any], fraction: float, seed: int) -> tuple[Cut, Cut]:
    """``(train, val)``: val is the first ``fraction`` of the items when chunks are taken in a seeded order.

    The cut is by chunks (and a range of one of them), so each split reads only its own chunks. It is a
    random sample when the items were shuffled before optimizing, as ``repfusion optimize`` does.
    """
    sizes = [int(chunk["chunk_size"]) for chunk in index["chunks"]]
    names = [chunk["filename"] for chunk in index["chunks"]]
    left, _ = held_out_counts(sum(sizes), fraction)
    val: Cut = ([], [])
    kept: dict[int, tuple[int, int]] = {}
    for position in torch.randperm(len(sizes), generator=torch.Generator().manual_seed(seed)).tolist():
        take = min(left, sizes[position])
        if take:
            val[0].append(names[position])
            val[1].append((0, take))
        if take < sizes[position]:
            kept[position] = (take, sizes[position])
        left -= take
    train: Cut = ([names[i] for i in sorted(kept)], [kept[i] for i in sorted(kept)])
    return train, val


def item_count(cut: Cut) -> int:
    """How many items a cut holds."""
    return sum(end - start for start, end in cut[1])


def whole(index: dict[str, Any]) -> Cut:
    """Every item of every chunk."""
    chunks = index["chunks"]
    return [chunk["filename"] for chunk in chunks], [(0, int(chunk["chunk_size"])) for chunk in chunks]


def stream_fingerprint(index: dict[str, Any], cut: Cut) -> dict[str, Any]:
    """What a training stream reads: its item count, and a hash of its chunks (names, sizes) and cut."""
    sizes = {chunk["filename"]: [chunk["chunk_size"], chunk["chunk_bytes"]] for chunk in index["chunks"]}
    read = [[name, *sizes[name], *span] for name, span in zip(*cut, strict=True)]
    digest = hashlib.sha256(json.dumps([read, index.get("config")], sort_keys=True).encode()).hexdigest()
    return {"images": item_count(cut), "chunks_sha256": digest}


def check_same_stream(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint over another training stream than it was trained on.

    Raises:
        StreamChangedError: Naming each difference between the two `stream_fingerprint` records.
    """
    wrong = [
        f"  - {key}: the checkpoint's {saved.get(key)!r}, this run's {current.get(key)!r}"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]
    if wrong:
        raise StreamChangedError(
            "the checkpoint was trained on another stream than this run reads:\n" + "\n".join(wrong) + "\n"
            "Resume over the data it was trained on (the same optimized folders, val_fraction and seed), "
            "or start a new run without --ckpt_path"
        )
