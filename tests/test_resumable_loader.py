"""The resumable training loader: an epoch's order and augmentation depend on (seed, epoch, index) only."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from repfusion_pl.data.resumable import ResumableDataLoader, ResumableSampler, SeededSamples


class Noisy(Dataset):
    """Each item is its index plus a draw from the global RNG (an augmentation stand-in)."""

    def __len__(self) -> int:
        return 20

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([float(index), torch.rand(()).item()])


def batches(loader: ResumableDataLoader) -> list[torch.Tensor]:
    return [batch for batch in loader]


def test_order_and_augmentation_ignore_the_global_rng_and_change_per_epoch():
    loader = ResumableDataLoader(Noisy(), batch_size=4, progress=lambda: (0, 0), seed=7)
    torch.manual_seed(1)
    first = batches(loader)
    torch.manual_seed(2)  # another global state: the same epoch comes out the same
    assert all(torch.equal(a, b) for a, b in zip(first, batches(loader), strict=True))
    loader.resumable_sampler.set_epoch(1)
    other = batches(loader)
    assert not torch.equal(torch.cat(first), torch.cat(other))
    assert sorted(torch.cat(other)[:, 0].tolist()) == list(range(20))  # every index once


def test_a_loaded_state_skips_the_processed_batches_of_the_same_epoch_only():
    epoch = {"now": 1}
    loader = ResumableDataLoader(Noisy(), batch_size=4, progress=lambda: (epoch["now"], 2), seed=3)
    loader.resumable_sampler.set_epoch(1)
    full = batches(loader)
    assert loader.state_dict() == {"epoch": 1, "batches": 2}
    loader.load_state_dict({"epoch": 1, "batches": 2})
    assert all(torch.equal(a, b) for a, b in zip(full[2:], batches(loader), strict=True))
    assert len(batches(loader)) == 5  # the skip applies to the resumed epoch's first pass only
    epoch["now"] = 2  # a checkpoint from the end of epoch 1: epoch 2 starts from its first batch
    loader.load_state_dict({"epoch": 1, "batches": 5})
    assert len(batches(loader)) == 5 and loader.resumable_sampler.epoch == 2


def test_a_checkpoint_on_a_cut_epochs_last_batch_starts_the_next_epoch_from_zero():
    # limit_train_batches=3 of 5: the checkpoint holds (epoch 0, 3 batches) while the trainer still says
    # epoch 0 when it loads; Lightning then sets epoch 1 on the sampler before iterating.
    loader = ResumableDataLoader(Noisy(), batch_size=4, progress=lambda: (0, 3), seed=3)
    loader.load_state_dict({"epoch": 0, "batches": 3})
    loader.resumable_sampler.set_epoch(1)
    resumed = batches(loader)
    fresh = ResumableDataLoader(Noisy(), batch_size=4, progress=lambda: (1, 0), seed=3)
    fresh.resumable_sampler.set_epoch(1)
    assert len(resumed) == 5
    assert all(torch.equal(a, b) for a, b in zip(batches(fresh), resumed, strict=True))


def test_seeded_samples_keep_the_datasets_batched_fetch_to_themselves():
    class Batched(Noisy):
        def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
            return [self[i] for i in indices]

    # The DataLoader would hand `__getitems__` the (index, seed) keys and lose the seeds.
    assert not hasattr(SeededSamples(Batched()), "__getitems__")
    loader = ResumableDataLoader(Batched(), batch_size=4, progress=lambda: (0, 0), seed=7)
    assert sorted(torch.cat(batches(loader))[:, 0].tolist()) == list(range(20))


def test_ranks_share_an_epoch_without_overlap():
    shards = [list(ResumableSampler(Noisy(), num_replicas=2, rank=r, seed=0)) for r in (0, 1)]
    indices = [index for shard in shards for index, _ in shard]
    assert sorted(indices) == list(range(20))
    seeds = {seed for shard in shards for _, seed in shard}
    assert len(seeds) == 20  # one augmentation seed per sample


def test_seeded_samples_draw_under_their_own_seed_and_leave_the_global_rng_alone():
    samples = SeededSamples(Noisy())
    state = torch.get_rng_state()
    a, b = samples[(3, 123)], samples[(3, 123)]
    assert torch.equal(a, b) and not torch.equal(samples[(3, 124)], a)
    assert torch.equal(torch.get_rng_state(), state)
    assert len(samples) == 20
