"""Reading a Hugging Face ``datasets`` dataset from disk only: a hub id from the local cache, or a path.

Nothing here downloads: a hub id is read from the snapshot that ``hf download --repo-type dataset ID``
left in the Hugging Face cache, and a path is an ``imagefolder`` (or any folder of data files that
``datasets.load_dataset`` reads), parquet file(s), or a folder written by ``save_to_disk``. Each
problem is one `ValueError` or `FileNotFoundError` whose message says the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # datasets is an optional dependency (the `data` extra): imported when used
    from datasets import Dataset, DatasetDict

#: Characters that make a path a glob of data files (``data/train-*.parquet``).
GLOB = set("*?[")


def require_datasets() -> Any:
    """The ``datasets`` module, or an `ImportError` with the install command."""
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            "reading Hugging Face datasets needs the `datasets` library: pip install 'repfusion-pl[data]'"
        ) from err
    return datasets


def is_saved_dataset(folder: Path) -> bool:
    """Whether ``folder`` was written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "dataset_info.json").is_file() and (folder / "state.json").is_file()
    )


def hub_snapshot(repo_id: str, revision: str | None) -> Path:
    """The local snapshot of a hub dataset, from the Hugging Face cache only (never a download).

    Raises:
        FileNotFoundError: The dataset is not in the cache, with the command that fetches it.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, local_files_only=True))
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"data path {repo_id!r} is neither a local path (no file or folder "
            f"{Path(repo_id).expanduser().resolve()}) nor a dataset in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}; this package never downloads). Fetch it once on a machine with "
            f"network: `hf download --repo-type dataset {repo_id}`, then copy the cache here (or set "
            "HF_HUB_CACHE), or point `path` at a local imagefolder, parquet file or save_to_disk folder."
        ) from None


def as_dict(loaded: Dataset | DatasetDict) -> DatasetDict:
    """A `DatasetDict`: a single saved `Dataset` becomes its ``train`` split."""
    datasets = require_datasets()
    return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict(train=loaded)


def load_splits(
    path: str, subset: str | None = None, revision: str | None = None, cache_dir: str | None = None
) -> DatasetDict:
    """Every split of the dataset at ``path`` (a local path, a glob of parquet files, or a cached hub id).

    Args:
        path: A ``save_to_disk`` folder, a folder ``load_dataset`` reads (``imagefolder``, parquet, ...),
            parquet file(s) (a glob too), or a hub id in the local Hugging Face cache.
        subset: The dataset's configuration (``load_dataset``'s ``name``), for datasets that have several.
        revision: A hub dataset's branch, tag or commit (as fetched).
        cache_dir: Where ``datasets`` keeps the arrow files it prepares from parquet and image files.

    Raises:
        FileNotFoundError: Nothing at ``path`` and no such hub id in the cache (with the fetch command).
        ValueError: Files at ``path`` that ``datasets`` cannot read as a dataset.
    """
    datasets = require_datasets()
    local = Path(path).expanduser()
    if not (local.exists() or GLOB & set(path)):
        if path.startswith((".", "/", "~")) or path.count("/") > 1:
            raise FileNotFoundError(
                f"data path {path!r} does not exist (no file or folder {local.resolve()})"
            )
        local = hub_snapshot(path, revision)
    try:
        if local.is_dir() and is_saved_dataset(local):
            return as_dict(datasets.load_from_disk(str(local)))
        if local.suffix == ".arrow":  # one arrow file, as `save_to_disk` shards or the cache hold them
            return as_dict(datasets.Dataset.from_file(str(local)))
        if local.is_file() or GLOB & set(path):
            return datasets.load_dataset("parquet", data_files=str(local), cache_dir=cache_dir)
        return datasets.load_dataset(str(local), name=subset, cache_dir=cache_dir)
    except FileNotFoundError as err:  # a folder without data files, a glob that matches nothing
        raise FileNotFoundError(f"no dataset at {path!r}: {err}") from None
    except (datasets.exceptions.DatasetBuildError, ValueError) as err:
        raise ValueError(f"cannot read {path!r} as a Hugging Face dataset: {err}") from None
