"""``repfusion embed``: a distilled student over a folder of images (or a data module's split) -> embeddings.

The student is rebuilt from what its weights record (a distillation ``.ckpt`` or a ``repfusion export``
``.safetensors``, read by `repfusion_pl.students.resolve_backbone` and loaded strictly), runs in eval
mode on the chosen accelerator, and each image's features at the student's taps are average-pooled
(taps side by side). The output folder (`repfusion_pl.cli.embed_store`) holds ``embeddings.npy``,
``index.csv`` and ``skipped.txt``; a stopped run continues where it stopped when run again.

An image that cannot be decoded is skipped and listed in ``skipped.txt`` with the reason, not fatal:
embedding is a bulk pass over folders as they come (scraped or user-uploaded images, where a few
truncated files are normal), one bad file should not cost the hours already spent, and the index
names every embedded row, so a missing image leaves no gap to misalign. Everything else wrong (the
weights, the folder, a changed file list) is refused before anything is written.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from repfusion_pl.accelerators import autocast, resolve_device
from repfusion_pl.checkpoints import CheckpointError
from repfusion_pl.cli.embed_sources import ReadableItems, Source, collate, data_source, folder_source
from repfusion_pl.cli.embed_store import EmbeddingStore, EmbedError, file_digest
from repfusion_pl.data.files import DatasetLayoutError
from repfusion_pl.probing.ridge import pooled_features
from repfusion_pl.students import BackboneWeights, Student, load_backbone_weights, resolve_backbone

EMBED_HELP = (
    "Run a distilled student (a distillation .ckpt or a `repfusion export` .safetensors) over a folder of "
    "images (--images) or a data module's split (--data) and write one pooled feature vector per image: "
    "OUTPUT/embeddings.npy (float32, N x D), OUTPUT/index.csv (row,file[,label]) and OUTPUT/skipped.txt "
    "(unreadable images). Run again after a stop to continue."
)


def embed_parser() -> ArgumentParser:
    """The arguments of ``repfusion embed``."""
    parser = ArgumentParser(prog="repfusion embed", description=EMBED_HELP)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument(
        "weights", type=str, help="a distillation checkpoint (.ckpt), an exported .safetensors or hub folder"
    )
    parser.add_argument("output", type=str, help="the output folder (continued if it holds this same run)")
    parser.add_argument(
        "--images", type=str | None, default=None, help="every image below this folder, sorted"
    )
    parser.add_argument(
        "--image_size",
        type=int | None,
        default=None,
        help="with --images: resize (shorter side) and centre-crop to this side, e.g. the distillation's",
    )
    parser.add_subclass_arguments(LightningDataModule, "data", required=False)
    parser.add_argument(
        "--split",
        type=Literal["train", "val", "test"],
        default="train",
        help="with --data (read unaugmented)",
    )
    parser.add_argument("--taps", type=list[str] | None, default=None, help="default: the distilled taps")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader processes decoding images")
    parser.add_argument(
        "--chunk_size", type=int, default=4096, help="images per chunk file (the resume step)"
    )
    parser.add_argument("--accelerator", type=Literal["auto", "cpu", "gpu", "cuda"], default="auto")
    parser.add_argument("--precision", type=Literal["32", "bf16"], default="32", help="of the forward pass")
    parser.add_argument(
        "--max_chunks",
        type=int | None,
        default=None,
        help="stop after this many chunks; run again to continue",
    )
    return parser


def load_student(weights_path: str, taps: list[str] | None) -> tuple[Student, BackboneWeights]:
    """The distilled student, built as its weights record, loaded strictly, in eval mode.

    Returns:
        The student and its weights as read (``path``: the file, inside a hub folder too).
    """
    spec, weights = resolve_backbone(None, weights_path)
    assert weights is not None
    if weights.spec is None:  # a bare state dict, or a timm folder: nothing says which student it is
        raise EmbedError(
            f"{weights.path} does not record which student it holds (arch, stem, channels); give a "
            "distillation checkpoint (.ckpt) or a file or folder written by `repfusion export`"
        )
    recorded = (weights.provenance.get("student") or {}).get("taps")
    try:
        student = Student.from_spec(spec, taps or recorded)
        load_backbone_weights(student.backbone, weights, target=f"the {spec.arch} student")
    except ValueError as err:  # unknown taps, or weights of another architecture
        raise EmbedError(str(err)) from err
    return student.eval(), weights


def embed_command(args: Sequence[str]) -> None:
    """``repfusion embed WEIGHTS OUTPUT (--images DIR --image_size S | --data ...)``."""
    parser = embed_parser()
    config = parser.parse_args(list(args))
    if (config.images is None) == (config.data is None):
        parser.error("give one of --images DIR (a folder of images) or --data (a data module)")
    try:
        device = resolve_device(config.accelerator)
    except ValueError as err:
        parser.error(str(err))
    try:
        run_embed(parser, config, device)
    except (EmbedError, CheckpointError, DatasetLayoutError) as err:
        print(f"repfusion: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def run_embed(parser: ArgumentParser, config: Namespace, device: torch.device) -> None:
    """Open (or continue) the output folder, embed its pending chunks, and assemble the result."""
    student, weights = load_student(config.weights, config.taps)
    if config.images is not None:
        source = folder_source(config.images, config.image_size, student.in_channels)
    else:
        data_config = yaml.safe_load(parser.dump(config))["data"]
        source = data_source(parser.instantiate_classes(config).data, config.split, data_config)
    check_first_image(source, student, device, config.precision)
    settings = {
        **source.settings,
        "weights_sha256": file_digest(weights.path),
        "taps": student.taps,
        "precision": config.precision,
    }
    store = EmbeddingStore(config.output, source.names, settings, config.chunk_size)
    if store.complete:
        print(f"{config.output} already holds these {store.record['embedded']} embeddings; nothing to do")
        return
    print(f"embedding {len(source.names)} images with {weights.describe()}")
    pending = store.pending()
    todo = pending[: config.max_chunks] if config.max_chunks is not None else pending
    embed_chunks(store, source, student.to(device), todo, config, device)
    if len(todo) < len(pending):
        written, total = len(store.chunk_ranges()) - len(store.pending()), len(store.chunk_ranges())
        print(f"stopped after {len(todo)} chunks ({written} of {total} written); run again to continue")
        return
    record = store.finish(source.labels)
    print(
        f"wrote {record['embedded']} x {record['dim']} embeddings to {config.output}/embeddings.npy with "
        f"index.csv; {record['skipped']} unreadable images skipped (skipped.txt)"
    )


def check_first_image(source: Source, student: Student, device: torch.device, precision: str) -> None:
    """Run the student on the first image that decodes, before anything is written.

    Raises:
        EmbedError: The student cannot take these images (channels, size), with its reason.
    """
    items = ReadableItems(source.read, len(source.names))
    unreadable = []
    for index in range(len(items)):
        _, image, why = items[index]
        if image is None:
            unreadable.append(f"{source.names[index]}: {why}")
            continue
        try:
            embed_batch(student.to(device), image[None], device, precision)
        except (ValueError, RuntimeError) as err:
            raise EmbedError(f"the student cannot embed {source.names[index]}: {err}") from err
        return
    raise EmbedError(f"none of the {len(items)} images could be read (first: {unreadable[0]})")


def embed_chunks(
    store: EmbeddingStore,
    source: Source,
    student: Student,
    chunks: list[int],
    config: Namespace,
    device: torch.device,
) -> None:
    """Embed ``chunks`` in batches that never cross a chunk, writing each chunk as it completes."""
    ranges = store.chunk_ranges()
    batches, owners = [], []
    for chunk in chunks:
        items = list(ranges[chunk])
        for start in range(0, len(items), config.batch_size):
            batches.append(items[start : start + config.batch_size])
            owners.append(chunk)
    loader = DataLoader(
        ReadableItems(source.read, len(source.names)),
        batch_sampler=batches,
        num_workers=config.num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
    )
    pending = set(store.pending())
    done = sum(len(items) for chunk, items in enumerate(ranges) if chunk not in pending)
    progress = tqdm(total=len(source.names), initial=done, unit="img", desc="embed", dynamic_ncols=True)
    rows: list[int] = []
    features: list[np.ndarray] = []
    skipped: list[tuple[int, str]] = []
    for position, (batch_rows, images, batch_skipped) in enumerate(loader):
        if images is not None:
            rows += batch_rows
            features.append(embed_batch(student, images, device, config.precision))
        skipped += batch_skipped
        progress.update(len(batch_rows) + len(batch_skipped))
        last_of_chunk = position + 1 == len(owners) or owners[position + 1] != owners[position]
        if last_of_chunk:
            stacked = np.concatenate(features) if features else np.zeros((0, 0), np.float32)
            store.write_chunk(owners[position], rows, stacked, skipped)
            rows, features, skipped = [], [], []
    progress.close()


def embed_batch(student: Student, images: Tensor, device: torch.device, precision: str) -> np.ndarray:
    """Pooled features at every tap of the student, side by side, as float32 ``(N, D)``."""
    with torch.inference_mode(), autocast(device, precision):
        features = student(images.to(device, non_blocking=True))
    pooled = pooled_features(features)
    return torch.cat([pooled[tap] for tap in student.taps], dim=1).float().cpu().numpy()
