"""Images streamed from an optimized LitData dataset: a local folder or an object-store URL.

``repfusion optimize`` (or ``litdata.optimize``) writes the dataset: ``index.json`` and chunk files of
encoded images and labels. litdata's `StreamingDataset` reads the chunks (downloading them from an
object store into a local cache as they are needed), gives each rank of each node and each worker a
disjoint share, and shuffles chunks and items with ``(seed, epoch)``. The training loader resumes
mid-epoch exactly (`repfusion_pl.data.streaming_loader`): the same remaining batches with the same
augmentation, when the resumed run has the same world size, workers and batch size.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch.utils.data import DataLoader

from repfusion_pl.data.base import BaseDataModule
from repfusion_pl.data.device_batches import DeviceBatchLoader
from repfusion_pl.data.labelled_images import image_transform
from repfusion_pl.data.splits import check_fractions, check_labelled
from repfusion_pl.data.stream_index import (
    check_same_stream,
    item_count,
    item_fields,
    read_index,
    seeded_cut,
    stream_fingerprint,
    whole,
)


def require_litdata() -> Any:
    """`repfusion_pl.data.streaming_loader` (which imports litdata), or an `ImportError` with the fix."""
    try:
        import repfusion_pl.data.streaming_loader as streaming_loader
    except ImportError as err:
        raise ImportError(
            f"streaming needs the `litdata` library ({err}): pip install 'repfusion-pl[data]'"
        ) from err
    return streaming_loader


def first_epoch() -> tuple[int, int]:
    """The position of a loader outside the trainer's run: epoch 0, nothing processed."""
    return 0, 0


class StreamingImageDataModule(BaseDataModule):
    """Images (and labels) streamed from an optimized LitData dataset, local or in an object store.

    Training batches come from litdata's `StreamingDataLoader`: each rank of each node (and each of
    its workers) reads its own chunks, shuffled by the run's seed and the epoch, and a checkpoint
    resumes mid-epoch with the same remaining batches and augmentation (same world size, workers and
    batch size; with others, litdata's elastic resume goes on without repeating an image). A resume
    over other data (other chunks, or another cut) is refused with what differs. Validation and test
    (the validation split) are read by index, and sharded by Lightning as every data module's are; so
    does a teacher-target cache (``repfusion cache``), whose views the package's resumable loader serves.

    Args:
        input_dir: The optimized training folder (``repfusion optimize``), or its URL (``s3://bucket/x``,
            ``gs://...``, ``azure://...``): chunks are fetched into a local cache as they are read.
        val_dir: Another optimized folder or URL for validation; ``None`` holds out ``val_fraction`` of
            ``input_dir`` (a seeded cut by chunks).
        batch_size: Batch size for every split.
        num_workers: Loader worker processes per rank, each streaming its own chunks.
        image_size: Side S: images are resized (shorter side) and centre-cropped to S x S.
        val_fraction: Share of ``input_dir`` held out for validation when there is no ``val_dir``.
        seed: Seed of that cut.
        augment: Random crops and horizontal flips of training images.
        crop: ``pad`` (a random shift of up to 1/8 of the side) or ``resized`` (``RandomResizedCrop``).
        grayscale: Decode to one channel (``in_channels`` becomes 1) instead of RGB.
        labels: ``False``: batches are images alone (label-free distillation); a stream without
            labels needs it.
        image_key: The item field holding the encoded image.
        label_key: The item field holding the class index.
        num_classes: The class count; default: the class names ``repfusion optimize`` recorded.
        cache_dir: Where chunks read from an object store are kept (default: litdata's cache).
        max_cache_size: Bound on that cache, e.g. ``"50GB"`` (default: litdata's).
        storage_options: Object-store client options passed to litdata (endpoint, credentials, ...).
    """

    def __init__(
        self,
        input_dir: str,
        val_dir: str | None = None,
        batch_size: int = 64,
        num_workers: int = 4,
        image_size: int = 32,
        val_fraction: float = 0.1,
        seed: int = 0,
        augment: bool = True,
        crop: Literal["pad", "resized"] = "pad",
        grayscale: bool = False,
        labels: bool = True,
        image_key: str = "image",
        label_key: str = "label",
        num_classes: int | None = None,
        cache_dir: str | None = None,
        max_cache_size: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers)
        check_fractions(val_fraction)
        check_labelled(labels, None)
        self.save_hyperparameters()
        self.image_size, self.augment, self.crop, self.grayscale = image_size, augment, crop, grayscale
        self.in_channels = 1 if grayscale else 3
        self.labels, self.image_key, self.label_key = labels, image_key, label_key
        given = dict(cache_dir=cache_dir, max_cache_size=max_cache_size, storage_options=storage_options)
        self.options = {key: value for key, value in given.items() if value is not None}
        index, metadata = read_index(input_dir, self.options)
        self._check_fields(input_dir, index)
        if val_dir is not None:
            val_index, _ = read_index(val_dir, self.options)
            self._check_fields(val_dir, val_index)
            self.cuts = {"train": (input_dir, whole(index)), "val": (val_dir, whole(val_index))}
        else:
            train, val = seeded_cut(index, val_fraction, seed)
            if not val[0] or not train[0]:
                raise ValueError(
                    f"val_fraction={val_fraction} of the {item_count(whole(index))} "
                    f"images of {input_dir} leaves no validation or no training image; change it, or give "
                    "val_dir (a second optimized folder)"
                )
            self.cuts = {"train": (input_dir, train), "val": (input_dir, val)}
        self.index = index
        self.resumed_seed: int | None = None  # the run seed of a checkpoint being resumed
        self.classes: list[str] = list(metadata.get("classes") or []) if labels else []
        self.num_classes = (num_classes or len(self.classes) or None) if labels else None

    def _check_fields(self, source: str, index: dict[str, Any]) -> None:
        fields = item_fields(index)
        if self.image_key not in fields:
            raise ValueError(
                f"image_key {self.image_key!r} is not a field of the items of {source} (its fields: {fields})"
            )
        if self.labels and self.label_key not in fields:
            raise ValueError(
                f"labels were asked for, but the items of {source} have no {self.label_key!r} field (its "
                f"fields: {fields}): set labels: false for images alone, or name the label field in label_key"
            )

    def _stream(self, split: str, world: tuple[int, int, int] = (1, 0, 1), **options: Any) -> Any:
        """A new `ImageStream` of a split (each loader reads its own: litdata keeps state in it)."""
        source, (files, spans) = self.cuts[split]
        transform = image_transform(self.image_size, self.augment and split == "train", crop=self.crop)
        plain = image_transform(self.image_size, False, crop=self.crop)
        label_key = self.label_key if self.labels else None
        stream = require_litdata().ImageStream(
            source, transform, plain, self.image_key, label_key, self.grayscale, world=world,
            **self.options, **options,
        )  # fmt: skip
        stream.subsampled_files, stream.region_of_interest = list(files), list(spans)
        return stream

    def setup(self, stage: str | None = None) -> None:
        # Read by index: evaluation loaders (sharded by Lightning, as every data module's), the
        # monitor, and a teacher-target cache; training streams them instead (`train_dataloader`).
        if not self.splits:
            streams = {
                split: require_litdata().IndexedStream(self._stream(split)) for split in ("train", "val")
            }
            self.splits = {**streams, "test": streams["val"]}

    def _world(self, shard: bool) -> tuple[int, int, int]:
        trainer = self.trainer if shard else None
        return (trainer.world_size, trainer.global_rank, trainer.num_nodes) if trainer else (1, 0, 1)

    def train_dataloader(self, shard: bool = True) -> DataLoader | DeviceBatchLoader:
        """The shuffled training stream: under DDP this rank's share, unless ``shard`` is false.

        With a teacher-target cache (`serve_views`), its views are served by the package's resumable
        loader instead, reading the split by index.
        """
        if self.views is not None:
            return super().train_dataloader(shard)
        seed = self._run_seed()
        world = self._world(shard)
        # litdata seeds numpy with seed + epoch: keep it a 31-bit value.
        stream = self._stream("train", world, shuffle=True, seed=seed % 2**31, drop_last=True)
        stream.augment_seed = seed
        # Unsharded, the loader is the monitor's or the probe's: the same images at every evaluation.
        progress = self._training_progress if shard else first_epoch
        loader = require_litdata().ResumableStreamingLoader(
            stream, self.batch_size, progress,
            num_workers=self.num_workers, pin_memory=self._options()["pin_memory"],
        )  # fmt: skip
        if len(loader) == 0:
            raise ValueError(
                f"the training stream of {self.cuts['train'][0]} holds {item_count(self.cuts['train'][1])} "
                f"images, not one batch of {self.batch_size} for each of {world[0]} rank(s); lower batch_size"
            )
        return loader

    def _run_seed(self) -> int:
        """The seed of the order and augmentation: what `seed_everything` set, or the resumed run's."""
        return torch.initial_seed() if self.resumed_seed is None else self.resumed_seed

    def state_dict(self) -> dict[str, Any]:
        """What the training stream reads, and its seed, so that a resume continues the same stream."""
        return {
            "train_stream": stream_fingerprint(self.index, self.cuts["train"][1]),
            "seed": self._run_seed(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Refuse a checkpoint trained on other data (`check_same_stream`); keep its seed for the stream.

        Lightning restores the data module before it asks for the loaders, so the resumed epoch is drawn
        with the checkpoint's seed even where this run's config drew another.
        """
        if "train_stream" in state_dict:
            check_same_stream(
                state_dict["train_stream"], stream_fingerprint(self.index, self.cuts["train"][1])
            )
            self.resumed_seed = int(state_dict["seed"])
