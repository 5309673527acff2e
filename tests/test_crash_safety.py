"""A training process SIGKILLed at any moment leaves a checkpoint that resumes to the end of the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_repfusion
from repfusion_pl.checkpoints import read_checkpoint
from test_resume import distill_args, timestep_history

HERE = Path(__file__).resolve().parent
STEPS_PER_EPOCH = 2  # distill_args limits each epoch to two batches


@pytest.mark.parametrize(
    ("point", "n", "intact_step"),
    [
        ("step", 3, 2),  # mid-epoch 1: epoch 0's checkpoint (step 2) is what is on disk
        ("write", 3, 2),  # halfway through the third checkpoint file (epoch 1's 'epoch...' file)
        ("between", 2, 4),  # after epoch 1's checkpoints landed, before epoch 2 starts
    ],
)
def test_sigkill_then_resume_from_what_is_on_disk(
    gray_teacher_dir: Path, tmp_path: Path, point: str, n: int, intact_step: int
) -> None:
    root = tmp_path / "run"
    args = distill_args(gray_teacher_dir, root, "--trainer.max_epochs=3")
    killed = subprocess.run(
        [sys.executable, str(HERE / "kill_points.py"), point, str(n), "--", *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(HERE)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = read_checkpoint(root / "last.ckpt")  # intact: no half-written file ever replaced it
    assert last["global_step"] == intact_step
    for path in root.glob("*.ckpt"):
        read_checkpoint(path)  # every checkpoint on disk loads, not only last.ckpt
    resumed = run_repfusion("fit", f"--ckpt_path={root / 'last.ckpt'}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = read_checkpoint(root / "last.ckpt")
    assert final["global_step"] == 3 * STEPS_PER_EPOCH
    assert len(timestep_history(final)) == 3
