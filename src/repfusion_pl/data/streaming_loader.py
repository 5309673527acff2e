"""litdata's `StreamingDataset` and `StreamingDataLoader`, fitted to the package's batches and resume.

litdata shards the chunks of an optimized dataset across ranks, nodes and workers, shuffles them with
``(seed, epoch)`` and can restart an epoch from a ``state_dict``. Three things are added here:

* items become the package's samples: the image decoded and transformed (its augmentation drawn
  under the seed of ``(run seed, epoch, index)``, as `repfusion_pl.data.resumable` draws it, so it
  depends on neither workers nor how many batches came before), and its label when asked for;
* the position saved is the number of batches the trainer has processed in the epoch, not how many
  the loader has handed out, and the epoch is the trainer's (litdata counts its own otherwise);
* whether a loaded position applies is decided when the epoch starts, by the trainer's progress then
  (a checkpoint from an epoch's last batch resumes with the next epoch, from its start).

This module imports litdata; `repfusion_pl.data.streaming` imports it only when a loader is built.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from copy import deepcopy
from typing import Any

import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset
from litdata.streaming.sampler import ChunkedIndex
from litdata.utilities.env import _DistributedEnv
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from repfusion_pl.data.files import open_image
from repfusion_pl.data.resumable import sample_seed

# Lightning warns that a sized IterableDataset may repeat items across workers; litdata gives each
# worker its own chunks, so the length is exact and the warning would only mislead.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")


def decode_image(value: Any, mode: str, name: str) -> Tensor:
    """An item's image as a ``(C, H, W)`` uint8 tensor: from encoded bytes, a PIL image or an array.

    Raises:
        CorruptImageError: Naming the item when its bytes cannot be decoded.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return F.pil_to_tensor(open_image(io.BytesIO(value), mode, name))
    if isinstance(value, Image.Image):
        return F.pil_to_tensor(value.convert(mode))
    array = torch.as_tensor(np.asarray(value))
    if array.ndim == 2:
        array = array[None]
    elif array.shape[-1] in (1, 3, 4) and array.shape[0] not in (1, 3, 4):
        array = array.permute(2, 0, 1)  # numpy images are (H, W, C)
    return F.pil_to_tensor(F.to_pil_image(array).convert(mode))


class ImageStream(StreamingDataset):
    """An optimized dataset of images (and labels) read as the package's samples.

    Streamed (by a `StreamingDataLoader`), an item's augmentation is drawn under the seed of ``(run
    seed, epoch, index)``; read by index (``stream[i]``, as a teacher-target cache reads a split), it
    draws from the global generator, which the caller seeds, as for any map-style dataset.

    Args:
        input_dir: The optimized folder, or its object-store URL (``s3://...``, ``gs://...``).
        transform: Uint8 image -> float tensor (`image_transform`).
        plain_transform: The same without augmentation (`plain`).
        image_key: The item field holding the image.
        label_key: The item field holding the class label; ``None`` yields images alone.
        grayscale: Decode to one channel.
        world: ``(world size, global rank, nodes)`` that shard the stream (litdata would detect them
            from ``torch.distributed``; the trainer knows them for certain, on CPU nodes too).
        **kwargs: `StreamingDataset` arguments (``shuffle``, ``seed``, ``drop_last``, ``cache_dir``, ...).
    """

    def __init__(
        self,
        input_dir: str,
        transform: v2.Transform,
        plain_transform: v2.Transform,
        image_key: str = "image",
        label_key: str | None = "label",
        grayscale: bool = False,
        world: tuple[int, int, int] = (1, 0, 1),
        **kwargs: Any,
    ) -> None:
        drop_last = kwargs.pop("drop_last", None)
        super().__init__(input_dir, **kwargs)
        self.distributed_env = _DistributedEnv(*world)
        if drop_last is not None:
            self.set_drop_last(drop_last)  # after init: litdata forces it on when it detects DDP
        # Not `self.transform`: litdata applies an attribute of that name to the raw item.
        self.image_transform, self.plain_transform = transform, plain_transform
        self.image_key, self.label_key, self.labelled = image_key, label_key, label_key is not None
        self.mode, self.source, self.augment_seed = "L" if grayscale else "RGB", input_dir, 0
        self._labels: Tensor | None = None

    def _decoded(self, index: ChunkedIndex | int) -> tuple[Tensor, dict[str, Any], int]:
        item = super().__getitem__(index)
        position = index.index if isinstance(index, ChunkedIndex) else int(index)
        name = item.get("name") or f"item {position} of {self.source}"
        return decode_image(item[self.image_key], self.mode, name), item, position

    def __getitem__(self, index: ChunkedIndex | int) -> Any:
        image, item, position = self._decoded(index)
        if isinstance(index, ChunkedIndex):  # streamed: the draw is the item's own
            with torch.random.fork_rng(devices=[]):  # transforms.v2 draws from the global CPU generator
                # litdata counts epochs from 1; the package, as Lightning, from 0.
                torch.manual_seed(sample_seed(self.augment_seed, self.current_epoch - 1, position))
                image = self.image_transform(image)
        else:
            image = self.image_transform(image)
        return image if self.label_key is None else (image, int(item[self.label_key]))

    def plain(self, index: int) -> Tensor:
        """Image ``index`` without the training augmentation (resized as the evaluation splits are)."""
        return self.plain_transform(self._decoded(index)[0])

    @property
    def labels(self) -> Tensor | None:
        """Every item's label in index order (read once, no image decoded), or ``None`` without labels."""
        if self.label_key is not None and self._labels is None:
            read = StreamingDataset.__getitem__
            self._labels = torch.tensor([int(read(self, i)[self.label_key]) for i in range(len(self))])
        return self._labels


class IndexedStream(Dataset):
    """A split of an optimized dataset read by index: the map-style view of an (unsharded) `ImageStream`.

    Evaluation loaders read it, sharded by Lightning's `DistributedSampler` under DDP as every data
    module's are (padded, so that every rank runs as many batches), and so do teacher-target caches.

    Args:
        stream: The split, unsharded and unshuffled.
    """

    def __init__(self, stream: ImageStream) -> None:
        self.stream, self.pid = stream, os.getpid()

    def _own(self) -> ImageStream:
        if self.pid != os.getpid():  # a forked worker: litdata's download thread did not come along
            self.stream.cache, self.pid = None, os.getpid()
        return self.stream

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, index: int) -> Any:
        return self._own()[index]

    def plain(self, index: int) -> Tensor:
        """Image ``index`` without the training augmentation."""
        return self._own().plain(index)

    @property
    def labelled(self) -> bool:
        return self.stream.labelled

    @property
    def labels(self) -> Tensor | None:
        """Every item's label in index order, or ``None`` without labels."""
        return self.stream.labels


class ResumableStreamingLoader(StreamingDataLoader):
    """A `StreamingDataLoader` whose ``state_dict`` is the trainer's position in the epoch.

    Args:
        dataset: The training stream.
        batch_size: Samples per batch.
        progress: ``() -> (the epoch the trainer runs, batches it has processed in it)``.
        **kwargs: Other `StreamingDataLoader` arguments (workers, pinning).
    """

    def __init__(
        self,
        dataset: ImageStream,
        batch_size: int,
        progress: Callable[[], tuple[int, int]],
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, batch_size=batch_size, **kwargs)
        self.progress = progress
        self.pending: dict[str, Any] | None = None  # a loaded state, applied when its epoch starts

    def __iter__(self) -> Any:
        # Decided when the first batch is asked for: only then does the trainer's progress say whether
        # this is the interrupted epoch (a checkpoint from an epoch's end resumes with the next one).
        pending, self.pending = self.pending, None
        epoch, processed = self.progress()
        if pending is not None and pending["epoch"] == epoch and 0 < processed == pending["batches"]:
            super().load_state_dict(pending["stream"])
        else:
            self.restore = False  # litdata keeps it set after an epoch cut short (limit_train_batches)
            self.current_epoch = epoch  # litdata adds one as the epoch starts
        yield from super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        """The trainer's epoch and processed batches, and litdata's state at that batch."""
        epoch, batches = self.progress()
        # litdata's own state is that of the batches it has handed out; set it to the trainer's count.
        live: tuple[int, int] = (self._num_samples_yielded_streaming, self._latest_worker_idx)  # type: ignore[has-type]
        self._num_samples_yielded_streaming = batches * int(self.batch_size or 1)
        self._latest_worker_idx = (batches - 1) % max(self.num_workers, 1) if batches else 0
        try:
            stream = deepcopy(super().state_dict())
        finally:
            self._num_samples_yielded_streaming, self._latest_worker_idx = live
        stream["current_epoch"] = stream["dataset"]["current_epoch"] = epoch + 1
        return {"epoch": epoch, "batches": batches, "stream": stream}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Hold a checkpoint's position until its epoch starts (the data module has checked the data)."""
        if self.dataset.input_dir.url is None:  # a local folder may have moved; its data has not
            state["stream"]["dataset"]["input_dir_path"] = self.dataset.input_dir.path
        self.pending = state
