"""Old module paths (before the subpackages) keep working, with a `FutureWarning` naming the new one.

Configs, scripts and checkpoints written before the layout change name classes such as
``repfusion_pl.distill.RepFusionDistillation`` (jsonargparse stores the module path of every
class it resolves). Importing such a module gives a stand-in that forwards every attribute to the
modules that now hold it. The stand-ins are made by a finder asked only after the real modules,
so nothing at a current path is shadowed.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any

#: Old module -> the modules that now hold its names (searched in order).
MOVED: dict[str, tuple[str, ...]] = {
    "repfusion_pl.distill": ("repfusion_pl.distillation.module",),
    "repfusion_pl.losses": ("repfusion_pl.distillation.losses",),
    "repfusion_pl.projectors": ("repfusion_pl.distillation.projectors",),
    "repfusion_pl.telemetry": ("repfusion_pl.distillation.telemetry",),
    "repfusion_pl.rng": ("repfusion_pl.distillation.rng",),
    "repfusion_pl.rewards": ("repfusion_pl.timesteps.rewards",),
    "repfusion_pl.rl": ("repfusion_pl.timesteps.bandit",),
    "repfusion_pl.probe": ("repfusion_pl.probing.probe", "repfusion_pl.probing.ridge"),
    "repfusion_pl.probe_report": ("repfusion_pl.probing.report",),
    "repfusion_pl.monitor": ("repfusion_pl.probing.monitor",),
    "repfusion_pl.taps": ("repfusion_pl.students.taps",),
    "repfusion_pl.weights": ("repfusion_pl.students.weights",),
    "repfusion_pl.teacher_training": ("repfusion_pl.teachers.training",),
    "repfusion_pl.adm": ("repfusion_pl.teachers.adm.config", "repfusion_pl.teachers.adm.layout"),
    "repfusion_pl.adm_convert": ("repfusion_pl.teachers.adm.convert",),
    "repfusion_pl.teachers.families": (
        "repfusion_pl.teachers.family",
        "repfusion_pl.teachers.pixel",
        "repfusion_pl.teachers.loading",
    ),
    "repfusion_pl.cli_errors": ("repfusion_pl.cli.errors",),
    "repfusion_pl.preemption": ("repfusion_pl.cli.preemption",),
}


class RepfusionDeprecationWarning(FutureWarning):
    """A name used at a path that moved; shown by default (unlike `DeprecationWarning`)."""


class _MovedModuleLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # a plain module, filled by exec_module

    def exec_module(self, module: ModuleType) -> None:
        old, targets = module.__name__, MOVED[module.__name__]
        warnings.warn(
            f"{old} moved to {targets[0]}; import from there or from repfusion_pl "
            f"(in YAML: class_path: repfusion_pl.<Name>). The old path will be removed in a later release.",
            RepfusionDeprecationWarning,
            stacklevel=2,
        )

        def __getattr__(name: str) -> Any:
            for target in targets:
                holder = importlib.import_module(target)
                if hasattr(holder, name):
                    return getattr(holder, name)
            raise AttributeError(f"module {old!r} (now {targets[0]!r}) has no attribute {name!r}")

        def __dir__() -> list[str]:
            return sorted({n for t in targets for n in dir(importlib.import_module(t))})

        module.__getattr__ = __getattr__  # type: ignore[method-assign]
        module.__dir__ = __dir__  # type: ignore[method-assign]


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedModuleLoader())


def install() -> None:
    """Put the finder after every other one (once): real modules always win."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
