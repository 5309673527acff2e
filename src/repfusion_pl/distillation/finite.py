"""Catch a non-finite loss without waiting for the device at every step.

``if not torch.isfinite(loss)`` makes the host wait for the GPU at every step, which serialises a
launch-bound step. `NonFiniteWatch` instead records, with device-side operations only, the first
step whose loss terms were not all finite (its step, epoch, the terms and their values) and reads
that record back only when asked: every step on a CPU (where reading costs nothing), every
``log_every_n_steps`` on an accelerator, and before every checkpoint, so no checkpoint of a
diverged run is ever written.
"""

from __future__ import annotations

import torch
from torch import Tensor


class NonFiniteWatch:
    """The first non-finite step of a run, kept on the device until `check` reads it."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.seen: Tensor | None = None  # bool: a non-finite term has been recorded
        self.step: Tensor | None = None
        self.epoch: Tensor | None = None
        self.values: Tensor | None = None  # the terms at the first bad step
        self.bad: Tensor | None = None  # which terms were not finite there
        self.unread = 0  # records since the last `check`

    def record(self, losses: dict[str, Tensor], step: int, epoch: int) -> None:
        """Remember ``losses`` if they are the first with a non-finite term (device operations only)."""
        values = torch.stack([value.detach().float() for value in losses.values()])
        bad = ~torch.isfinite(values)
        if self.seen is None or list(losses) != self.names:
            self.names = list(losses)
            self.seen = torch.zeros((), dtype=torch.bool, device=values.device)
            self.step = torch.full((), -1, dtype=torch.long, device=values.device)
            self.epoch, self.values, self.bad = self.step.clone(), torch.zeros_like(values), bad
        assert self.step is not None and self.epoch is not None and self.values is not None
        assert self.bad is not None
        first = bad.any() & ~self.seen
        self.step = torch.where(first, step, self.step)
        self.epoch = torch.where(first, epoch, self.epoch)
        self.values = torch.where(first, values, self.values)
        self.bad = torch.where(first, bad, self.bad)
        self.seen = self.seen | first
        self.unread += 1

    def check_every(self, records: int) -> None:
        """`check` once ``records`` steps have been recorded since the last read."""
        if self.unread >= records:
            self.check()

    def check(self) -> None:
        """Raise `FloatingPointError` naming the first bad step and its terms, if any (one host read)."""
        self.unread = 0
        if self.seen is None or not bool(self.seen):
            return
        assert self.bad is not None and self.values is not None
        bad = [name for name, flag in zip(self.names, self.bad.tolist(), strict=True) if flag]
        values = [value for value, flag in zip(self.values.tolist(), self.bad.tolist(), strict=True) if flag]
        raise FloatingPointError(
            f"non-finite distillation loss at step {int(self.step)} (epoch {int(self.epoch)}): "  # type: ignore[arg-type]
            f"term(s) {bad} = {values}. Lower the learning rate or the loss weight, or check the inputs "
            "for NaN/Inf."
        )
