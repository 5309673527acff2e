"""The GPU check runs end to end on the CPU with --dry-run, so it cannot rot between GPU runs."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_the_gpu_check_dry_run_measures_every_section_and_prints_the_table(tmp_path):
    out = tmp_path / "gpu-check"
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", str(out)],  # the flag first
        capture_output=True,
        text=True,
        env={"PY": sys.executable, "PATH": "/usr/bin:/bin"},
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = (out / "summary.md").read_text()
    assert "missing" not in summary, summary + done.stdout
    assert done.stdout.rstrip().endswith(summary.rstrip().splitlines()[-1])  # the table comes last
    for name in ("speed-b4", "families", "teacher-training", "probe-speed"):
        assert json.loads((out / f"{name}.json").read_text())["environment"]["device"]
    speed = json.loads((out / "speed-b4.json").read_text())
    assert "3 ours, captured step (compile_step)" in speed["rows"] and speed["dry_run"]


def test_a_wrong_usage_stops_with_the_usage_line_before_writing_anything(tmp_path):
    for args in (["--dryrun", str(tmp_path / "a")], [], [str(tmp_path / "b"), str(tmp_path / "c")]):
        done = subprocess.run(
            ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (
            done.returncode == 2 and "usage: bash benchmarks/gpu_check.sh [--dry-run] OUT" in done.stderr
        ), args
    assert list(tmp_path.iterdir()) == []
