"""Pooled teacher features of labelled images at a grid of timesteps, computed once and kept on disk.

What the rewards read is pooled (every reward pools its input), so a few floats per image, layer
and timestep stand in for the teacher: the landscape and settle benchmarks run in seconds on them.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from repfusion_pl import DiffusionTeacher
from repfusion_pl.distillation.losses import global_pool
from repfusion_pl.distillation.projectors import concat_maps

ROOT = Path(__file__).resolve().parents[2]
#: The landscape's timesteps: dense where the probe varies (t < 200), then every 100-200 steps.
GRID = [0, 50, 100, 200, 300, 400, 500, 600, 800, 999]
FASHION_TARGETS = [
    "down_blocks.0.resnets.1",
    "down_blocks.1.resnets.1",
    "down_blocks.2.resnets.1",
    "mid_block.resnets.0",
    "mid_block.resnets.1.conv2",
]


@dataclass
class Setup:
    """A teacher, the layers its student distils, the layer its reward head reads, and the data."""

    name: str
    teacher: Path
    data: str  # "fashion" or "digits"
    image_size: int
    targets: list[str]
    head_layer: str
    num_train: int = 2000
    num_held_out: int = 500
    grid: list[int] = field(default_factory=lambda: list(GRID))


SETUPS = {
    # The quality study's: the shipped teacher, its five-layer encoder target and the probe's best layer.
    "fashion": Setup(
        "fashion",
        ROOT / "benchmarks/teachers/fashion-32",
        "fashion",
        32,
        FASHION_TARGETS,
        "down_blocks.2.resnets.1",
    ),  # fmt: skip
    # configs/distill.yaml's: the digits teacher (make teacher) and its one distilled layer.
    "digits": Setup(
        "digits",
        ROOT / "artifacts/digits-teacher",
        "digits",
        16,
        ["mid_block.resnets.1.conv2"],
        "mid_block.resnets.1.conv2",
        num_train=1200,
        num_held_out=500,
    ),  # fmt: skip
}


def labelled_images(setup: Setup, root: str | None, seed: int = 0) -> dict[str, tuple[Tensor, Tensor]]:
    """``train`` and ``held_out`` images in [0, 1] with their labels, from the project's data modules."""
    if setup.data == "fashion":
        from repfusion_pl.data import FashionMNISTDataModule

        data = FashionMNISTDataModule(
            root=root, image_size=setup.image_size, num_train=setup.num_train, num_val=setup.num_held_out,
            num_test=1, seed=seed,
        )  # fmt: skip
        data.setup("fit")
        parts = {"train": data.splits["train"], "held_out": data.splits["val"]}
    else:
        from repfusion_pl.data import DigitsDataModule

        data = DigitsDataModule(image_size=setup.image_size, seed=seed, shift=0)
        data.setup("fit")
        held = [data.splits[name] for name in ("val", "test")]
        merged = (torch.cat([h.images for h in held]), torch.cat([h.labels for h in held]))
        parts = {"train": data.splits["train"], "held_out": merged}
    out = {}
    for name, part in parts.items():
        images, labels = (part.images, part.labels) if hasattr(part, "images") else part
        limit = setup.num_train if name == "train" else setup.num_held_out
        out[name] = (images[:limit].float(), labels[:limit].long())
    return out


def pooled_features(
    teacher: DiffusionTeacher, setup: Setup, images: Tensor, grid: list[int], batch: int = 64
) -> dict[str, Tensor]:
    """``head`` and ``targets`` (pooled, concatenated) features, each ``(N, len(grid), C)``."""
    reads: dict[str, list[Tensor]] = {"head": [], "targets": []}
    steps = tqdm(range(0, len(images), batch), desc=f"{setup.name}: teacher features", leave=False)
    for start in steps:
        chunk = images[start : start + batch]
        per_t: dict[str, list[Tensor]] = {"head": [], "targets": []}
        for t in grid:
            maps = teacher(chunk, torch.full((len(chunk),), t, dtype=torch.long))
            per_t["head"].append(global_pool(maps[setup.head_layer].float()))
            target = concat_maps([maps[layer] for layer in setup.targets])
            per_t["targets"].append(global_pool(target.float()))
        for name, values in per_t.items():
            reads[name].append(torch.stack(values, dim=1))
    return {name: torch.cat(values) for name, values in reads.items()}


def cached_features(setup: Setup, root: str | None, cache_dir: Path) -> dict[str, Tensor]:
    """Images, labels and teacher features of a setup, from ``cache_dir`` when they match, else computed."""
    key = {**asdict(setup), "teacher": str(setup.teacher), "root": str(root)}
    path = cache_dir / f"{setup.name}-{setup.num_train}-{setup.num_held_out}.safetensors"
    if path.is_file():
        stored = load_file(str(path))
        meta = json.loads(path.with_suffix(".json").read_text())
        if meta == key:
            return stored
    if not (setup.teacher / "unet").is_dir() and not (setup.teacher / "config.json").is_file():
        raise SystemExit(f"no teacher in {setup.teacher}: run `make teacher` (digits) or pass --teacher DIR")
    teacher = DiffusionTeacher(
        str(setup.teacher), layers=sorted({*setup.targets, setup.head_layer}), image_size=setup.image_size
    )
    parts = labelled_images(setup, root)
    tensors: dict[str, Tensor] = {}
    for name, (images, labels) in parts.items():
        tensors[f"{name}/images"], tensors[f"{name}/labels"] = images.contiguous(), labels
        for read, values in pooled_features(teacher, setup, images, setup.grid).items():
            tensors[f"{name}/{read}"] = values.contiguous()
    tensors["grid"] = torch.tensor(setup.grid, dtype=torch.long)
    tensors["alphas_cumprod"] = teacher.scheduler.alphas_cumprod.float().contiguous()
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    path.with_suffix(".json").write_text(json.dumps(key))
    return tensors


def setup_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments the landscape and settle benchmarks share: which setups, data, teacher, folders."""
    parser.add_argument("--setups", nargs="+", choices=sorted(SETUPS), default=["fashion", "digits"])
    parser.add_argument("--root", default=os.environ.get("FASHION"), help="Fashion-MNIST's folder")
    parser.add_argument("--teacher", type=Path, help="another teacher folder for the (single) setup")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "artifacts" / "timestep-features")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--dry-run", action="store_true", help="a few images, steps and seeds")


def chosen_setup(name: str, args: argparse.Namespace) -> Setup:
    """A setup with the command line's teacher and, for ``--dry-run``, 32 + 32 images at three timesteps."""
    setup = SETUPS[name]
    if args.teacher:
        setup.teacher = args.teacher
    if args.dry_run:
        setup.num_train, setup.num_held_out, setup.grid = 32, 32, [0, 500, 999]
    return setup
