"""Distillation throughput (images/s) through the real Trainer, on N devices with DDP.

Runs `RepFusionDistillation` on the google/ddpm-cifar10-32 architecture (random weights) with a
ResNet-18 student on synthetic 32x32 batches, and times the steps after the first epoch.
Usage: ``python benchmarks/ddp_throughput.py --devices 2 [--accelerator gpu] [--steps 60]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader, TensorDataset

from repfusion_pl import PolicyTimestep, RepFusionDistillation, Student
from speed import build_teacher
from study.report import environment


class StepTimer(Callback):
    """Wall time of the training batches after the first ``skip``."""

    def __init__(self, skip: int) -> None:
        self.skip, self.start, self.steps = skip, 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.skip:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > self.skip:
            self.steps += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--accelerator", default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="bf16-mixed" if torch.cuda.is_available() else "32-true")
    parser.add_argument("--batch-size", type=int, default=64, help="per device")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ddp.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        teacher = build_teacher(tmp)
    module = RepFusionDistillation(teacher, Student("resnet18", stem="cifar"), PolicyTimestep(10))
    n = args.batch_size * args.devices * (args.steps + 10)
    data = TensorDataset(torch.rand(n, 3, 32, 32), torch.randint(0, 10, (n,)))
    timer = StepTimer(skip=10)
    trainer = Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        precision=args.precision,
        max_steps=args.steps + 10,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[timer],
    )
    trainer.fit(module, DataLoader(data, batch_size=args.batch_size, num_workers=2))
    elapsed = time.perf_counter() - timer.start
    if trainer.is_global_zero:
        images_per_s = timer.steps * args.batch_size * args.devices / elapsed
        print(
            f"{args.devices} device(s), {args.precision}: {images_per_s:.0f} img/s over {timer.steps} steps"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "devices": args.devices,
                    "images_per_s": images_per_s,
                    **vars(args),
                    "environment": environment(),
                },
                default=str,
            )
        )


if __name__ == "__main__":
    main()
