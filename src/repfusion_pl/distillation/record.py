"""What a distillation checkpoint records of its run, beyond the student and teacher it resumes with.

The model card of ``repfusion export --hub-folder`` is written from this record: when it was saved,
the library versions, the data (name, training images, image size), the feature loss and what
initialised the student. None of it is checked on resume (`repfusion_pl.checkpoints.check_resumable`
reads the student and teacher only).
"""

from __future__ import annotations

from datetime import datetime, timezone
from functools import cache
from importlib import metadata
from typing import Any

from lightning.pytorch import LightningModule
from torch import nn

#: The libraries whose versions travel with the weights.
RECORDED_LIBRARIES = ("torch", "lightning", "torchvision", "timm", "diffusers")


def run_record(module: LightningModule) -> dict[str, Any]:
    """The run's record for a checkpoint of ``module`` (a `RepFusionDistillation` in a trainer)."""
    student, loss = getattr(module, "student", None), getattr(module, "feature_loss", None)
    return {
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
        "data": data_record(getattr(module.trainer, "datamodule", None)),
        "feature_loss": describe_module(loss) if isinstance(loss, nn.Module) else None,
        "student_init": getattr(student, "initialisation", None),
    }


@cache
def library_versions() -> dict[str, str]:
    """Installed versions of `RECORDED_LIBRARIES` (those installed)."""
    found = {}
    for name in RECORDED_LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def data_record(data: Any) -> dict[str, Any]:
    """The data module's class, number of training images and image size, where it says them."""
    if data is None:
        return {}
    record: dict[str, Any] = {"name": type(data).__name__}
    splits = getattr(data, "splits", None)
    train = splits.get("train") if isinstance(splits, dict) else None
    try:
        record["train_images"] = len(train) if train is not None else None
    except TypeError:  # an iterable dataset has no length
        record["train_images"] = None
    size = getattr(data, "image_size", None)
    record["image_size"] = list(size) if isinstance(size, (tuple, list)) else size
    return record


def describe_module(module: nn.Module) -> str:
    """``Name(arg=value, ...)`` from the module's plain settings (numbers, strings, flags)."""
    settings = {
        key: value
        for key, value in vars(module).items()
        if not key.startswith("_") and key != "training" and isinstance(value, (int, float, str, bool))
    }
    return f"{type(module).__name__}({', '.join(f'{k}={v}' for k, v in settings.items())})"
