"""``python kill_points.py POINT N -- <repfusion args>``: run ``repfusion`` and SIGKILL it at POINT.

POINT is ``step`` (inside the N-th training step, after its forward pass), ``write`` (halfway through
writing the N-th checkpoint file) or ``between`` (at the start of epoch N, after the previous epoch's
checkpoint landed); ``sigterm`` and ``sigusr1`` send that signal instead of SIGKILL inside the N-th
step, as a cluster scheduler would. Used by test_crash_safety.py; nothing in the package knows about it.
"""

from __future__ import annotations

import os
import signal
import sys


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str, n: int) -> None:
    if point == "step":
        from repfusion_pl.distillation.module import RepFusionDistillation

        original_step = RepFusionDistillation.training_step

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            loss = original_step(self, batch, batch_idx)
            if self.global_step == n:
                die()
            return loss

        RepFusionDistillation.training_step = training_step  # type: ignore[method-assign]
    elif point in ("sigterm", "sigusr1"):
        from repfusion_pl.distillation.module import RepFusionDistillation

        original = RepFusionDistillation.training_step
        signum = signal.SIGTERM if point == "sigterm" else signal.SIGUSR1

        def signalled_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            loss = original(self, batch, batch_idx)
            if self.global_step == n:
                os.kill(os.getpid(), signum)  # handled: the run stops at the end of this step
            return loss

        RepFusionDistillation.training_step = signalled_step  # type: ignore[method-assign]
    elif point == "write":
        from repfusion_pl import checkpoints

        original_write = checkpoints.write_temporary
        writes = {"count": 0}

        def write_temporary(path, data):  # type: ignore[no-untyped-def]
            writes["count"] += 1
            if writes["count"] == n:
                original_write(path, data[: len(data) // 2])  # a half-written staging file on disk
                die()
            original_write(path, data)

        checkpoints.write_temporary = write_temporary
    elif point == "between":
        from repfusion_pl.distillation.module import RepFusionDistillation

        original_start = RepFusionDistillation.on_train_epoch_start

        def on_train_epoch_start(self):  # type: ignore[no-untyped-def]
            if self.current_epoch == n:
                die()
            original_start(self)

        RepFusionDistillation.on_train_epoch_start = on_train_epoch_start  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    install(sys.argv[1], int(sys.argv[2]))
    from repfusion_pl.cli import main

    main(sys.argv[4:])  # argv[3] is the "--" separator
