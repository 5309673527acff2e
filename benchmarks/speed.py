"""Speed of a distillation step against the authors' approach and against its compute floor.

In one process: the ``google/ddpm-cifar10-32`` UNet architecture built from its published config
with random weights (no download), loaded through `DiffusionTeacher` like any user teacher; a
ResNet-18 student with a CIFAR stem; batch 64 at 32x32. After warm-up, the median of repeated runs
of:

1. a student-only supervised step (forward + backward + SGD);
2. the authors' approach: the full teacher forward in fp32 (decoder included) + the student step;
3. our `RepFusionDistillation` step (policy, teacher, student, projector, SGD) with each speed
   option on and off;
4. the compute floor: the truncated teacher forward alone plus the student step alone, timed
   separately and added.

It also times fetching one batch from an in-memory data module (the data cost per step), and the
peak memory of each row (CUDA: ``max_memory_allocated``; CPU: the rise of the process's resident
set, sampled every millisecond from the first warm-up call; memory freed by earlier rows is reused,
so on the CPU it is a lower bound). Prints a table and writes JSON.

Usage: ``python benchmarks/speed.py [--device cpu|cuda] [--precision 32|bf16] [--compile]``;
``--families sd15,dit-xl2,adm64`` times the teacher families at their real sizes instead
(`teacher_families.py`, written to ``results/speed-families.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from repfusion_pl import DiffusionTeacher, PolicyTimestep, RepFusionDistillation, Student
from repfusion_pl.data.labelled_images import TensorImageDataset
from study.report import environment
from teacher_families import run_families
from timing import measure

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


def save_teacher(directory: str) -> None:
    """Write the ddpm-cifar10-32 architecture, randomly initialised, as a diffusers pipeline."""
    DDPMPipeline(unet=UNet2DModel(**DDPM_CIFAR10_32), scheduler=DDPMScheduler()).save_pretrained(directory)


def build_teacher(directory: str) -> DiffusionTeacher:
    """The ddpm-cifar10-32 architecture with random weights, loaded like a user's teacher."""
    save_teacher(directory)
    return DiffusionTeacher(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to warm up)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "speed.json")
    parser.add_argument(
        "--families",
        type=lambda value: value.split(","),
        default=None,
        help="time teacher families instead: sd15,dit-xl2,adm64 (real architectures; teacher_families.py)",
    )
    parser.add_argument("--family-batch", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.families:
        out = args.out.with_name("speed-families.json") if args.out.name == "speed.json" else args.out
        run_families(args.families, args.family_batch, device, args.repeats, out)
        return
    torch.manual_seed(0)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext()
    )

    tmp = tempfile.TemporaryDirectory()
    save_teacher(tmp.name)

    def fresh_teacher(channels_last: bool = False, **options: bool) -> DiffusionTeacher:
        # Every row gets its own teacher: memory-format changes must not leak between rows.
        teacher = DiffusionTeacher(tmp.name, **options).to(device)
        if channels_last:
            teacher.unet.to(memory_format=torch.channels_last)
        return teacher

    n = args.batch_size
    images = torch.rand(n, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (n,), device=device)
    timesteps = torch.randint(0, 1000, (n,), device=device)

    def distiller(channels_last: bool = True, compile: bool = False, **teacher: bool) -> Callable[[], None]:
        student = Student("resnet18", stem="cifar", compile=compile)
        teacher_module = fresh_teacher(compile=compile, **teacher)
        module = RepFusionDistillation(
            teacher_module, student, PolicyTimestep(10), channels_last=channels_last
        )
        module.to(device).on_fit_start()
        module.log = lambda *a, **k: None  # type: ignore[method-assign]  # no Trainer attached
        optimiser = module.configure_optimizers()

        def step() -> None:
            optimiser.zero_grad(set_to_none=True)
            with autocast:
                loss = module.training_step((images, labels), 0)["loss"]
            loss.backward()
            optimiser.step()

        return step

    def student_step(channels_last: bool) -> Callable[[], None]:
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        student = Student("resnet18", stem="cifar").to(device, memory_format=memory_format)
        head = torch.nn.Linear(512, 10).to(device)
        optimiser = torch.optim.SGD([*student.parameters(), *head.parameters()], lr=0.1, momentum=0.9)
        batch = images.contiguous(memory_format=memory_format)

        def step() -> None:
            optimiser.zero_grad(set_to_none=True)
            with autocast:
                loss = F.cross_entropy(head(student(batch)["layer4"].mean(dim=(2, 3))), labels)
            loss.backward()
            optimiser.step()

        return step

    def authors_step() -> Callable[[], None]:
        teacher, student = fresh_teacher(), Student("resnet18", stem="cifar").to(device)
        projector = torch.nn.Conv2d(512, 256, 1).to(device)
        optimiser = torch.optim.SGD([*student.parameters(), *projector.parameters()], lr=0.1, momentum=0.9)

        def step() -> None:
            with torch.no_grad():  # the whole UNet, decoder included, fp32, every step
                target = teacher(images, timesteps, truncate=False, inference_mode=False)[teacher.layers[0]]
            optimiser.zero_grad(set_to_none=True)
            pooled = projector(student(images)["layer4"]).mean(dim=(2, 3))
            F.mse_loss(pooled, target.mean(dim=(2, 3))).backward()
            optimiser.step()

        return step

    def teacher_forward(channels_last: bool, truncate: bool = True) -> Callable[[], object]:
        teacher = fresh_teacher(channels_last)
        batch = images.contiguous(memory_format=torch.channels_last) if channels_last else images

        def forward() -> object:
            with autocast:
                return teacher(batch, timesteps, truncate=truncate)

        return forward

    rows: dict[str, Callable[[], object]] = {
        "1 student-only supervised step": student_step(False),
        "1 student-only supervised step, channels_last": student_step(True),
        "2 authors: full teacher fp32 + student step": authors_step(),
        "3 ours (defaults: truncate, inference_mode, channels_last)": distiller(),
        "3 ours, truncation off": distiller(truncate=False),
        "3 ours, inference_mode off": distiller(inference_mode=False),
        "3 ours, channels_last off": distiller(channels_last=False),
        "teacher forward, full UNet": teacher_forward(False, truncate=False),
        "teacher forward, truncated": teacher_forward(False),
        "teacher forward, truncated, channels_last": teacher_forward(True),
    }
    if args.compile:
        rows["3 ours, torch.compile student + teacher"] = distiller(compile=True)

    loader = DataLoader(
        TensorImageDataset(images.cpu(), labels.cpu(), v2.RandomCrop(32, padding=4)), batch_size=n
    )
    rows["data: one in-memory batch (crop augment)"] = lambda: next(iter(loader))

    results = {name: measure(fn, device, args.warmup, args.repeats) for name, fn in rows.items()}
    # The floor: the fastest truncated teacher forward plus the fastest student step, timed apart.
    seconds = {name: row["seconds"] for name, row in results.items()}
    floor = min(
        seconds["teacher forward, truncated"], seconds["teacher forward, truncated, channels_last"]
    ) + min(
        seconds["1 student-only supervised step"], seconds["1 student-only supervised step, channels_last"]
    )
    ours = seconds["3 ours (defaults: truncate, inference_mode, channels_last)"]
    authors = results["2 authors: full teacher fp32 + student step"]["seconds"]

    width = max(map(len, results))
    print(
        f"\n{device.type}, {args.precision}, batch {n}, 32x32, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {platform.machine()}"
    )
    print(f"{'measurement':<{width}}  {'median s':>9}  {'img/s':>8}  {'peak MB':>8}")
    for name, row in results.items():
        print(f"{name:<{width}}  {row['seconds']:9.4f}  {n / row['seconds']:8.1f}  {row['peak_mb']:8.1f}")
    print(f"{'4 floor: fastest truncated teacher + student step':<{width}}  {floor:9.4f}  {n / floor:8.1f}")
    print(f"\n(2)/(3) authors / ours      = {authors / ours:.2f}   (target >= 2.5)")
    print(f"(3)/(4) ours / floor        = {ours / floor:.3f}  (target <= 1.10)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "device": device.type,
        "precision": args.precision,
        "batch_size": n,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "environment": environment(),
        "rows": results,
        "floor_seconds": floor,
        "authors_over_ours": authors / ours,
        "ours_over_floor": ours / floor,
    }
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
