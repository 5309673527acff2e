"""A distilled student as a Hugging Face Hub folder: ``model.safetensors``, ``config.json``, ``README.md``.

The layout is the one timm's ``push_to_hf_hub`` writes, so ``timm.create_model("hf-hub:<repo>",
pretrained=True)`` (or ``"local-dir:<folder>"``) builds the backbone and loads it, where timm can
build the student's architecture: a timm student with the library's stem, or a torchvision ResNet
(whose keys are timm's). ``config.json`` is then timm's own config of that model (``architecture``,
``num_classes: 0``, ``pretrained_cfg`` with the input size and the [0, 1] range the student saw as
``mean`` 0 and ``std`` 1); otherwise it has the same fields, and the card says how to load the
weights. Its ``repfusion`` entry records the student and whether timm can load it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from repfusion_pl.checkpoints import read_checkpoint
from repfusion_pl.students.backbones import BackboneSpec, build_backbone, first_conv_path
from repfusion_pl.students.card import RunRecord, model_card
from repfusion_pl.students.weights import (
    HUB_WEIGHTS,
    STATE_DICT_SUFFIXES,
    BackboneWeights,
    backbone_bytes,
    backbone_from_checkpoint,
    read_backbone_weights,
)

#: What a hub folder holds; a folder holding anything else is never written into.
HUB_FILES = (HUB_WEIGHTS, "config.json", "README.md")
#: Fields of timm's config that describe timm's own pretrained weights, not these.
SOURCE_FIELDS = ("tag", "license", "origin_url", "paper_ids", "paper_name", "notes", "description")


class HubFolderError(ValueError):
    """A hub folder that cannot be written: the target holds other files, or the weights lack a spec."""


def export_hub_folder(
    source: str | Path, folder: str | Path, *, license: str | None = None, repo_id: str | None = None
) -> Path:
    """Write the student of a checkpoint (or an export) as a hub folder, complete or not at all.

    The files are written into a hidden folder beside ``folder`` and renamed into place; an earlier
    hub export in ``folder`` is replaced, a folder holding anything else is refused.

    Args:
        source: A distillation checkpoint (``.ckpt``: the card says the most) or an export.
        folder: The folder to write (parents are created).
        license: The Hub licence id for the card; ``None`` leaves the field for the user.
        repo_id: The Hub repository it will be pushed to, for the card's usage lines.

    Raises:
        CheckpointError: The source is missing, unreadable or holds no student.
        HubFolderError: ``folder`` holds other files, or the source records no student spec.
    """
    weights, record = read_source(Path(source).expanduser())
    return write_hub_folder(weights, record, folder, license=license, repo_id=repo_id)


def write_hub_folder(
    weights: BackboneWeights,
    record: RunRecord,
    folder: str | Path,
    *,
    license: str | None = None,
    repo_id: str | None = None,
) -> Path:
    """`export_hub_folder` for weights and a record already read (`read_source`)."""
    spec = weights.spec
    if spec is None:
        raise HubFolderError(
            f"{weights.path} records no student spec (arch, library, stem): a hub folder needs it for "
            "config.json; export a RepFusionDistillation checkpoint"
        )
    target = Path(folder).expanduser()
    check_target(target)
    clear_stale(target)
    staging = _staging(target, "tmp")
    try:
        staging.mkdir()
        # Bytes written by us, not save_file: its file would be private (0600) in a folder meant to share.
        (staging / HUB_WEIGHTS).write_bytes(backbone_bytes(weights, Path(weights.path).name))
        config = hub_config(weights, spec, record.image_size(), staging / "config.json")
        (staging / "README.md").write_text(model_card(record, spec, config, license=license, repo_id=repo_id))
        swap_in(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def read_source(path: Path) -> tuple[BackboneWeights, RunRecord]:
    """The weights and the run record of a checkpoint, or of an export (provenance only)."""
    if path.is_dir() or path.suffix in (".safetensors", *STATE_DICT_SUFFIXES):
        weights = read_backbone_weights(path)
        return weights, RunRecord(weights.provenance)
    checkpoint = read_checkpoint(path, expected="a distillation checkpoint")
    return backbone_from_checkpoint(checkpoint, path), RunRecord.from_checkpoint(checkpoint)


def check_target(folder: Path) -> None:
    """Refuse a file, or a folder holding anything but an earlier hub export.

    Raises:
        HubFolderError: Naming what is there and what to give instead.
    """
    if folder.exists() and not folder.is_dir():
        raise HubFolderError(f"{folder} is a file; give a new folder for the hub export")
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if present and not (set(present) <= set(HUB_FILES) and _is_hub_export(folder)):
        shown = ", ".join(present[:6]) + (" ..." if len(present) > 6 else "")
        raise HubFolderError(
            f"{folder} exists and holds other files ({shown}); nothing was written. Give a new or empty "
            "folder (an earlier `repfusion export --hub-folder` there is replaced)"
        )


def _is_hub_export(folder: Path) -> bool:
    try:
        return "repfusion" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False


def _staging(folder: Path, kind: str) -> Path:
    return folder.with_name(f".{folder.name}.{os.getpid()}.{kind}")


def clear_stale(folder: Path) -> None:
    """Create ``folder``'s parent; remove the staging folders a process killed mid-export left there."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.*.*"):
        if stale.suffix in (".tmp", ".old") and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def swap_in(staging: Path, folder: Path) -> None:
    """Rename the finished ``staging`` folder to ``folder``, replacing an earlier export."""
    if not folder.exists():
        os.replace(staging, folder)
        return
    # A folder cannot be replaced in one rename: the old one steps aside first, and goes last.
    old = _staging(folder, "old")
    os.replace(folder, old)
    os.replace(staging, folder)
    shutil.rmtree(old, ignore_errors=True)


def hub_config(weights: BackboneWeights, spec: BackboneSpec, image_size: int | None, path: Path) -> dict:
    """Write and return ``config.json``: timm's config where timm has the architecture, else the same fields.

    Args:
        weights: The student's weights (checked against timm's model of the same name).
        spec: The student's architecture.
        image_size: The training images' side (``None``: 32 for the CIFAR stem, else timm's default).
        path: Where to write it.
    """
    twin = timm_twin(spec)
    timm_loadable = twin is not None and fits(twin, weights.state_dict)
    channels = spec.in_channels
    size = image_size or (32 if spec.stem == "cifar" else _default_size(twin))
    data = {
        "input_size": (channels, size, size),
        "mean": (0.0,) * channels,  # the student saw [0, 1] images, never normalised
        "std": (1.0,) * channels,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
    }
    if twin is not None and (spec.library == "timm" or timm_loadable):
        from timm.models._hub import save_config_for_hf

        save_config_for_hf(twin, str(path), data_config=data)
        config = json.loads(path.read_text())
        for key in SOURCE_FIELDS:
            config["pretrained_cfg"].pop(key, None)
    else:
        backbone = build_backbone(spec)
        config = {
            "architecture": spec.arch,
            "num_classes": 0,
            "num_features": _num_features(backbone, channels, size),
            "pretrained_cfg": {**data, "num_classes": 0, "first_conv": first_conv_path(backbone)},
        }
    config["repfusion"] = {
        "student": weights.provenance.get("student", spec.as_dict()),
        "timm_loadable": timm_loadable,
        "package_version": weights.provenance.get("package_version"),
    }
    path.write_text(json.dumps(config, indent=2))
    return config


def timm_twin(spec: BackboneSpec) -> nn.Module | None:
    """Timm's headless model of the student's name and input channels (random), if timm has one."""
    import timm

    try:
        return timm.create_model(spec.arch, pretrained=False, num_classes=0, in_chans=spec.in_channels)
    except RuntimeError:  # timm has no model of that name (torchvision's mobilenet_v2)
        return None


def fits(model: nn.Module, state: dict[str, Tensor]) -> bool:
    """Whether ``state`` loads into ``model`` strictly (same keys, same shapes)."""
    own = model.state_dict()
    return own.keys() == state.keys() and all(own[k].shape == v.shape for k, v in state.items())


def _default_size(twin: nn.Module | None) -> int:
    cfg: dict[str, Any] = getattr(twin, "pretrained_cfg", None) or {}
    return int(cfg.get("input_size", (3, 224, 224))[-1])


def _num_features(backbone: nn.Module, channels: int, size: int) -> int:
    backbone.eval()
    with torch.no_grad():
        return int(backbone(torch.zeros(1, channels, max(size, 32), max(size, 32))).shape[-1])


def push_hub_folder(folder: str | Path, repo_id: str, *, private: bool = False) -> str:
    """Upload a hub folder to ``repo_id`` on the Hugging Face Hub (created if absent); needs a login.

    Returns:
        The URL of the commit.
    """
    from huggingface_hub import HfApi

    api = HfApi(library_name="repfusion-pl")
    repo = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    commit = api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message="repfusion export")
    return str(getattr(commit, "commit_url", commit))
