"""The frozen diffusion teacher, for every family: input mapping, class labels, taps, a truncated forward."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers import DDPMScheduler
from torch import Tensor, nn

from repfusion_pl.students.taps import FeatureTaps, compile_untapped
from repfusion_pl.teachers.class_labels import (
    check_class_conditioning,
    label_table,
    map_labels,
    read_class_label_map,
)
from repfusion_pl.teachers.family import TeacherFamily, nearest_map_layers
from repfusion_pl.teachers.loading import load_family
from repfusion_pl.teachers.sizes import check_batch_size, warn_if_off_size
from repfusion_pl.teachers.sources import Family, detect_family, resolve_source

DEFAULT_TEACHER_LAYER = "mid_block.resnets.1.conv2"


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
    _warned_off_size = False

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
        check_class_conditioning(source, loaded, label_map)
        self.register_buffer("_label_map", label_table(label_map), persistent=False)
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
        size = batch_size if batch_size is not None else len(labels) if labels is not None else 1
        return map_labels(self._label_map, self.has_label_map, labels, self.family, size)

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
        check_batch_size(self.source, self.family, self.sample_size, size)
        if not self._warned_off_size:  # once per teacher: the first off-size batch says it
            self.__dict__["_warned_off_size"] = warn_if_off_size(self.source, self.family, size)

    def _as_map(self, name: str, output: object, sample: Tensor) -> Tensor:
        if not isinstance(output, Tensor):
            raise ValueError(
                f"teacher layer {name!r} returns {type(output).__name__}, not a tensor; tap a layer that "
                f"returns maps, the nearest: {nearest_map_layers(self.denoiser, name)}"
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
