"""Write the Fashion-MNIST subset the package ships (src/repfusion_pl/data/fashion_subset/).

700 training and 100 test images per class, drawn with a seeded generator from the full IDX files
(the Debian/Ubuntu package dataset-fashion-mnist, or --root), written as the same four gzipped IDX
files, so `FashionMNISTDataModule(root="embedded")` reads them with the full set's own reader.
Fashion-MNIST is (c) Zalando SE, MIT licence (the subset folder's README.md).

    python benchmarks/make_fashion_subset.py [--root DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np

from repfusion_pl.data.fashion_mnist import EMBEDDED_ROOT, IDX_FILES, default_root, load_fashion_mnist

PER_CLASS = {"train": 700, "test": 100}
SEED = 0


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices of each class, drawn without replacement, in file order."""
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def write_idx(path: Path, array: np.ndarray) -> None:
    """``array`` (uint8) as a gzipped IDX file; a fixed mtime keeps the bytes reproducible."""
    magic = 2051 if array.ndim == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(int(side).to_bytes(4, "big") for side in array.shape)
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as stream:
        stream.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=default_root(), help="the full set's IDX files")
    parser.add_argument("--out", type=Path, default=EMBEDDED_ROOT)
    args = parser.parse_args()
    rng = np.random.default_rng(SEED)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, (image_stem, label_stem) in IDX_FILES.items():
        images, labels = (t.numpy() for t in load_fashion_mnist(args.root, split))
        keep = balanced_indices(labels, PER_CLASS[split], rng)
        write_idx(args.out / f"{image_stem}.gz", images[keep, 0])
        write_idx(args.out / f"{label_stem}.gz", labels[keep].astype(np.uint8))
        print(f"{split}: {len(keep)} images -> {args.out}")


if __name__ == "__main__":
    main()
