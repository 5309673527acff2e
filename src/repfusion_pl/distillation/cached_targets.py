"""How a distillation run meets a teacher-target cache: batches that bring targets, checks before it starts.

With a `CachedTeacher`, training batches are dicts (``images``, ``labels``, ``targets``) served by the
data module (`repfusion_pl.data.views`); the run must draw only timesteps the cache holds and pair its
student with the targets the cache wrote, which is checked when the module is built.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from repfusion_pl.data.base import check_image_channels
from repfusion_pl.data.target_store import CacheError
from repfusion_pl.distillation.losses import FeatureLoss, global_pool
from repfusion_pl.teachers.cached import CachedTeacher
from repfusion_pl.timesteps import TimestepSampler


def split_batch(batch: Any, in_channels: int) -> tuple[Tensor, Tensor | None, dict[str, Tensor] | None]:
    """Images (checked against ``in_channels``), labels and cached targets of a distillation batch."""
    if isinstance(batch, Tensor):
        images, labels, cached = batch, None, None
    elif isinstance(batch, (list, tuple)) and len(batch) == 2:
        (images, labels), cached = batch, None
    elif isinstance(batch, dict) and "images" in batch:
        images, labels, cached = batch["images"], batch.get("labels"), batch.get("targets")
    else:
        raise TypeError("distillation batches must be an image tensor or an (images, labels) pair")
    check_image_channels(images, in_channels, "the teacher and student")
    return images, labels, cached


def check_cached_run(
    teacher: CachedTeacher,
    sampler: TimestepSampler,
    loss: FeatureLoss,
    pairs: list[str],
    head_layer: str | None,
) -> None:
    """Refuse a run the cache cannot serve: timesteps off its grid, other pairs, maps it did not keep.

    ``head_layer`` is the layer the sampler's reward reads (``None`` when it reads the targets).
    """
    if off := sorted(set(sampler.support()) - set(teacher.t_grid)):
        raise CacheError(
            f"{sampler.summary()} draws timesteps the cache in {teacher.cache} does not hold ({off[:8]}"
            f"{' ...' if len(off) > 8 else ''}; its grid is {teacher.t_grid}): give FixedTimestep a grid "
            f"point, or UniformTimestep / PolicyTimestep `grid: {teacher.t_grid}`"
        )
    if sorted(pairs) != sorted(teacher.target_names):
        raise CacheError(
            f"the cache in {teacher.cache} holds the targets {teacher.target_names} but this student pairs "
            f"with {pairs}: give the student the taps it was cached for, or build a cache for these"
        )
    if loss.dense and teacher.pooled:
        raise CacheError(
            f"{type(loss).__name__} compares maps, but the cache in {teacher.cache} kept pooled vectors (it "
            "was built for a pooled loss); build it again with this loss in the config"
        )
    if head_layer is not None and head_layer != teacher.head_layer:
        raise CacheError(
            f"the cache in {teacher.cache} holds the sampler's features of {teacher.head_layer!r}, not of "
            f"head_layer {head_layer!r}"
        )


def stored_targets(targets: dict[str, Tensor], pooled: bool) -> dict[str, Tensor]:
    """What a cache keeps of a batch's targets: pooled vectors (for dense losses the maps) and the head."""
    kept = {
        name: global_pool(value) if pooled else value for name, value in targets.items() if name != "head"
    }
    return {**kept, "head": global_pool(targets["head"].float())}  # what every reward pools to
