"""Did distillation help on my data? Distil per timestep sampler, fine-tune, tabulate mean ± std.

Every distilled student and a random-init one are fine-tuned over seeds and their test accuracy is
tabulated as mean ± std.

Each run is a real ``repfusion fit`` driven by a config written next to its results, so any cell of the
table can be re-run by hand with ``repfusion fit --config <that file>``. `benchmarks/demo.py` (digits)
and `benchmarks/quality.py` (Fashion-MNIST) are thin drivers around `Comparison`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import lightning
import torch
import yaml
from tqdm.auto import tqdm

RANDOM_INIT = "random init"
QUIET_TRAINER = {
    "accelerator": "auto",
    "devices": 1,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "enable_checkpointing": False,
    "logger": False,
    "callbacks": None,
}


def merge(base: dict, update: dict) -> dict:
    """A deep copy of ``base`` with ``update`` merged in: nested dicts merge, other values replace.

    A dict that names a different ``class_path`` than the one it meets replaces it whole.
    """
    out = copy.deepcopy(base)
    for key, value in update.items():
        current = out.get(key)
        if isinstance(value, dict) and isinstance(current, dict) and _same_class(current, value):
            out[key] = merge(current, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _same_class(current: dict, update: dict) -> bool:
    # A new class_path replaces the whole block: the old init_args may not fit the new class.
    return update.get("class_path", current.get("class_path")) == current.get("class_path")


def fit_config(path: Path, test: bool = False, checkpoint: Path | None = None) -> dict[str, float]:
    """Run ``repfusion fit --config path`` in this process, then optionally test and save a checkpoint.

    Args:
        path: The config file.
        test: Run the test split on the final weights afterwards.
        checkpoint: Save the final state here (with the module's provenance, as `ModelCheckpoint` would).

    Returns:
        The trainer's final logged metrics (test metrics included when ``test``) as floats.
    """
    from repfusion_pl.cli import build_cli

    # LightningCLI warns when the driving script has its own argv; these runs are configured by file only.
    # Lightning's per-run banners (devices, seed, tips) would bury the comparison's own progress bar.
    argv, sys.argv = sys.argv, sys.argv[:1]
    chatty = logging.getLogger("lightning.pytorch")
    level = chatty.level
    chatty.setLevel(logging.WARNING)
    try:
        cli = build_cli(["--config", str(path)], run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if v.numel() == 1}
        if checkpoint is not None:
            cli.trainer.save_checkpoint(checkpoint, weights_only=False)  # full state: resumable
        if test:
            results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
            metrics.update({k: float(v) for k, v in results[0].items()})
    finally:
        sys.argv = argv
        chatty.setLevel(level)
    return metrics


def write_yaml(config: dict, path: Path, header: str = "") -> Path:
    """Write ``config`` as YAML with a comment header; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def sampler_arms(layer: str, timestep: int, policy: dict, num_train_timesteps: int = 1000) -> dict[str, dict]:
    """The three distillation arms at one teacher layer: the RL policy, a fixed t and uniform t.

    Args:
        layer: The teacher layer every arm distils from (the probe's best).
        timestep: The fixed arm's timestep (the probe's best).
        policy: The policy sampler block (``class_path`` + ``init_args``).
        num_train_timesteps: T; the uniform arm draws from all of it, as the policy does at first.
    """

    def arm(sampler: dict) -> dict:
        teacher = {"init_args": {"layers": [layer]}}
        return {"model": {"init_args": {"teacher": teacher, "sampler": sampler}}}

    return {
        "policy (REINFORCE)": arm(policy),
        f"fixed t={timestep}": arm(
            {"class_path": "repfusion_pl.FixedTimestep", "init_args": {"t": timestep}}
        ),
        "uniform t": arm(
            {"class_path": "repfusion_pl.UniformTimestep", "init_args": {"max_t": num_train_timesteps}}
        ),
    }


@dataclass
class Setting:
    """One column of the table: how a backbone is evaluated.

    Args:
        name: Column title, e.g. ``"10 labels/class"``.
        classify: Overrides merged into the classification config (fine-tuning), or ``None`` for a
            ridge linear probe of the frozen backbone on all labels (`repfusion_pl.probe.probe_student`).
    """

    name: str
    classify: dict | None = None


@dataclass
class Comparison:
    """Distil once per sampler arm, evaluate every student and a random-init one per setting and seed.

    Args:
        name: Results are written as ``<results_dir>/<name>.json``, ``.md`` and ``.png``.
        distill_base: The distillation config every arm derives from (a loaded YAML dict).
        classify_base: The classification config every fine-tuning run derives from.
        arms: Arm name -> overrides of ``distill_base`` (typically ``model.init_args.sampler``).
        settings: The evaluation columns.
        seeds: Fine-tuning seeds (labelled subset, head init, data order, random-init weights).
        work_dir: Where configs, checkpoints and logs of every run go.
        results_dir: Where the table files go.
        probe_data: Data config (``class_path``/``init_args``) with all labels for the linear probe.
        num_classes: Classes of the task.
    """

    name: str
    distill_base: dict
    classify_base: dict
    arms: dict[str, dict]
    settings: list[Setting]
    seeds: list[int]
    work_dir: Path
    results_dir: Path
    probe_data: dict | None = None
    num_classes: int = 10
    extra: dict[str, Any] = field(default_factory=dict)

    def distil(self, arm: str, overrides: dict) -> tuple[Path, dict[str, float], float]:
        """Run one distillation arm; return its checkpoint, final metrics and seconds taken."""
        slug = arm.split(" ")[0].lower()
        checkpoint = self.work_dir / "students" / f"{slug}.ckpt"
        config = merge(self.distill_base, overrides)
        config = merge(
            config, {"trainer": {**QUIET_TRAINER, "default_root_dir": str(self.work_dir / "logs")}}
        )
        path = write_yaml(
            config, self.work_dir / "configs" / f"distill-{slug}.yaml", f"# {self.name}: {arm}\n"
        )
        start = time.perf_counter()
        metrics = fit_config(path, checkpoint=checkpoint)
        return checkpoint, metrics, time.perf_counter() - start

    def evaluate(self, arm: str, weights: Path | None, setting: Setting, seed: int) -> float:
        """Test accuracy of one backbone (``None``: random init) under one setting and seed."""
        slug = f"{arm.split(' ')[0].lower()}-{setting.name.split('/')[0].replace(' ', '')}-seed{seed}"
        if setting.classify is None:
            return self._linear_probe(weights, seed)
        config = merge(self.classify_base, setting.classify)
        config = merge(
            config,
            {
                "seed_everything": seed,
                "trainer": {**QUIET_TRAINER, "default_root_dir": str(self.work_dir / "logs")},
                "model": {"init_args": {"backbone_weights": str(weights) if weights else None}},
                "data": {"init_args": {"seed": seed}},
            },
        )
        path = write_yaml(config, self.work_dir / "configs" / f"classify-{slug}.yaml", f"# {self.name}\n")
        return fit_config(path, test=True)["test/acc"]

    def _linear_probe(self, weights: Path | None, seed: int) -> float:
        from repfusion_pl.probe import probe_student
        from repfusion_pl.students import Student
        from repfusion_pl.weights import load_backbone_weights, read_backbone_weights

        model_args = self.classify_base["model"]["init_args"]
        lightning.seed_everything(seed, verbose=False)
        student = Student(
            model_args.get("arch", "resnet18"),
            library=model_args.get("library", "torchvision"),
            stem=model_args.get("stem", "cifar"),
            in_channels=model_args.get("in_channels", 3),
        )
        if weights is not None:
            load_backbone_weights(student.backbone, read_backbone_weights(weights), target="student backbone")
        return float(probe_student(student, self._probe_loaders, self.num_classes)["test_acc"])

    @cached_property
    def _probe_loaders(self) -> dict[str, Any]:
        # Read once: one split serves every probe and seed (only a random init varies with the seed).
        if self.probe_data is None:
            raise ValueError(f"{self.name}: a linear-probe setting needs probe_data")
        data = instantiate(self.probe_data)
        data.setup("fit")
        return {
            "train": data.train_dataloader(),
            "val": data.val_dataloader(),
            "test": data.test_dataloader(),
        }

    def run(self, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Every distillation, then every evaluation; write the JSON, markdown and plot; return the result."""
        probes = sum(setting.classify is None for setting in self.settings)
        fine_tunes = (len(self.arms) + 1) * (len(self.settings) - probes) * len(self.seeds)
        runs = len(self.arms) + fine_tunes + probes * (len(self.arms) + len(self.seeds))
        bar = tqdm(total=runs, desc=self.name, unit="run")
        students: dict[str, Path | None] = {RANDOM_INIT: None}
        distillation: dict[str, dict] = {}
        for arm, overrides in self.arms.items():
            bar.set_postfix_str(f"distil {arm}")
            checkpoint, metrics, seconds = self.distil(arm, overrides)
            students[arm] = checkpoint
            distillation[arm] = {"seconds": round(seconds, 1), **_rounded(metrics)}
            bar.update()
        scores: dict[str, dict[str, list[float]]] = {arm: {} for arm in students}
        for setting in self.settings:
            for arm, weights in students.items():
                # A ridge probe of fixed distilled weights is deterministic: one seed says it all.
                deterministic = setting.classify is None and weights is not None
                for seed in self.seeds[:1] if deterministic else self.seeds:
                    bar.set_postfix_str(f"{setting.name} | {arm} | seed {seed}")
                    accuracy = self.evaluate(arm, weights, setting, seed)
                    scores[arm].setdefault(setting.name, []).append(accuracy)
                    bar.update()
                    if progress:
                        progress(f"{setting.name:<18} {arm:<28} seed {seed}: test acc {accuracy:.4f}")
        bar.close()
        result = {
            "name": self.name,
            "seeds": self.seeds,
            "settings": [s.name for s in self.settings],
            "scores": scores,
            "distillation": distillation,
            "environment": environment(),
            **self.extra,
        }
        write_results(result, self.results_dir)
        return result


def instantiate(config: dict) -> Any:
    """Build ``{"class_path": ..., "init_args": {...}}`` with jsonargparse, as the CLI would."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    import repfusion_pl.data  # noqa: F401  (registers the data modules)

    parser = ArgumentParser()
    parser.add_subclass_arguments(LightningDataModule, "data")
    return parser.instantiate_classes(parser.parse_object({"data": config})).data


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Where the numbers were measured."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({_cpu_name()})"
    return {
        "device": device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
    }


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 5) for k, v in metrics.items() if not k.startswith("_") and math.isfinite(v)}


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
    seeds = len(result["seeds"])
    lines.append(
        f"\nTest accuracy (%), mean ± std over {seeds} seeds (labelled subset, head init, order; for random "
        "init also the weights). Each student was distilled once, so its ridge linear probe is deterministic "
        "and run once (± 0)."
    )
    return "\n".join(lines)


def write_results(result: dict[str, Any], results_dir: Path) -> dict[str, Path]:
    """Write ``<name>.json``, ``<name>.md`` and a grouped bar plot ``<name>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: results_dir / f"{result['name']}.{kind}" for kind in ("json", "md", "png")}
    paths["json"].write_text(json.dumps(result, indent=2))
    paths["md"].write_text(f"# {result['name']}\n\n{markdown_table(result)}\n")
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
    return paths


def ensure_teacher(config_path: str | Path, output_dir: str | Path) -> float:
    """Train the teacher of ``config_path`` unless ``output_dir`` already holds it; return seconds spent."""
    if (Path(output_dir) / "unet" / "config.json").is_file():
        print(f"reusing the teacher in {output_dir} (delete it to retrain)")
        return 0.0
    start = time.perf_counter()
    fit_config(Path(config_path))
    return time.perf_counter() - start


def probe_teacher(
    teacher: str, data: dict, timesteps: Sequence[int], out_dir: Path, student: dict
) -> dict[str, Any]:
    """`repfusion probe` in-process: the layer x timestep table, heatmap and the random-student bar.

    Args:
        teacher: What `DiffusionTeacher` loads.
        data: Data config (``class_path``/``init_args``) with every label.
        timesteps: Timesteps of the grid.
        out_dir: Where the table, heatmap and configs go.
        student: ``arch``, ``stem`` and ``in_channels`` of the random-init student to compare with.
    """
    from repfusion_pl.probe import print_probe_table, run_probe, write_distill_configs, write_report
    from repfusion_pl.students import Student

    module = instantiate(data)
    module.setup("fit")
    loaders = {
        "train": module.train_dataloader(),
        "val": module.val_dataloader(),
        "test": module.test_dataloader(),
    }
    lightning.seed_everything(0, verbose=False)
    result = run_probe(teacher, loaders, module.num_classes, timesteps, student=Student(**student))
    write_report(result, out_dir)
    write_distill_configs(result, data, student, module.num_classes, out_dir)
    print_probe_table(result)
    return result


def run_study(
    name: str,
    teacher_config: Path,
    data: dict,
    distill_base: dict,
    classify_base: dict,
    settings: list[Setting],
    seeds: list[int],
    timesteps: Sequence[int],
    work_dir: Path,
    results_dir: Path,
) -> dict[str, Any]:
    """Teacher (trained or reused), probe, three distillation arms, evaluation: the whole story.

    The probe's best layer is distilled with the policy sampler of ``distill_base``, with the best
    fixed t and with uniform t; every student and a random-init one is then evaluated per setting.

    Args:
        name: Name of the results files.
        teacher_config: The teacher's training config; its ``output_dir`` is reused when it exists.
        data: Data config with all labels (probe and linear probe).
        distill_base: Distillation config; its teacher source is replaced by the trained teacher.
        classify_base: Fine-tuning config.
        settings: Evaluation columns.
        seeds: Fine-tuning seeds.
        timesteps: Timesteps of the probe grid.
        work_dir: Where runs go.
        results_dir: Where ``<name>.json/.md/.png`` go.
    """
    start = time.perf_counter()
    teacher_dir = yaml.safe_load(Path(teacher_config).read_text())["model"]["init_args"]["output_dir"]
    print(f"== 1. teacher ({teacher_config})")
    teacher_seconds = ensure_teacher(teacher_config, teacher_dir)
    print("== 2. probe")
    student_args = distill_base["model"]["init_args"]["student"]["init_args"]
    student = {key: student_args[key] for key in ("arch", "stem", "in_channels") if key in student_args}
    probe_start = time.perf_counter()
    probe = probe_teacher(teacher_dir, data, timesteps, work_dir / "probe", student)
    probe_seconds = time.perf_counter() - probe_start
    best = probe["best"]
    print(f"== 3. distil from {best['layer']}: policy, fixed t={best['timestep']}, uniform t; then evaluate")
    distill_base = merge(
        distill_base, {"model": {"init_args": {"teacher": {"init_args": {"source": teacher_dir}}}}}
    )
    comparison = Comparison(
        name=name,
        distill_base=distill_base,
        classify_base=classify_base,
        arms=sampler_arms(best["layer"], best["timestep"], distill_base["model"]["init_args"]["sampler"]),
        settings=settings,
        seeds=seeds,
        work_dir=work_dir,
        results_dir=results_dir,
        probe_data=data,
        num_classes=int(classify_base["model"]["init_args"]["num_classes"]),
        extra={
            "teacher": teacher_dir,
            "probe": {"best": best, "random_student": probe["random_student"], "rows": probe["rows"]},
        },
    )
    result = comparison.run(progress=print)
    result["seconds"] = {
        "teacher": round(teacher_seconds, 1),
        "probe": round(probe_seconds, 1),
        "total": round(time.perf_counter() - start, 1),
    }
    write_results(result, results_dir)
    print(f"\n{markdown_table(result)}\n")
    baseline = probe["random_student"]
    print(
        f"probe: best {best['layer']} at t={best['timestep']} (val {best['val_acc']:.3f}) vs random-init "
        f"{baseline['arch']} {baseline['val_acc']:.3f}; total {result['seconds']['total'] / 60:.1f} min; "
        f"written to {results_dir / name}.{{json,md,png}}"
    )
    return result
