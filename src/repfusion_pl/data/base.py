"""What every data module of the package shares: splits held in a dict and their loaders.

Batch contract, for every data module: ``(images, target)`` pairs, where ``images`` are float
``(N, C, H, W)`` in [0, 1] and ``target`` is one of

* class labels, long ``(N,)`` (classification);
* a class mask, long ``(N, H, W)``, with `IGNORE_INDEX` for unlabelled pixels (segmentation);
* keypoints, float ``(N, K, 2)`` as ``(x, y)`` pixel-centre coordinates in the returned image
  (``x = j`` is the centre of column ``j``; landmarks);

or the images alone, from data modules set to ``labels: false`` (label-free distillation).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from repfusion_pl.data.resumable import ResumableDataLoader

IGNORE_INDEX = 255


def check_image_channels(images: torch.Tensor, expected: int, model: str) -> None:
    """Fail with the fix when a batch's channel count is not what ``model`` was built for.

    Raises:
        ValueError: Naming both counts, the setting to change and how to convert the data instead.
    """
    if images.ndim == 4 and images.shape[1] == expected:
        return
    got = images.shape[1] if images.ndim == 4 else None
    if got is None:
        raise ValueError(f"{model} expects (N, C, H, W) image batches, got shape {tuple(images.shape)}")
    convert = (
        "repeat the grey channel 3 times"
        if got == 1
        else "add torchvision's v2.Grayscale() to its transforms"
    )
    raise ValueError(
        f"the data gives {got}-channel images but {model} was built for {expected}-channel ones: set its "
        f"in_channels to {got}, or convert the images in the data module ({convert})"
    )


class BaseDataModule(LightningDataModule):
    """Base of every data module of the package: ``setup`` fills the ``train``/``val``/``test`` splits.

    Args:
        batch_size: Batch size for every split.
        num_workers: DataLoader worker processes (0 for in-memory data; more for files on disk).
    """

    #: Image channels of the batches (subclasses set it).
    in_channels: int = 3

    def __init__(self, batch_size: int = 64, num_workers: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.splits: dict[str, Dataset] = {}

    def _loader(self, split: str, shuffle: bool, shard: bool = True) -> DataLoader:
        if split not in self.splits:
            raise RuntimeError(f"{type(self).__name__} has no {split!r} split; call setup() first")
        dataset = self.splits[split]
        options: dict[str, Any] = dict(
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.num_workers > 0 and torch.cuda.is_available(),
        )
        if not shuffle:
            return DataLoader(dataset, **options)
        trainer = self.trainer if shard else None
        return ResumableDataLoader(
            dataset,
            progress=self._training_progress,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
            seed=torch.initial_seed(),  # what `seed_everything` set: the run's seed
            drop_last=len(dataset) > self.batch_size,  # type: ignore[arg-type]
            **options,
        )

    def _training_progress(self) -> tuple[int, int]:
        """The epoch the trainer runs and the training batches it has processed in it (0, 0 without one)."""
        if self.trainer is None:
            return 0, 0
        loop = self.trainer.fit_loop
        # The epoch Lightning hands to `sampler.set_epoch` (the fit loop's processed count).
        epoch = getattr(loop.epoch_progress.current, "processed", self.trainer.current_epoch)
        return int(epoch), int(getattr(loop.epoch_loop.batch_progress.current, "processed", 0))

    def train_dataloader(self, shard: bool = True) -> DataLoader:
        """The shuffled training loader: under DDP this rank's share, unless ``shard`` is false."""
        return self._loader("train", shuffle=True, shard=shard)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
