"""Random-number state that must survive a checkpoint for a resumed run to equal a straight one.

Lightning restores weights, optimisers, schedulers, loops and callbacks, but not the global RNGs:
after a resume the shuffle order, the augmentations and every random draw would differ. States are
packed as tensors, so ``weights_only=True`` loads them and DDP ranks can exchange them.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import Tensor


def capture(generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """This process's torch, CUDA, numpy and Python RNG states, plus ``generator``'s."""
    version, python_state, gauss = random.getstate()
    _, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state(legacy=True)
    state = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor([version, *python_state, -1 if gauss is None else 0], dtype=torch.int64),
        "python_gauss": torch.tensor([0.0 if gauss is None else gauss], dtype=torch.float64),
        "numpy": torch.tensor(
            [*np.asarray(numpy_keys).tolist(), numpy_pos, numpy_has_gauss], dtype=torch.int64
        ),
        "numpy_gauss": torch.tensor([numpy_gauss], dtype=torch.float64),
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore(state: dict[str, Tensor], generator: torch.Generator | None = None) -> None:
    """Put back what `capture` recorded (``generator`` gets its own stream back, if recorded)."""
    torch.set_rng_state(state["torch"].cpu())
    python = state["python"].tolist()
    gauss = None if python[-1] == -1 else float(state["python_gauss"][0])
    random.setstate((python[0], tuple(python[1:-1]), gauss))
    numpy = state["numpy"].tolist()
    keys = np.array(numpy[:-2], dtype=np.uint32)
    np.random.set_state(("MT19937", keys, numpy[-2], numpy[-1], float(state["numpy_gauss"][0])))
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())
