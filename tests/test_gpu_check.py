"""The GPU check runs end to end on the CPU with --dry-run, so it cannot rot between GPU runs."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_the_gpu_check_dry_run_measures_every_section_and_prints_the_table(tmp_path):
    out = tmp_path / "gpu-check"
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--dry-run"],
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
