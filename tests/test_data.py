from __future__ import annotations

import pytest
import torch

from repfusion_pl.data import DigitsDataModule


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
