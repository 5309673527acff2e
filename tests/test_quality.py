"""benchmarks/quality.py end to end with --dry-run: the shipped teacher, every arm, two distillation seeds."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import ROOT
from test_data_fashion import class_images, write_idx

SHIPPED = ROOT / "benchmarks" / "teachers" / "fashion-32"


@pytest.fixture
def fake_fashion(tmp_path):
    root = tmp_path / "fashion"
    for split, count in (("train", 200), ("t10k", 60)):
        labels = np.arange(count) % 10
        write_idx(root / f"{split}-images-idx3-ubyte.gz", class_images(labels))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def quality(*args: str, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=900)


def test_the_gpu_profile_dry_run_distils_every_arm_twice_from_the_shipped_teacher(fake_fashion, tmp_path):
    results = tmp_path / "results"
    done = quality(
        "--profile", "gpu", "--dry-run", "--root", str(fake_fashion), "--results-dir", str(results),
        "--work-dir", str(tmp_path / "work"), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((results / "quality-gpu-dry-run.json").read_text())
    assert result["teacher"] == "benchmarks/teachers/fashion-32" and result["distill_seeds"] == [0, 1]
    assert len(result["scores"]) == 5  # random init and the four arms
    for arm, per_setting in result["by_distill_seed"].items():
        runs = 1 if arm == "random init" else 2
        assert all(len(values) == runs for values in per_setting.values()), arm
        assert len(per_setting["2 labels/class"][0]) == 2  # two fine-tuning seeds per student
    students = sorted(p.name for p in (tmp_path / "work" / "students").iterdir())
    assert len(students) == 8 and {p.split("-d")[-1] for p in students} == {"0.ckpt", "1.ckpt"}
    markdown = (results / "quality-gpu-dry-run.md").read_text()
    assert "2 distillation seeds × 2 fine-tuning seeds" in markdown and "| distilled from |" in markdown
    assert (results / "quality-gpu-dry-run-monitor.png").read_bytes()[:4] == b"\x89PNG"
    # The fine-tuning protocol: chosen on validation over random init and each arm's first student.
    record = result["protocols"]["2 labels/class"]
    assert list(result["protocols"]) == ["2 labels/class"]
    assert list(record["validation"]) == [
        "one rate", "backbone x0.1", "LP-FT (1 head-only epochs), then backbone x0.1"
    ]  # fmt: skip
    assert all(len(scores) == 5 for scores in record["validation"].values())
    means = {name: np.mean(list(scores.values())) for name, scores in record["validation"].items()}
    assert record["chosen"] == max(means, key=means.get)
    assert "chosen on validation" in (results / "quality-gpu-dry-run-protocols.md").read_text()
    # The test runs then use it: their configs carry the chosen protocol, and no validation run does.
    chosen = {
        "one rate": None,
        "backbone x0.1": {"backbone_lr_scale": 0.1},
        "LP-FT (1 head-only epochs), then backbone x0.1": {"backbone_lr_scale": 0.1, "probe_epochs": 1},
    }[record["chosen"]]
    test_run = yaml.safe_load(
        (tmp_path / "work" / "configs" / "classify-random-init-2-labels-class-seed1.yaml").read_text()
    )
    assert test_run["model"]["init_args"].get("protocol") == chosen


def test_a_teacher_of_another_size_than_the_profile_is_refused_with_both_sizes(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import quality

    folder = tmp_path / "teacher"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text(json.dumps({"sample_size": 16}))
    monkeypatch.setattr(quality, "SHIPPED", folder)
    with pytest.raises(SystemExit, match=r"trained on 16 px images but this profile distils 32 px"):
        quality.choose_teacher(retrain=False, image_size=32)
    assert quality.teacher_size(SHIPPED) == 32
