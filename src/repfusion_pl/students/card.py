"""The model card (``README.md``) of a hub folder, written from what a checkpoint records of its run.

A distillation checkpoint holds the student and teacher, the sampler, the run's record (versions,
data, loss: `repfusion_pl.distillation.record`), the config the CLI ran, the step count and the
callbacks' states: the drawn timesteps (`TimestepTelemetry`) and the linear probes
(`RepresentationMonitor`). A card says each of them, or that it was not recorded; an exported
``.safetensors`` file carries the provenance alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from repfusion_pl.checkpoints import CONFIG_KEY, PROVENANCE_KEY
from repfusion_pl.students.backbones import BackboneSpec

NOT_RECORDED = "not recorded"


@dataclass
class RunRecord:
    """What a checkpoint (or an export's metadata) says about the run that made the weights."""

    provenance: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    callbacks: dict[str, Any] = field(default_factory=dict)
    global_step: int | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any]) -> RunRecord:
        """The record of a loaded Lightning checkpoint."""
        raw = checkpoint.get(CONFIG_KEY)
        config = yaml.safe_load(raw) if isinstance(raw, str) else {}
        return cls(
            dict(checkpoint.get(PROVENANCE_KEY, {})),
            config if isinstance(config, dict) else {},
            dict(checkpoint.get("callbacks") or {}),
            checkpoint.get("global_step"),
        )

    def _state(self, name: str) -> dict[str, Any]:
        # Lightning keys a callback's state by its class name (with arguments, for some callbacks).
        return next((v for k, v in self.callbacks.items() if k.split("{")[0] == name), {})

    def _model_init(self, key: str) -> Any:
        return ((self.config.get("model") or {}).get("init_args") or {}).get(key)

    def image_size(self) -> int | None:
        """The training images' side, from the run's record or its data config."""
        size = self.provenance.get("data", {}).get("image_size")
        if size is None:
            size = ((self.config.get("data") or {}).get("init_args") or {}).get("image_size")
        size = size[-1] if isinstance(size, (list, tuple)) else size
        return int(size) if isinstance(size, int) else None

    def data(self) -> str:
        """The data's name, size and image size."""
        record, data_config = self.provenance.get("data", {}), self.config.get("data") or {}
        name = record.get("name") or str(data_config.get("class_path", "")).rsplit(".", 1)[-1]
        if not name:
            return NOT_RECORDED
        count = record.get("train_images")
        size = self.image_size()
        return (
            f"`{name}`"
            + (f", {count:,} training images" if count else "")
            + (f", {size}x{size} px" if size else "")
        )

    def teacher(self) -> str:
        """The teacher's source, family and tapped layers."""
        teacher = self.provenance.get("teacher", {})
        if not teacher.get("source"):
            return NOT_RECORDED
        layers = ", ".join(f"`{layer}`" for layer in teacher.get("layers", []))
        return f"`{teacher['source']}` ({teacher.get('family', 'pixel_unet')}), layers {layers}"

    def loss(self) -> str:
        """The feature loss, as configured or as recorded."""
        configured = self._model_init("feature_loss")
        if isinstance(configured, dict) and configured.get("class_path"):
            args = ", ".join(f"{k}={v}" for k, v in (configured.get("init_args") or {}).items())
            return f"`{configured['class_path'].rsplit('.', 1)[-1]}({args})`"
        recorded = self.provenance.get("feature_loss")
        return f"`{recorded}`" if recorded else NOT_RECORDED

    def timesteps(self) -> str:
        """The sampler and, from the drawn timesteps, what it settled on in the last epoch."""
        sampler = self.provenance.get("sampler")
        said = f"`{sampler}`" if sampler else NOT_RECORDED
        history = self._state("TimestepTelemetry").get("history") or []
        counts = history[-1] if history else []
        total = sum(counts)
        if not total:
            return said
        top = sorted(range(len(counts)), key=lambda t: -counts[t])[:3]
        shares = ", ".join(f"t={t} ({counts[t] / total:.0%})" for t in top if counts[t])
        return f"{said}; in the last epoch ({total:,} draws) it drew most {shares}"

    def monitor(self) -> str:
        """The representation monitor's last linear probe against its random-init bar."""
        history = self._state("RepresentationMonitor").get("history") or []
        if not history:
            return NOT_RECORDED
        last = history[-1]
        when = "before training" if last.get("epoch", 0) < 0 else f"after epoch {last['epoch']}"
        teacher = f"; teacher {last['teacher']:.3f} at t={last.get('t')}" if "teacher" in last else ""
        return (
            f"linear-probe accuracy {when}: student {last['student']:.3f} vs a random-init copy "
            f"{last['random']:.3f}{teacher}"
        )

    def training(self) -> str:
        """Optimiser steps and when the checkpoint was saved."""
        steps = self.global_step
        parts = [f"{steps:,} optimiser step{'s' * (steps != 1)}" if steps is not None else ""]
        saved = self.provenance.get("saved_at")
        parts.append(f"saved {saved}" if saved else "")
        return ", ".join(p for p in parts if p) or NOT_RECORDED

    def versions(self) -> str:
        """The package and library versions the run used."""
        versions = {
            "repfusion-pl": self.provenance.get("package_version"),
            **self.provenance.get("versions", {}),
        }
        return ", ".join(f"{k} {v}" for k, v in versions.items() if v) or NOT_RECORDED


def model_card(
    record: RunRecord,
    spec: BackboneSpec,
    config: Mapping[str, Any],
    *,
    license: str | None = None,
    repo_id: str | None = None,
) -> str:
    """The ``README.md`` of a hub folder: YAML front matter, details, usage, licence note.

    Args:
        record: What the checkpoint records.
        spec: The student's architecture.
        config: The folder's ``config.json`` (its ``repfusion.timm_loadable`` picks the usage).
        license: The Hub licence id; ``None`` leaves the field for the user to fill.
        repo_id: The Hub repository, if known, for the usage lines.
    """
    timm_loadable = bool(config.get("repfusion", {}).get("timm_loadable"))
    size = config.get("pretrained_cfg", {}).get("input_size", [spec.in_channels, 0, 0])[-1]
    front = ["---", "library_name: timm" if timm_loadable else "library_name: pytorch"]
    front.append(f"license: {license}" if license else "license:  # fill in before sharing (see Licence)")
    tags = ["image-feature-extraction", "repfusion", "knowledge-distillation", *(["timm"] * timm_loadable)]
    front += ["tags:", *(f"- {tag}" for tag in tags), "pipeline_tag: image-feature-extraction", "---"]
    details = {
        "Student": f"{spec.library} `{spec.arch}`, {spec.stem} stem, {spec.in_channels}-channel input, "
        "headless (pooled features)",
        "Initialised from": record.provenance.get("student_init") or "random weights",
        "Teacher": record.teacher(),
        "Timesteps": record.timesteps(),
        "Feature loss": record.loss(),
        "Data": record.data(),
        "Training": record.training(),
        "Representation monitor": record.monitor(),
        "Versions": record.versions(),
    }
    lines = [*front, "", f"# {spec.arch} distilled from a diffusion model (RepFusion)", ""]
    lines += [
        "A recognition backbone trained with repfusion-pl to reproduce a frozen "
        "diffusion model's features (RepFusion, ICCV 2023). Load it, then fine-tune it or read its "
        "pooled features.",
        "",
        "## Details",
        "",
        *(f"- **{key}:** {value}" for key, value in details.items()),
        "",
        "## Usage",
        "",
        f"Inputs: float images in [0, 1], {spec.in_channels} channel(s), {size}x{size} px "
        + ("as in training" if record.image_size() else "(the training size was not recorded)")
        + ", with no mean/std normalisation (`config.json` says mean 0, std 1).",
        "",
        *usage(spec, timm_loadable, repo_id),
        "## Licence",
        "",
        "These weights derive from the teacher and the training data named above: their licences and "
        "terms apply. Set `license:` in the front matter accordingly before sharing.",
        "",
    ]
    return "\n".join(lines)


def usage(spec: BackboneSpec, timm_loadable: bool, repo_id: str | None) -> list[str]:
    """Markdown lines: how to load the folder with timm (when it can), torchvision and repfusion-pl."""
    where = f"hf-hub:{repo_id}" if repo_id else "local-dir:path/to/this/folder"
    lines: list[str] = []
    if timm_loadable:
        lines += ["```python", "import timm", "", f'model = timm.create_model("{where}", pretrained=True)']
        lines += ["```", ""]
    elif spec.library == "timm":
        lines += [
            f"`timm.create_model` cannot rebuild the {spec.stem} stem; build it with repfusion-pl:",
            "",
        ]
    if spec.library == "torchvision" and spec.arch.startswith("resnet"):
        lines += ["```python", "import torch, torchvision", "from safetensors.torch import load_file", ""]
        lines += [f"model = torchvision.models.{spec.arch}()", "model.fc = torch.nn.Identity()"]
        if spec.stem == "cifar":
            lines += [
                f"model.conv1 = torch.nn.Conv2d({spec.in_channels}, 64, 3, 1, 1, bias=False)",
                "model.maxpool = torch.nn.Identity()",
            ]
        elif spec.in_channels != 3:
            lines.append(f"model.conv1 = torch.nn.Conv2d({spec.in_channels}, 64, 7, 2, 3, bias=False)")
        lines += ['model.load_state_dict(load_file("model.safetensors"), strict=True)', "```", ""]
    args = f'"{spec.arch}", "{spec.library}", "{spec.stem}", {spec.in_channels}'
    lines += [
        "```python",
        "from repfusion_pl.students import (",
        "    BackboneSpec, build_backbone, load_backbone_weights, read_backbone_weights",
        ")",
        "",
        f"model = build_backbone(BackboneSpec({args}))",
        'load_backbone_weights(model, read_backbone_weights("path/to/this/folder"))  # strict',
        "```",
        "",
    ]
    return lines
