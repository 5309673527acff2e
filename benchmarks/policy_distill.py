"""The shipped policy in a real distillation: does it settle, where, and at what cost to the student?

Per setup, two runs of the real CLI: configs/distill.yaml's policy (``digits``: configs/distill.yaml as
it is; ``fashion``: with benchmarks/configs/fashion-policy.yaml, the quality study's CPU budget) and
the same run at the fixed timestep the policy settled on. Reported: the policy's share of draws per
grid point in each epoch (`TimestepTelemetry`), where it settled and the share there, the feature
loss of both students on the same 512 training images at the timesteps each run draws (the policy's
student at the policy's draws), their ratio, and the monitor's last probe. For digits the teacher's
linear probe of the distilled layer at every grid point gives the probe's top region (the timesteps
within two binomial standard errors of the best).

Writes ``<results-dir>/policy-distill.{json,png}``. Run each setup alone: the CPU is timed by nobody here,
but two runs at once take 2-20 times longer.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from repfusion_pl.cli import build_cli  # noqa: E402
from repfusion_pl.distillation.telemetry import TimestepTelemetry  # noqa: E402
from repfusion_pl.probing.probe import run_probe, split_loaders  # noqa: E402
from repfusion_pl.timesteps.actions import settled  # noqa: E402
from study.report import environment  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Per setup: its configs, in order, then any arguments after them.
SETUPS = {
    "digits": (["configs/distill.yaml"], []),
    "fashion": (["configs/distill.yaml", "benchmarks/configs/fashion-policy.yaml"], []),
    # The label-free override's reward, on the Fashion run (whose callbacks and data replace its digits ones).
    "fashion-no-labels": (
        ["configs/distill.yaml", "configs/distill-no-labels.yaml", "benchmarks/configs/fashion-policy.yaml"],
        ["--data.init_args.labels=false"],
    ),
}
# The landscape a setup's policy is rewarded on: setup, what the reward reads, reward.
REWARD_LANDSCAPE = {
    "digits": ("digits", "head", "task head"),
    "fashion": ("fashion", "head", "task head"),
    "fashion-no-labels": ("fashion", "targets", "contrastive"),
}


def fit(configs: list[str], extra: list[str]) -> Any:
    """One ``repfusion fit`` in this process; the CLI object afterwards."""
    args = [a for c in configs for a in ("--config", str(ROOT / c))] + extra
    cli = build_cli(args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli


@torch.no_grad()
def feature_loss(cli: Any, images: int = 512) -> float:
    """The summed feature loss of the trained student on the first training images, at its sampler's draws."""
    module, data = cli.model.eval(), cli.datamodule
    batch = data.splits["train"].images[:images].float().to(module.device)
    generator = torch.Generator(device=module.device).manual_seed(0)
    losses, _ = module.feature_losses(batch, module.sampler.draw(batch, generator).timesteps, None)
    return round(float(torch.stack(list(losses.values())).sum()), 5)


def policy_record(cli: Any) -> dict[str, Any]:
    """Per epoch, the policy's share of draws on each grid point; where it settled and its share there."""
    telemetry = next(c for c in cli.trainer.callbacks if isinstance(c, TimestepTelemetry))
    grid = cli.model.sampler.support()
    per_epoch = []
    for counts in telemetry.history:
        on_grid = torch.tensor([counts[t] for t in grid], dtype=torch.float64)
        per_epoch.append([round(float(v), 4) for v in on_grid / on_grid.sum()])
    point, share = settled(torch.tensor(per_epoch[-1]))
    return {
        "grid": grid,
        "share_per_epoch": per_epoch,
        "settled_t": grid[point],
        "settled_share": round(share, 4),
    }


def monitor(cli: Any) -> dict[str, float]:
    """The monitor's last probe of the student and its random bar."""
    return {k: round(float(v), 4) for k, v in cli.trainer.callback_metrics.items() if k.startswith("probe/")}


def probe_top_region(cli: Any, grid: list[int]) -> dict[str, Any]:
    """The teacher's linear probe of the distilled layer at each grid point, and its top region."""
    data, teacher = cli.datamodule, cli.model.teacher
    source = {"source": teacher.source, "layers": teacher.layers, "input_range": list(teacher.input_range)}
    rows = run_probe(source, split_loaders(data), 10, grid, layers=teacher.layers, accelerator="cpu")["rows"]
    accuracy = {row["timestep"]: row["val_acc"] for row in rows}
    n = len(data.splits["val"])
    best = max(accuracy.values())
    stderr = math.sqrt(best * (1 - best) / n)
    return {
        "val_acc": accuracy,
        "val_images": n,
        "top_region": [t for t in grid if best - accuracy[t] <= 2 * stderr],
    }


def run_setup(name: str, fit_args: list[str]) -> dict[str, Any]:
    """The policy run, the fixed-t run at its settled timestep, and what they say."""
    started, (configs, setup_args) = time.perf_counter(), SETUPS[name]
    fit_args = [*setup_args, *fit_args]
    policy = fit(configs, [f"--trainer.default_root_dir=artifacts/policy-distill/{name}-policy", *fit_args])
    record = {**policy_record(policy), "policy_seconds": round(time.perf_counter() - started, 1)}
    record["policy_feature_loss"], record["policy_monitor"] = feature_loss(policy), monitor(policy)
    if name == "digits":
        record["probe"] = probe_top_region(policy, record["grid"])
    started = time.perf_counter()
    fixed = fit(
        configs,
        [
            f"--trainer.default_root_dir=artifacts/policy-distill/{name}-fixed",
            "--model.init_args.sampler=repfusion_pl.FixedTimestep",
            f"--model.init_args.sampler.t={record['settled_t']}",
            *fit_args,
        ],
    )
    record["fixed_seconds"] = round(time.perf_counter() - started, 1)
    record["fixed_feature_loss"], record["fixed_monitor"] = feature_loss(fixed), monitor(fixed)
    record["loss_ratio"] = round(record["policy_feature_loss"] / record["fixed_feature_loss"], 3)
    return record


def markdown(results: dict, landscape: dict) -> str:
    """One row per setup: where the policy settled, the top regions, feature losses, monitor probes."""
    lines = [
        "| setup | settled on | share there (last epoch) | reward's top region | probe's top region "
        "| feature loss, policy | at fixed t | ratio | monitor: policy / fixed t / random |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["setups"].items():
        top = r["probe"]["top_region"] if "probe" in r else "–"
        setup, read, reward = REWARD_LANDSCAPE[name]
        reward_top = landscape.get(setup, {}).get(read, {}).get(reward, {}).get("top_region", "–")
        reward_top = f"{reward}: {reward_top}"
        probes = [r["policy_monitor"].get("probe/student"), r["fixed_monitor"].get("probe/student")]
        probes.append(r["policy_monitor"].get("probe/random"))
        shown = " / ".join("–" if p is None else f"{p:.3f}" for p in probes)
        lines.append(
            f"| {name} | t = {r['settled_t']} | {r['settled_share']:.1%} | {reward_top} | {top} "
            f"| {r['policy_feature_loss']:.4f} | {r['fixed_feature_loss']:.4f} | {r['loss_ratio']:.2f} "
            f"| {shown} |"
        )
    return "\n".join(lines) + "\n"


def figure(results: dict, path: Path) -> None:
    """The policy's share of draws per grid point in each epoch, one panel per setup."""
    setups = results["setups"]
    fig, axes = plt.subplots(1, len(setups), figsize=(5.5 * len(setups), 3.8), squeeze=False)
    for ax, (name, record) in zip(axes[0], setups.items(), strict=False):
        shares = torch.tensor(record["share_per_epoch"]).T
        image = ax.imshow(shares, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1)
        ax.set_yticks(range(len(record["grid"])), [str(t) for t in record["grid"]])
        ax.set_xlabel("epoch")
        ax.set_ylabel("timestep")
        ax.set_title(
            f"{name}: settled on t={record['settled_t']} ({record['settled_share']:.1%})", fontsize=9
        )
        fig.colorbar(image, ax=ax, label="share of draws")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setups", nargs="+", choices=sorted(SETUPS), default=["digits", "fashion"])
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--report", action="store_true", help="rewrite the table and figure from the JSON")
    parser.add_argument(
        "--fit-args", action="extend", nargs="+", default=[], help="more `repfusion fit` arguments, for both"
    )
    args = parser.parse_args()
    path = args.results_dir / "policy-distill.json"
    results = json.loads(path.read_text()) if path.is_file() else {"name": "policy-distill", "setups": {}}
    for name in [] if args.report else args.setups:
        results["setups"][name] = run_setup(name, args.fit_args)
        print(name, json.dumps({k: v for k, v in results["setups"][name].items() if k != "share_per_epoch"}))
    if not args.report:
        results["environment"] = environment()
    path.write_text(json.dumps(results, indent=1))
    landscape_file = args.results_dir / "policy-landscape.json"
    landscape = json.loads(landscape_file.read_text())["setups"] if landscape_file.is_file() else {}
    path.with_suffix(".md").write_text(markdown(results, landscape))
    figure(results, args.results_dir / "policy-distill.png")


if __name__ == "__main__":
    main()
