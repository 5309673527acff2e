"""Speed of a distillation step against the authors' approach and against its compute floor.

In one process: the ``google/ddpm-cifar10-32`` UNet architecture built from its published config
with random weights (no download), loaded through `DiffusionTeacher` like any user teacher; a
ResNet-18 student with a CIFAR stem; batch 64 at 32x32. After warm-up, the median of repeated runs
of:

1. a student-only supervised step (forward + backward + SGD);
2. the authors' approach: the full teacher forward in fp32 (decoder included) + the student step;
3. our `RepFusionDistillation` step (configs/distill.yaml's policy, teacher, student, projector, SGD)
   with each speed option on and off;
4. the compute floor: the truncated teacher forward alone plus the student step alone, timed
   separately and added.

It also times fetching one batch from an in-memory data module (the data cost per step), and the
peak memory of each row (CUDA: ``max_memory_allocated``; CPU: the rise of the process's resident
set, sampled every millisecond from the first warm-up call; memory freed by earlier rows is reused,
so on the CPU it is a lower bound). Prints a table and writes JSON.

Usage: ``python benchmarks/speed.py [--device cpu|cuda] [--precision 32|bf16] [--batch-size N]
[--capture] [--compile]``; ``--capture`` adds our step captured whole (``compile_step``: CUDA graphs
on a GPU), ``--compile`` the older per-module ``torch.compile`` row; ``--dry-run`` runs every row on a
tiny UNet at 16 px, batch 4, once (to keep the script from rotting between GPU runs);
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
from typing import Any

import torch
import torch.nn.functional as F
import yaml
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


#: A small UNet of the same kind for ``--dry-run``: every row runs, in seconds, on a CPU.
TINY = {**DDPM_CIFAR10_32, "sample_size": 16, "block_out_channels": (32, 64, 64), "norm_num_groups": 8}
TINY |= {"down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D")}
TINY |= {"up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), "layers_per_block": 1}


def save_teacher(directory: str, config: dict = DDPM_CIFAR10_32) -> None:
    """Write the ddpm-cifar10-32 architecture (or ``config``), randomly initialised, as a pipeline."""
    DDPMPipeline(unet=UNet2DModel(**config), scheduler=DDPMScheduler()).save_pretrained(directory)


def build_teacher(directory: str) -> DiffusionTeacher:
    """The ddpm-cifar10-32 architecture with random weights, loaded like a user's teacher."""
    save_teacher(directory)
    return DiffusionTeacher(directory)


class Rows:
    """The rows of the table: each a zero-argument step, built on one device, precision and batch."""

    def __init__(self, teacher_dir: str, device: torch.device, precision: str, n: int, size: int) -> None:
        self.teacher_dir, self.device, self.n = teacher_dir, device, n
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
        )
        self.images = torch.rand(n, 3, size, size, device=device)
        self.labels = torch.randint(0, 10, (n,), device=device)
        self.timesteps = torch.randint(0, 1000, (n,), device=device)

    def teacher(self, channels_last: bool = False, **options: bool) -> DiffusionTeacher:
        # Every row gets its own teacher: memory-format changes must not leak between rows.
        teacher = DiffusionTeacher(self.teacher_dir, **options).to(self.device)
        if channels_last:
            teacher.unet.to(memory_format=torch.channels_last)
        return teacher

    def ours(self, teacher: dict | None = None, **module: Any) -> Callable[[], None]:
        """Our `RepFusionDistillation` step (policy, teacher, student, projector, SGD) with options."""
        compile_all = module.pop("compile", False)
        student = Student("resnet18", stem="cifar", compile=compile_all)
        teacher_module = self.teacher(compile=compile_all, **(teacher or {}))
        distiller = RepFusionDistillation(teacher_module, student, shipped_policy(), **module)
        distiller.to(self.device).on_fit_start()
        distiller.log = lambda *a, **k: None  # type: ignore[method-assign]  # no Trainer attached
        optimiser = distiller.configure_optimizers()

        def step() -> None:
            optimiser.zero_grad(set_to_none=True)
            with self.autocast:
                loss = distiller.training_step((self.images, self.labels), 0)["loss"]
            loss.backward()
            optimiser.step()

        return step

    def student_only(self, channels_last: bool) -> Callable[[], None]:
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        student = Student("resnet18", stem="cifar").to(self.device, memory_format=memory_format)
        head = torch.nn.Linear(512, 10).to(self.device)
        optimiser = torch.optim.SGD([*student.parameters(), *head.parameters()], lr=0.1, momentum=0.9)
        batch = self.images.contiguous(memory_format=memory_format)

        def step() -> None:
            optimiser.zero_grad(set_to_none=True)
            with self.autocast:
                loss = F.cross_entropy(head(student(batch)["layer4"].mean(dim=(2, 3))), self.labels)
            loss.backward()
            optimiser.step()

        return step

    def authors(self) -> Callable[[], None]:
        teacher, student = self.teacher(), Student("resnet18", stem="cifar").to(self.device)
        projector = torch.nn.Conv2d(512, teacher.feature_shapes[teacher.layers[0]][0], 1).to(self.device)
        optimiser = torch.optim.SGD([*student.parameters(), *projector.parameters()], lr=0.1, momentum=0.9)

        def step() -> None:
            with torch.no_grad():  # the whole UNet, decoder included, fp32, every step
                target = teacher(self.images, self.timesteps, truncate=False, inference_mode=False)
            optimiser.zero_grad(set_to_none=True)
            pooled = projector(student(self.images)["layer4"]).mean(dim=(2, 3))
            F.mse_loss(pooled, target[teacher.layers[0]].mean(dim=(2, 3))).backward()
            optimiser.step()

        return step

    def teacher_forward(self, channels_last: bool, truncate: bool = True) -> Callable[[], object]:
        teacher = self.teacher(channels_last)
        batch = self.images.contiguous(memory_format=torch.channels_last) if channels_last else self.images

        def forward() -> object:
            with self.autocast:
                return teacher(batch, self.timesteps, truncate=truncate)

        return forward

    def data(self) -> Callable[[], object]:
        size = self.images.shape[-1]
        dataset = TensorImageDataset(
            self.images.cpu(), self.labels.cpu(), v2.RandomCrop(size, padding=size // 8)
        )
        loader = DataLoader(dataset, batch_size=self.n)
        return lambda: next(iter(loader))


DEFAULTS = "3 ours (defaults)"
CAPTURED = "3 ours, captured step (compile_step)"


def build_rows(rows: Rows, capture: str | None, compile_all: bool) -> dict[str, Callable[[], object]]:
    """Every row of the table; ``capture`` adds the captured step (its torch.compile backend, or default)."""
    built: dict[str, Callable[[], object]] = {
        "1 student-only supervised step": rows.student_only(False),
        "1 student-only supervised step, channels_last": rows.student_only(True),
        "2 authors: full teacher fp32 + student step": rows.authors(),
        DEFAULTS: rows.ours(),
        "3 ours, channels_last on": rows.ours(channels_last=True),
        "3 ours, channels_last off": rows.ours(channels_last=False),
        "3 ours, truncation off": rows.ours({"truncate": False}),
        "3 ours, inference_mode off": rows.ours({"inference_mode": False}),
        "teacher forward, full UNet": rows.teacher_forward(False, truncate=False),
        "teacher forward, truncated": rows.teacher_forward(False),
        "teacher forward, truncated, channels_last": rows.teacher_forward(True),
    }
    if capture is not None:
        options = {"backend": capture} if capture != "default" else None
        built[CAPTURED] = rows.ours(compile_step=True, compile_options=options)
    if compile_all:
        built["3 ours, torch.compile student + teacher"] = rows.ours(compile=True)
    built["data: one in-memory batch (crop augment)"] = rows.data()
    return built


def shipped_policy() -> PolicyTimestep:
    """The policy as configs/distill.yaml ships it (its grid, baseline, normalised advantage)."""
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "distill.yaml").read_text())
    return PolicyTimestep(**config["model"]["init_args"]["sampler"]["init_args"])


def summarise(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """The floor (fastest truncated teacher + fastest student step, timed apart) and the two ratios."""
    seconds = {name: row["seconds"] for name, row in results.items()}
    floor = min(seconds["teacher forward, truncated"], seconds["teacher forward, truncated, channels_last"])
    floor += min(
        seconds["1 student-only supervised step"], seconds["1 student-only supervised step, channels_last"]
    )
    ours = min(seconds[DEFAULTS], seconds.get(CAPTURED, float("inf")))
    authors = seconds["2 authors: full teacher fp32 + student step"]
    return {
        "floor_seconds": floor,
        "ours_seconds": ours,
        "authors_over_ours": authors / ours,
        "ours_over_floor": ours / floor,
    }


def print_table(
    results: dict[str, dict[str, float]], summary: dict[str, float], args: argparse.Namespace
) -> None:
    n, width = args.batch_size, max(map(len, results))
    print(
        f"\n{args.device}, {args.precision}, batch {n}, {args.image_size}x{args.image_size}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.machine()}"
    )
    print(f"{'measurement':<{width}}  {'median s':>9}  {'img/s':>8}  {'peak MB':>8}")
    for name, row in results.items():
        print(f"{name:<{width}}  {row['seconds']:9.4f}  {n / row['seconds']:8.1f}  {row['peak_mb']:8.1f}")
    floor = summary["floor_seconds"]
    print(f"{'4 floor: fastest truncated teacher + student step':<{width}}  {floor:9.4f}  {n / floor:8.1f}")
    print(f"\n(2)/(3) authors / ours      = {summary['authors_over_ours']:.2f}   (target >= 2.5)")
    print(f"(3)/(4) ours / floor        = {summary['ours_over_floor']:.3f}  (target <= 1.10)")
    print("(3) is the faster of the defaults and the captured step, when it was timed")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--capture",
        nargs="?",
        const="default",
        default=None,
        help="also time the captured step (compile_step); optionally a torch.compile backend, e.g. aot_eager",
    )
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of each module")
    parser.add_argument("--dry-run", action="store_true", help="a tiny UNet at 16 px, batch 4, one repeat")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "speed.json")
    parser.add_argument(
        "--families",
        type=lambda value: value.split(","),
        default=None,
        help="time teacher families instead: sd15,dit-xl2,adm64 (real architectures; teacher_families.py)",
    )
    parser.add_argument("--family-batch", type=int, default=2)
    args = parser.parse_args()
    args.image_size = 32
    if args.dry_run:
        args.image_size, args.batch_size, args.repeats, args.warmup = 16, 4, 1, 1
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if args.families:
        out = args.out.with_name("speed-families.json") if args.out.name == "speed.json" else args.out
        run_families(args.families, args.family_batch, device, args.repeats, out)
        return
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        save_teacher(tmp, TINY if args.dry_run else DDPM_CIFAR10_32)
        rows = build_rows(
            Rows(tmp, device, args.precision, args.batch_size, args.image_size), args.capture, args.compile
        )
        results = {name: measure(fn, device, args.warmup, args.repeats) for name, fn in rows.items()}
    summary = summarise(results)
    print_table(results, summary, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "device": device.type,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "dry_run": args.dry_run,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "environment": environment(),
        "rows": results,
        **summary,
    }
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
