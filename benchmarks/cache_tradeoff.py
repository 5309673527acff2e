"""The teacher-target cache against the live teacher: the step, and the cost of building the cache.

In one process, after warm-up, the median of: the live distillation step, the step that reads the
cache, and the student-only supervised step (the cached step's floor: target <= 1.10x it), for the
shipped Fashion-MNIST teacher (the quality study's best cell: five layers concatenated, t = 0,
ResNet-18, 32 px, batch 64) and, with ``--families``, Stable Diffusion 1.5 and DiT-XL/2 at their real
sizes (256 px, batch 2, random weights); and the cache build's time per batch of teacher passes.

Usage: ``python benchmarks/cache_tradeoff.py [--families] [--out F.json]``; prints tables and writes
JSON. ``--dry-run`` shrinks everything (a tiny teacher, a few images).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from repfusion_pl import CachedTeacher, DiffusionTeacher, FixedTimestep, RepFusionDistillation, Student
from repfusion_pl.data import FashionMNISTDataModule, ImageFolderDataModule
from repfusion_pl.data.views import ViewSpec
from repfusion_pl.distillation.cache_build import build_cache
from study.report import environment
from timing import measure

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "benchmarks" / "teachers" / "fashion-32"
BEST_CELL = [
    "down_blocks.0.resnets.1",
    "down_blocks.1.resnets.1",
    "down_blocks.2.resnets.1",
    "mid_block.resnets.0",
    "mid_block.resnets.1.conv2",
]


def step_rows(
    teacher: DiffusionTeacher, data: Any, folder: Path, stem: str, batch: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Live step, cached step and student-only step on one batch of ``data``'s training views."""
    device = torch.device("cpu")
    student = Student("resnet18", stem=stem, in_channels=teacher.in_channels)
    live = RepFusionDistillation(teacher, student, FixedTimestep(0))
    live.on_fit_start()
    start = time.perf_counter()
    build_cache(live, data, folder, [0], ViewSpec(flip=False), "cache_tradeoff", device, progress=False)
    build_seconds = time.perf_counter() - start
    cached = RepFusionDistillation(
        CachedTeacher(str(folder)),
        Student("resnet18", stem=stem, in_channels=teacher.in_channels),
        FixedTimestep(0),
    )
    cached.on_fit_start()
    cached.teacher.attach(data)
    served = next(iter(torch.utils.data.DataLoader(data._served("train"), batch_size=batch)))
    images, labels = served["images"], served.get("labels")
    rows = {
        "live distillation step": training_step(live, images, labels),
        "cached distillation step": training_step(cached, images, labels, served["targets"]),
        "student-only supervised step": student_step(stem, images, teacher.in_channels),
    }
    timed = {name: measure(fn, device, 1, repeats) for name, fn in rows.items()}
    passes = len(data.splits["train"]) + len(data.splits.get("val", []))
    per_batch = build_seconds / passes * batch
    timed["cache build, per batch of teacher passes"] = {"seconds": per_batch, "peak_mb": 0.0}
    return timed


def training_step(module: RepFusionDistillation, images, labels, cached=None):
    """One optimiser step of ``module`` on a batch: images (and labels), with the cached targets if any."""
    module.log = lambda *a, **k: None  # type: ignore[method-assign]  # no Trainer attached
    optimiser = module.configure_optimizers()
    batch: Any = {"images": images, "labels": labels, "targets": cached} if cached is not None else images
    if cached is None and labels is not None:
        batch = (images, labels)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        module.training_step(batch, 0)["loss"].backward()
        optimiser.step()

    return step


def student_step(stem: str, images, channels: int):
    # Channels-last, as the distillation module runs on a CPU: the floor in the same memory format.
    student = Student("resnet18", stem=stem, in_channels=channels).to(memory_format=torch.channels_last)
    head = torch.nn.Linear(512, 10)
    optimiser = torch.optim.SGD([*student.parameters(), *head.parameters()], lr=0.1, momentum=0.9)
    labels, batch = torch.randint(0, 10, (len(images),)), images.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        F.cross_entropy(head(student(batch)["layer4"].mean(dim=(2, 3))), labels).backward()
        optimiser.step()

    return step


def fashion_rows(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    size, count = (16, 32) if args.dry_run else (32, 256)
    if args.dry_run:
        from speed import TINY, save_teacher

        save_teacher(str(tmp / "teacher"), {**TINY, "in_channels": 1, "out_channels": 1})
        teacher = DiffusionTeacher(str(tmp / "teacher"))
    else:
        teacher = DiffusionTeacher(str(SHIPPED), layers=BEST_CELL)
    data = FashionMNISTDataModule(
        root=args.root, image_size=size, num_train=count, num_val=32, num_test=32, batch_size=args.batch
    )
    return step_rows(teacher, data, tmp / "fashion-cache", "cifar", args.batch, args.repeats)


def family_rows(name: str, tmp: Path, repeats: int) -> dict[str, Any]:
    from teacher_families import FAMILIES

    options = FAMILIES[name](tmp / name)
    stem, size = options.pop("stem"), options["image_size"]
    teacher = DiffusionTeacher(str(tmp / name), **options)
    images = tmp / f"{name}-images" / "all"
    images.mkdir(parents=True)
    for i in range(4):
        Image.effect_noise((size, size), 64 + 16 * i).convert("RGB").save(images / f"{i}.png")
    data = ImageFolderDataModule(
        root=str(images.parent),
        image_size=size,
        batch_size=2,
        val_fraction=0.0,
        test_fraction=0.0,
        labels=False,
    )
    return step_rows(teacher, data, tmp / f"{name}-cache", stem, 2, repeats)


def print_rows(title: str, rows: dict[str, dict[str, float]], batch: int) -> None:
    print(f"\n{title}")
    for row, timing in rows.items():
        print(f"  {row:<34} {timing['seconds']:8.3f} s  {batch / timing['seconds']:8.1f} img/s")
    ratio = rows["cached distillation step"]["seconds"] / rows["student-only supervised step"]["seconds"]
    live = rows["live distillation step"]["seconds"] / rows["cached distillation step"]["seconds"]
    print(f"  cached / student-only = {ratio:.2f} (target <= 1.10); live / cached = {live:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=None, help="Fashion-MNIST's folder (default: its usual place)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--families", action="store_true", help="also SD-1.5 and DiT-XL/2 (heavy)")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cache-tradeoff.json")
    args = parser.parse_args()
    if args.dry_run:
        args.batch, args.repeats = 8, 1
    result: dict[str, Any] = {"environment": environment(), "batch": args.batch, "dry_run": args.dry_run}
    with tempfile.TemporaryDirectory() as tmp:
        result["fashion"] = fashion_rows(args, Path(tmp))
        print_rows(f"Fashion-MNIST teacher, 32 px, batch {args.batch}", result["fashion"], args.batch)
        for name in ("sd15", "dit-xl2") if args.families else ():
            result[name] = family_rows(name, Path(tmp), max(1, args.repeats // 2))
            print_rows(f"{name}, 256 px, batch 2", result[name], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
