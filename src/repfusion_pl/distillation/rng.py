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


def seed_all(seed: int) -> None:
    """Seed torch (CUDA included), numpy and Python in this process; wrap in `capture`/`restore`."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


class RandomStreams:
    """A process's random streams for one run: a training generator per rank, and a validation one.

    The training generator draws the timesteps; each DDP rank seeds its own, so ranks draw
    different timesteps. Validation draws from a generator reset at every validation epoch, so the
    training stream is the same however often validation runs. `state_dict` packs every rank's
    global RNG states and training generator, so a resumed run continues all of them.
    """

    def __init__(self) -> None:
        self.train: torch.Generator | None = None
        self.validation: torch.Generator | None = None
        self._rank = 0
        self._pending: dict[str, Tensor] | None = None

    def start(self, rank: int, device: torch.device) -> None:
        """Seed this rank's training stream from the global seed, or restore a loaded state."""
        self._rank = rank
        seed = (torch.initial_seed() + 7919 * rank) % 2**63
        self.train = torch.Generator(device=device).manual_seed(seed)
        if self._pending is not None:
            # Restored now, when the generator exists, and before Lightning builds the first resumed
            # epoch's data iterator (which draws from the global RNGs).
            restore(self._pending, self.train)
            self._pending = None

    def start_validation(self, device: torch.device) -> torch.Generator:
        """A fresh validation generator for this rank (same draws every validation epoch)."""
        self.validation = torch.Generator(device=device).manual_seed(self._rank)
        return self.validation

    def state_dict(self, world_size: int = 1) -> list[dict[str, Tensor]]:
        """Every rank's states; in DDP this is a collective call that every rank must make."""
        states = {key: value.cpu() for key, value in capture(self.train).items()}
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if world_size == 1 or not distributed:
            return [states]
        per_rank: list = [None] * world_size
        # all_gather_object: the states are uint8 and int64 tensors of unequal sizes.
        torch.distributed.all_gather_object(per_rank, states)
        return per_rank

    def load_state_dict(self, per_rank: list[dict[str, Tensor]], rank: int) -> None:
        """Keep this rank's states for `start`; a run resumed on more ranks reuses them round-robin."""
        if per_rank:
            self._pending = per_rank[rank % len(per_rank)]
