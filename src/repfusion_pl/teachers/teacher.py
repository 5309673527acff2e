"""The frozen diffusion teacher, for every family: input mapping, class labels, taps, a truncated forward."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import DDPMScheduler
from torch import Tensor, nn

from repfusion_pl.taps import FeatureTaps, compile_untapped
from repfusion_pl.teachers.families import TeacherFamily, load_family
from repfusion_pl.teachers.sources import Family, detect_family, resolve_source

DEFAULT_TEACHER_LAYER = "mid_block.resnets.1.conv2"


class MissingClassLabelMapError(ValueError):
    """A class-conditional teacher without a null class was given no ``class_label_map``."""


@dataclass
class _Guest:
    """What the teacher keeps outside the module tree (see `DiffusionTeacher`)."""

    family: TeacherFamily
    taps: FeatureTaps


class DiffusionTeacher(nn.Module):
    """A frozen diffusion model that returns the features of chosen layers at chosen timesteps.

    Every family loads from ``source`` (what it is, is read from the folder's layout, or forced with
    ``family``): a pixel ``UNet2DModel`` (DDPM, converted guided-diffusion), Stable Diffusion 1.x/2.x
    (a ``UNet2DConditionModel`` on VAE latents with a fixed prompt), or DiT (a transformer on VAE
    latents; token outputs are returned as ``(N, C, h, w)`` maps). Layer names are the denoiser's own
    module paths.

    The denoiser (and a VAE or text embedding) is a guest: it is kept outside this module's
    registered children, so none of its parameters can reach an optimiser, DDP's gradient reducer,
    an EMA copy or a checkpoint. Moves (``.to(device)``, ``.to(dtype)``) still reach it through
    `_apply`, so Lightning places it with the rest of the model; on resume it is reloaded from
    ``source``.

    Args:
        source: Hub id (read offline from the local cache), local diffusers folder, or a
            `DiffusionTeacherTraining` checkpoint.
        layers: Dotted module paths inside the denoiser whose outputs are the teacher features;
            default: the middle of the network (``mid_block.resnets.1.conv2`` for UNets).
        input_range: The (low, high) range of the images the data module yields; mapped linearly
            onto what the model (or its VAE) expects.
        mode: ``"clean"`` feeds x0 (or its latent) with the timestep, as the RepFusion authors did;
            ``"noised"`` feeds ``DDPMScheduler.add_noise(x0, eps, t)``.
        class_label_map: Dataset label -> teacher class id, as a dict or the path of a JSON file
            (see `read_class_label_map`). Required for class-conditional UNets; optional for DiT,
            which is conditioned on its null class without it; refused for unconditional models.
        class_names: The dataset's class names in label order (a list or a one-per-line file),
            for a ``class_label_map`` file keyed by names.
        revision: Hub revision, for hub ids only.
        family: ``pixel_unet``, ``latent_unet`` or ``dit``; default: read from the layout.
        prompt: The fixed prompt of a text-conditioned teacher (default the empty prompt).
        image_size: The side of the images the teacher is fed; default the model's training size.
        truncate: Stop the denoiser as soon as every tapped layer has run (the decoder is never
            computed); ``False`` runs it whole, as the authors' code did (kept for comparison).
        inference_mode: Run under ``torch.inference_mode`` (no autograd bookkeeping at all) rather
            than ``torch.no_grad``.
        compile: ``torch.compile`` everything around the taps (opt-in; pays on GPUs).
    """

    _guest: _Guest
    _label_map: Tensor

    def __init__(
        self,
        source: str,
        layers: Sequence[str] | None = None,
        input_range: tuple[float, float] = (0.0, 1.0),
        mode: Literal["clean", "noised"] = "clean",
        class_label_map: dict[int, int] | str | None = None,
        class_names: list[str] | str | None = None,
        revision: str | None = None,
        family: Family | None = None,
        prompt: str | None = None,
        image_size: int | None = None,
        truncate: bool = True,
        inference_mode: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        low, high = input_range
        if not high > low:
            raise ValueError(f"input_range must be (low, high) with high > low, got {input_range}")
        path = resolve_source(source, revision)
        loaded = load_family(path, family or detect_family(path), prompt)
        layers = list(layers) if layers else [loaded.default_layer()]
        self.__dict__["_guest"] = _Guest(loaded, FeatureTaps(loaded.denoiser, layers, owner="teacher"))
        self.source, self.layers, self.mode = source, layers, mode
        self.truncate, self.inference_mode = truncate, inference_mode
        self.input_range = (float(low), float(high))
        self.sample_size = self._check_image_size(image_size or loaded.native_image_size)
        label_map = read_class_label_map(class_label_map, class_names)
        self._check_class_conditioning(label_map)
        table = torch.full((max(label_map or {0: 0}) + 1,), -1, dtype=torch.long)
        for label, teacher_class in (label_map or {}).items():
            table[label] = teacher_class
        self.register_buffer("_label_map", table, persistent=False)
        self.has_label_map = bool(label_map)
        self.feature_shapes = self._probe_feature_shapes()
        if compile:  # after the shape probe, so that compiling waits for the first real batch
            compile_untapped(loaded.denoiser, self.layers)

    def retap(self, layers: Sequence[str]) -> None:
        """Tap other layers of the already loaded model (the probe searches many without reloading).

        The previous taps' hooks stay registered but idle: they only record inside their own run.
        """
        self.__dict__["_guest"] = _Guest(
            self.family, FeatureTaps(self.denoiser, list(layers), owner="teacher")
        )
        self.layers = list(layers)
        self.feature_shapes = self._probe_feature_shapes()

    def _check_image_size(self, size: int) -> int:
        multiple = self.family.size_multiple
        if size % multiple:
            raise ValueError(
                f"teacher {self.source!r} ({self.family.name}) takes images whose side is a multiple of "
                f"{multiple}; set image_size (and the data's size) to e.g. "
                f"{max(multiple, size // multiple * multiple)}"
            )
        return size

    def _check_class_conditioning(self, label_map: dict[int, int] | None) -> None:
        num_classes = self.family.num_classes
        if num_classes is None:
            if label_map:
                raise ValueError(
                    f"teacher {self.source!r} is not class-conditional; remove `class_label_map`"
                )
            return
        if not label_map and self.family.null_class is None:
            raise MissingClassLabelMapError(
                f"teacher {self.source!r} is class-conditional ({num_classes} classes); set "
                "`class_label_map` to map each dataset label to the teacher's class id. Feeding "
                "dataset labels unmapped silently conditions on the wrong classes."
            )
        if bad := sorted({c for c in (label_map or {}).values() if not 0 <= c < num_classes}):
            raise ValueError(
                f"class_label_map maps onto teacher classes {bad[:5]}, outside the teacher's "
                f"0..{num_classes - 1}"
            )

    @property
    def family(self) -> TeacherFamily:
        """The loaded family: denoiser, schedule and the modules around it."""
        return self._guest.family

    @property
    def denoiser(self) -> Any:
        """The frozen network whose layers are tapped (not a registered child; see the class docstring)."""
        return self._guest.family.denoiser

    @property
    def unet(self) -> Any:
        """The denoiser, under its historical name (a transformer for DiT)."""
        return self.denoiser

    @property
    def scheduler(self) -> DDPMScheduler:
        """The teacher's noise schedule."""
        return self._guest.family.scheduler

    @property
    def num_train_timesteps(self) -> int:
        """T: the number of discrete timesteps the teacher was trained with."""
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def in_channels(self) -> int:
        """Image channels the teacher expects."""
        return self.family.image_channels

    @property
    def is_class_conditional(self) -> bool:
        """Whether the denoiser is conditioned on class ids."""
        return self.family.num_classes is not None

    def fingerprint(self) -> dict[str, Any]:
        """What a distillation checkpoint records of its teacher: source, tapped layers, architecture.

        The architecture is the denoiser's diffusers config minus bookkeeping keys, as plain lists
        and strings, so it compares equal after a round trip through a checkpoint.
        """
        record = {"source": self.source, "layers": list(self.layers), "unet": self.family.architecture()}
        if self.family.name != "pixel_unet":  # pixel records keep their old form: old checkpoints resume
            record["family"] = self.family.name
        return record

    def _probe_feature_shapes(self) -> dict[str, tuple[int, ...]]:
        size, device = self.sample_size, self._label_map.device
        x = torch.full((1, self.in_channels, size, size), self.input_range[0], device=device)
        labels = (self._label_map >= 0).nonzero()[:1, 0]  # any label the map covers
        features = self(x, torch.zeros(1, dtype=torch.long, device=device), labels, inference_mode=False)
        return {name: tuple(f.shape[1:]) for name, f in features.items()}

    def to_unet_range(self, images: Tensor) -> Tensor:
        """Map images from ``input_range`` onto the range the model (or its VAE) expects."""
        low, high = self.input_range
        target_low, target_high = self.family.input_range
        return (images - low) / (high - low) * (target_high - target_low) + target_low

    def teacher_labels(self, labels: Tensor | None, batch_size: int | None = None) -> Tensor | None:
        """Dataset labels as the teacher's class ids (class-conditional teachers only).

        A DiT without ``class_label_map`` gets its null class for every image.
        """
        if not self.is_class_conditional:
            return None
        if not self.has_label_map:
            size = batch_size if batch_size is not None else len(labels) if labels is not None else 1
            return torch.full((size,), int(self.family.null_class), device=self._label_map.device)  # type: ignore[arg-type]
        if labels is None:
            raise ValueError("this teacher is class-conditional: the batch must carry labels")
        known = (labels >= 0) & (labels < self._label_map.numel())
        mapped = torch.where(known, self._label_map[labels.clamp(0, self._label_map.numel() - 1)], -1)
        if (mapped < 0).any():
            missing = sorted(set(labels[mapped < 0].tolist()))
            null = " (or, for a DiT, leave the map out to condition on its null class)" * (
                self.family.null_class is not None
            )
            raise ValueError(
                f"dataset labels {missing} have no entry in class_label_map; map every label of the "
                f"dataset to a teacher class{null}"
            )
        return mapped

    def unet_input(self, images: Tensor, timesteps: Tensor) -> Tensor:
        """The denoiser's input sample for clean images at the given timesteps, per ``mode``."""
        sample = self.family.encode(self.to_unet_range(images).to(self.denoiser.dtype))
        if self.mode == "noised":
            sample = self.scheduler.add_noise(sample, torch.randn_like(sample), timesteps)
        return sample

    def forward(
        self,
        images: Tensor,
        timesteps: Tensor,
        labels: Tensor | None = None,
        *,
        truncate: bool | None = None,
        inference_mode: bool | None = None,
    ) -> dict[str, Tensor]:
        """Teacher features for a batch.

        Args:
            images: ``(N, C, H, W)`` images in ``input_range``.
            timesteps: ``(N,)`` integer timesteps, one per image.
            labels: ``(N,)`` dataset labels; used only by class-conditional teachers.
            truncate: Override the teacher's ``truncate`` for this call.
            inference_mode: Override the teacher's ``inference_mode`` for this call; the features
                are returned as ordinary tensors either way.

        Returns:
            Features by layer path, each ``(N, C, h, w)``.
        """
        if images.shape[1] != self.in_channels:
            raise ValueError(
                f"teacher {self.source!r} takes {self.in_channels}-channel images but the batch has "
                f"{images.shape[1]}; convert the data (e.g. grayscale -> RGB) or use a matching teacher"
            )
        self._check_batch_size((images.shape[-2], images.shape[-1]))
        truncate = self.truncate if truncate is None else truncate
        inference_mode = self.inference_mode if inference_mode is None else inference_mode
        with torch.inference_mode() if inference_mode else torch.no_grad():
            sample = self.unet_input(images, timesteps)
            kwargs = self.family.call_kwargs(len(images), self.teacher_labels(labels, len(images)))
            raw = self._guest.taps.run(self.denoiser, sample, timesteps, stop_early=truncate, **kwargs)
            features = {name: self._as_map(name, output, sample) for name, output in raw.items()}
        if inference_mode:
            # Inference tensors cannot be saved for backward, and losses save their targets.
            features = {name: feature.clone() for name, feature in features.items()}
        return features

    def _check_batch_size(self, size: tuple[int, int]) -> None:
        multiple = self.family.size_multiple
        latent = self.family.name != "pixel_unet"
        # Latent teachers' features and projectors are sized for image_size; pixel UNets take any multiple.
        if any(side % multiple for side in size) or (latent and size != (self.sample_size,) * 2):
            raise ValueError(
                f"teacher {self.source!r} ({self.family.name}) was set up for {self.sample_size} px images "
                f"(sides a multiple of {multiple}) but the batch is {size[0]}x{size[1]}; set the teacher's "
                "image_size and the data module's image size to the same value"
            )

    def _as_map(self, name: str, output: object, sample: Tensor) -> Tensor:
        if not isinstance(output, Tensor):
            raise ValueError(
                f"teacher layer {name!r} returns {type(output).__name__}, not a tensor; tap one of its "
                f"submodules instead (e.g. {self.family.candidate_layers()[:3]})"
            )
        feature = self.family.feature_map(output, sample)
        if feature.ndim != 4:
            raise ValueError(
                f"teacher layer {name!r} gives {tuple(feature.shape)} features, not (N, C, h, w) maps"
            )
        return feature

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.family.modules._apply(fn)
        return self

    def train(self, mode: bool = True) -> DiffusionTeacher:
        """Keep the guest modules in eval mode whatever the parent's mode (dropout off, always)."""
        super().train(mode)
        self.family.modules.eval()
        return self

    def __deepcopy__(self, memo: dict) -> DiffusionTeacher:
        # Copies (EMA's AveragedModel deep-copies the whole LightningModule) share the frozen guest.
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            clone.__dict__[key] = value if key == "_guest" else copy.deepcopy(value, memo)
        return clone

    def extra_repr(self) -> str:
        return (
            f"source={self.source!r}, family={self.family.name!r}, layers={self.layers}, mode={self.mode!r}, "
            f"T={self.num_train_timesteps}"
        )


def read_class_label_map(
    value: dict[int, int] | str | None, class_names: Sequence[str] | str | None = None
) -> dict[int, int] | None:
    """A ``class_label_map`` as a dict of dataset label -> teacher class id.

    Args:
        value: The map inline, or the path of a JSON object whose keys are dataset labels
            (integers) or class names (such as WordNet ids, as in
            ``configs/paper/tinyimagenet-to-imagenet.json``).
        class_names: For a map keyed by names: the dataset's class names in label order, as a list
            or the path of a text file with one name per line (e.g. Tiny-ImageNet's ``wnids.txt``).
    """
    if value is None or isinstance(value, dict):
        mapping = {int(k): int(v) for k, v in value.items()} if value else None
        if mapping and min(mapping) < 0:
            raise ValueError(
                f"class_label_map has negative dataset labels {sorted(k for k in mapping if k < 0)}"
            )
        return mapping
    path = Path(value).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"class_label_map file {value!r} does not exist")
    entries = json.loads(path.read_text())
    if not isinstance(entries, dict) or not all(isinstance(v, int) for v in entries.values()):
        raise ValueError(f"class_label_map file {path} must hold one JSON object of label -> class id")
    if all(key.lstrip("-").isdigit() for key in entries):
        return read_class_label_map(entries)
    if class_names is None:
        raise ValueError(
            f"class_label_map file {path} is keyed by class names; set `class_names` to the dataset's "
            "class names in label order (a list, or a file with one per line such as Tiny-ImageNet's "
            "wnids.txt)"
        )
    names = read_class_names(class_names)
    if unknown := [name for name in names if name not in entries]:
        raise ValueError(f"class_label_map file {path} has no entry for the classes {unknown[:5]}")
    return {label: entries[name] for label, name in enumerate(names)}


def read_class_names(class_names: Sequence[str] | str) -> list[str]:
    """Class names in label order: a list as given, or read from a file with one name per line."""
    if not isinstance(class_names, str):
        return list(class_names)
    path = Path(class_names).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"class_names file {class_names!r} does not exist")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]
