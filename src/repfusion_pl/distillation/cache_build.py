"""Build a teacher-target cache: the live teacher once over every training view at every grid timestep.

What is written is what the run's losses compare with (`RepFusionDistillation.teacher_targets`):
for pooled losses the pooled vector of each pair's target (tiny), for dense ones the map in float16,
and the pooled features the policy's reward reads. Shards are written whole, one after the other;
a build that stops (killed, out of disk) resumes at the first missing shard when run again.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from repfusion_pl.accelerators import Precision, autocast
from repfusion_pl.data.cache_source import batch_size_of, cache_splits
from repfusion_pl.data.target_store import CacheError, TargetStore, differences, read_manifest, write_manifest
from repfusion_pl.data.views import ViewSpec, data_fingerprint, labels_of, render_view
from repfusion_pl.distillation.cached_targets import stored_targets
from repfusion_pl.distillation.module import RepFusionDistillation
from repfusion_pl.teachers import DiffusionTeacher


def manifest_for(
    module: RepFusionDistillation, splits: dict[str, Dataset], kind: str, t_grid: list[int], spec: ViewSpec
) -> dict[str, Any]:
    """What a cache of this module's teacher over these splits records (without shapes or progress)."""
    teacher = module.teacher
    if not isinstance(teacher, DiffusionTeacher):
        raise CacheError(
            "repfusion cache runs the live teacher: give the config's DiffusionTeacher, not a cache"
        )
    return {
        "format": 1,
        "teacher": teacher.fingerprint(),
        "teacher_args": {
            "source": teacher.source,
            "layers": list(teacher.layers),
            "mode": teacher.mode,
            "input_range": list(teacher.input_range),
            "image_size": teacher.sample_size,
        },
        "feature_shapes": {name: list(shape) for name, shape in teacher.feature_shapes.items()},
        "image_size": teacher.sample_size,
        "in_channels": teacher.in_channels,
        "num_train_timesteps": teacher.num_train_timesteps,
        "head_layer": module.head_layer,
        "pooled": not module.feature_loss.dense,
        "t_grid": list(t_grid),
        "views": asdict(spec),
        "data": data_fingerprint(splits, kind),
        "splits": {
            name: {"images": len(split), "views": spec.count if name == "train" else 1}  # type: ignore[arg-type]
            for name, split in splits.items()
        },
    }


def build_cache(
    module: RepFusionDistillation,
    data: LightningDataModule,
    folder: str | Path,
    t_grid: list[int],
    spec: ViewSpec,
    command: str,
    device: torch.device,
    precision: Precision = "32",
    shard_size: int = 1024,
    progress: bool = True,
) -> TargetStore:
    """Write (or finish) the cache of ``module``'s teacher over ``data``'s training and validation views.

    ``data`` is any data module whose images can be read by index (`cache_splits`).

    Raises:
        CacheError: ``folder`` holds a cache of another run (what differs is named), a grid point is
            outside the teacher's timesteps, ``data`` gives no images by index (what it lacks is named),
            or the disk fills up (the build resumes when run again).
    """
    if bad := [t for t in t_grid if not 0 <= t < module.teacher.num_train_timesteps]:
        raise CacheError(
            f"t_grid points {bad} are outside the teacher's 0..{module.teacher.num_train_timesteps - 1}"
        )
    splits, batch_size = cache_splits(data), batch_size_of(data)
    manifest = manifest_for(module, splits, type(data).__name__, t_grid, spec)
    module.to(device).eval()
    manifest["targets"] = target_shapes(module, splits["train"], t_grid, device)
    manifest |= {"shard_size": shard_size, "command": command, "complete": False}
    store = TargetStore(folder, resumed_manifest(folder, manifest))
    write_manifest(folder, store.manifest)
    total = sum(len(split) * store.manifest["splits"][name]["views"] for name, split in splits.items())  # type: ignore[arg-type]
    bar = tqdm(total=total, desc="cache", unit="img", unit_scale=True, disable=not progress)
    for name, split in splits.items():
        for shard in range(store.shards(name).count):
            rows = store.shards(name).rows(shard)
            views = store.manifest["splits"][name]["views"]
            if store.has_shard(name, shard):  # written by an earlier run of the same build
                bar.update(len(rows) * views)
                continue
            arrays = shard_targets(module, split, rows, views, store, (device, precision, batch_size), bar)
            store.write(name, shard, arrays)
    bar.close()
    store.manifest["complete"] = True
    write_manifest(folder, store.manifest)
    return store


def resumed_manifest(folder: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest``, after checking that a cache already in ``folder`` is of the same build."""
    if not (Path(folder) / "manifest.json").is_file():
        return manifest
    found = read_manifest(folder)
    ignored = ("command", "complete")
    wrong = differences(
        {k: v for k, v in manifest.items() if k not in ignored},
        {k: v for k, v in found.items() if k not in ignored},
    )
    if wrong:
        raise CacheError(
            f"{folder} holds a teacher-target cache of another run ({'; '.join(wrong[:6])}); choose another "
            "--cache.dir, or delete that folder to replace it"
        )
    return {**found, "command": manifest["command"]}


def target_shapes(
    module: RepFusionDistillation, train: Dataset, t_grid: list[int], device: torch.device
) -> dict:
    """The shape and dtype of every stored target, from one image."""
    image = render_view(train, 0, 0, ViewSpec()).unsqueeze(0).to(device)
    labels = labels_of(train)
    with torch.no_grad():
        targets = module.teacher_targets(
            image, torch.tensor([t_grid[0]], device=device), _labels(labels, [0], device)
        )
    pooled = not module.feature_loss.dense
    return {
        name: {"shape": list(value.shape[1:]), "dtype": "float32" if pooled or name == "head" else "float16"}
        for name, value in stored_targets(targets, pooled).items()
    }


def shard_targets(
    module: RepFusionDistillation,
    split: Dataset,
    rows: range,
    views: int,
    store: TargetStore,
    run: tuple[torch.device, Precision, int],
    bar: tqdm,
) -> dict[str, np.ndarray]:
    """Every target of one shard: ``(images, views, grid points, *shape)`` arrays.

    ``run`` is the device, the precision and the batch size of the teacher's passes.
    """
    manifest, spec, grid = store.manifest, ViewSpec(**store.manifest["views"]), store.manifest["t_grid"]
    device, precision, size = run
    arrays = {
        name: np.zeros((len(rows), views, len(grid), *spec_["shape"]), dtype=spec_["dtype"])
        for name, spec_ in manifest["targets"].items()
    }
    labels = labels_of(split)
    for view in range(views):
        for start in range(0, len(rows), size):
            indices = list(rows[start : start + size])
            images = torch.stack([render_view(split, i, view, spec) for i in indices]).to(device)
            for g, t in enumerate(grid):
                timesteps = torch.full((len(indices),), t, dtype=torch.long, device=device)
                with torch.no_grad(), autocast(device, precision):
                    targets = module.teacher_targets(images, timesteps, _labels(labels, indices, device))
                for name, value in stored_targets(targets, bool(manifest["pooled"])).items():
                    arrays[name][start : start + len(indices), view, g] = value.float().cpu().numpy()
            bar.update(len(indices))
    return arrays


def _labels(labels: torch.Tensor | None, indices: list[int], device: torch.device) -> torch.Tensor | None:
    return None if labels is None else labels[indices].to(device)
