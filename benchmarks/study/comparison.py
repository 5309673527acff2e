"""Did distillation help on my data? Distil per timestep sampler, fine-tune, tabulate mean ± std.

Every distilled student and a random-init one are fine-tuned over seeds and their test accuracy is
tabulated as mean ± std. Each run is a real ``repfusion fit`` driven by a config written next to
its results, so any cell of the table can be re-run by hand with ``repfusion fit --config <that
file>``. `benchmarks/demo.py` (digits) and `benchmarks/quality.py` (Fashion-MNIST) drive `run_study`.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import lightning
from tqdm.auto import tqdm

from repfusion_pl.accelerators import resolve_device
from repfusion_pl.probing import probe_student, split_loaders
from repfusion_pl.probing.report import layers_of
from repfusion_pl.students import BackboneSpec, Student
from repfusion_pl.students.weights import load_backbone_weights, resolve_backbone
from study.protocols import choose_protocols
from study.report import environment, rounded, write_results
from study.runs import QUIET_TRAINER, fit_config, instantiate_data, merge, write_yaml

RANDOM_INIT = "random init"


def slug(name: str) -> str:
    """A file-name form of an arm or setting name: ``"policy, no labels"`` -> ``"policy-no-labels"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def sampler_arms(
    layer: str, timestep: int, policy: dict, num_train_timesteps: int = 1000, head_layer: str | None = None
) -> dict[str, dict]:
    """The distillation arms at one layer: the policy with and without labels, a fixed t, uniform t.

    Args:
        layer: The teacher layer (or ``+``-joined layer set) every arm distils from (the probe's best).
        timestep: The fixed arm's timestep (the probe's best).
        policy: The policy sampler block (``class_path`` + ``init_args``) rewarded with labels.
        num_train_timesteps: T; the uniform arm draws from all of it, as the policy does at first.
        head_layer: The teacher layer the policies' rewards read (default the module's: the first).
    """

    def arm(sampler: dict, data: dict | None = None, **model_args: Any) -> dict:
        teacher = {"init_args": {"layers": layers_of(layer)}}  # a layer, or a concatenated layer set
        model = {"teacher": teacher, "sampler": sampler, **({"head_layer": head_layer} if head_layer else {})}
        return {"model": {"init_args": {**model, **model_args}}, **(data or {})}

    # The same policy on the same images with the labels withheld: rewarded by the contrastive reward,
    # which reads the distilled targets as configs/distill-no-labels.yaml's does.
    label_free = {"num_classes": None, "reward": {"class_path": "repfusion_pl.ContrastiveReward"}}
    no_labels = {**policy, "init_args": {**policy.get("init_args", {}), **label_free}}
    return {
        "policy (REINFORCE)": arm(policy),
        "policy, no labels": arm(
            no_labels, {"data": {"init_args": {"labels": False}}}, reward_reads="targets"
        ),
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
            ridge linear probe of the frozen backbone on all labels (`repfusion_pl.probing.probe_student`).
    """

    name: str
    classify: dict | None = None


@dataclass
class Comparison:
    """Distil once per sampler arm, evaluate every student and a random-init one per setting and seed.

    Args:
        name: Results are written as ``<results_dir>/<name>.json``, ``.md`` and ``.png``.
        distill_base: The distillation config every arm derives from (a loaded YAML dict).
        classify_base: The classification config every evaluation derives from; its ``model`` block
            also builds the backbone of the linear-probe setting.
        arms: Arm name -> overrides of ``distill_base`` (typically ``model.init_args.sampler``).
        settings: The evaluation columns.
        seeds: Fine-tuning seeds (labelled subset, head init, data order, random-init weights).
        work_dir: Where configs, checkpoints and logs of every run go.
        results_dir: Where the table files go.
        probe_data: Data config (``class_path``/``init_args``) with all labels for the linear probe.
        num_classes: Classes of the task.
        extra: Entries added to the result as they are.
        monitor: A `RepresentationMonitor` block for every distillation (its curves go to the results).
        accelerator: Where the linear probes run: ``auto`` (the GPU when PyTorch sees one), ``cpu``, ``gpu``.
        distill_seeds: Distil every arm once per seed (``seed_everything``), so that the spread of
            distillation itself is measured; ``None``: once, with the base config's seed.
        protocols: Per fine-tuning column, candidate protocols (name -> classification overrides);
            one is chosen on the validation split for all backbones (`study.protocols`).
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
    monitor: dict | None = None
    accelerator: str = "auto"
    distill_seeds: list[int] | None = None
    protocols: dict[str, dict[str, dict]] | None = None

    def run_names(self, arm: str) -> list[tuple[str, int | None]]:
        """The file-name stem and seed of every distillation of ``arm`` (the arm's slug when once)."""
        if self.distill_seeds is None:
            return [(slug(arm), None)]
        return [(f"{slug(arm)}-d{seed}", seed) for seed in self.distill_seeds]

    def distil(
        self, arm: str, overrides: dict, name: str, seed: int | None = None
    ) -> tuple[Path, dict[str, Any], float]:
        """Run one distillation of an arm; return its checkpoint, final metrics and seconds taken.

        The metrics include where the timestep choice settled (``settled_t``: the most drawn t of
        the last epoch, ``settled_share``: its share); the run's ``timesteps.png`` is copied next to
        the results as ``<name>-timesteps-<run name>.png``.
        """
        checkpoint = self.work_dir / "students" / f"{name}.ckpt"
        logs = self.work_dir / "logs" / name
        config = merge(self.distill_base, overrides)
        if seed is not None:
            config = merge(config, {"seed_everything": seed})
        callbacks = [self.monitor] if self.monitor else None
        config = merge(
            config, {"trainer": {**QUIET_TRAINER, "default_root_dir": str(logs), "callbacks": callbacks}}
        )
        path = write_yaml(
            config, self.work_dir / "configs" / f"distill-{name}.yaml", f"# {self.name}: {arm}\n"
        )
        start = time.perf_counter()
        metrics: dict[str, Any] = dict(fit_config(path, checkpoint=checkpoint))
        seconds = time.perf_counter() - start
        counts = json.loads((logs / "timestep_counts.json").read_text())["per_epoch"][-1]
        metrics["settled_t"] = max(range(len(counts)), key=counts.__getitem__)
        metrics["settled_share"] = round(counts[metrics["settled_t"]] / max(sum(counts), 1), 3)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(logs / "timesteps.png", self.results_dir / f"{self.name}-timesteps-{name}.png")
        if (logs / "representation_probe.json").is_file():  # the monitor's per-epoch probe
            metrics["monitor"] = json.loads((logs / "representation_probe.json").read_text())
            shutil.copyfile(
                logs / "representation_probe.png", self.results_dir / f"{self.name}-monitor-{name}.png"
            )
        return checkpoint, metrics, seconds

    def evaluate(
        self,
        arm: str,
        weights: Path | None,
        setting: Setting,
        seed: int,
        protocol: tuple[str, dict] | None = None,
    ) -> float:
        """Test accuracy of one backbone (``None``: random init) under one setting and seed.

        With a ``protocol`` (name, overrides from `validation_overrides`): its validation accuracy.
        """
        if setting.classify is None:
            return self.linear_probe(weights, seed)
        student = weights.stem if weights is not None else slug(arm)
        run = (
            f"{student}-{slug(setting.name)}" + (f"-{slug(protocol[0])}" if protocol else "") + f"-seed{seed}"
        )
        config = merge(merge(self.classify_base, setting.classify), protocol[1] if protocol else {})
        config = merge(
            config,
            {
                "seed_everything": seed,
                "trainer": {**QUIET_TRAINER, "default_root_dir": str(self.work_dir / "logs")},
                "model": {"init_args": {"backbone_weights": str(weights) if weights else None}},
                "data": {"init_args": {"seed": seed}},
            },
        )
        path = write_yaml(config, self.work_dir / "configs" / f"classify-{run}.yaml", f"# {self.name}\n")
        return fit_config(path)["val/acc"] if protocol else fit_config(path, test=True)["test/acc"]

    def linear_probe(self, weights: Path | None, seed: int) -> float:
        """Ridge linear-probe test accuracy of the classification config's backbone (frozen)."""
        block = self.classify_base["model"]["init_args"].get("backbone")
        spec, loaded = resolve_backbone(BackboneSpec(**block) if block else None, weights)
        lightning.seed_everything(seed, verbose=False)
        # The student alone: a whole task would draw its head's init from the same stream, and the
        # probe's augmented training batches come after it.
        student = Student.from_spec(spec)
        if loaded is not None:
            load_backbone_weights(student.backbone, loaded, target="student backbone")
        student.to(resolve_device(self.accelerator))  # the feature pass on the GPU when there is one
        return float(probe_student(student, self.probe_loaders, self.num_classes)["test_acc"])

    @cached_property
    def probe_loaders(self) -> dict[str, Any]:
        """The linear probe's loaders, read once: one split serves every probe and seed."""
        if self.probe_data is None:
            raise ValueError(f"{self.name}: a linear-probe setting needs probe_data")
        return split_loaders(instantiate_data(self.probe_data))

    def run_count(self) -> int:
        """How many runs `run` makes (a distilled student's linear probe runs once: it is deterministic)."""
        students = len(self.arms) * len(self.distill_seeds or [None])
        probes = sum(setting.classify is None for setting in self.settings)
        fine_tunes = (students + 1) * (len(self.settings) - probes) * len(self.seeds)
        choosing = (len(self.arms) + 1) * sum(len(c) for c in (self.protocols or {}).values())
        return students + choosing + fine_tunes + probes * (students + len(self.seeds))

    def distil_all(self, bar: tqdm) -> tuple[dict[str, list[Path | None]], dict[str, dict]]:
        """Every distillation: each arm's students (one per distillation seed) and their metrics."""
        students: dict[str, list[Path | None]] = {RANDOM_INIT: [None]}
        distillation: dict[str, dict] = {}
        for arm, overrides in self.arms.items():
            runs = []
            for name, seed in self.run_names(arm):
                bar.set_postfix_str(f"distil {name}")
                checkpoint, metrics, seconds = self.distil(arm, overrides, name, seed)
                students.setdefault(arm, []).append(checkpoint)
                runs.append({"seconds": round(seconds, 1), **({"seed": seed} if seed is not None else {})})
                runs[-1].update(rounded(metrics))
                bar.update()
            # The first distillation's record as before; every seed's under "per_seed".
            distillation[arm] = {**runs[0], **({"per_seed": runs} if len(runs) > 1 else {})}
        return students, distillation

    def run(self, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Every distillation, then every evaluation; write the JSON, markdown and plot; return the result."""
        bar = tqdm(total=self.run_count(), desc=self.name, unit="run")
        students, distillation = self.distil_all(bar)
        selection = choose_protocols(self, students, bar)
        scores: dict[str, dict[str, list[float]]] = {arm: {} for arm in students}
        by_distill_seed: dict[str, dict[str, list[list[float]]]] = {arm: {} for arm in students}
        for setting in self.settings:
            for arm, runs in students.items():
                for weights in runs:
                    deterministic = setting.classify is None and weights is not None
                    values = []
                    for seed in self.seeds[:1] if deterministic else self.seeds:
                        bar.set_postfix_str(f"{setting.name} | {arm} | seed {seed}")
                        values.append(self.evaluate(arm, weights, setting, seed))
                        bar.update()
                        if progress:
                            progress(f"{setting.name:<18} {arm:<28} seed {seed}: test acc {values[-1]:.4f}")
                    scores[arm].setdefault(setting.name, []).extend(values)
                    by_distill_seed[arm].setdefault(setting.name, []).append(values)
        bar.close()
        result = {
            "name": self.name,
            "seeds": self.seeds,
            "distill_seeds": self.distill_seeds,
            "settings": [s.name for s in self.settings],
            "scores": scores,
            "by_distill_seed": by_distill_seed,
            "distillation": distillation,
            **({"protocols": selection} if selection else {}),
            "environment": environment(),
            **self.extra,
        }
        write_results(result, self.results_dir)
        return result
