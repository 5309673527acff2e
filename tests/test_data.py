from __future__ import annotations

import pytest
import torch

from repfusion_pl.data import DigitsDataModule
from repfusion_pl.data.splits import seeded_split


def setup(**kwargs) -> DigitsDataModule:
    data = DigitsDataModule(**kwargs)
    data.setup("fit")
    return data


def test_splits_cover_all_1797_real_digits_without_overlap():
    data = setup(image_size=12, val_fraction=0.1, test_fraction=0.2, shift=0)
    sizes = {name: len(split) for name, split in data.splits.items()}
    assert sizes == {"train": 1259, "val": 179, "test": 359}
    assert sum(sizes.values()) == 1797
    images = torch.cat([s.images for s in data.splits.values()])
    assert images.shape[1:] == (1, 12, 12) and images.min() >= 0 and images.max() <= 1
    assert len(torch.unique(images.flatten(1), dim=0)) > 1700  # distinct images, not copies


def test_split_is_fixed_by_the_seed():
    a, b, c = setup(seed=1), setup(seed=1), setup(seed=2)
    assert torch.equal(a.splits["test"].labels, b.splits["test"].labels)
    assert not torch.equal(a.splits["test"].images, c.splits["test"].images)


def test_labels_per_class_keeps_a_balanced_subset_and_leaves_eval_splits_alone():
    full, scarce = setup(), setup(labels_per_class=10)
    assert torch.bincount(scarce.splits["train"].labels).tolist() == [10] * 10
    assert torch.equal(full.splits["val"].labels, scarce.splits["val"].labels)


def test_training_batches_are_shifted_evaluation_batches_are_not():
    data = setup(shift=2, batch_size=32)
    train_batch = next(iter(data.train_dataloader()))
    assert train_batch[0].shape == (32, 1, 16, 16) and train_batch[1].dtype == torch.long
    val_images, _ = next(iter(data.val_dataloader()))
    torch.testing.assert_close(val_images, data.splits["val"].images[:32])


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="sum to less than 1"):
        DigitsDataModule(val_fraction=0.5, test_fraction=0.5)


def test_seeded_split_follows_one_shuffle_by_hand():
    def seeded() -> torch.Generator:
        return torch.Generator().manual_seed(0)

    # Every index below is read off this one shuffle of range(10), drawn by the same seeded generator.
    order = torch.randperm(10, generator=seeded()).tolist()
    train, val, test = seeded_split(10, (2, 3), seeded())
    assert val.tolist() == sorted(order[:2]) and test.tolist() == sorted(order[2:5])
    assert train.tolist() == sorted(order[5:])
    assert sorted(train.tolist() + val.tolist() + test.tolist()) == list(range(10))
    capped, same_val, same_test = seeded_split(10, (2, 3), seeded(), num_train=3)
    assert capped.tolist() == sorted(order[5:8])  # the first 3 of the shuffled rest, then sorted
    assert torch.equal(same_val, val) and torch.equal(same_test, test)

    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    generator = seeded()
    state = generator.get_state()
    one_each, val_again, test_again = seeded_split(10, (2, 3), generator, labels, labels_per_class=1)
    assert set(one_each.tolist()) <= set(train.tolist()) and one_each.tolist() == sorted(one_each.tolist())
    assert sorted(labels[one_each].tolist()) == sorted(set(labels[train].tolist()))  # one of each class
    assert torch.equal(val_again, val) and torch.equal(test_again, test)  # held-out splits are unchanged
    all_kept, _, _ = seeded_split(10, (2, 3), seeded(), labels, labels_per_class=5)
    assert torch.equal(all_kept, train)  # no class has more than 5 training images
    # The same generator state gives the same split; the generator is left advanced.
    again = torch.Generator().set_state(state)
    assert torch.equal(seeded_split(10, (2, 3), again, labels, labels_per_class=1)[0], one_each)
    assert not torch.equal(generator.get_state(), state)
    with pytest.raises(ValueError, match="needs the labels"):
        seeded_split(10, (2, 3), seeded(), labels_per_class=1)


def test_without_labels_the_same_split_yields_images_alone():
    labelled = setup(image_size=8, shift=0)
    unlabelled = setup(image_size=8, shift=0, labels=False)
    for name in ("train", "val", "test"):
        images = torch.stack([unlabelled.splits[name][i] for i in range(len(unlabelled.splits[name]))])
        expected = torch.stack([labelled.splits[name][i][0] for i in range(len(labelled.splits[name]))])
        assert torch.equal(images, expected), name
    batch = next(iter(unlabelled.train_dataloader()))
    assert isinstance(batch, torch.Tensor) and batch.shape[1:] == (1, 8, 8)
    with pytest.raises(ValueError, match="labels_per_class needs labels"):
        DigitsDataModule(labels=False, labels_per_class=5)
