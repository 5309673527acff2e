"""Live teacher or teacher-target cache, and how many cached views: the fixed-t arm of the Fashion study.

The quality study's best cell (the shipped teacher's five-layer concatenation at t = 0, ResNet-18,
4,000 Fashion-MNIST images at 32 px) distilled for the same epochs and learning-rate schedule from:
the live teacher (a fresh augmentation of every image every epoch, which the teacher sees too) and
caches of 1 view (the image as it is), 2 (and its mirror) and 8 (and 6 seeded draws of the data's
augmentation: flips and 4 px shifts). Per arm: the cache build's time, the fit's time, the
representation monitor's online probe after every epoch (and the epoch it first came within 0.5
points of its best: its plateau), and the ridge linear probe of the final student on all labels,
next to random init over 3 seeds. ``--finetune`` adds a 100-labels-per-class fine-tuning column;
``--dense`` adds the live teacher with the dense loss (`DenseMSELoss` on the same maps) instead of
the pooled one.

Usage: ``python benchmarks/cache_views.py [--epochs 6] [--views 1 2 8] [--no-live] [--dense] [--finetune]
[--name cache-views]``; prints the table and writes ``<results-dir>/<name>.{json,md,png}`` and
``<name>-monitor.png``.
``--dry-run`` runs the same pipeline on a handful of images (a test does).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import lightning
import torch

from cache_tradeoff import BEST_CELL, SHIPPED
from quality import DRY_RUN, PROFILES, configs
from repfusion_pl.data.views import ViewSpec
from repfusion_pl.distillation.cache_build import build_cache
from study import Comparison, merge
from study.report import repo_relative
from study.runs import instantiate_data, instantiate_model

ROOT = Path(__file__).resolve().parent.parent
#: Within this much of its best, the monitor has reached its plateau.
PLATEAU = 0.005


def view_spec(views: int) -> ViewSpec:
    """1: the image as it is; 2: and its mirror; more: and seeded draws of the augmentation."""
    if views < 1:
        raise SystemExit(f"--views takes counts of 1 or more, not {views}")
    return ViewSpec(flip=views >= 2, augmented=max(0, views - 2))


def build(distill: dict, views: int, folder: Path) -> float:
    """Build the cache of ``views`` views for ``distill``'s teacher and data; return its seconds."""
    lightning.seed_everything(0, verbose=False)
    module = instantiate_model(distill["model"])
    data = instantiate_data(distill["data"])
    start = time.perf_counter()
    command = f"python benchmarks/cache_views.py --views {views}"
    build_cache(module, data, folder, [0], view_spec(views), command, torch.device("cpu"))
    return time.perf_counter() - start


def plateau(curve: list[dict[str, Any]]) -> dict[str, Any]:
    """The monitor's first, best and last probe, and the epoch (1-based) it first came within PLATEAU."""
    values = [entry["student"] for entry in curve]
    best = max(values)
    reached = next(i for i, v in enumerate(values) if v >= best - PLATEAU)
    return {
        "bar": curve[0]["random"],
        "first": values[0],
        "best": best,
        "last": values[-1],
        "plateau_epoch": curve[reached]["epoch"] + 1,
    }


def summary_rows(result: dict[str, Any], builds: dict[str, float], probe: str) -> list[dict[str, Any]]:
    """One row per distilled arm: times, the monitor's curve in brief, the linear probe."""
    rows = []
    for arm, record in result["distillation"].items():
        row = {"arm": arm, "build_s": round(builds.get(arm, 0.0), 1), "fit_s": record["seconds"]}
        row |= plateau(record["monitor"]) if record.get("monitor") else {}
        row["linear_probe"] = result["scores"][arm][probe][0]
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], random_probe: list[float], epochs: int) -> str:
    mean = sum(random_probe) / len(random_probe)
    lines = [
        "| distilled from | cache build | fit | monitor: bar → best (last) | plateau epoch | linear probe |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        monitor = f"{100 * row['bar']:.1f} → {100 * row['best']:.1f} ({100 * row['last']:.1f})"
        build = f"{row['build_s']:.0f} s" if row["build_s"] else "—"
        reached = f"{row['plateau_epoch']} of {epochs}" if row["plateau_epoch"] else "never rose"
        lines.append(
            f"| {row['arm']} | {build} | {row['fit_s']:.0f} s | {monitor} | {reached} | "
            f"{100 * row['linear_probe']:.1f} |"
        )
    lines.append(f"| random init ({len(random_probe)} seeds) | | | | | {100 * mean:.1f} |")
    return "\n".join(lines)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default=os.environ.get("FASHION"), help="Fashion-MNIST's folder")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--views", type=int, nargs="*", default=[1, 2, 8], help="none: no cached arm")
    parser.add_argument("--no-live", action="store_true", help="leave out the live-teacher arm")
    parser.add_argument("--dense", action="store_true", help="add the live teacher with DenseMSELoss")
    parser.add_argument("--name", default="cache-views", help="the results files' name")
    parser.add_argument("--finetune", action="store_true", help="add a 100-labels fine-tuning column")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dry-run", action="store_true", help="the same pipeline, tiny")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "artifacts" / "cache-views")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    profile = merge(PROFILES["cpu"], {"distill_epochs": args.epochs})
    if args.dry_run:
        profile = {**merge(profile, DRY_RUN), "finetune_epochs": {3: 1}}
    name = args.name + ("-dry-run" if args.dry_run else "")
    data = {
        "class_path": "repfusion_pl.data.FashionMNISTDataModule",
        "init_args": {"root": args.root, **profile["data"]},
    }
    distill, classify, settings = configs(profile, data)
    teacher = {"init_args": {"source": str(SHIPPED), "layers": BEST_CELL}}
    sampler = {"class_path": "repfusion_pl.FixedTimestep", "init_args": {"t": 0}}
    distill = merge(distill, {"model": {"init_args": {"teacher": teacher, "sampler": sampler}}})
    settings = settings[-1:] if not args.finetune else [*settings[-2:-1], settings[-1]]
    arms: dict[str, dict] = {} if args.no_live else {"live teacher": {}}
    if args.dense:
        dense = {"class_path": "repfusion_pl.DenseMSELoss"}
        arms["live teacher, dense MSE"] = {"model": {"init_args": {"feature_loss": dense}}}
    builds: dict[str, float] = {}
    for views in args.views:
        arm, folder = f"cache, {views} view{'s' * (views > 1)}", args.work_dir / f"cache-{views}"
        print(f"== building the {views}-view cache in {folder}")
        builds[arm] = build(distill, views, folder)
        cached = {"class_path": "repfusion_pl.CachedTeacher", "init_args": {"cache": str(folder)}}
        arms[arm] = {"model": {"init_args": {"teacher": cached}}}
    monitor = profile["monitor"]
    comparison = Comparison(
        name=name,
        distill_base=distill,
        classify_base=classify,
        arms=arms,
        settings=settings,
        seeds=profile.get("seeds", args.seeds),
        work_dir=args.work_dir,
        results_dir=args.results_dir,
        probe_data=data,
        monitor={
            "class_path": "repfusion_pl.RepresentationMonitor",
            "init_args": {
                "data": data,
                "every_n_epochs": 1,
                "max_images": monitor["images"],
                "teacher": False,
            },
        },
        extra={
            "epochs": profile["distill_epochs"],
            "cache_build_seconds": builds,
            "teacher": repo_relative(SHIPPED),
        },
    )
    result = comparison.run(progress=print)
    rows = summary_rows(result, builds, settings[-1].name)
    table = markdown(rows, result["scores"]["random init"][settings[-1].name], profile["distill_epochs"])
    result["summary"] = rows
    (args.results_dir / f"{name}.json").write_text(json.dumps(result, indent=1))
    with (args.results_dir / f"{name}.md").open("a") as handle:
        handle.write("\n\n" + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
