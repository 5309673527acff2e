"""What the probe writes: a table, a heatmap, and distillation configs at its best layer and timestep.

The configs are small override files applied on top of the project's distillation config
(``repfusion fit --config configs/distill.yaml --config <override>``): they set only what the probe
found (teacher layer, sampler, student input, data, output folder), so they cannot drift from it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from lightning.pytorch.loggers import Logger

from repfusion_pl.logged_figures import save_figure

#: The distillation config the probe's overrides apply to.
DISTILL_CONFIG = "configs/distill.yaml"


def set_name(layers: Sequence[str]) -> str:
    """The probe's name of a concatenation of layers (what `layers_of` splits again)."""
    return "+".join(layers)


def layers_of(name: str) -> list[str]:
    """The teacher layers of a probe row's layer name (one, or a ``+``-joined concatenation)."""
    return name.split("+")


def short_name(name: str) -> str:
    """A row name fit for a table or an axis: a concatenation shows its size and first layer."""
    layers = layers_of(name)
    return name if len(layers) == 1 else f"concat of {len(layers)}: {layers[0]}, ..."


def write_report(
    result: dict[str, Any], out_dir: str | Path, loggers: Sequence[Logger] = ()
) -> dict[str, Path]:
    """Write ``probe.csv``, ``probe.json`` and the ``probe.png`` heatmap (validation accuracy).

    The heatmap also goes to ``loggers`` as ``figures/probe`` (`repfusion_pl.logged_figures`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "probe.csv", "json": out / "probe.json", "png": out / "probe.png"}
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["layer", "timestep", "val_acc", "test_acc", "ridge"])
        writer.writeheader()
        writer.writerows(result["rows"])
    paths["json"].write_text(json.dumps(result, indent=2))

    layers = list(dict.fromkeys(row["layer"] for row in result["rows"]))
    timesteps = list(dict.fromkeys(row["timestep"] for row in result["rows"]))
    grid = np.zeros((len(layers), len(timesteps)))
    for row in result["rows"]:
        grid[layers.index(row["layer"]), timesteps.index(row["timestep"])] = row["val_acc"]
    fig, axis = plt.subplots(figsize=(1.2 * len(timesteps) + 3, 0.6 * len(layers) + 1.8))
    image = axis.imshow(grid, cmap="viridis", aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        axis.text(j, i, f"{value:.3f}", ha="center", va="center", color="w" if value < grid.max() else "k")
    axis.set_xticks(range(len(timesteps)), [str(t) for t in timesteps])
    axis.set_yticks(range(len(layers)), [short_name(layer) for layer in layers])
    axis.set_xlabel("timestep t")
    baseline = result.get("random_student")
    bar = f"; random-init {baseline['arch']}: {baseline['val_acc']:.3f}" if baseline else ""
    axis.set_title(f"linear-probe val accuracy of {result['teacher']}{bar}", fontsize=9)
    fig.colorbar(image, ax=axis, fraction=0.03)
    fig.tight_layout()
    save_figure(fig, paths["png"], loggers, "figures/probe")
    return paths


def print_probe_table(result: dict[str, Any]) -> None:
    """Print validation/test accuracy per layer and timestep, the best cell and the random bar."""
    print(f"\n{'layer':<42} {'t':>5} {'val acc':>8} {'test acc':>9}")
    for row in result["rows"]:
        accuracies = f"{row['val_acc']:8.3f} {row['test_acc']:9.3f}"
        print(f"{short_name(row['layer']):<42} {row['timestep']:>5} {accuracies}")
    best, baseline = result["best"], result["random_student"]
    scores = f"val {best['val_acc']:.3f}, test {best['test_acc']:.3f}"
    print(f"best: {best['layer']} at t={best['timestep']} ({scores})")
    if baseline:
        margin = best["val_acc"] - baseline["val_acc"]
        verdict = "worth distilling" if margin > 0.02 else "NOT clearly better than random features"
        print(
            f"random-init {baseline['arch']} ({baseline['stem']} stem): val {baseline['val_acc']:.3f}, "
            f"test {baseline['test_acc']:.3f} -> teacher margin {margin:+.3f}: {verdict}"
        )


CHECKPOINT = "lightning.pytorch.callbacks.ModelCheckpoint"


def base_callbacks(distill_config: str | Path) -> list[dict]:
    """The callbacks of the base distillation config (none when the file is not there)."""
    path = Path(distill_config)
    if not path.is_file():
        return []
    return list((yaml.safe_load(path.read_text()) or {}).get("trainer", {}).get("callbacks") or [])


def with_checkpoint_folder(callbacks: list[dict], folder: Path) -> list[dict]:
    """``callbacks`` with every ModelCheckpoint writing to ``folder`` (one is added if there is none).

    An override's callback list replaces the base config's, so the base's callbacks are carried over.
    """
    out = []
    for callback in callbacks:
        if callback.get("class_path") == CHECKPOINT:
            callback = {**callback, "init_args": {**callback.get("init_args", {}), "dirpath": str(folder)}}
        out.append(callback)
    if not any(c.get("class_path") == CHECKPOINT for c in out):
        out.append({"class_path": CHECKPOINT, "init_args": {"dirpath": str(folder)}})
    return out


def distill_overrides(
    result: dict[str, Any],
    data_config: dict,
    student: dict,
    num_classes: int,
    out_dir: str | Path,
    callbacks: list[dict] | None = None,
) -> dict[str, dict]:
    """A fixed-t and a policy override at the probe's best layer (or layer set) and timestep, by name."""
    best, out = result["best"], Path(out_dir)
    # A layer set's policy reads its strongest member (the module's default would be the first).
    several = len(layers_of(best["layer"])) > 1 and best.get("head_layer")
    head_layer = {"head_layer": best["head_layer"]} if several else {}

    def override(name: str, sampler: dict) -> dict:
        options = result.get("teacher_options") or {"source": result["teacher"]}
        teacher = {**options, "layers": layers_of(best["layer"])}
        return {
            "trainer": {
                "default_root_dir": str(out / "runs"),
                "callbacks": with_checkpoint_folder(callbacks or [], out / f"{name}-checkpoints"),
            },
            "model": {
                "init_args": {
                    "teacher": {"init_args": teacher},
                    "student": {"init_args": student},
                    "sampler": sampler,
                    **head_layer,
                }
            },
            "data": data_config,
        }

    fixed = {"class_path": "repfusion_pl.FixedTimestep", "init_args": {"t": best["timestep"]}}
    policy = {"class_path": "repfusion_pl.PolicyTimestep", "init_args": {"num_classes": num_classes}}
    return {
        "distill-fixed": override("distill-fixed", fixed),
        "distill-policy": override("distill-policy", policy),
    }


def write_distill_overrides(
    overrides: dict[str, dict], result: dict[str, Any], out_dir: str | Path, base: str | Path = DISTILL_CONFIG
) -> dict[str, Path]:
    """Write each override as ``<out_dir>/<name>.yaml`` with a header saying how to run it."""
    best = result["best"]
    paths = {}
    for name, override in overrides.items():
        path = Path(out_dir) / f"{name}.yaml"
        header = (
            f"# Written by `repfusion probe`: best layer {best['layer']} at t={best['timestep']} "
            f"(val acc {best['val_acc']:.3f}).\n# Applied on top of {base}: "
            f"repfusion fit --config {base} --config {path}\n"
        )
        path.write_text(header + yaml.safe_dump(override, sort_keys=False))
        paths[f"{name.removeprefix('distill-')} config"] = path
    return paths
