"""The study harness behind `make demo` and `make quality` (benchmarks/study), end to end on tiny runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from study import Setting, markdown_table, mean_std, merge, run_study, sampler_arms

ROOT = Path(__file__).resolve().parent.parent


def test_merge_nests_and_replaces_on_a_new_class_path() -> None:
    base = {"a": {"b": 1, "c": 2}, "s": {"class_path": "P", "init_args": {"x": 1, "y": 2}}}
    same = merge(base, {"a": {"b": 5}, "s": {"init_args": {"x": 3}}})
    assert same == {"a": {"b": 5, "c": 2}, "s": {"class_path": "P", "init_args": {"x": 3, "y": 2}}}
    other = merge(base, {"s": {"class_path": "Q", "init_args": {"z": 1}}})
    assert other["s"] == {"class_path": "Q", "init_args": {"z": 1}}  # P's init_args would not fit Q
    assert base["a"]["b"] == 1  # the base is not modified


def test_sampler_arms_share_the_layer_and_differ_in_the_sampler() -> None:
    policy = {"class_path": "repfusion_pl.PolicyTimestep", "init_args": {"num_classes": 10}}
    arms = sampler_arms("mid_block.resnets.0", 120, policy, num_train_timesteps=1000)
    samplers = {name: arm["model"]["init_args"]["sampler"] for name, arm in arms.items()}
    no_labels = {
        "class_path": "repfusion_pl.PolicyTimestep",
        "init_args": {"num_classes": None, "reward": {"class_path": "repfusion_pl.ContrastiveReward"}},
    }
    assert samplers == {
        "policy (REINFORCE)": policy,
        "policy, no labels": no_labels,
        "fixed t=120": {"class_path": "repfusion_pl.FixedTimestep", "init_args": {"t": 120}},
        "uniform t": {"class_path": "repfusion_pl.UniformTimestep", "init_args": {"max_t": 1000}},
    }
    # Only the label-free arm withholds the labels, on the same images.
    assert [name for name, arm in arms.items() if "data" in arm] == ["policy, no labels"]
    assert arms["policy, no labels"]["data"] == {"init_args": {"labels": False}}
    # Its reward reads the distilled targets, as configs/distill-no-labels.yaml's does; the others'
    # the head layer.
    reads = {name: arm["model"]["init_args"].get("reward_reads") for name, arm in arms.items()}
    assert reads == {name: "targets" if name == "policy, no labels" else None for name in arms}
    assert {tuple(arm["model"]["init_args"]["teacher"]["init_args"]["layers"]) for arm in arms.values()} == {
        ("mid_block.resnets.0",)
    }
    assert all("head_layer" not in arm["model"]["init_args"] for arm in arms.values())
    # A layer set: every arm taps all of it, and the policies' rewards read the member named.
    arms = sampler_arms("a+b", 0, policy, head_layer="b")
    assert {tuple(arm["model"]["init_args"]["teacher"]["init_args"]["layers"]) for arm in arms.values()} == {
        ("a", "b")
    }
    assert {arm["model"]["init_args"]["head_layer"] for arm in arms.values()} == {"b"}


def test_table_reports_mean_and_sample_std_and_bolds_the_best() -> None:
    assert mean_std([0.5, 0.7]) == pytest.approx((0.6, 0.1414213), abs=1e-6)
    result = {
        "seeds": [0, 1],
        "settings": ["s"],
        "scores": {"random init": {"s": [0.5, 0.7]}, "policy": {"s": [0.8, 0.8]}},
    }
    table = markdown_table(result)
    assert "| random init | 60.0 ± 14.1 |" in table and "| policy | **80.0 ± 0.0** |" in table


# In `make test-all` (45 s): tests/test_quality.py runs the same harness end to end (every arm, the
# shipped teacher) through benchmarks/quality.py --dry-run in the fast suite.
@pytest.mark.slow
def test_run_study_end_to_end_on_a_tiny_teacher(tmp_path: Path, gray_teacher_dir: Path) -> None:
    teacher_config = tmp_path / "teacher.yaml"
    teacher_config.write_text(yaml.safe_dump({"model": {"init_args": {"output_dir": str(gray_teacher_dir)}}}))
    data = {
        "class_path": "repfusion_pl.data.DigitsDataModule",
        "init_args": {"image_size": 16, "batch_size": 32, "val_fraction": 0.2, "test_fraction": 0.2},
    }
    tiny = {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 0, "limit_test_batches": 2}
    distill = merge(
        yaml.safe_load((ROOT / "configs" / "distill.yaml").read_text()), {"trainer": tiny, "data": data}
    )
    classify = merge(
        yaml.safe_load((ROOT / "configs" / "classify.yaml").read_text()), {"trainer": tiny, "data": data}
    )
    labelled = Setting("5 labels/class", {"data": {"init_args": {"labels_per_class": 5}}})
    main_job_output = ROOT / "artifacts" / "digits-distill"
    before = sorted(main_job_output.glob("*")) if main_job_output.exists() else []
    mtimes = [p.stat().st_mtime for p in before]

    result = run_study(
        name="tiny",
        teacher_config=teacher_config,
        data=data,
        distill_base=distill,
        classify_base=classify,
        settings=[labelled, Setting("linear probe, all labels")],
        seeds=[0, 1],
        timesteps=[0, 500],
        work_dir=tmp_path / "work",
        results_dir=tmp_path / "results",
        monitor_images=64,
    )

    best = result["probe"]["best"]
    assert set(result["scores"]) == {
        "random init",
        "policy (REINFORCE)",
        "policy, no labels",
        f"fixed t={best['timestep']}",
        "uniform t",
    }
    for arm in ("policy (REINFORCE)", "policy, no labels"):
        settled = result["distillation"][arm]
        assert 0 <= settled["settled_t"] < 1000 and 0 < settled["settled_share"] <= 1
    assert (tmp_path / "results" / "tiny-timesteps-policy-no-labels.png").read_bytes()[:4] == b"\x89PNG"
    # The representation monitor watched every arm: its curve, and its history in the JSON.
    assert (tmp_path / "results" / "tiny-monitor-uniform-t.png").read_bytes()[:4] == b"\x89PNG"
    assert [e["epoch"] for e in result["distillation"]["uniform t"]["monitor"]] == [-1, 0]
    no_labels = yaml.safe_load((tmp_path / "work" / "configs" / "distill-policy-no-labels.yaml").read_text())
    assert no_labels["data"]["init_args"]["labels"] is False
    for arm, scores in result["scores"].items():
        assert len(scores["5 labels/class"]) == 2
        assert len(scores["linear probe, all labels"]) == (2 if arm == "random init" else 1)
        assert all(0.0 <= acc <= 1.0 for values in scores.values() for acc in values)
    written = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert written["scores"] == result["scores"] and written["seconds"]["total"] > 0
    assert "| random init |" in (tmp_path / "results" / "tiny.md").read_text()
    assert (tmp_path / "results" / "tiny.png").stat().st_size > 0
    # Every run left a config that names its sampler and the probe's layer, and each student a checkpoint.
    policy_config = yaml.safe_load(
        (tmp_path / "work" / "configs" / "distill-policy-reinforce.yaml").read_text()
    )
    assert policy_config["model"]["init_args"]["sampler"]["class_path"] == "repfusion_pl.PolicyTimestep"
    assert "+".join(policy_config["model"]["init_args"]["teacher"]["init_args"]["layers"]) == best["layer"]
    assert policy_config["model"]["init_args"]["teacher"]["init_args"]["source"] == str(gray_teacher_dir)
    assert sorted(p.name for p in (tmp_path / "work" / "students").iterdir()) == [
        f"fixed-t-{best['timestep']}.ckpt",
        "policy-no-labels.ckpt",
        "policy-reinforce.ckpt",
        "uniform-t.ckpt",
    ]
    # The base configs' checkpoint callbacks were dropped: the main job's outputs are untouched.
    assert [p.stat().st_mtime for p in before] == mtimes


def test_protocols_for_a_column_the_study_lacks_are_refused():
    from types import SimpleNamespace

    from study.protocols import choose_protocols

    settings = [
        Setting("100 labels/class", {"trainer": {"max_epochs": 5}}),
        Setting("linear probe, all labels"),
    ]
    comparison = SimpleNamespace(
        settings=settings, protocols={"10 labels/class": {"one rate": {}}}, seeds=[0]
    )
    with pytest.raises(ValueError, match=r"protocols for \['10 labels/class'\], which are not fine-tuning"):
        choose_protocols(comparison, {"random init": [None]}, bar=None)


def test_the_summary_gives_each_arm_its_gap_to_random_init_in_points_and_sigma():
    from study.report import summary

    result = {"scores": {"random init": {"a": [0.6, 0.7]}, "x": {"a": [0.8, 0.8]}}}
    rows = summary(result)
    assert rows["random init"]["a"] == {"mean": 65.0, "std": 7.07}
    assert rows["x"]["a"] == {"mean": 80.0, "std": 0.0, "gap": 15.0, "gap_sigma": 2.12}


def test_the_targets_hold_or_say_by_how_much_they_miss():
    from study.targets import check_targets, targets_table

    column = "linear probe, all labels"
    summary = {
        "random init": {column: {"mean": 79.8, "std": 1.1}},
        "policy (REINFORCE)": {column: {"mean": 81.4, "std": 0.6, "gap": 1.6, "gap_sigma": 1.4}},
        "fixed t=100": {column: {"mean": 82.0, "std": 0.5, "gap": 2.2, "gap_sigma": 2.0}},
        "fixed t=0": {column: {"mean": 83.0, "std": 0.7, "gap": 3.2, "gap_sigma": 2.9}},
    }
    beats, policy = check_targets(summary)  # the 100-labels column is absent: no rows for it
    assert beats["target"].startswith("fixed t=0 beats") and beats["held"]  # the best fixed t, not t=100
    assert policy["measured"] == "81.4 vs 83.0 − 0.7 = 82.3" and not policy["held"]
    assert policy["short_by_points"] == pytest.approx(0.9)
    summary["fixed t=0"][column]["gap_sigma"] = 1.5
    assert check_targets(summary)[0]["short_by_sigma"] == pytest.approx(0.5)
    assert "**no**: short by 0.9 points" in targets_table([beats, policy])
