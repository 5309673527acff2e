"""``repfusion optimize SOURCE OUTPUT``: write an optimized LitData dataset for `StreamingImageDataModule`."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from jsonargparse import ActionConfigFile, ArgumentParser

from repfusion_pl.data.files import DatasetLayoutError

OPTIMIZE_HELP = (
    "Write an image folder (class folders give labels; train/ and val/ folders become OUTPUT/train and "
    "OUTPUT/val) or a Hugging Face dataset (save_to_disk folder, parquet, arrow, a hub id in the local "
    "cache; each split to OUTPUT/<split>) as an optimized LitData dataset: chunks of the images' encoded "
    "bytes and labels, for StreamingImageDataModule. OUTPUT must be a new or empty local folder; copy it "
    "to an object store afterwards to stream it from there."
)


def optimize_parser() -> ArgumentParser:
    """The arguments of ``repfusion optimize``."""
    parser = ArgumentParser(prog="repfusion optimize", description=OPTIMIZE_HELP)
    parser.add_argument("--config", action=ActionConfigFile, help="these options from a YAML file")
    parser.add_argument("source", type=str, help="an image folder, or a Hugging Face dataset path or hub id")
    parser.add_argument("output", type=str, help="the folder to write (new or empty)")
    parser.add_argument("--num_workers", type=int, default=4, help="processes writing chunks")
    parser.add_argument("--chunk_bytes", type=str, default="64MB", help="the size of each chunk file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the order the images are written in")
    parser.add_argument("--split", type=str | None, default=None, help="only this split (default: all)")
    parser.add_argument("--image_column", type=str, default="image", help="a Hugging Face dataset's images")
    parser.add_argument(
        "--label_column", type=str | None, default="label", help="its labels; null for images alone"
    )
    return parser


def optimize_command(args: Sequence[str]) -> None:
    """``repfusion optimize SOURCE OUTPUT [--num_workers N] [--chunk_bytes 64MB] ...``."""
    parsed = optimize_parser().parse_args(list(args))
    from repfusion_pl.data.optimize import load_source, optimize_dataset
    from repfusion_pl.data.stream_index import is_url

    if is_url(parsed.output):
        fail(f"write {parsed.output} locally first, then copy the folder to the object store")
    output = Path(parsed.output).expanduser()
    try:
        source = load_source(parsed.source, parsed.split, parsed.image_column, parsed.label_column)
        written = optimize_dataset(
            source, output, parsed.num_workers, parsed.chunk_bytes, parsed.seed, parsed.source
        )
    except (DatasetLayoutError, FileExistsError, FileNotFoundError, ValueError, ImportError) as err:
        fail(str(err))
    for folder, images in written.items():
        print(f"wrote {images} images to {folder}")
    print(f"train from it with\n  {data_yaml(list(written), bool(source.classes))}")


def data_yaml(folders: list[str], labelled: bool) -> str:
    """The ``data:`` entry of a config that streams the written folders."""
    names = {Path(folder).name: folder for folder in folders}
    train = names.get("train", folders[0])
    val = next((names[name] for name in ("val", "validation", "valid") if name in names), None)
    init = (
        f"input_dir: {train}" + (f", val_dir: {val}" if val else "") + ("" if labelled else ", labels: false")
    )
    return f"data: {{class_path: repfusion_pl.data.StreamingImageDataModule, init_args: {{{init}}}}}"


def fail(message: str) -> NoReturn:
    """Print ``message`` as the command's error and exit with status 2 (no traceback)."""
    print(f"repfusion optimize: {message}", file=sys.stderr)
    raise SystemExit(2)
