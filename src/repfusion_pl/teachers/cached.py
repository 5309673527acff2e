"""A teacher read from disk: the targets ``repfusion cache`` wrote, served by (image, view, timestep).

`CachedTeacher` stands where `DiffusionTeacher` stands in a distillation config. It runs nothing:
the data module serves each training image as one of the cached views together with that view's
targets at every grid timestep (`repfusion_pl.data.views`), and `select` picks each image's targets
at its drawn timestep on the device. Its arguments are `DiffusionTeacher`'s: those a config gives
are checked against what the cache was built from, so a config that changed the teacher, its
layers, the image size or the input mapping is refused with what differs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor, nn

from repfusion_pl.data.cache_source import cache_splits, serve_cached_views
from repfusion_pl.data.target_store import CacheError, TargetStore, differences
from repfusion_pl.data.views import ViewSpec, data_fingerprint


class CachedTeacher(nn.Module):
    """Teacher targets from a cache built by ``repfusion cache``, in place of the live teacher.

    Args:
        cache: The cache folder (``--cache.dir`` of ``repfusion cache``).
        source: The teacher the run expects; checked against the cache's (``None``: the cache's).
        layers: The tapped layers the run expects; checked likewise.
        input_range: The data's range the run expects; checked likewise.
        mode: ``clean`` or ``noised``; checked likewise (a noised cache is one draw of the noise).
        image_size: The image side the run expects; checked likewise.
        class_label_map: Accepted for configs written for `DiffusionTeacher`; the cache holds the
            targets it was built with.
        class_names: As ``class_label_map``.
        revision: As ``class_label_map``.
        family: As ``class_label_map``.
        prompt: As ``class_label_map``.
        truncate: As ``class_label_map`` (no forward runs).
        inference_mode: As ``class_label_map`` (no forward runs).
        compile: As ``class_label_map`` (no forward runs).
    """

    #: No forward over images: the monitor does not probe it, the probe cannot.
    live = False
    store: TargetStore
    _grid_index: Tensor

    def __init__(
        self,
        cache: str,
        source: str | None = None,
        layers: Sequence[str] | None = None,
        input_range: tuple[float, float] | None = None,
        mode: Literal["clean", "noised"] | None = None,
        image_size: int | None = None,
        class_label_map: dict[int, int] | str | None = None,
        class_names: list[str] | str | None = None,
        revision: str | None = None,
        family: str | None = None,
        prompt: str | None = None,
        truncate: bool = True,
        inference_mode: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        store = TargetStore.open(cache)
        manifest = store.manifest
        expected: dict[str, Any] = {"source": source, "layers": list(layers) if layers else None}
        expected |= {"mode": mode, "input_range": list(input_range) if input_range else None}
        expected |= {"image_size": image_size}
        recorded = {key: manifest["teacher_args"].get(key) for key in expected}
        given = {key: value for key, value in expected.items() if value is not None}
        if wrong := differences(given, {key: recorded[key] for key in given}):
            raise CacheError(
                f"the teacher-target cache in {cache} was built for another teacher set-up: "
                f"{'; '.join(wrong)}. Build a cache for this one (repfusion cache --config <this config> "
                "--cache.dir <another folder>) or point cache: at the right folder"
            )
        self.__dict__["store"] = store  # shared, not copied: EMA's deep copy must not copy memory maps
        self.cache = cache
        self.source, self.layers = manifest["teacher"]["source"], list(manifest["teacher"]["layers"])
        self.feature_shapes = {name: tuple(shape) for name, shape in manifest["feature_shapes"].items()}
        self.sample_size, self.in_channels = int(manifest["image_size"]), int(manifest["in_channels"])
        self.head_layer, self.pooled = manifest["head_layer"], bool(manifest["pooled"])
        self.t_grid = [int(t) for t in manifest["t_grid"]]
        table = torch.full((int(manifest["num_train_timesteps"]),), -1, dtype=torch.long)
        table[self.t_grid] = torch.arange(len(self.t_grid))
        self.register_buffer("_grid_index", table, persistent=False)

    @property
    def num_train_timesteps(self) -> int:
        """T of the teacher the cache was built from."""
        return int(self._grid_index.numel())

    @property
    def views(self) -> ViewSpec:
        """The views of each training image the cache holds."""
        return ViewSpec(**self.store.manifest["views"])

    @property
    def target_names(self) -> list[str]:
        """The cached feature-pair targets (``feature`` or ``feature/<layer>``), without the head's."""
        return [name for name in self.store.manifest["targets"] if name != "head"]

    def fingerprint(self) -> dict[str, Any]:
        """The live teacher's fingerprint, as recorded: checkpoints of cached and live runs agree."""
        return copy.deepcopy(self.store.manifest["teacher"])

    def select(self, targets: dict[str, Tensor], timesteps: Tensor) -> dict[str, Tensor]:
        """Each image's targets at its timestep, from a batch's ``(N, grid points, ...)`` targets.

        Pooled vectors come back as ``(N, C, 1, 1)`` maps: a pooled loss pools them to themselves.
        """
        index = self._grid_index[timesteps]
        rows = torch.arange(len(timesteps), device=timesteps.device)
        picked = {name: stacked[rows, index].float() for name, stacked in targets.items()}
        return {name: value if value.dim() == 4 else value[..., None, None] for name, value in picked.items()}

    def attach(self, data: LightningDataModule) -> None:
        """Serve ``data``'s training and validation splits as the cached views, once they are checked.

        Raises:
            CacheError: The data is not the data the cache was built from (what differs is named), a
                shard is missing or broken, or ``data`` gives no images by index (`cache_splits`).
        """
        splits = cache_splits(data)
        found = data_fingerprint(splits, type(data).__name__)
        if wrong := differences(found, self.store.manifest["data"]):
            raise CacheError(
                f"the teacher-target cache in {self.cache} was built from other data: {'; '.join(wrong)}. "
                "Cache this data (repfusion cache --config <this config> --cache.dir <another folder>) or "
                "give the data module the cache's settings"
            )
        for split in splits:
            self.store.check(split)
        serve_cached_views(data, splits, self.store, self.views)

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        raise RuntimeError(
            f"CachedTeacher ({self.cache}) runs no forward: batches bring their targets; pass images of the "
            "data module it was attached to (RepFusionDistillation does), or use DiffusionTeacher"
        )

    def __deepcopy__(self, memo: dict) -> CachedTeacher:
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            clone.__dict__[key] = value if key == "store" else copy.deepcopy(value, memo)
        return clone

    def extra_repr(self) -> str:
        return f"cache={self.cache!r}, source={self.source!r}, layers={self.layers}, t_grid={self.t_grid}"
