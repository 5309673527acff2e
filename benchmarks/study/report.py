"""What a study reports: mean ± std tables, a grouped bar plot, and where the numbers were measured."""

from __future__ import annotations

import json
import math
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning
import torch

from study.protocols import selection_table
from study.targets import check_targets, targets_table


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


#: Vector extensions that change CPU timings several-fold (the same command measured 3-4x apart).
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def _cpuinfo() -> tuple[str, list[str]]:
    """The CPU model name and which of `VECTOR_FLAGS` it has (Linux ``/proc/cpuinfo``)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name == (platform.processor() or platform.machine()):
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return name, [flag for flag in VECTOR_FLAGS if flag in flags]


def environment() -> dict[str, Any]:
    """Where the numbers were measured: device, CPU model and vector extensions, threads, versions."""
    cpu, flags = _cpuinfo()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({cpu})"
    return {
        "device": device,
        "cpu": cpu,
        "cpu_vector_extensions": flags,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
    }


def repo_relative(path: str | Path) -> str:
    """``path`` relative to the repository when it lies inside it: results must not name one machine."""
    root = Path(__file__).resolve().parents[2]
    resolved = Path(path).resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(path)


def rounded(metrics: dict[str, Any]) -> dict[str, Any]:
    """Finite numbers rounded to 5 digits, other entries as they are (private ones, ``_*``, left out)."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if key.startswith("_") or (isinstance(value, float) and not math.isfinite(value)):
            continue
        out[key] = round(value, 5) if isinstance(value, float) else value
    return out


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """Markdown rows: one per arm, one ``mean ± std`` cell per setting; the best mean in bold."""
    settings = result["settings"]
    best = {s: max(statistics.fmean(arm[s]) for arm in result["scores"].values()) for s in settings}
    rows = []
    for arm, per_setting in result["scores"].items():
        cells = [arm]
        for s in settings:
            mean, std = mean_std(per_setting[s])
            cell = f"{100 * mean:.1f} ± {100 * std:.1f}"
            cells.append(f"**{cell}**" if math.isclose(mean, best[s]) else cell)
        rows.append(cells)
    return rows


def markdown_table(result: dict[str, Any]) -> str:
    """The results as a markdown table of test accuracy in percent."""
    header = ["backbone", *result["settings"]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(result)]
    seeds, distilled = len(result["seeds"]), len(result.get("distill_seeds") or [None])
    if distilled == 1:
        lines.append(
            f"\nTest accuracy (%), mean ± std over {seeds} seeds (labelled subset, head init, order; for "
            "random init also the weights). Each student was distilled once, so its ridge linear probe is "
            "deterministic and run once (± 0)."
        )
        return "\n".join(lines)
    lines.append(
        f"\nTest accuracy (%), mean ± std over {distilled} distillation seeds × {seeds} fine-tuning seeds "
        f"(the linear probe: over the {distilled} distilled students; random init: over {seeds} "
        "initialisations)."
    )
    return "\n".join(lines) + "\n\n" + spread_table(result)


def spread_table(result: dict[str, Any]) -> str:
    """Each distilled student's own mean, per setting: how much distillation itself varies."""
    settings = result["settings"]
    lines = ["| distilled from | " + " | ".join(settings) + " |", "|" + "---|" * (len(settings) + 1)]
    for arm, per_setting in result.get("by_distill_seed", {}).items():
        if len(next(iter(per_setting.values()), [])) < 2:
            continue  # random init: one set of seeds, no distillation
        cells = [" / ".join(f"{100 * statistics.fmean(v):.1f}" for v in per_setting[s]) for s in settings]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines.append("\nPer distillation seed: each student's mean over the fine-tuning seeds (%).")
    return "\n".join(lines)


def plot_monitor_curves(result: dict[str, Any], path: Path) -> Path | None:
    """The representation monitor of every arm on one figure: student probe per epoch, bar and teacher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {
        arm: [run.get("monitor") for run in record.get("per_seed", [record])]
        for arm, record in result.get("distillation", {}).items()
    }
    runs = {arm: [m for m in monitors if m] for arm, monitors in runs.items() if any(monitors)}
    if not runs:
        return None
    fig, axis = plt.subplots(figsize=(6.4, 3.8))
    for arm, monitors in runs.items():
        epochs = [entry["epoch"] + 1 for entry in monitors[0]]
        curves = [[entry["student"] for entry in monitor] for monitor in monitors]
        mean = [statistics.fmean(values) for values in zip(*curves, strict=False)]
        axis.plot(epochs[: len(mean)], [100 * v for v in mean], "-o", markersize=3, label=arm)
    first = next(iter(runs.values()))[0]
    axis.axhline(100 * first[0]["random"], color="grey", linestyle="--", label="random-init bar")
    if "teacher" in first[0]:
        axis.axhline(100 * first[0]["teacher"], color="black", linestyle=":", label="teacher taps")
    axis.set(xlabel="epochs distilled", ylabel="linear-probe val accuracy (%)")
    axis.set_title(
        f"{result['name']}: the student while distilling (mean over distillation seeds)", fontsize=9
    )
    axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary(result: dict[str, Any], baseline: str = "random init") -> dict[str, dict[str, dict[str, float]]]:
    """Per arm and setting: mean and std (%), and the gap to ``baseline`` in points and in σ.

    σ is the larger of the two spreads (over fine-tuning and, for a distilled arm, distillation
    seeds): a gap "beyond 2σ" then clears both arms' spreads.
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    base = result["scores"].get(baseline, {})
    for arm, per_setting in result["scores"].items():
        out[arm] = {}
        for setting, values in per_setting.items():
            mean, std = mean_std(values)
            row = {"mean": round(100 * mean, 2), "std": round(100 * std, 2)}
            if arm != baseline and setting in base:
                base_mean, base_std = mean_std(base[setting])
                sigma = max(std, base_std)
                row["gap"] = round(100 * (mean - base_mean), 2)
                row["gap_sigma"] = round((mean - base_mean) / sigma, 2) if sigma > 0 else 0.0
            out[arm][setting] = row
    return out


def write_results(result: dict[str, Any], results_dir: Path) -> dict[str, Path]:
    """Write ``<name>.json``, ``.md``, a grouped bar plot ``.png``, and ``<name>-protocols.md`` if chosen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: results_dir / f"{result['name']}.{kind}" for kind in ("json", "md", "png")}
    result["summary"] = summary(result)
    result["targets"] = check_targets(result["summary"])
    paths["json"].write_text(json.dumps(result, indent=2))
    paths["md"].write_text(f"# {result['name']}\n\n{markdown_table(result)}\n")
    if "protocols" in result:  # its own file: the README quotes the table above alone
        paths["protocols"] = results_dir / f"{result['name']}-protocols.md"
        chosen = selection_table(result["protocols"]).lstrip("\n")
        title = f"# {result['name']}: the fine-tuning protocol, chosen on validation"
        paths["protocols"].write_text(f"{title}\n\n{chosen}\n")
    if result["targets"]:  # the README quotes it under the table
        paths["targets"] = results_dir / f"{result['name']}-targets.md"
        intro = "σ: the larger spread of the two arms compared, over fine-tuning and distillation seeds."
        table = targets_table(result["targets"])
        paths["targets"].write_text(f"# {result['name']}: targets\n\n{table}\n\n{intro}\n")
    arms, settings = list(result["scores"]), result["settings"]
    width = 0.8 / len(arms)
    fig, axis = plt.subplots(figsize=(2.2 * len(settings) + 2, 3.6))
    for i, arm in enumerate(arms):
        stats = [mean_std(result["scores"][arm][s]) for s in settings]
        positions = [j + (i - (len(arms) - 1) / 2) * width for j in range(len(settings))]
        axis.bar(positions, [100 * m for m, _ in stats], width, yerr=[100 * s for _, s in stats], label=arm)
    lows = [100 * min(min(v) for v in arm.values()) for arm in result["scores"].values()]
    axis.set_ylim(max(0.0, min(lows) - 5), 100)
    axis.set_xticks(range(len(settings)), settings)
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(f"{result['name']}: mean ± std over {len(result['seeds'])} seeds", fontsize=10)
    axis.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=110)
    plt.close(fig)
    monitor = plot_monitor_curves(result, results_dir / f"{result['name']}-monitor.png")
    if monitor is not None:
        paths["monitor"] = monitor
    return paths
