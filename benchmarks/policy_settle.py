"""Does the timestep policy settle, and where? The policy and its reward alone, on cached features.

For each setup and reward, each policy setting runs over several seeds for the study's budget
(default 250 updates at batch 64: 4,000 images for 4 epochs) on the features that
benchmarks/policy_landscape.py cached. Per setting: in how many seeds the policy settled (at least
80 % of its mass on one grid point or two adjacent ones, to the end of the run), after how many
updates, where, and whether that is in the landscape's top region (read from
``policy-landscape.json``). The authors' setting (1,000 actions, no baseline) also runs for
``--paper-updates`` to say what budget it needs.

Writes ``<results-dir>/policy-settle.{json,md,png}``. ``--dry-run``: a few updates, two seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from study.report import environment  # noqa: E402
from timestep_study.features import cached_features, chosen_setup, setup_arguments  # noqa: E402
from timestep_study.settle import PolicySetting, in_top, settle_run  # noqa: E402

GRID = {"grid": [0, 50, 100, 200, 300, 400, 500, 600, 800, 999]}
NORMALISED = {"baseline": "batch_mean", "normalize_advantage": True}
SHIPPED = {**GRID, **NORMALISED}
SETTINGS = [
    PolicySetting("paper: 1000 actions, no baseline", {"baseline": "none"}),
    PolicySetting("1000 actions, batch mean (the study's)", {"baseline": "batch_mean"}),
    PolicySetting("1000 actions, normalised", NORMALISED),
    PolicySetting("grid 10, batch mean", {**GRID, "baseline": "batch_mean"}),
    PolicySetting("grid 10, normalised (shipped)", SHIPPED),
    PolicySetting("log-SNR 10 bins, normalised", {**NORMALISED, "log_snr_bins": 10}),
    PolicySetting("grid 10, normalised, 50-step warm-up", {**SHIPPED, "warmup_steps": 50}),
    PolicySetting("grid 10, normalised, Adam 1e-3", SHIPPED, optimizer="adam"),
    PolicySetting("grid 10, normalised, reads targets", SHIPPED, read="targets"),
]  # fmt: skip
REWARDS = ["task head", "contrastive", "contrastive, whole batch", "least squares"]


def summary(runs: list[dict], top_region: list[int]) -> dict:
    """Counts over seeds: settled, settled in the top region, median updates to settle, places."""
    settled = [r for r in runs if r["settled_at"] is not None]
    return {
        "seeds": len(runs),
        "settled": len(settled),
        "in_top": sum(in_top(r, top_region) for r in runs),
        "median_updates": statistics.median(r["settled_at"] for r in settled) if settled else None,
        "t": [r["t"] for r in runs],
        "share": [r["share"] for r in runs],
    }


def own_top_region(setting: PolicySetting, setup: str, reward: str, landscapes: dict) -> str:
    """A row's note when its reward reads another input than the table's (its own top region)."""
    if setting.read == "head" or setting.read not in landscapes.get(setup, {}):
        return ""
    return f" (top region on the {setting.read}: {landscapes[setup][setting.read][reward]['top_region']})"


def markdown(results: dict, landscapes: dict) -> str:
    """One table per setup and reward: settings as rows."""
    settings = {setting.name: setting for setting in SETTINGS}
    lines = ["# Does the timestep policy settle?", ""]
    lines.append(f"{results['updates']} updates at batch {results['batch']}, seeds {results['seeds']}.")
    for setup, by_reward in results["setups"].items():
        for reward, block in by_reward.items():
            lines += ["", f"## {setup}, {reward} reward (top region {block['top_region']})", ""]
            lines += ["| setting | settled | in top region | median updates | t per seed | share per seed |"]
            lines += ["|---|---|---|---|---|---|"]
            for name, row in block["settings"].items():
                n, med = row["seeds"], row["median_updates"] or "–"
                shares = " ".join(f"{s:.2f}" for s in row["share"])
                note = own_top_region(settings[name], setup, reward, landscapes) if name in settings else ""
                counts = f"{row['settled']}/{n} | {row['in_top']}/{n}"
                lines.append(f"| {name}{note} | {counts} | {med} | {row['t']} | {shares} |")
    if results.get("paper_budget"):
        lines += ["", "## The authors' setting with a longer budget", ""]
        for key, row in results["paper_budget"].items():
            lines.append(
                f"- {key}: settled {row['settled']}/{row['seeds']}, in the top region {row['in_top']}/"
                f"{row['seeds']}, after {row['median_updates']} updates (median), on t = {row['t']}"
            )
    return "\n".join(lines) + "\n"


def figure(results: dict, path: Path) -> None:
    """The share of the policy's mass where it concentrates, per update: rows setups, columns rewards."""
    setups = list(results["setups"])
    rewards = list(dict.fromkeys(r for s in setups for r in results["setups"][s]))
    fig, axes = plt.subplots(
        len(setups), len(rewards), figsize=(4.2 * len(rewards), 3.4 * len(setups)), squeeze=False
    )
    for row, setup in enumerate(setups):
        for col, reward in enumerate(rewards):
            ax = axes[row][col]
            block = results["setups"][setup].get(reward, {"runs": {}})
            for i, (name, runs) in enumerate(block["runs"].items()):
                for j, run in enumerate(runs):
                    updates, _, shares = zip(*run["trace"], strict=False)
                    ax.plot(updates, shares, color=f"C{i}", alpha=0.6, lw=0.8, label=name if j == 0 else None)
            ax.axhline(0.8, color="k", linestyle=":")
            ax.set_ylim(0, 1.02)
            ax.set_title(f"{setup} · {reward}", fontsize=9)
            ax.set_xlabel("policy update")
            ax.set_ylabel("share on 1-2 adjacent points")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    setup_arguments(parser)
    parser.add_argument("--rewards", nargs="+", choices=REWARDS, default=REWARDS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--updates", type=int, default=250)
    parser.add_argument("--paper-updates", type=int, default=2000, help="0: skip the longer paper run")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--update", action="store_true", help="replace only these setups' and rewards' rows in the JSON"
    )
    parser.add_argument("--report", action="store_true", help="rewrite the table and figure from the JSON")
    args = parser.parse_args()
    if args.report:
        stem = "policy-settle" + ("-dry-run" if args.dry_run else "")
        landscape_file = args.results_dir / (
            "policy-landscape" + ("-dry-run" if args.dry_run else "") + ".json"
        )
        landscapes = json.loads(landscape_file.read_text())["setups"] if landscape_file.is_file() else {}
        write_report(
            json.loads((args.results_dir / f"{stem}.json").read_text()), args.results_dir, stem, landscapes
        )
        return
    if args.dry_run:
        args.seeds, args.updates, args.paper_updates, args.batch = [0, 1], 10, 10, 16
    stem = "policy-settle" + ("-dry-run" if args.dry_run else "")
    landscape_file = args.results_dir / ("policy-landscape" + ("-dry-run" if args.dry_run else "") + ".json")
    if not landscape_file.is_file():
        raise SystemExit(f"no {landscape_file}: run benchmarks/policy_landscape.py first (its top regions)")
    landscapes = json.loads(landscape_file.read_text())["setups"]
    results: dict = {
        "name": stem,
        "updates": args.updates,
        "batch": args.batch,
        "seeds": args.seeds,
        "setups": {},
    }
    earlier = args.results_dir / f"{stem}.json"
    if args.update and earlier.is_file():
        results = json.loads(earlier.read_text())
        if (results["updates"], results["batch"], results["seeds"]) != (args.updates, args.batch, args.seeds):
            raise SystemExit(f"--update keeps the updates, batch and seeds of {earlier}")
    started = time.perf_counter() - results.get("seconds", 0)
    for name in args.setups:
        setup = chosen_setup(name, args)
        cache = cached_features(setup, args.root, args.cache_dir)
        for reward in args.rewards:
            block: dict = {"settings": {}, "runs": {}}
            for setting in SETTINGS:
                if setting.read not in landscapes[name]:
                    continue  # the distilled target is the head layer here
                top = landscapes[name][setting.read][reward]["top_region"]
                block["top_region"] = landscapes[name]["head"][reward]["top_region"]
                runs = [settle_run(setting, reward, cache, args.updates, args.batch, s) for s in args.seeds]
                block["settings"][setting.name] = summary(runs, top)
                block["runs"][setting.name] = runs
                print(f"{name} · {reward} · {setting.name}: {block['settings'][setting.name]}", flush=True)
            results["setups"].setdefault(name, {})[reward] = block
        if args.paper_updates and "task head" in args.rewards:
            top = landscapes[name]["head"]["task head"]["top_region"]
            runs = [
                settle_run(SETTINGS[0], "task head", cache, args.paper_updates, args.batch, s)
                for s in args.seeds
            ]
            results.setdefault("paper_budget", {})[f"{name}, task head, {args.paper_updates} updates"] = (
                summary(runs, top)
            )
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["environment"] = environment()
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{stem}.json").write_text(json.dumps(results, indent=1))
    write_report(results, args.results_dir, stem, landscapes)


def write_report(results: dict, folder: Path, stem: str, landscapes: dict) -> None:
    """The table (``.md``, also printed) and the figure (``.png``) of a settle run's results."""
    table = markdown(results, landscapes)
    (folder / f"{stem}.md").write_text(table)
    figure(results, folder / f"{stem}.png")
    print(table)


if __name__ == "__main__":
    main()
