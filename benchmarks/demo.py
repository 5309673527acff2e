"""The whole RepFusion story on the embedded digits, end to end on a laptop CPU (``make demo``).

1. Train the small digits teacher (configs/teacher.yaml), or reuse it.
2. Probe it: linear-probe accuracy per teacher layer (encoder, decoder, concatenations) x timestep,
   next to a random-init ResNet-18.
3. Distil a ResNet-18 from the best cell four ways: the REINFORCE timestep policy with labels, the
   policy without labels (contrastive reward), the probe's best fixed t, and t drawn uniformly
   (configs/distill.yaml otherwise), each probed every 5 epochs by the representation monitor.
4. Fine-tune each student and a random-init one with 10 labels per class over 3 seeds
   (configs/classify.yaml), and linear-probe each on all labels; print mean ± std test accuracy and
   write benchmarks/results/demo.{json,md,png}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from study import Setting, run_study

ROOT = Path(__file__).resolve().parent.parent
DIGITS = {
    "class_path": "repfusion_pl.data.DigitsDataModule",
    "init_args": {"image_size": 16, "batch_size": 64},
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--distill-epochs", type=int, default=30)
    parser.add_argument("--finetune-epochs", type=int, default=30)
    parser.add_argument("--labels-per-class", type=int, default=10)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[0, 50, 100, 200, 400, 700])
    parser.add_argument("--work-dir", type=Path, default=ROOT / "artifacts" / "demo")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="demo")
    parser.add_argument("--monitor-every", type=int, default=5, help="probe the students every N epochs")
    args = parser.parse_args()

    distill = yaml.safe_load((ROOT / "configs" / "distill.yaml").read_text())
    distill["trainer"]["max_epochs"] = args.distill_epochs
    distill["model"]["init_args"]["lr_scheduler"]["init_args"]["T_max"] = args.distill_epochs
    classify = yaml.safe_load((ROOT / "configs" / "classify.yaml").read_text())
    classify["trainer"].update(max_epochs=args.finetune_epochs, limit_val_batches=0, num_sanity_val_steps=0)
    labelled = {"data": {"init_args": {"labels_per_class": args.labels_per_class}}}
    run_study(
        name=args.name,
        teacher_config=ROOT / "configs" / "teacher.yaml",
        data=DIGITS,
        distill_base=distill,
        classify_base=classify,
        settings=[
            Setting(f"{args.labels_per_class} labels/class", labelled),
            Setting("linear probe, all labels"),
        ],
        seeds=args.seeds,
        timesteps=args.timesteps,
        work_dir=args.work_dir,
        results_dir=args.results_dir,
        monitor_every=args.monitor_every,
    )


if __name__ == "__main__":
    main()
