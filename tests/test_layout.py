"""The package's shape: subpackages import only those below them, no cycles, small files, old paths alias."""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import pytest

import repfusion_pl
from repfusion_pl._deprecated import MOVED, RepfusionDeprecationWarning

SRC = Path(repfusion_pl.__file__).parent
BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
#: The order of docs/architecture.md: a package may import the foundations and the packages before it.
ORDER = ["data", "students", "teachers", "timesteps", "distillation", "probing", "tasks", "cli"]
FOUNDATIONS = {
    "_version",
    "_deprecated",
    "accelerators",
    "checkpoints",
    "hparams",
    "logged_figures",
    "metrics",
    "optim",
}
#: Files allowed over 300 lines, and why (docs/architecture.md says the same).
LONG_FILES: dict[str, str] = {}


def module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts]) if package else ".".join(parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every module of ``known`` that ``path`` imports, at any depth of the file (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {name for name in names if name in known}
    return found


def graph(root: Path, package: str) -> dict[str, set[str]]:
    files = {module_name(p, root, package): p for p in root.rglob("*.py")}
    known = set(files) | {package} if package else set(files)
    return {name: imported_modules(path, known) - {name} for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def layer_of(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    return -1 if part in FOUNDATIONS else ORDER.index(part)


def test_the_package_and_the_benchmarks_have_no_import_cycle():
    assert cycles(graph(SRC, "repfusion_pl")) == []
    assert cycles(graph(BENCHMARKS, "")) == []


def test_every_module_sits_in_a_known_place():
    for module in graph(SRC, "repfusion_pl"):
        if module != "repfusion_pl":
            layer_of(module)  # raises ValueError for a new top-level module nobody placed


def test_subpackages_import_only_the_foundations_and_the_packages_before_them():
    wrong = []
    for module, targets in graph(SRC, "repfusion_pl").items():
        if module == "repfusion_pl":
            continue
        for target in targets:
            if target == "repfusion_pl" or layer_of(target) > layer_of(module):
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_source_files_stay_under_300_lines():
    long = {
        str(path.relative_to(SRC)): n
        for path in SRC.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 300
    }
    assert set(long) <= set(LONG_FILES), long


def test_the_public_names_are_importable_from_the_package():
    for name in repfusion_pl.__all__:
        assert getattr(repfusion_pl, name) is not None


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_still_works_and_warns(old, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)  # a fresh import warns again
    with pytest.warns(RepfusionDeprecationWarning, match=f"{old} moved to "):
        module = importlib.import_module(old)
    names = [name for name in dir(module) if not name.startswith("_")]
    assert names, f"{old} forwards nothing"
    for name in names:
        holder = next(t for t in MOVED[old] if hasattr(importlib.import_module(t), name))
        assert getattr(module, name) is getattr(importlib.import_module(holder), name)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018


def test_an_old_class_path_in_a_config_still_builds_with_a_warning(tmp_path, monkeypatch, capsys):
    from repfusion_pl.cli import main

    for old in ("repfusion_pl.rewards", "repfusion_pl.losses"):
        monkeypatch.delitem(sys.modules, old, raising=False)
    config = tmp_path / "old.yaml"
    config.write_text(OLD_PATHS_CONFIG)
    with pytest.warns(RepfusionDeprecationWarning, match="repfusion_pl.rewards moved"):
        with pytest.raises(SystemExit) as exit_:
            main(["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    # Resolved and validated: the reward's own arguments were filled in from its signature.
    reward = "class_path: repfusion_pl.rewards.ContrastiveReward\n          init_args:\n"
    assert reward + "            projection_dim: 128" in printed


OLD_PATHS_CONFIG = """
model:
  class_path: repfusion_pl.RepFusionDistillation
  init_args:
    teacher: {class_path: repfusion_pl.DiffusionTeacher, init_args: {source: x}}
    student: {class_path: repfusion_pl.Student, init_args: {arch: resnet18}}
    sampler:
      class_path: repfusion_pl.PolicyTimestep
      init_args:
        reward: {class_path: repfusion_pl.rewards.ContrastiveReward}
    feature_loss: {class_path: repfusion_pl.losses.DenseMSELoss}
data:
  class_path: repfusion_pl.data.DigitsDataModule
"""


def test_every_module_has_a_place_in_the_api_reference():
    documented = set()
    for page in (Path(__file__).parents[1] / "docs" / "api").glob("*.md"):
        documented |= set(re.findall(r"^::: (repfusion_pl[\w.]*)", page.read_text(), re.M))
    modules = {m for m in graph(SRC, "repfusion_pl") if not m.rsplit(".", 1)[-1].startswith("_")}
    missing = {
        m for m in modules if m not in documented and not any(d.startswith(m + ".") for d in documented)
    }
    assert missing == set(), f"add them to a page of docs/api/: {sorted(missing)}"
