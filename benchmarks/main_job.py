"""The main job, measured: `make distill` (configs/fashion-distill.yaml) as a user runs it, timed.

One run of the real CLI in this process: the shipped Fashion teacher distilled into a ResNet-18 on
the Fashion-MNIST subset the package ships. Recorded: the wall time, the representation monitor's
history (student, random bar over its inits, teacher, per epoch), the last line's verdict (the gap to
the bar in units of the monitor's noise, `repfusion_pl.probing.verdict`), and where the policy
settled. Writes ``<results-dir>/main-job.{json,md,png}``. Run it alone: a second job on 2 cores
makes both several times slower.

    python benchmarks/main_job.py [--results-dir benchmarks/results] [extra CLI arguments...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from policy_distill import policy_record
from repfusion_pl.cli import build_cli
from repfusion_pl.probing.monitor import RepresentationMonitor
from repfusion_pl.probing.verdict import verdict, verdict_line
from study.report import environment

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/fashion-distill.yaml"


def run(extra: list[str]) -> dict[str, Any]:
    """``repfusion fit --config configs/fashion-distill.yaml`` plus ``extra``; what it measured."""
    start = time.perf_counter()
    cli = build_cli(["--config", str(ROOT / CONFIG), *extra], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - start
    watcher = next(c for c in cli.trainer.callbacks if isinstance(c, RepresentationMonitor))
    assert watcher.random_bar is not None, "the monitor never ran"
    last = watcher.history[-1]
    found = verdict(float(last["student"]), watcher.random_bar, watcher.val_images)
    return {
        "config": CONFIG,
        "arguments": extra,
        "seconds": round(seconds, 1),
        "minutes": round(seconds / 60, 2),
        "epochs": cli.trainer.current_epoch,
        "train_images": len(cli.datamodule.splits["train"]),
        "probe_val_images": watcher.val_images,
        "monitor": watcher.history,
        "random_bar": watcher.random_bar,
        "last": {k: last[k] for k in ("student", "random", "teacher", "t") if k in last},
        "verdict": {k: round(v, 4) for k, v in found.items()},
        "verdict_line": verdict_line(last, watcher.random_bar, watcher.val_images),
        "policy": policy_record(cli),
        "log_dir": None if cli.trainer.log_dir is None else str(cli.trainer.log_dir),
        "environment": environment(),
    }


def table(result: dict[str, Any]) -> str:
    """The monitor's history as markdown, then the verdict."""
    rows = ["| after epoch | student | random bar | teacher (t) |", "|---|---:|---:|---:|"]
    for entry in result["monitor"]:
        when = "before training" if entry["epoch"] < 0 else str(entry["epoch"] + 1)
        teacher = f"{entry['teacher']:.3f} ({entry['t']})" if "teacher" in entry else "-"
        rows.append(f"| {when} | {entry['student']:.3f} | {entry['random']:.3f} | {teacher} |")
    found, bar = result["verdict"], result["random_bar"]
    rows += [
        "",
        f"Random bar: mean of {bar.get('inits', 1)} initialisations ({bar.get('std', 0.0):.3f} spread). "
        f"Gap {found['gap'] * 100:.1f} points = {found['gap_over_noise']:.1f}x the monitor's noise "
        f"({found['noise'] * 100:.1f} points) on {result['probe_val_images']} validation images. "
        f"The policy settled on t = {result['policy']['settled_t']} "
        f"({result['policy']['settled_share'] * 100:.0f} % of the last epoch's draws). "
        f"{result['seconds'] / 60:.1f} min on {result['environment']['device']}.",
    ]
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args, extra = parser.parse_known_args()
    result = run(extra)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    figure = Path(result.pop("log_dir") or ".") / "representation_probe.png"
    if figure.is_file():
        shutil.copy(figure, args.results_dir / "main-job.png")
    (args.results_dir / "main-job.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.results_dir / "main-job.md").write_text(table(result))
    print(table(result))


if __name__ == "__main__":
    main()
