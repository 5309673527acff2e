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

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

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

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.splits:
            raise RuntimeError(f"{type(self).__name__} has no {split!r} split; call setup() first")
        dataset = self.splits[split]
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.num_workers > 0 and torch.cuda.is_available(),
            drop_last=shuffle and len(dataset) > self.batch_size,  # type: ignore[arg-type]
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
