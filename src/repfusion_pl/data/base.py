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

from repfusion_pl.data.device_batches import DeviceBatchLoader
from repfusion_pl.data.resumable import ResumableDataLoader
from repfusion_pl.data.target_store import TargetStore
from repfusion_pl.data.views import ViewsDataset, ViewSpec

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
        device_batches: Hold the training split on the trainer's device and cut (and augment)
            whole batches there (`DeviceBatchLoader`); in-memory data only.
    """

    #: Image channels of the batches (subclasses set it).
    in_channels: int = 3

    def __init__(self, batch_size: int = 64, num_workers: int = 0, device_batches: bool = False) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device_batches = device_batches
        self.splits: dict[str, Dataset] = {}
        self.views: tuple[TargetStore, ViewSpec] | None = None
        self.view_splits: dict[str, Dataset] = {}  # what the views are read from (`serve_views`)

    def serve_views(
        self, store: TargetStore, spec: ViewSpec, splits: dict[str, Dataset] | None = None
    ) -> None:
        """Serve the training and validation splits as the cached views of ``store`` (with their targets).

        ``splits``: the datasets the cache was built over, when they are readable views of this
        module's own (`repfusion_pl.data.cache_source.cache_splits`); default its splits as they are.
        """
        if self.device_batches:
            raise ValueError(
                f"{type(self).__name__}: a teacher-target cache serves its views through the per-image "
                "loader; set device_batches: false"
            )
        self.views, self.view_splits = (store, spec), dict(splits or {})

    def _served(self, split: str) -> Dataset:
        if self.views is None:
            return self._split(split)
        dataset = self.view_splits[split] if split in self.view_splits else self._split(split)
        store, spec = self.views
        return ViewsDataset(dataset, store, split, spec)

    def _split(self, split: str) -> Dataset:
        if split not in self.splits:
            raise RuntimeError(f"{type(self).__name__} has no {split!r} split; call setup() first")
        return self.splits[split]

    def _options(self) -> dict[str, Any]:
        return dict(
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.num_workers > 0 and torch.cuda.is_available(),
        )

    def _training_loader(self, shard: bool) -> DataLoader | DeviceBatchLoader:
        dataset = self._served("train")
        trainer = self.trainer if shard else None
        if self.device_batches:
            return self._device_loader(dataset, trainer)
        return ResumableDataLoader(
            dataset,
            progress=self._training_progress,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
            seed=torch.initial_seed(),  # what `seed_everything` set: the run's seed
            drop_last=len(dataset) > self.batch_size,  # type: ignore[arg-type]
            **self._options(),
        )

    def _device_loader(self, dataset: Dataset, trainer: Any) -> DeviceBatchLoader:
        images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
        augment = getattr(dataset, "batch_augment", None)
        if images is None or (getattr(dataset, "transform", None) is not None and augment is None):
            raise ValueError(
                f"{type(self).__name__} cannot cut batches on the device: its training split is not an "
                "in-memory image tensor with a batched augmentation; set device_batches: false"
            )
        return DeviceBatchLoader(
            images,
            labels,
            augment,
            self.batch_size,
            self._training_progress,
            trainer.strategy.root_device if trainer else torch.device("cpu"),
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
            seed=torch.initial_seed(),  # what `seed_everything` set: the run's seed
            drop_last=len(images) > self.batch_size,
        )

    def _training_progress(self) -> tuple[int, int]:
        """The epoch the trainer runs and the training batches it has processed in it (0, 0 without one)."""
        if self.trainer is None:
            return 0, 0
        loop = self.trainer.fit_loop
        # The epoch Lightning hands to `sampler.set_epoch` (the fit loop's processed count).
        epoch = getattr(loop.epoch_progress.current, "processed", self.trainer.current_epoch)
        return int(epoch), int(getattr(loop.epoch_loop.batch_progress.current, "processed", 0))

    def train_dataloader(self, shard: bool = True) -> DataLoader | DeviceBatchLoader:
        """The shuffled training loader: under DDP this rank's share, unless ``shard`` is false."""
        return self._training_loader(shard)

    def ordered_loader(self, split: str) -> DataLoader:
        """An unshuffled loader of any split (``train``, ``val`` or ``test``)."""
        return DataLoader(self._split(split), **self._options())

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._served("val"), **self._options())

    def test_dataloader(self) -> DataLoader:
        return self.ordered_loader("test")
