"""The whole story of a study: teacher (trained or reused), probe, three distillation arms, evaluation."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning
import yaml

from repfusion_pl.probing import probe_teacher
from repfusion_pl.students import Student
from study.comparison import Comparison, Setting, sampler_arms
from study.report import markdown_table, repo_relative, write_results
from study.runs import fit_config, instantiate_data, merge


def ensure_teacher(config_path: str | Path, output_dir: str | Path) -> float:
    """Train the teacher of ``config_path`` unless ``output_dir`` already holds it; return seconds spent."""
    if (Path(output_dir) / "unet" / "config.json").is_file():
        print(f"reusing the teacher in {output_dir} (delete it to retrain)")
        return 0.0
    start = time.perf_counter()
    fit_config(Path(config_path))
    return time.perf_counter() - start


def probe(
    teacher: str, data: dict, timesteps: Sequence[int], out_dir: Path, distill_base: dict, **options: Any
) -> dict:
    """`repfusion probe` in-process, with the distillation config's student as the random-init bar.

    ``options`` go to `probe_teacher` (``layers``, ``layer_sets``, ``accelerator``, ``precision``).
    """
    student_args = distill_base["model"]["init_args"]["student"]["init_args"]
    spec = {
        key: student_args[key] for key in ("arch", "library", "stem", "in_channels") if key in student_args
    }
    module = instantiate_data(data)
    lightning.seed_everything(0, verbose=False)
    return probe_teacher(teacher, module, data, timesteps, out_dir, Student(**spec), **options)


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
    monitor_every: int | None = 1,
    monitor_images: int = 2000,
    monitor_teacher: bool = True,
    teacher_dir: Path | None = None,
    arms: Sequence[str] | None = None,
    distill_seeds: list[int] | None = None,
    probe_options: dict[str, Any] | None = None,
    protocols: dict[str, dict[str, dict]] | None = None,
) -> dict[str, Any]:
    """Teacher (trained or reused), probe, the distillation arms, evaluation: the whole story.

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
        monitor_every: Probe every distilling student each this many epochs (`RepresentationMonitor`
            on ``data``); ``None`` for no monitor.
        monitor_images: Images of each split the monitor probes with.
        monitor_teacher: The monitor also probes the teacher each time (a teacher pass per image).
        teacher_dir: A trained teacher to use as it is (e.g. one shipped under benchmarks/teachers);
            default: ``teacher_config``'s output folder, trained first when it is not there.
        arms: The arms to run, by the start of their names (e.g. ``["policy (REINFORCE)", "fixed t"]``);
            default all four.
        distill_seeds: Distil each arm once per seed (the spread of distillation itself); default once.
        probe_options: More `probe_teacher` arguments (``layers``, ``layer_sets``, ``accelerator``,
            ``precision``).
        protocols: Per fine-tuning column, candidate protocols chosen among on validation
            (`Comparison.protocols`); default the classification config as it is.
    """
    start = time.perf_counter()
    teacher_seconds = 0.0
    if teacher_dir is None:
        teacher_dir = yaml.safe_load(Path(teacher_config).read_text())["model"]["init_args"]["output_dir"]
        print(f"== 1. teacher ({teacher_config})")
        teacher_seconds = ensure_teacher(teacher_config, teacher_dir)
    else:
        print(f"== 1. teacher: {teacher_dir} (trained before; not retrained)")
    print("== 2. probe")
    probe_start = time.perf_counter()
    probed = probe(
        str(teacher_dir), data, timesteps, work_dir / "probe", distill_base, **(probe_options or {})
    )
    probe_seconds = time.perf_counter() - probe_start
    best = probed["best"]
    print(f"== 3. distil from {best['layer']} at t={best['timestep']}: the sampler arms; then evaluate")
    source = {"model": {"init_args": {"teacher": {"init_args": {"source": str(teacher_dir)}}}}}
    distill_base = merge(distill_base, source)
    every_arm = sampler_arms(
        best["layer"],
        best["timestep"],
        distill_base["model"]["init_args"]["sampler"],
        head_layer=best.get("head_layer"),
    )
    chosen = {name: arm for name, arm in every_arm.items() if arms is None or name.startswith(tuple(arms))}
    comparison = Comparison(
        name=name,
        distill_base=distill_base,
        classify_base=classify_base,
        arms=chosen,
        distill_seeds=distill_seeds,
        protocols=protocols,
        settings=settings,
        seeds=seeds,
        work_dir=work_dir,
        results_dir=results_dir,
        probe_data=data,
        monitor=None
        if monitor_every is None
        else {
            "class_path": "repfusion_pl.RepresentationMonitor",
            "init_args": {
                "data": data,
                "every_n_epochs": monitor_every,
                "max_images": monitor_images,
                "teacher": monitor_teacher,
            },
        },
        num_classes=int(classify_base["model"]["init_args"]["num_classes"]),
        extra={
            "teacher": repo_relative(teacher_dir),
            "probe": {"best": best, "random_student": probed["random_student"], "rows": probed["rows"]},
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
    baseline = probed["random_student"]
    print(
        f"probe: best {best['layer']} at t={best['timestep']} (val {best['val_acc']:.3f}) vs random-init "
        f"{baseline['arch']} {baseline['val_acc']:.3f}; total {result['seconds']['total'] / 60:.1f} min; "
        f"written to {results_dir / name}.{{json,md,png}}"
    )
    return result
