"""Does distilling pay? Fashion-MNIST with the GPU-trained teacher of benchmarks/teachers/fashion-32.

(a) The probe: teacher layers (every UNet level going down and coming up) and their encoder, decoder
and all-layer concatenations x timesteps, next to a random-init ResNet-18 (the bar to beat); the
best cell is what gets distilled;
(b) distillation from it with the REINFORCE policy (labels), the policy without labels (contrastive
reward), the best fixed t and uniform t, each once per distillation seed and watched by the
representation monitor;
(c) fine-tuning with 10 and 100 labels per class, and a ridge linear probe on all labels, from each
distilled student and from random init, over 3 seeds: mean ± std test accuracy, and each
distillation seed's own mean, to ``<results-dir>/quality-<profile>.{json,md,png}`` plus the monitor
curves (``quality-<profile>-monitor.png``).

Profiles (both 28x28 images padded to 32, the shipped teacher's size):

* ``gpu``: sized for one 8-minute call on one H100/H200 (bf16): 20,000 images distilled for 8 epochs
  per arm, all four arms, two distillation seeds, batches cut on the GPU, the dense loss
  (`DenseMSELoss`, which beat the pooled one on the CPU: ``benchmarks/results/fixed-t-dense.md``);
* ``cpu``: about 110 minutes on 2 CPU cores (the committed run's ``seconds``): the two arms the
  targets compare (the policy with configs/distill.yaml's settled setting, and the best fixed t), the
  dense loss, two distillation seeds each, 4,000 images for 4 epochs, the probe at two timesteps;
  chosen from measured speeds on this project's CPU (teacher forward to the decoder 36 img/s,
  distillation step 21 img/s, ResNet-18 training step 54 img/s, feature pass 182 img/s, 32 px, batch
  64): 4 distillations (~45 min), the protocol choice (3 candidates x 3 backbones x 2 columns, ~25
  min), 5 backbones x 3 seeds x 2 columns of fine-tuning (~40 min).

Both profiles choose the fine-tuning protocol per column on the validation split (one rate; the
backbone at 0.1x; LP-FT then 0.1x: `protocol_candidates`) and fine-tune every backbone, random init
included, with the one chosen.

``--dry-run`` runs a profile tiny (on the CPU, in a couple of minutes; a test does). The teacher is
the shipped one when ``benchmarks/teachers/fashion-32`` is there; ``--retrain-teacher`` trains
``configs/fashion-teacher-gpu.yaml`` instead. Fashion-MNIST is read from ``--root`` (default: the
Debian/Ubuntu package's folder, or ``$FASHION``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import yaml

from study import Setting, markdown_table, merge, run_study, write_results

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "benchmarks" / "teachers" / "fashion-32"
TEACHER_CONFIG = ROOT / "configs" / "fashion-teacher-gpu.yaml"
PROFILES: dict[str, dict[str, Any]] = {
    "gpu": {
        "data": {"image_size": 32, "num_val": 5000, "batch_size": 256},
        "distill_data": {"num_train": 20000, "device_batches": True},
        "distill_epochs": 8,
        "arms": None,
        "distill_seeds": [0, 1],
        "finetune_epochs": {10: 30, 100: 15},
        "timesteps": [0, 50, 100, 200, 400],
        "monitor": {"every": 2, "images": 2000},
        # The dense loss on the same maps beat the pooled one on the CPU (benchmarks/results/fixed-t-dense.*).
        "feature_loss": "repfusion_pl.DenseMSELoss",
        "probe": {"accelerator": "auto", "precision": "bf16"},
        "trainer": {"precision": "bf16-mixed"},
    },
    "cpu": {
        "data": {"image_size": 32, "num_train": 2000, "num_val": 500, "num_test": 1000, "batch_size": 64},
        "distill_data": {"num_train": 4000},
        "distill_epochs": 4,
        "arms": ["policy (REINFORCE)", "fixed t"],
        "distill_seeds": [0, 1],
        "finetune_epochs": {10: 30, 100: 5},
        "timesteps": [0, 100],
        "monitor": {"every": 1, "images": 1000, "teacher": False},
        "feature_loss": "repfusion_pl.DenseMSELoss",
        "probe": {"accelerator": "cpu", "precision": "32"},
        "trainer": {},
    },
}
#: --dry-run: the same pipeline on a handful of images, one epoch each, on the CPU.
DRY_RUN = {
    "data": {"num_train": 80, "num_val": 32, "num_test": 32, "batch_size": 16},
    "distill_data": {"num_train": 48, "device_batches": False},
    "distill_epochs": 1,
    "finetune_epochs": {2: 1, 3: 1},
    "timesteps": [0],
    "monitor": {"every": 1, "images": 16},
    "probe": {"accelerator": "cpu", "precision": "32"},
    "trainer": {"accelerator": "cpu"},
    "seeds": [0, 1],
}


def teacher_size(folder: Path) -> int:
    """The image side a teacher folder was trained at (its UNet's ``sample_size``)."""
    config = folder / "unet" / "config.json"
    if not config.is_file():
        config = folder / "config.json"
    size = json.loads(config.read_text())["sample_size"]
    return int(size[0] if isinstance(size, list) else size)


def choose_teacher(retrain: bool, image_size: int) -> tuple[Path | None, Path]:
    """The teacher folder to use as it is (``None``: train it) and the folder it lives in, size-checked."""
    trained = ROOT / yaml.safe_load(TEACHER_CONFIG.read_text())["model"]["init_args"]["output_dir"]
    folder = trained if retrain or not SHIPPED.is_dir() else SHIPPED
    if folder.is_dir() and (size := teacher_size(folder)) != image_size:
        raise SystemExit(
            f"the teacher in {folder} was trained on {size} px images but this profile distils "
            f"{image_size} px ones; use a teacher of {image_size} px or a profile of {size} px"
        )
    return (None if folder == trained and retrain else folder), folder


def configs(profile: dict[str, Any], data: dict) -> tuple[dict, dict, list[Setting]]:
    """The distillation and fine-tuning base configs and the evaluation columns of a profile."""
    epochs = profile["distill_epochs"]
    distill = merge(
        yaml.safe_load((ROOT / "configs" / "distill.yaml").read_text()),
        {
            "trainer": {"max_epochs": epochs, "limit_val_batches": 0, **profile["trainer"]},
            "model": {
                "init_args": {
                    "lr_scheduler": {"init_args": {"T_max": epochs}},
                    "feature_loss": {"class_path": profile["feature_loss"]},
                }
            },
            "data": merge(data, {"init_args": profile["distill_data"]}),
        },
    )
    classify = merge(
        yaml.safe_load((ROOT / "configs" / "classify.yaml").read_text()),
        {"trainer": {"limit_val_batches": 0, "num_sanity_val_steps": 0, **profile["trainer"]}, "data": data},
    )
    settings = [
        Setting(
            f"{labels} labels/class",
            {
                "trainer": {"max_epochs": ft},
                "data": {"init_args": {"labels_per_class": labels, "batch_size": 32}},
            },
        )
        for labels, ft in profile["finetune_epochs"].items()
    ]
    return distill, classify, [*settings, Setting("linear probe, all labels")]


def protocol_candidates(finetune_epochs: dict[int, int]) -> dict[str, dict[str, dict]]:
    """Per fine-tuning column, the protocols the study chooses among on validation (`study.protocols`).

    One rate for all (the task's default); the backbone at 0.1x the head's rate; LP-FT: the head
    alone for a third of the column's epochs more, then all of it with the backbone at 0.1x.
    """

    def protocol(epochs: int, **options: float) -> dict:
        return {"trainer": {"max_epochs": epochs}, "model": {"init_args": {"protocol": options}}}

    columns = {}
    for labels, epochs in finetune_epochs.items():
        extra = max(1, epochs // 3)
        columns[f"{labels} labels/class"] = {
            "one rate": {},
            "backbone x0.1": protocol(epochs, backbone_lr_scale=0.1),
            f"LP-FT ({extra} head-only epochs), then backbone x0.1": protocol(
                epochs + extra, backbone_lr_scale=0.1, probe_epochs=extra
            ),
        }
    return columns


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--root", default=os.environ.get("FASHION"), help="Fashion-MNIST's folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--retrain-teacher", action="store_true", help="train configs/fashion-teacher-gpu.yaml"
    )
    parser.add_argument("--dry-run", action="store_true", help="the same pipeline, tiny, on the CPU")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: artifacts/quality-<profile>")
    parser.add_argument("--report", action="store_true", help="rewrite the tables and plots from the JSON")
    args = parser.parse_args()
    if args.report:
        stem = f"quality-{args.profile}" + ("-dry-run" if args.dry_run else "")
        result = json.loads((args.results_dir / f"{stem}.json").read_text())
        write_results(result, args.results_dir)
        print(markdown_table(result))
        return
    profile = PROFILES[args.profile]
    if args.dry_run:  # merged, but its own fine-tuning columns (a dict would merge with the profile's)
        profile = {**merge(profile, DRY_RUN), "finetune_epochs": DRY_RUN["finetune_epochs"]}
    seeds = profile.get("seeds", args.seeds)
    name = f"quality-{args.profile}" + ("-dry-run" if args.dry_run else "")
    teacher_dir, teacher_folder = choose_teacher(args.retrain_teacher, profile["data"]["image_size"])
    data = {
        "class_path": "repfusion_pl.data.FashionMNISTDataModule",
        "init_args": {"root": args.root, **profile["data"]},
    }
    distill, classify, settings = configs(profile, data)
    protocols = protocol_candidates(profile["finetune_epochs"])
    if args.dry_run:  # the choice on one column is the same code as on two
        protocols = dict(list(protocols.items())[:1])
    monitor = profile["monitor"]
    run_study(
        name=name,
        teacher_config=TEACHER_CONFIG,
        teacher_dir=teacher_dir,
        data=data,
        distill_base=distill,
        classify_base=classify,
        settings=settings,
        seeds=seeds,
        timesteps=profile["timesteps"],
        work_dir=args.work_dir or ROOT / "artifacts" / name,
        results_dir=args.results_dir,
        monitor_every=monitor["every"],
        monitor_images=monitor["images"],
        monitor_teacher=monitor.get("teacher", True),
        arms=profile["arms"],
        distill_seeds=profile["distill_seeds"],
        probe_options=profile["probe"],
        protocols=protocols,
    )
    print(f"teacher: {teacher_folder}")


if __name__ == "__main__":
    main()
