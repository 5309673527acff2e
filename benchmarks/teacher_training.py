"""Teacher-training throughput: optimiser steps per second of `DiffusionTeacherTraining`, as configured.

The model of ``configs/fashion-teacher-gpu.yaml`` (15.7 M parameters, 32 px, batch 128) on
Fashion-MNIST (``--root`` or its default folder; the scikit-learn digits at 32 px when it is absent),
timed over ``--steps`` steps after ``--warmup`` steps, for each way of feeding it:

* ``workers``: the per-image DataLoader with 4 worker processes (what the config used before);
* ``device``: ``device_batches: true``, the split held on the device and cut there;
* ``device + compile``: the same with the UNet compiled (``--compile``).

Usage: ``python benchmarks/teacher_training.py [--device cuda] [--precision bf16] [--out F.json]``;
``--dry-run`` runs a tiny UNet at 16 px, batch 8, for 3 steps on the CPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import Callback, Trainer

from repfusion_pl import DiffusionTeacherTraining
from repfusion_pl.data import DigitsDataModule, FashionMNISTDataModule
from repfusion_pl.data.fashion_mnist import default_root
from study.report import environment

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fashion-teacher-gpu.yaml"
TINY = {"sample_size": 16, "block_out_channels": [16, 32], "layers_per_block": 1, "attention_levels": [1]}
TINY |= {"norm_num_groups": 8}


class StepTimer(Callback):
    """Seconds from the end of step ``warmup`` to the end of the last step (CUDA synchronised)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.seconds = warmup, 0.0, 0.0

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            self._sync(trainer)
            self.start = time.perf_counter()

    def on_train_end(self, trainer: Trainer, *args: Any) -> None:
        self._sync(trainer)
        self.seconds = time.perf_counter() - self.start

    @staticmethod
    def _sync(trainer: Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()


def data_module(args: argparse.Namespace, device_batches: bool) -> Any:
    workers = 0 if device_batches else args.workers
    size, batch = (16, 8) if args.dry_run else (32, args.batch_size)
    common = {"batch_size": batch, "num_workers": workers, "device_batches": device_batches}
    root = Path(args.root) if args.root else default_root()
    if (root / "train-images-idx3-ubyte.gz").is_file() and not args.dry_run:
        return FashionMNISTDataModule(root=str(root), image_size=size, num_val=1000, num_test=100, **common)
    return DigitsDataModule(image_size=size, **common)


def time_variant(args: argparse.Namespace, device_batches: bool, compile: bool) -> dict[str, Any]:
    model = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]
    model.update(TINY if args.dry_run else {})
    with tempfile.TemporaryDirectory() as tmp:
        model["output_dir"] = tmp
        module = DiffusionTeacherTraining(**model, compile=compile)
        data = data_module(args, device_batches)
        timer = StepTimer(args.warmup)
        trainer = Trainer(
            accelerator="gpu" if args.device == "cuda" else "cpu",
            devices=1,
            precision="bf16-mixed" if args.precision == "bf16" else "32-true",
            max_steps=args.warmup + args.steps,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
            default_root_dir=tmp,
        )
        trainer.fit(module, data)
    return {
        "steps": args.steps,
        "seconds": timer.seconds,
        "it_per_s": args.steps / timer.seconds,
        "data": type(data).__name__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["32", "bf16"], default="bf16")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--root", default=None, help="Fashion-MNIST's folder (default: its usual place)")
    parser.add_argument("--compile", action="store_true", help="also time the compiled UNet")
    parser.add_argument("--dry-run", action="store_true", help="a tiny UNet at 16 px, 3 steps, on the CPU")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "teacher-training.json"
    )
    args = parser.parse_args()
    if args.dry_run:
        args.steps, args.warmup, args.workers, args.precision = 3, 1, 0, "32"
    variants = {"workers": (False, False), "device": (True, False)}
    if args.compile:
        variants["device + compile"] = (True, True)
    rows = {name: time_variant(args, *flags) for name, flags in variants.items()}
    batch = 8 if args.dry_run else args.batch_size
    print(f"\nteacher training, {args.device}, {args.precision}, batch {batch}")
    print(f"{'feeding':<20} {'it/s':>8} {'img/s':>9}")
    for name, row in rows.items():
        print(f"{name:<20} {row['it_per_s']:8.2f} {row['it_per_s'] * batch:9.0f}")
    payload = {"device": args.device, "precision": args.precision, "batch_size": batch}
    payload |= {"dry_run": args.dry_run, "environment": environment(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
