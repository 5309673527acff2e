"""Does a diffusion teacher beat random init on real data with headroom? Fashion-MNIST (``make quality``).

(a) A search of the teacher side with the probe: every UNet level going down and coming up, and the
encoder, decoder and all-layer concatenations, x timesteps, next to a random-init ResNet-18 (the bar
to beat); the best cell is what a user would distil from;
(b) distillation from it with the REINFORCE policy (labels), the policy without labels (contrastive
reward), the best fixed t and uniform t, each watched by the representation monitor every epoch;
(c) fine-tuning with 10 and 100 labels per class, and a ridge linear probe on all labels, from each
distilled student and from random init, over 3 seeds: mean ± std test accuracy to
``benchmarks/results/quality-<profile>.{json,md,png}``.

Distillation needs no labels beyond the policy's reward head, so it may see more (unlabelled) training
images than the probe and fine-tuning pool. Profiles: ``cpu`` (16x16 images; a 5,000-image pool for
probing and fine-tuning, 10,000 images for distillation; the 6,000-step teacher of
configs/fashion-teacher.yaml; about 70 minutes on 2 cores) and ``gpu`` (28x28 padded to 32, all 55,000
training images, the larger teacher of configs/fashion-teacher-gpu.yaml, bf16; sized for one H100).
Fashion-MNIST is read from /usr/share/datasets/fashion-mnist (Debian/Ubuntu package
``dataset-fashion-mnist``) or ``--root``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from study import Setting, merge, run_study

ROOT = Path(__file__).resolve().parent.parent
PROFILES = {
    "cpu": {
        "teacher_config": "configs/fashion-teacher.yaml",
        "data": {"image_size": 16, "num_train": 5000, "num_val": 1000, "num_test": 2000, "batch_size": 64},
        "distill_data": {"num_train": 10000},
        "distill_epochs": 5,
        "finetune_epochs": {10: 40, 100: 15},
        "trainer": {},
    },
    "gpu": {
        "teacher_config": "configs/fashion-teacher-gpu.yaml",
        "data": {"image_size": 32, "num_val": 5000, "batch_size": 256, "num_workers": 6},
        "distill_data": {},
        "distill_epochs": 4,
        "finetune_epochs": {10: 60, 100: 20},
        "trainer": {"precision": "bf16-mixed"},
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--root", default=None, help="Fashion-MNIST folder (default: the Debian package's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--timesteps", type=int, nargs="+", default=[0, 50, 100, 200, 400])
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    profile = PROFILES[args.profile]
    work_dir = ROOT / "artifacts" / f"quality-{args.profile}"

    data = {
        "class_path": "repfusion_pl.data.FashionMNISTDataModule",
        "init_args": {"root": args.root, **profile["data"]},
    }
    epochs = profile["distill_epochs"]
    distill = yaml.safe_load((ROOT / "configs" / "distill.yaml").read_text())
    distill = merge(
        distill,
        {
            "trainer": {"max_epochs": epochs, "limit_val_batches": 0, **profile["trainer"]},
            "model": {
                "init_args": {
                    "sampler": {"init_args": {"entropy_end_epoch": max(1, epochs // 2)}},
                    "lr_scheduler": {"init_args": {"T_max": epochs}},
                }
            },
            "data": merge(data, {"init_args": profile["distill_data"]}),
        },
    )
    classify = yaml.safe_load((ROOT / "configs" / "classify.yaml").read_text())
    classify = merge(
        classify,
        {"trainer": {"limit_val_batches": 0, "num_sanity_val_steps": 0, **profile["trainer"]}, "data": data},
    )
    settings = [
        Setting(
            f"{labels} labels/class",
            {
                "trainer": {"max_epochs": ft_epochs},
                "data": {"init_args": {"labels_per_class": labels, "batch_size": 32}},
            },
        )
        for labels, ft_epochs in profile["finetune_epochs"].items()
    ]
    settings.append(Setting("linear probe, all labels"))
    run_study(
        name=f"quality-{args.profile}",
        teacher_config=ROOT / profile["teacher_config"],
        data=data,
        distill_base=distill,
        classify_base=classify,
        settings=settings,
        seeds=args.seeds,
        timesteps=args.timesteps,
        work_dir=work_dir,
        results_dir=args.results_dir,
        monitor_every=1,
    )


if __name__ == "__main__":
    main()
