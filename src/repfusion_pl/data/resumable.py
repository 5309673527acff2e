"""A training loader that resumes mid-epoch exactly: the same remaining batches, the same augmentation.

Lightning saves the state of any train loader that has ``state_dict``/``load_state_dict`` and restores
it before the resumed epoch starts; this module gives it one. The order of epoch ``e`` is a
permutation drawn from ``(seed, e)`` alone, split across DDP ranks like `DistributedSampler`, and each
sample's augmentation draws from a generator seeded by ``(seed, e, index)``, so neither depends on
how many batches were drawn before, on worker processes, or on the global RNG. The position saved is
the number of batches the trainer has processed in the epoch (not how many the loader's workers
prefetched), and a resumed epoch starts right after them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: spreads (seed, epoch, index) over the seed space


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one sample in one epoch."""
    return ((seed * _MIX + epoch) * _MIX + index) % (2**63)


class SeededSamples(Dataset):
    """A dataset whose items are drawn under their own seed: ``dataset[(index, seed)]``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if isinstance(key, int):
            return self.dataset[key]
        index, seed = key
        with torch.random.fork_rng(devices=[]):  # transforms.v2 draws from the global CPU generator
            torch.manual_seed(seed)
            return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        # "dataset": not set yet (unpickling in a worker), no recursion. Dunders (the DataLoader's
        # batched `__getitems__`) stay unforwarded: they would take the keys without their seeds.
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ResumableSampler(DistributedSampler):
    """`DistributedSampler` that yields ``(index, augmentation seed)`` and can start an epoch mid-way."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        # Samples of this rank's share already trained on, and the epoch they belong to: a checkpoint
        # on an epoch's last batch resumes into the next epoch, which must start from zero.
        self.skip, self.skip_epoch = 0, -1

    def resume(self, state: dict[str, int], epoch: int, batch_size: int) -> None:
        """Enter ``epoch``; if a loader's ``state`` was saved in it, skip its processed batches once."""
        self.set_epoch(epoch)
        if state.get("epoch") == epoch:
            self.skip, self.skip_epoch = int(state.get("batches", 0)) * batch_size, epoch

    def take_skip(self) -> int:
        """The samples to skip in the epoch about to be iterated (0 after the first call)."""
        skip = self.skip if self.skip_epoch == self.epoch else 0
        self.skip, self.skip_epoch = 0, -1
        return skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.take_skip() :]
        return iter([(index, sample_seed(self.seed, self.epoch, index)) for index in indices])


class ResumableDataLoader(DataLoader):
    """A shuffled training `DataLoader` with a ``state_dict`` Lightning stores in every checkpoint.

    Args:
        dataset: The training split.
        batch_size: Samples per batch.
        progress: ``() -> (the epoch the trainer runs, batches it has processed in it)``.
        num_replicas: DDP world size.
        rank: This process's rank.
        seed: The seed of every epoch's order and augmentation.
        **kwargs: Other `DataLoader` arguments (workers, pinning, ``drop_last``).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        progress: Callable[[], tuple[int, int]],
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        self.resumable_sampler = ResumableSampler(dataset, num_replicas, rank, seed)
        # Worker base seeds come from this generator, not the global RNG a resume restores differently.
        generator = torch.Generator().manual_seed(seed)
        super().__init__(
            SeededSamples(dataset),
            batch_size=batch_size,
            sampler=self.resumable_sampler,
            generator=generator,
            **kwargs,
        )
        self.progress = progress

    def state_dict(self) -> dict[str, int]:
        """The epoch whose order is being drawn and how many of its batches the trainer has processed."""
        return {"epoch": self.resumable_sampler.epoch, "batches": self.progress()[1]}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue a checkpoint's epoch after its processed batches (a new epoch starts from zero)."""
        self.resumable_sampler.resume(state, self.progress()[0], int(self.batch_size or 1))
