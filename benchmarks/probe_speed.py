"""Probe throughput: images per second of `run_probe` (teacher layers x timesteps + the random-init bar).

The teacher is the shipped Fashion-MNIST teacher (``benchmarks/teachers/fashion-32``) when present,
else the same architecture with random weights (the speed is the architecture's). The images are
Fashion-MNIST's training split when it is on disk (``--root``), else random images of its shape.
Every candidate layer and its default concatenations are probed, as ``repfusion probe`` does.

Usage: ``python benchmarks/probe_speed.py [--accelerator auto|cpu|gpu] [--precision 32|bf16]
[--images N] [--timesteps 0,50,100,200,400]``; ``--dry-run`` probes 256 random images at two
timesteps with a tiny teacher on the CPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml
from diffusers import DDPMPipeline, DDPMScheduler
from torch.utils.data import DataLoader, TensorDataset

from repfusion_pl.accelerators import resolve_device
from repfusion_pl.data.fashion_mnist import default_root, load_fashion_mnist, resize_images
from repfusion_pl.probing import run_probe
from repfusion_pl.students import Student
from repfusion_pl.teachers.training import build_unet
from study.report import environment

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "benchmarks" / "teachers" / "fashion-32"
CONFIG = ROOT / "configs" / "fashion-teacher-gpu.yaml"


def teacher_folder(tmp: str, dry_run: bool) -> str:
    """The shipped teacher, or its architecture (from the config) with random weights."""
    if SHIPPED.is_dir() and not dry_run:
        return str(SHIPPED)
    model = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]
    keys = ("sample_size", "in_channels", "block_out_channels", "layers_per_block", "attention_levels")
    arch = {key: model[key] for key in keys} | {"norm_num_groups": model["norm_num_groups"]}
    if dry_run:
        arch |= {
            "sample_size": 16,
            "block_out_channels": [16, 32],
            "attention_levels": [1],
            "norm_num_groups": 8,
        }
    unet = build_unet(**arch)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp)
    return tmp


def loaders(args: argparse.Namespace, size: int) -> dict[str, DataLoader]:
    """Train, val and test loaders: Fashion-MNIST's training images when present, else random ones."""
    root = Path(args.root) if args.root else default_root()
    if not args.dry_run and (root / "train-images-idx3-ubyte.gz").is_file():
        images, labels = load_fashion_mnist(root, "train")
        images = resize_images(images[: args.images + 10000], size)
        labels = labels[: args.images + 10000]
    else:
        count = args.images + 2 * max(args.images // 10, 64)
        images, labels = torch.rand(count, 1, size, size), torch.randint(0, 10, (count,))
    held = (len(images) - args.images) // 2
    parts = {"train": slice(0, args.images), "val": slice(args.images, args.images + held)}
    parts["test"] = slice(args.images + held, len(images))
    pin = torch.cuda.is_available()
    return {
        split: DataLoader(
            TensorDataset(images[part], labels[part]), batch_size=args.batch_size, pin_memory=pin
        )
        for split, part in parts.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"])
    parser.add_argument("--precision", default="bf16", choices=["32", "bf16"])
    parser.add_argument(
        "--images", type=int, default=55000, help="training images (val and test come on top)"
    )
    parser.add_argument(
        "--timesteps", type=lambda v: [int(t) for t in v.split(",")], default=[0, 50, 100, 200, 400]
    )
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--root", default=None, help="Fashion-MNIST's folder (default: its usual place)")
    parser.add_argument(
        "--dry-run", action="store_true", help="256 random images, 2 timesteps, tiny teacher, CPU"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "probe-speed.json")
    args = parser.parse_args()
    if args.dry_run:
        args.images, args.timesteps, args.batch_size, args.accelerator = 256, [0, 100], 64, "cpu"
    device = resolve_device(args.accelerator)
    with tempfile.TemporaryDirectory() as tmp:
        source = teacher_folder(tmp, args.dry_run)
        size = 16 if args.dry_run else 32
        data = loaders(args, size)
        student = Student("resnet18", stem="cifar", in_channels=1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = run_probe(
            source,
            data,
            10,
            args.timesteps,
            student=student,
            accelerator=args.accelerator,
            precision=args.precision,
        )
        seconds = time.perf_counter() - start
    streamed = (len(args.timesteps) + 1) * sum(len(loader.dataset) for loader in data.values())  # type: ignore[arg-type]
    best = result["best"]
    grid = f"{args.images} training images x {len(args.timesteps)} timesteps"
    print(f"\nprobe, {device.type}, {args.precision}: {grid}")
    print(f"{'seconds':>9} {'images streamed':>16} {'img/s':>9}   best cell")
    print(
        f"{seconds:9.1f} {streamed:16d} {streamed / seconds:9.0f}   {best['layer']} at t={best['timestep']}"
    )
    payload = {
        "device": device.type,
        "precision": args.precision,
        "teacher": "shipped fashion-32" if source == str(SHIPPED) else "random weights, same architecture",
        "training_images": args.images,
        "timesteps": args.timesteps,
        "seconds": seconds,
        "images_streamed": streamed,
        "images_per_s": streamed / seconds,
        "dry_run": args.dry_run,
        "environment": environment(),
        "best": best,
        "random_student": result["random_student"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
