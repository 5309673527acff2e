"""Killed, signalled or out of disk at any moment, a run leaves a checkpoint that resumes to its end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_repfusion
from repfusion_pl.checkpoints import read_checkpoint
from test_resume import compare_checkpoints, distill_args, timestep_history

HERE = Path(__file__).resolve().parent
STEPS_PER_EPOCH = 2  # distill_args limits each epoch to two batches


@pytest.fixture(scope="module")
def straight_run(gray_teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted three-epoch run every interrupted one must end equal to: its last.ckpt."""
    root = tmp_path_factory.mktemp("straight")
    done = run_repfusion(*distill_args(gray_teacher_dir, root / "run", "--trainer.max_epochs=3"), cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "run" / "last.ckpt"


@pytest.mark.parametrize(
    ("point", "n", "intact_step"),
    [
        ("step", 3, 2),  # mid-epoch 1: epoch 0's checkpoint (step 2) is what is on disk
        ("write", 3, 2),  # halfway through the third checkpoint file (epoch 1's 'epoch...' file)
        # after epoch 1's checkpoints landed, before epoch 2 starts (45 s; in `make test-all`)
        pytest.param("between", 2, 4, marks=pytest.mark.slow),
    ],
)
def test_sigkill_then_resume_from_what_is_on_disk(
    gray_teacher_dir: Path, tmp_path: Path, point: str, n: int, intact_step: int, straight_run: Path
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
    compare_checkpoints(straight_run, root / "last.ckpt", steps=3 * STEPS_PER_EPOCH)
    assert len(timestep_history(final)) == 3


# SIGUSR1 takes the same path as SIGTERM (one handler); its 45 s run is left to `make test-all`.
@pytest.mark.parametrize("point", ["sigterm", pytest.param("sigusr1", marks=pytest.mark.slow)])
def test_a_scheduler_signal_saves_a_checkpoint_and_names_the_resume_command(
    gray_teacher_dir: Path, tmp_path: Path, point: str, straight_run: Path
) -> None:
    root = tmp_path / "run"
    args = distill_args(gray_teacher_dir, root, "--trainer.max_epochs=3")
    stopped = subprocess.run(
        [sys.executable, str(HERE / "kill_points.py"), point, "2", "--", *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(HERE)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    output = stopped.stdout + stopped.stderr
    assert f"Resume with: repfusion fit --ckpt_path {root / 'last.ckpt'}" in output
    assert "Traceback" not in stopped.stderr
    last = read_checkpoint(root / "last.ckpt")
    assert last["global_step"] == 3  # mid-epoch 1: the signalled step finished, its checkpoint landed
    resumed = run_repfusion("fit", f"--ckpt_path={root / 'last.ckpt'}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # The pre-empted run, resumed mid-epoch, ends exactly where an uninterrupted one does.
    compare_checkpoints(straight_run, root / "last.ckpt", steps=3 * STEPS_PER_EPOCH)


def test_a_full_disk_keeps_the_previous_checkpoint_and_names_the_folder(
    gray_teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from repfusion_pl import checkpoints
    from repfusion_pl.checkpoints import CheckpointWriteError
    from repfusion_pl.cli import main

    root = tmp_path / "run"
    original, writes = checkpoints.write_temporary, []

    def fills_the_disk(path, data):  # type: ignore[no-untyped-def]
        writes.append(path)
        if len(writes) == 3:  # epoch 1's first file: half of it lands, then the disk is full
            path.write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        original(path, data)

    monkeypatch.setattr(checkpoints, "write_temporary", fills_the_disk)
    with pytest.raises(CheckpointWriteError, match=r"(?s)No space left.*folder .*run needs about [\d.]+ MB"):
        main(distill_args(gray_teacher_dir, root, "--trainer.max_epochs=3"))
    assert read_checkpoint(root / "last.ckpt")["global_step"] == STEPS_PER_EPOCH  # epoch 0's, intact
    assert not list(root.glob(".*.tmp"))  # the half-written staging file is gone
