"""The timestep reward's landscape: which timesteps a reward prefers, and by how much.

For each setup (a teacher and its labelled data: ``fashion``, the quality study's shipped teacher;
``digits``, configs/distill.yaml's), the teacher's pooled features of training and held-out images
are computed once at a grid of timesteps (``artifacts/timestep-features``). Each reward
(`TaskHeadReward`, `LeastSquaresReward`, `ContrastiveReward`) is trained at uniform t on the
training features (2,000 steps of the study's SGD, batch 64) and scored on the held-out ones, in
batches all at one t. Per t: mean reward, per-image spread, standard error, and the top region
(the timesteps within two paired standard errors of the best). Each reward reads the head layer
and, where it differs, the distilled target (the student's layers, pooled and concatenated).

Writes ``<results-dir>/policy-landscape.{json,md,png}``. ``--dry-run``: a few images, few steps.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from study.report import environment  # noqa: E402
from timestep_study.features import ROOT, cached_features, chosen_setup, setup_arguments  # noqa: E402
from timestep_study.landscape import REWARDS, landscape, minority_reward  # noqa: E402


def reads_of(cache: dict) -> list[str]:
    """``head``, and ``targets`` when the distilled target is not the head layer itself."""
    same = cache["train/head"].shape == cache["train/targets"].shape and bool(
        (cache["train/head"] == cache["train/targets"]).all()
    )
    return ["head"] if same else ["head", "targets"]


def markdown(results: dict) -> str:
    """One table per setup and read: rewards as rows, the grid's timesteps as columns."""
    lines = ["# The timestep reward's landscape", ""]
    for setup, by_read in results["setups"].items():
        for read, by_reward in by_read.items():
            grid = next(iter(by_reward.values()))["grid"]
            lines += [f"## {setup}, reward reads {read}", ""]
            lines += ["| reward | " + " | ".join(f"t={t}" for t in grid) + " | spread | top region |"]
            lines += ["|---" * (len(grid) + 3) + "|"]
            for name, row in by_reward.items():
                cells = [
                    f"**{m:.3f}**" if t in row["top_region"] else f"{m:.3f}"
                    for t, m in zip(grid, row["mean"], strict=False)
                ]
                spread = f"{min(row['spread']):.2f}–{max(row['spread']):.2f}"
                lines.append(f"| {name} | " + " | ".join(cells) + f" | {spread} | {row['top_region']} |")
            lines.append("")
    lines.append("Bold: the top region (within two paired standard errors of the best timestep).")
    lines += ["", "## In-batch rewards: 8 images at one timestep among 56 at another", ""]
    lines += ["| setup · read · reward | minority t | majority t | minority's reward | all at minority t |"]
    lines += ["|---|---|---|---|---|"]
    for setup, by_read in results["setups"].items():
        for read, by_reward in by_read.items():
            for name, row in by_reward.items():
                for m in row.get("minority", []):
                    grid = row["grid"]
                    lines.append(
                        f"| {setup} · {read} · {name} | {grid[m['minority_point']]} | "
                        f"{grid[m['majority_point']]} | {m['minority_reward']:.3f} | "
                        f"{m['all_at_minority_point']:.3f} |"
                    )
    return "\n".join(lines) + "\n"


def figure(results: dict, path: Path) -> None:
    """Mean reward ± 2 standard errors against t: one column per setup and read, one row per reward."""
    columns = [(s, r) for s, by_read in results["setups"].items() for r in by_read]
    fig, axes = plt.subplots(len(REWARDS), len(columns), figsize=(4 * len(columns), 2.6 * len(REWARDS)))
    axes = axes.reshape(len(REWARDS), len(columns))
    for col, (setup, read) in enumerate(columns):
        for row, name in enumerate(REWARDS):
            ax, data = axes[row, col], results["setups"][setup][read][name]
            mean, err = data["mean"], [2 * s for s in data["stderr"]]
            ax.errorbar(data["grid"], mean, yerr=err, marker="o", capsize=3)
            top = [m for t, m in zip(data["grid"], mean, strict=False) if t in data["top_region"]]
            ax.scatter([t for t in data["grid"] if t in data["top_region"]], top, color="C3", zorder=3)
            ax.set_title(f"{setup} · {read} · {name}", fontsize=9)
            ax.set_xlabel("timestep t")
            ax.set_ylabel("mean reward")
    fig.suptitle("Reward per timestep (held-out images; red: top region; bars: ±2 s.e.)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    setup_arguments(parser)
    parser.add_argument("--steps", type=int, default=2000, help="training steps of each reward")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    if args.dry_run:
        args.steps, args.batch = 5, 16
    results: dict = {"name": "policy-landscape", "steps": args.steps, "batch": args.batch, "setups": {}}
    started = time.perf_counter()
    for name in args.setups:
        setup = chosen_setup(name, args)
        cache = cached_features(setup, args.root, args.cache_dir)
        results["setups"][name] = {read: {} for read in reads_of(cache)}
        for read in reads_of(cache):
            for reward_name in REWARDS:
                row, reward = landscape(reward_name, cache, read, args.steps, args.batch)
                if reward_name.startswith("contrastive"):  # does the batch pay for disagreeing?
                    held = cache[f"held_out/{read}"], cache["held_out/labels"]
                    row["minority"] = minority_reward(reward, *held, args.batch)
                results["setups"][name][read][reward_name] = row
        results.setdefault("teachers", {})[name] = {
            "teacher": os.path.relpath(setup.teacher, ROOT),
            "head_layer": setup.head_layer, "targets": setup.targets,
            "train_images": setup.num_train, "held_out_images": setup.num_held_out,
        }  # fmt: skip
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["environment"] = environment()
    stem = "policy-landscape" + ("-dry-run" if args.dry_run else "")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (args.results_dir / f"{stem}.md").write_text(markdown(results))
    figure(results, args.results_dir / f"{stem}.png")
    print(markdown(results))


if __name__ == "__main__":
    main()
