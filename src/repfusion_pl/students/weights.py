"""One way in and one way out for distilled backbone weights.

A backbone travels as a plain state dict in its library's own key format (torchvision or timm:
``conv1.weight``, ``layer1.0.bn1.running_mean``, ...), so it loads with ``strict=True`` into
torchvision's model, ``timm.create_model(name, num_classes=0)`` and the matching
segmentation-models-pytorch encoder. It is read from a distillation checkpoint (``.ckpt``) or an
exported ``.safetensors`` file, which also records what produced it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor, nn

from repfusion_pl.checkpoints import (
    PROVENANCE_KEY,
    STUDENT_PREFIX,
    CheckpointError,
    CheckpointNotFoundError,
    atomic_write_bytes,
    read_checkpoint,
    read_state_dict,
)
from repfusion_pl.students.backbones import BackboneSpec


@dataclass
class BackboneWeights:
    """A backbone state dict and the record of what produced it."""

    state_dict: dict[str, Tensor]
    provenance: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    def describe(self) -> str:
        """One line: the file and what produced it (student, teacher, layers, sampler, when)."""
        record, teacher = self.provenance, self.provenance.get("teacher", {})
        parts = [f"backbone weights {self.path}"]
        if self.spec is not None:
            parts.append(f"a {self.spec.arch}/{self.spec.stem}-stem student")
        if teacher.get("source"):
            parts.append(f"distilled from {teacher['source']!r} at {', '.join(teacher.get('layers', []))}")
        if record.get("sampler"):
            parts.append(f"with {record['sampler']}")
        parts.append(f"saved {record['saved_at']}" if record.get("saved_at") else "save time not recorded")
        return ": ".join(parts[:2]) + (", " + ", ".join(parts[2:]) if len(parts) > 2 else "")

    @property
    def spec(self) -> BackboneSpec | None:
        """The spec of the backbone that produced these weights, if recorded."""
        record = self.provenance.get("student")
        return BackboneSpec.from_record(record) if record else None


#: The weights file of a hub folder (`repfusion export --hub-folder`), as timm and the Hub name it.
HUB_WEIGHTS = "model.safetensors"


def read_backbone_weights(path: str | Path) -> BackboneWeights:
    """Read backbone weights from a distillation ``.ckpt``, an export, a hub folder or a state dict.

    Accepted: a `RepFusionDistillation` checkpoint (``.ckpt``), a ``.safetensors`` file (written by
    ``repfusion export`` with its provenance, or any state dict), a folder holding
    ``model.safetensors`` (``repfusion export --hub-folder``, or a timm model downloaded from the
    Hub), and a torch state-dict file (``.pth``, ``.pt``, ``.bin``). Torch files are read with
    ``weights_only=True``: a pickle that tries to run code is refused.

    Raises:
        CheckpointError: The file is missing, unreadable or holds no student backbone.
    """
    path = Path(path).expanduser()
    if path.is_dir() and (path / HUB_WEIGHTS).is_file():
        path = path / HUB_WEIGHTS
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"backbone weights {str(path)!r} do not exist; give a distillation checkpoint (.ckpt, e.g. "
            "<run>/checkpoints/last.ckpt) or a file written by `repfusion export` (.safetensors)"
        )
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
            provenance = json.loads(metadata.get(PROVENANCE_KEY, "{}"))
        except Exception as err:  # a truncated file, another format, or malformed metadata
            raise CheckpointError(
                f"cannot read {path} as safetensors ({type(err).__name__}: {err}); give a file written "
                "by `repfusion export`, or the distillation checkpoint (.ckpt) itself"
            ) from err
        return BackboneWeights(state, provenance, str(path))
    if path.suffix in STATE_DICT_SUFFIXES:
        return BackboneWeights(read_state_dict(path), {}, str(path))
    checkpoint = read_checkpoint(path, expected="a distillation checkpoint or a `repfusion export` file")
    return backbone_from_checkpoint(checkpoint, path)


#: Suffixes read as a bare torch state dict (torchvision's and timm's downloads, ``torch.save`` files).
STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin")


def backbone_from_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> BackboneWeights:
    """The student backbone of a loaded distillation checkpoint (`read_checkpoint`'s result).

    Raises:
        CheckpointError: The checkpoint holds no student backbone.
    """
    state = checkpoint["state_dict"]
    backbone = {k.removeprefix(STUDENT_PREFIX): v for k, v in state.items() if k.startswith(STUDENT_PREFIX)}
    if not backbone:
        raise CheckpointError(
            f"{path} holds no student backbone (no '{STUDENT_PREFIX}*' keys); is it a RepFusionDistillation "
            "checkpoint?"
        )
    return BackboneWeights(backbone, dict(checkpoint.get(PROVENANCE_KEY, {})), str(path))


def resolve_backbone(
    backbone: BackboneSpec | None, weights_path: str | Path | None, default: BackboneSpec | None = None
) -> tuple[BackboneSpec, BackboneWeights | None]:
    """The backbone to build and the weights to load into it.

    The spec is ``backbone`` when given, else the one recorded with the weights (the distilled
    student's), else ``default`` (`BackboneSpec`'s defaults when ``None``).
    """
    weights = read_backbone_weights(weights_path) if weights_path is not None else None
    recorded = weights.spec if weights is not None else None
    return backbone or recorded or default or BackboneSpec(), weights


#: What a mismatch error advises by default.
BUILD_ALIKE = "Build the task with the same arch, stem and in_channels as the distilled student."


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}{f' ... (+{len(keys) - limit} more)' if len(keys) > limit else ''}"


def load_backbone_weights(
    module: nn.Module, weights: BackboneWeights, *, target: str = "backbone", fix: str = BUILD_ALIKE
) -> None:
    """Load weights into ``module`` strictly, or fail listing missing, unexpected and misshaped keys.

    Args:
        module: The receiving backbone (a torchvision/timm model or an smp encoder).
        weights: What `read_backbone_weights` returned.
        target: What ``module`` is, for the error message.
        fix: What the error message advises.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(weights.state_dict))
    unexpected = sorted(set(weights.state_dict) - set(expected))
    misshaped = [
        f"{key} {tuple(value.shape)} vs {tuple(expected[key].shape)}"
        for key, value in weights.state_dict.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if missing or unexpected or misshaped:
        spec = weights.spec
        made_by = f" (made by a {spec.arch}/{spec.stem} stem student)" if spec else ""
        problems = [
            f"missing keys ({len(missing)}): {_listing(missing)}" if missing else "",
            f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}" if unexpected else "",
            f"shape mismatches ({len(misshaped)}): {_listing(misshaped, 4)}" if misshaped else "",
        ]
        raise ValueError(
            f"backbone weights {weights.path}{made_by} do not fit the {target}:\n  "
            + "\n  ".join(p for p in problems if p)
            + f"\n{fix}"
        )
    module.load_state_dict(weights.state_dict, strict=True)


def export_backbone(checkpoint: str | Path, output: str | Path) -> Path:
    """Write the student backbone of a distillation checkpoint as safetensors with its provenance.

    Args:
        checkpoint: A `RepFusionDistillation` checkpoint.
        output: The ``.safetensors`` file to write (parent folders are created).

    Returns:
        The written path.
    """
    weights = read_backbone_weights(checkpoint)
    # Staged beside the target and renamed: a reader never sees a half-written file.
    return atomic_write_bytes(output, backbone_bytes(weights, str(checkpoint)))


def backbone_bytes(weights: BackboneWeights, exported_from: str) -> bytes:
    """The backbone state dict as safetensors bytes, with the provenance `read_backbone_weights` reads."""
    tensors = {k: v.contiguous() for k, v in weights.state_dict.items()}
    provenance = {**weights.provenance, "exported_from": exported_from}
    return save(tensors, metadata={"format": "pt", PROVENANCE_KEY: json.dumps(provenance)})
