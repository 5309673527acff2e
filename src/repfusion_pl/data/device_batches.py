"""Training batches cut on the device from a split held there whole: no workers, no per-image Python.

For small in-memory datasets (Fashion-MNIST, the digits) a GPU step is faster than a DataLoader can
collate and copy a batch image by image. `DeviceBatchLoader` moves the split to the trainer's device
once and cuts every batch there with one gather; `BatchAugment` applies a flip and a shift to every
image of the batch at once, each image with its own draw. Like `ResumableDataLoader` it resumes
mid-epoch exactly: the order of epoch ``e`` comes from ``(seed, e)`` (the same permutation and DDP
split as the per-image loader) and each batch's augmentation from ``(seed, e, rank, batch)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DistributedSampler

from repfusion_pl.data.resumable import ResumableSampler, sample_seed


@dataclass(frozen=True)
class BatchAugment:
    """A random horizontal flip and a random shift of up to ``shift`` pixels (zero fill), per image.

    The same distribution as ``v2.RandomHorizontalFlip()`` and ``v2.RandomCrop(size, padding=shift)``.
    """

    flip: bool = False
    shift: int = 0

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """``(N, C, H, W)`` images, each flipped and shifted by its own draw from ``generator``."""
        n, device = len(images), images.device
        if self.flip:
            flipped = torch.rand(n, generator=generator, device=device) < 0.5
            images = torch.where(flipped[:, None, None, None], images.flip(-1), images)
        if self.shift:
            images = self._shifted(images, generator)
        return images

    def _shifted(self, images: Tensor, generator: torch.Generator) -> Tensor:
        s, (n, c, h, w), device = self.shift, images.shape, images.device
        padded = F.pad(images, (s, s, s, s))
        top, left = (torch.randint(0, 2 * s + 1, (2, n), generator=generator, device=device)).unbind(0)
        rows = (top[:, None] + torch.arange(h, device=device))[:, None, :, None]
        cols = (left[:, None] + torch.arange(w, device=device))[:, None, None, :]
        batch = torch.arange(n, device=device)[:, None, None, None]
        channel = torch.arange(c, device=device)[None, :, None, None]
        return padded[batch, channel, rows, cols]


class DeviceBatchLoader:
    """The training batches of in-memory ``images`` (and ``labels``), cut and augmented on ``device``.

    Args:
        images: The whole split, ``(N, C, H, W)`` floats.
        labels: ``(N,)`` labels, or ``None`` for batches of images alone.
        augment: What to do to every training batch; ``None`` for nothing.
        batch_size: Images per batch.
        progress: ``() -> (the epoch the trainer runs, batches it has processed in it)``.
        device: Where the split lives and batches are cut.
        num_replicas: DDP world size.
        rank: This process's rank.
        seed: The seed of every epoch's order and augmentation.
        drop_last: Leave out the last, smaller batch (every batch then has one shape).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | None,
        augment: BatchAugment | None,
        batch_size: int,
        progress: Callable[[], tuple[int, int]],
        device: torch.device,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        self.images = images.to(device)
        self.labels = None if labels is None else labels.to(device)
        self.augment, self.batch_size, self.progress = augment, batch_size, progress
        self.device, self.rank, self.seed, self.drop_last = device, rank, seed, drop_last
        # Lightning calls `sampler.set_epoch` at every epoch start, as for a DataLoader.
        self.sampler = ResumableSampler(range(len(images)), num_replicas, rank, seed)  # type: ignore[arg-type]

    def __len__(self) -> int:
        samples = len(self.sampler)
        return samples // self.batch_size if self.drop_last else -(-samples // self.batch_size)

    def __iter__(self) -> Iterator[Tensor | tuple[Tensor, Tensor]]:
        skip = self.sampler.take_skip()
        order = torch.tensor(list(DistributedSampler.__iter__(self.sampler)), device=self.device)
        epoch = self.sampler.epoch
        for batch in range(skip // self.batch_size, len(self)):
            index = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            images = self.images[index]
            if self.augment is not None:
                generator = torch.Generator(device=self.device)
                generator.manual_seed(sample_seed(self.seed, epoch, self.rank * 2**32 + batch))
                images = self.augment(images, generator)
            yield images if self.labels is None else (images, self.labels[index])

    def state_dict(self) -> dict[str, int]:
        """The epoch whose order is being drawn and how many of its batches the trainer has processed."""
        return {"epoch": self.sampler.epoch, "batches": self.progress()[1]}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue a checkpoint's epoch after its processed batches (a new epoch starts from zero)."""
        self.sampler.resume(state, self.progress()[0], self.batch_size)
