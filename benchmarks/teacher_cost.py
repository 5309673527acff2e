"""What the teacher costs per distillation step on this machine.

Builds the ``google/ddpm-cifar10-32`` UNet architecture from its published config with random
weights (no download), saves it as a diffusers pipeline and loads it through `DiffusionTeacher`,
exactly as a user's teacher is loaded. Then, for a ResNet-18 student (CIFAR stem) at batch 64 and
32x32, times after warm-up (median of repeats):

* the full teacher forward, decoder included (what the authors' code runs every step);
* the truncated teacher forward that stops at ``mid_block.resnets.1.conv2``;
* one whole distillation step (policy draw, truncated teacher, student forward + backward,
  optimiser step) of `RepFusionDistillation` with `PolicyTimestep`;
* a student-only supervised step, for scale.

Usage: ``python benchmarks/teacher_cost.py [--batch-size 64] [--repeats 5]``; prints a table and
writes ``benchmarks/results/teacher_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from repfusion_pl import DiffusionTeacher, PolicyTimestep, RepFusionDistillation, Student

# google/ddpm-cifar10-32 unet/config.json, as published on the Hugging Face hub.
DDPM_CIFAR10_32 = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2,
    attention_head_dim=None,
    norm_eps=1e-6,
    norm_num_groups=32,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    act_fn="silu",
    center_input_sample=False,
    mid_block_scale_factor=1,
    time_embedding_type="positional",
)


def median_seconds(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "teacher_cost.json")
    args = parser.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        unet = UNet2DModel(**DDPM_CIFAR10_32)
        DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(tmp)
        teacher = DiffusionTeacher(tmp)
    student = Student("resnet18", stem="cifar", in_channels=3)
    module = RepFusionDistillation(teacher, student, sampler=PolicyTimestep(num_classes=10))
    module.on_fit_start()
    optimiser = module.configure_optimizers()

    n = args.batch_size
    images, labels = torch.rand(n, 3, 32, 32), torch.randint(0, 10, (n,))
    timesteps = torch.randint(0, 1000, (n,))

    def distill_step() -> None:
        optimiser.zero_grad(set_to_none=True)
        module.training_step((images, labels), 0).backward()
        optimiser.step()

    plain = Student("resnet18", stem="cifar", in_channels=3)
    head = torch.nn.Linear(512, 10)
    plain_opt = torch.optim.SGD([*plain.parameters(), *head.parameters()], lr=0.1, momentum=0.9)

    def student_step() -> None:
        plain_opt.zero_grad(set_to_none=True)
        feats = plain(images)["layer4"].mean(dim=(2, 3))
        F.cross_entropy(head(feats), labels).backward()
        plain_opt.step()

    module.log = lambda *a, **k: None  # no Trainer attached here
    rows = {
        "teacher forward, full UNet": lambda: teacher(images, timesteps, truncate=False),
        "teacher forward, truncated at mid_block.resnets.1.conv2": lambda: teacher(images, timesteps),
        "distillation step (policy + truncated teacher + student)": distill_step,
        "student-only supervised step": student_step,
    }
    results = {name: median_seconds(fn, args.warmup, args.repeats) for name, fn in rows.items()}

    full, truncated = (
        results["teacher forward, full UNet"],
        results["teacher forward, truncated at mid_block.resnets.1.conv2"],
    )
    width = max(map(len, results))
    print(
        f"\nbatch {n}, 32x32, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(f"{'measurement':<{width}}  {'median s':>9}  {'img/s':>8}")
    for name, seconds in results.items():
        print(f"{name:<{width}}  {seconds:9.3f}  {n / seconds:8.1f}")
    print(
        f"truncation saves {1 - truncated / full:.0%} of the teacher forward ({full / truncated:.2f}x faster)"
    )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "batch_size": n,
        "image_size": 32,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": "cpu",
        "median_seconds": results,
        "truncated_over_full": truncated / full,
        "teacher_params": sum(p.numel() for p in teacher.unet.parameters()),
        "student_params": sum(p.numel() for p in student.parameters()),
    }
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
