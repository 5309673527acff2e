"""Batches cut on the device: v2's flip and shift per image, the resumable order, a run through the CLI."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from conftest import quiet_trainer
from repfusion_pl import DiffusionTeacher, FixedTimestep, RepFusionDistillation, Student
from repfusion_pl.data import DigitsDataModule
from repfusion_pl.data.device_batches import BatchAugment, DeviceBatchLoader


def crops(image: torch.Tensor, shift: int) -> list[torch.Tensor]:
    """Every crop v2.RandomCrop(size, padding=shift) can return, flipped and not."""
    padded = F.pad(image, (shift,) * 4)
    h, w = image.shape[-2:]
    found = []
    for top in range(2 * shift + 1):
        for left in range(2 * shift + 1):
            crop = padded[..., top : top + h, left : left + w]
            found += [crop, crop.flip(-1)]
    return found


def test_each_image_is_flipped_and_shifted_by_its_own_draw_within_v2s_range():
    images = torch.rand(64, 2, 6, 5)
    generator = torch.Generator().manual_seed(0)
    out = BatchAugment(flip=True, shift=2)(images, generator)
    assert out.shape == images.shape
    offsets = set()
    for image, result in zip(images, out, strict=True):
        matches = [i for i, crop in enumerate(crops(image, 2)) if torch.equal(crop, result)]
        assert matches, "not a flip and shift of its image"
        offsets.add(matches[0] // 2)
    assert len(offsets) > 10  # the 25 offsets are drawn per image, not once per batch


def test_a_batch_is_cut_from_the_resumable_order_and_resumes_mid_epoch():
    images, labels = torch.arange(40.0).reshape(40, 1, 1, 1), torch.arange(40)
    position = {"epoch": 1, "batches": 3}

    def loader(augment=None):
        made = DeviceBatchLoader(
            images,
            labels,
            augment,
            8,
            lambda: (position["epoch"], position["batches"]),
            torch.device("cpu"),
            seed=5,
        )
        made.sampler.set_epoch(1)
        return made

    straight = list(loader())
    assert len(straight) == 5 and all(torch.equal(x.flatten().long(), y) for x, y in straight)
    reference = DistributedSampler(range(40), num_replicas=1, rank=0, shuffle=True, seed=5)  # type: ignore[arg-type]
    reference.set_epoch(1)
    assert torch.cat([y for _, y in straight]).tolist() == list(reference)  # the per-image loader's order
    resumed = loader()
    resumed.load_state_dict({"epoch": 1, "batches": 3})
    assert [y.tolist() for _, y in resumed] == [y.tolist() for _, y in straight[3:]]
    augmented = [loader(BatchAugment(shift=1)) for _ in range(2)]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(*augmented, strict=True))  # seeded per batch


def test_a_distillation_fit_reads_batches_cut_on_the_device_and_checkpoints_their_position(
    gray_teacher_dir, tmp_path
):
    data = DigitsDataModule(image_size=8, batch_size=32, device_batches=True)
    teacher = DiffusionTeacher(str(gray_teacher_dir))
    module = RepFusionDistillation(teacher, Student("resnet18", in_channels=1), FixedTimestep(0))
    trainer = quiet_trainer(tmp_path, max_steps=3, limit_val_batches=0)
    trainer.fit(module, data)
    loader = trainer.train_dataloader
    assert isinstance(loader, DeviceBatchLoader) and loader.state_dict() == {"epoch": 0, "batches": 3}
