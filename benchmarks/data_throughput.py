"""Data throughput: training images per second by each route, and read throughput of the target stores.

Images: the same JPEG files (10 classes) read by ImageFolderDataModule (the files), HFImageDataModule
(one parquet file of their bytes) and StreamingImageDataModule (an optimized LitData folder written
by `repfusion optimize`), through each module's training loader (resize, pad-crop and flip; batches
of 64) at 32 and 256 px with 0 and 2 workers. Images/s counts from the first batch to the last, so
worker start-up is left out; it is reported as the time to the first batch. Target: neither new
route more than 10 % slower than the image folder at 2 workers.

Targets: synthetic teacher targets (float16 maps, two views per image) in the teacher-target cache's
`.npy` store (memory-mapped shards, one row per image) and written as a LitData dataset (one item per
image view), each read in a shuffled order with 0 and 2 workers: targets/s, MB/s and size on disk.

Usage: ``python benchmarks/data_throughput.py [--images N] [--results-dir D]``; prints the tables and
writes data-throughput.{json,md}. ``--quick`` runs a tiny version (a test does) into
data-throughput-quick.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from repfusion_pl.data import HFImageDataModule, ImageFolderDataModule, StreamingImageDataModule
from repfusion_pl.data.optimize import START_METHOD, load_source, optimize_dataset
from repfusion_pl.data.target_store import TargetStore, write_manifest
from study.report import environment

ROOT = Path(__file__).resolve().parents[1]
ROUTES = ("image folder", "Hugging Face parquet", "LitData stream")


def make_images(folder: Path, count: int, size: int) -> None:
    """``count`` photo-like JPEGs (smooth colour fields with grain) in 10 class folders."""
    rng = np.random.default_rng(size)
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((size, size), 3)
        grain = rng.normal(0, 8, (size, size, 3))
        pixels = np.clip(np.asarray(coarse, dtype=np.float64) + grain, 0, 255).astype(np.uint8)
        (folder / f"class{i % 10}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"class{i % 10}" / f"{i:06d}.jpg", quality=90)


def write_parquet(folder: Path, path: Path) -> None:
    """The images' bytes and labels as one parquet file, as `datasets` writes it."""
    import datasets

    files = sorted(folder.rglob("*.jpg"))
    names = sorted({file.parent.name for file in files})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    rows = {
        "image": [{"bytes": file.read_bytes(), "path": file.name} for file in files],
        "label": [names.index(file.parent.name) for file in files],
    }
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))


def data_modules(work: Path, size: int, workers: int, batch: int) -> dict[str, Any]:
    """The three routes over the same images, with the same loader options."""
    common = dict(batch_size=batch, num_workers=workers, image_size=size)
    parquet, optimized = work / f"images-{size}.parquet", work / f"optimized-{size}"
    held = dict(val_fraction=0.0, test_fraction=0.0)
    return {
        "image folder": ImageFolderDataModule(str(work / f"images-{size}"), **held, **common),  # type: ignore[arg-type]
        "Hugging Face parquet": HFImageDataModule(
            str(parquet),
            cache_dir=str(work / "hf-cache"),
            **held,
            **common,  # type: ignore[arg-type]
        ),
        # The same folder as val_dir: training reads every image, as the other two do.
        "LitData stream": StreamingImageDataModule(str(optimized), val_dir=str(optimized), **common),  # type: ignore[arg-type]
    }


def timed_pass(loader: Any) -> dict[str, float]:
    """One pass over ``loader``: items/s after the first batch, and the seconds to that batch."""
    start, first, count, nbytes = time.perf_counter(), None, 0, 0
    for batch in loader:
        items = batch[0] if isinstance(batch, (list, tuple)) else batch
        if first is None:
            first = time.perf_counter()  # start-up (worker processes, first chunk) ends here
            continue
        count, nbytes = count + len(items), nbytes + items.element_size() * items.nelement()
    elapsed = time.perf_counter() - (first or start)
    return {
        "per_s": count / elapsed if count else 0.0,
        "mb_per_s": nbytes / 2**20 / elapsed if count else 0.0,
        "first_batch_s": (first or start) - start,
    }


def image_rows(work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for size in args.sizes:
        folder = work / f"images-{size}"
        make_images(folder, args.images, size)
        write_parquet(folder, work / f"images-{size}.parquet")
        optimize_dataset(load_source(str(folder), None, "image", "label"), work / f"optimized-{size}",
                         args.optimize_workers, "64MB", 0, "benchmark images")  # fmt: skip
        for workers in args.workers:
            for route, module in data_modules(work, size, workers, args.batch).items():
                module.setup("fit")
                torch.manual_seed(0)
                timing = timed_pass(module.train_dataloader(shard=False))
                rows.append({"route": route, "image_size": size, "workers": workers, **timing})
                print(f"{route:>22} {size:>4} px {workers} workers {timing['per_s']:9.1f} images/s")
    return rows


class NpyTargets(Dataset):
    """The `.npy` store's targets, one (image, view) per item, as the cache serves them."""

    def __init__(self, root: Path, images: int, views: int) -> None:
        self.root, self.images, self.views, self.store = root, images, views, None

    def __len__(self) -> int:
        return self.images * self.views

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.store is None:  # opened in each worker: memory maps do not travel to a process
            self.store = TargetStore.open(self.root)  # type: ignore[assignment]
        image, view = divmod(index, self.views)
        return torch.from_numpy(self.store.read("train", "feature", image, view))  # type: ignore[attr-defined]


class TargetItems:
    """Item ``i`` of the LitData copy: the `.npy` store's (image, view) ``i`` (picklable for optimize)."""

    def __init__(self, source: NpyTargets) -> None:
        self.source = source

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        return {"target": self.source[index].numpy()}


def write_stores(work: Path, images: int, views: int, shape: list[int]) -> tuple[Path, Path]:
    """The same random float16 targets as a `.npy` store and as an optimized LitData folder."""
    from litdata import optimize

    npy, lit, shard = work / "targets-npy", work / "targets-litdata", 1024
    manifest = {
        "complete": True, "shard_size": shard, "t_grid": [0],
        "splits": {"train": {"images": images, "views": views}},
        "targets": {"feature": {"shape": shape, "dtype": "float16"}},
    }  # fmt: skip
    write_manifest(npy, manifest)
    store, rng = TargetStore(npy, manifest), np.random.default_rng(0)
    for index in range(-(-images // shard)):
        rows = min(shard, images - index * shard)
        store.write(
            "train", index, {"feature": rng.standard_normal((rows, views, 1, *shape)).astype(np.float16)}
        )
    source = NpyTargets(npy, images, views)
    optimize(TargetItems(source), list(range(len(source))), output_dir=str(lit), chunk_bytes="64MB",
             num_workers=1, start_method=START_METHOD)  # fmt: skip
    return npy, lit


def folder_mb(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 2**20


def target_rows(work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    from litdata import StreamingDataLoader, StreamingDataset

    npy, lit = write_stores(work, args.images, 2, args.target_shape)
    rows = []
    for workers in args.workers:
        generator = torch.Generator().manual_seed(0)
        loaders = {
            ".npy target store": (npy, DataLoader(NpyTargets(npy, args.images, 2), batch_size=args.batch,
                                                 shuffle=True, num_workers=workers, generator=generator)),
            "LitData dataset": (lit, StreamingDataLoader(StreamingDataset(str(lit), shuffle=True),
                                                         batch_size=args.batch, num_workers=workers)),
        }  # fmt: skip
        for store, (folder, loader) in loaders.items():
            batches = (
                {"t": batch["target"]} if isinstance(batch, dict) else {"t": batch} for batch in loader
            )
            timing = timed_pass(batch["t"] for batch in batches)
            rows.append({"store": store, "workers": workers, "mb_on_disk": folder_mb(folder), **timing})
            speed = f"{timing['per_s']:9.1f} targets/s {timing['mb_per_s']:7.1f} MB/s"
            print(f"{store:>22} {workers} workers {speed}")
    return rows


def markdown(result: dict[str, Any]) -> str:
    """The two tables of the result, images/s against the image folder at the same size and workers."""
    base = {(r["image_size"], r["workers"]): r["per_s"] for r in result["images"] if r["route"] == ROUTES[0]}
    lines = [
        "# data-throughput", "",
        f"Training loader, batch {result['batch']}, {result['count']} JPEG images; images/s after the "
        "first batch.",
        "", "| route | image size | workers | images/s | vs image folder | first batch |",
        "|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for row in result["images"]:
        ratio = row["per_s"] / max(base[(row["image_size"], row["workers"])], 1e-9)
        lines.append(f"| {row['route']} | {row['image_size']} px | {row['workers']} | {row['per_s']:.1f} | "
                     f"{ratio:.2f} | {row['first_batch_s']:.2f} s |")  # fmt: skip
    shape = result["target_shape"]
    lines += ["", f"Teacher targets {shape} float16, 2 views per image, shuffled reads.", "",
              "| store | workers | targets/s | MB/s | size on disk |",
              "|---|---:|---:|---:|---:|"]  # fmt: skip
    for row in result["targets"]:
        lines.append(f"| {row['store']} | {row['workers']} | {row['per_s']:.1f} | {row['mb_per_s']:.1f} | "
                     f"{row['mb_on_disk']:.1f} MB |")  # fmt: skip
    where = result["environment"]
    lines += ["", f"{where['device']}, {where['threads']} threads, torch {where['torch']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2048, help="images per size (and target rows)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--target-shape", type=int, nargs="+", default=[64, 16, 16])
    parser.add_argument("--optimize-workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a tiny run of the same pipeline")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.quick:
        args.images, args.sizes, args.batch, args.target_shape, args.optimize_workers = (
            32,
            [16],
            8,
            [4, 4, 4],
            1,
        )
    result: dict[str, Any] = {"environment": environment(), "quick": args.quick, "batch": args.batch,
                              "count": args.images, "target_shape": args.target_shape}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        result["images"] = image_rows(Path(tmp), args)
        result["targets"] = target_rows(Path(tmp), args)
    name = "data-throughput" + ("-quick" if args.quick else "")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{name}.json").write_text(json.dumps(result, indent=2))
    (args.results_dir / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {args.results_dir / name}.{{json,md}}")


if __name__ == "__main__":
    main()
