"""Where tensor work outside a Trainer runs (the probe, studies, caches): the device and the precision.

Inside ``fit`` Lightning places everything; the probe and the studies' linear probes run outside a
Trainer, so they take the same words (``--accelerator auto|cpu|gpu``, ``--precision 32|bf16``) and
resolve them here.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

Accelerator = Literal["auto", "cpu", "gpu"]
Precision = Literal["32", "bf16"]


def resolve_device(accelerator: Accelerator | str = "auto") -> torch.device:
    """The device an ``accelerator`` choice means here: ``auto`` takes the GPU when PyTorch sees one.

    Raises:
        ValueError: An unknown choice, or ``gpu`` on a machine where PyTorch sees no GPU (with why
            and the fix).
    """
    if accelerator not in ("auto", "cpu", "gpu", "cuda"):
        raise ValueError(f"accelerator must be 'auto', 'cpu' or 'gpu', got {accelerator!r}")
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ValueError(
            f"accelerator 'gpu' was asked for but PyTorch sees no GPU (torch {torch.__version__}, {build}); "
            "run with --accelerator cpu (or auto), or check CUDA_VISIBLE_DEVICES and the driver (nvidia-smi)"
        )
    return torch.device("cuda", torch.cuda.current_device())


def autocast(device: torch.device, precision: Precision | str = "32") -> contextlib.AbstractContextManager:
    """The feature pass's precision: ``32`` runs as is, ``bf16`` under autocast on ``device``."""
    if precision in ("32", "32-true"):
        return contextlib.nullcontext()
    if precision in ("bf16", "bf16-mixed"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be '32' or 'bf16', got {precision!r}")
