"""Opt-in capture of the distillation step: one compiled graph for teacher, student, projectors and losses.

On a GPU a small step is bound by kernel launches, not arithmetic. ``torch.compile`` with
``mode="reduce-overhead"`` fuses the step's forward (and, through AOTAutograd, its backward) and
replays it as CUDA graphs, one per batch shape; on a CPU it compiles with the default mode. The
sampler's draw stays outside (it consumes the run's random stream), and so does the optimiser
step. A batch of another shape (the last, smaller batch of an epoch when the loader keeps it)
compiles once more, up to ``torch._dynamo.config.cache_size_limit`` shapes, then runs eagerly:
never a crash.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

#: What a captured step returns: its loss terms and the values it logs.
Terms = tuple[dict[str, Tensor], dict[str, Tensor]]


class StepCapture:
    """Compile ``step`` on first use, on the device of its first input.

    Args:
        step: ``(images, timesteps, labels, log_prob, entropy) -> (losses, logs)``, dicts of tensors.
        options: ``torch.compile`` arguments; default ``mode="reduce-overhead"`` on a GPU and the
            default mode elsewhere (``{"backend": "aot_eager"}`` checks the capture quickly on CPU).
    """

    def __init__(self, step: Callable[..., Terms], options: dict[str, Any] | None) -> None:
        self.step, self.options = step, options
        self.compiled: Callable[..., Terms] | None = None

    def __call__(self, images: Tensor, *args: Any) -> Terms:
        cuda = images.device.type == "cuda"
        if self.compiled is None:
            default = {"mode": "reduce-overhead"} if cuda else {}
            options = self.options if self.options is not None else default
            self.compiled = torch.compile(self.step, dynamic=False, **options)
        if cuda:
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration: the last one's outputs are free
        losses, logs = self.compiled(images, *args)
        # CUDA graphs reuse their output memory at the next replay; what outlives the step (the
        # logged values, the loss Lightning keeps) must be a copy. Cloning is differentiable.
        return {k: v.clone() for k, v in losses.items()}, {k: v.detach().clone() for k, v in logs.items()}
