"""The frozen diffusion teacher: loading, input mapping, feature taps and a truncated forward."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor, nn

from repfusion_pl.taps import FeatureTaps, compile_untapped

DEFAULT_TEACHER_LAYER = "mid_block.resnets.1.conv2"

_EXPECTED_LAYOUTS = """expected one of these layouts:
  <dir>/config.json + diffusion_pytorch_model.safetensors        (a UNet2DModel saved alone)
  <dir>/unet/config.json + <dir>/scheduler/scheduler_config.json (a pipeline, e.g. DDPMPipeline)
  <file>.ckpt                                                    (a checkpoint of DiffusionTeacherTraining)"""


@dataclass
class _Guest:
    """What the teacher keeps outside the module tree (see `DiffusionTeacher`)."""

    unet: UNet2DModel
    scheduler: DDPMScheduler
    taps: FeatureTaps


def _resolve_hub_id(source: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(source, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(
            f"teacher {source!r} is neither a local path nor a hub id in the local Hugging Face cache "
            "(this package never downloads). Fetch it once on a machine with network, e.g. "
            f"`huggingface-cli download {source}`, then copy the cache (HF_HUB_CACHE) here, or point "
            "`source` at a local diffusers directory."
        ) from err


def _unet_subfolder(directory: Path) -> str | None:
    """Find where the UNet config sits in a diffusers directory: the root or ``unet/``."""
    for subfolder in (None, "unet"):
        config = directory / subfolder / "config.json" if subfolder else directory / "config.json"
        if config.is_file():
            class_name = UNet2DModel.load_config(config.parent).get("_class_name", "UNet2DModel")
            if class_name != "UNet2DModel":
                raise ValueError(
                    f"{config} describes a {class_name}; repfusion-pl distils pixel-space "
                    "UNet2DModel teachers"
                )
            return subfolder
    raise FileNotFoundError(f"no UNet2DModel config in {directory}; {_EXPECTED_LAYOUTS}")


def _load_scheduler(directory: Path, unet: UNet2DModel) -> DDPMScheduler:
    for subfolder in ("scheduler", None):
        folder = directory / subfolder if subfolder else directory
        if (folder / "scheduler_config.json").is_file():
            return DDPMScheduler.from_pretrained(directory, subfolder=subfolder)
    steps = unet.config.get("num_train_timesteps") or 1000
    return DDPMScheduler(num_train_timesteps=steps)


def load_diffusion_model(source: str, revision: str | None = None) -> tuple[UNet2DModel, DDPMScheduler]:
    """Load a diffusers ``UNet2DModel`` and its noise schedule from a hub id, a folder or a checkpoint.

    Args:
        source: A Hugging Face hub id (read offline from the local cache), a local diffusers
            directory (UNet at its root or in ``unet/``), or a ``.ckpt`` of `DiffusionTeacherTraining`.
        revision: Hub revision, for hub ids only.

    Returns:
        The UNet and a `DDPMScheduler` (from the source when it has one, else 1000 linear steps).
    """
    path = Path(source).expanduser()
    if path.suffix == ".ckpt":
        from repfusion_pl.teacher_training import load_training_checkpoint

        return load_training_checkpoint(path)
    if path.is_dir():
        directory = path
    elif path.exists():
        raise ValueError(f"teacher source {source!r} is a file but not a .ckpt; {_EXPECTED_LAYOUTS}")
    elif source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise FileNotFoundError(f"teacher source {source!r} does not exist; {_EXPECTED_LAYOUTS}")
    else:
        directory = _resolve_hub_id(source, revision)
    unet = UNet2DModel.from_pretrained(
        directory, subfolder=_unet_subfolder(directory), low_cpu_mem_usage=False
    )
    return unet, _load_scheduler(directory, unet)


class DiffusionTeacher(nn.Module):
    """A frozen diffusers UNet that returns the features of chosen layers at chosen timesteps.

    The UNet is a guest: it is kept outside this module's registered children, so none of its
    parameters can reach an optimiser, DDP's gradient reducer, an EMA copy or a checkpoint. Moves
    (``.to(device)``, ``.to(dtype)``) still reach it through `_apply`, so Lightning places it with
    the rest of the model, and on resume it is simply reloaded from ``source``.

    Args:
        source: Hub id, local diffusers directory, or `DiffusionTeacherTraining` checkpoint.
        layers: Dotted module paths inside the UNet whose outputs are the teacher features.
        input_range: The (low, high) range of the images the data module yields; mapped linearly
            onto the UNet's [-1, 1] input range.
        mode: ``"clean"`` feeds x0 with the timestep, as the RepFusion authors did; ``"noised"``
            feeds ``DDPMScheduler.add_noise(x0, eps, t)``.
        class_label_map: For class-conditional UNets: dataset label -> teacher class id. Required
            for them, refused for unconditional ones.
        revision: Hub revision, for hub ids only.
        truncate: Stop the UNet as soon as every tapped layer has run (the decoder is never
            computed); ``False`` runs the whole UNet, as the authors' code did (kept for comparison).
        inference_mode: Run under ``torch.inference_mode`` (no autograd bookkeeping at all) rather
            than ``torch.no_grad``.
        compile: ``torch.compile`` everything around the taps (opt-in; pays on GPUs).
    """

    _guest: _Guest
    _label_map: Tensor

    def __init__(
        self,
        source: str,
        layers: Sequence[str] = (DEFAULT_TEACHER_LAYER,),
        input_range: tuple[float, float] = (0.0, 1.0),
        mode: Literal["clean", "noised"] = "clean",
        class_label_map: dict[int, int] | None = None,
        revision: str | None = None,
        truncate: bool = True,
        inference_mode: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        unet, scheduler = load_diffusion_model(source, revision)
        if unet.config.time_embedding_type != "positional":
            raise ValueError(
                f"teacher {source!r} uses {unet.config.time_embedding_type!r} time embeddings; only "
                "discrete-timestep (positional) UNets are supported"
            )
        low, high = input_range
        if not high > low:
            raise ValueError(f"input_range must be (low, high) with high > low, got {input_range}")
        self._check_class_conditioning(source, unet, class_label_map)
        unet.requires_grad_(False).eval()
        self.__dict__["_guest"] = _Guest(unet, scheduler, FeatureTaps(unet, list(layers), owner="teacher"))
        self.source = source
        self.layers = list(layers)
        self.mode = mode
        self.truncate, self.inference_mode = truncate, inference_mode
        self.input_range = (float(low), float(high))
        label_map = torch.full((max(class_label_map or {0: 0}) + 1,), -1, dtype=torch.long)
        for label, teacher_class in (class_label_map or {}).items():
            label_map[label] = teacher_class
        self.register_buffer("_label_map", label_map, persistent=False)
        self.feature_shapes = self._probe_feature_shapes()
        if compile:  # after the shape probe, so that compiling waits for the first real batch
            compile_untapped(unet, self.layers)

    @staticmethod
    def _check_class_conditioning(source: str, unet: UNet2DModel, class_label_map: dict | None) -> None:
        conditional = unet.class_embedding is not None
        if conditional and not class_label_map:
            raise ValueError(
                f"teacher {source!r} is class-conditional (class_embed_type="
                f"{unet.config.class_embed_type!r}, num_class_embeds={unet.config.num_class_embeds}); "
                "set `class_label_map` to map each dataset label to the teacher's class id. Feeding "
                "dataset labels unmapped silently conditions on the wrong classes."
            )
        if not conditional and class_label_map:
            raise ValueError(f"teacher {source!r} is unconditional; remove `class_label_map`")

    @property
    def unet(self) -> UNet2DModel:
        """The frozen UNet (not a registered child; see the class docstring)."""
        return self._guest.unet

    @property
    def scheduler(self) -> DDPMScheduler:
        """The teacher's noise schedule."""
        return self._guest.scheduler

    @property
    def num_train_timesteps(self) -> int:
        """T: the number of discrete timesteps the teacher was trained with."""
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def in_channels(self) -> int:
        """Image channels the UNet expects."""
        return int(self.unet.config.in_channels)

    @property
    def sample_size(self) -> int:
        """The image side the UNet was trained at."""
        size = self.unet.config.sample_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def is_class_conditional(self) -> bool:
        """Whether the UNet needs class labels."""
        return self.unet.class_embedding is not None

    def fingerprint(self) -> dict[str, Any]:
        """What a distillation checkpoint records of its teacher: source, tapped layers, architecture.

        The architecture is the UNet's diffusers config minus bookkeeping keys, as plain lists and
        strings, so it compares equal after a round trip through a checkpoint.
        """
        config = {k: v for k, v in dict(self.unet.config).items() if not k.startswith("_")}
        unet = json.loads(json.dumps(config, default=str))
        return {"source": self.source, "layers": list(self.layers), "unet": unet}

    def _probe_feature_shapes(self) -> dict[str, tuple[int, ...]]:
        x = torch.zeros(1, self.in_channels, self.sample_size, self.sample_size)
        labels = torch.zeros(1, dtype=torch.long) if self.is_class_conditional else None
        if labels is not None:
            labels = labels + int(self._label_map.clamp(min=0).max())
        with torch.no_grad():
            feats = self._guest.taps.run(self.unet, x, torch.zeros(1, dtype=torch.long), class_labels=labels)
        return {name: tuple(f.shape[1:]) for name, f in feats.items()}

    def to_unet_range(self, images: Tensor) -> Tensor:
        """Map images from ``input_range`` onto the UNet's input range.

        That is [-1, 1], or [0, 1] for a UNet that centres its input itself.
        """
        low, high = self.input_range
        unit = (images - low) / (high - low)
        return unit if self.unet.config.center_input_sample else unit * 2 - 1

    def teacher_labels(self, labels: Tensor | None) -> Tensor | None:
        """Translate dataset labels into the teacher's class ids (class-conditional UNets only)."""
        if not self.is_class_conditional:
            return None
        if labels is None:
            raise ValueError("this teacher is class-conditional: the batch must carry labels")
        if labels.min() < 0 or labels.max() >= self._label_map.numel():
            raise ValueError(f"label {int(labels.max())} has no entry in class_label_map")
        mapped = self._label_map[labels]
        if (mapped < 0).any():
            missing = sorted(set(labels[mapped < 0].tolist()))
            raise ValueError(f"labels {missing} have no entry in class_label_map")
        return mapped

    def unet_input(self, images: Tensor, timesteps: Tensor) -> Tensor:
        """The UNet's input sample for clean images at the given timesteps, per ``mode``."""
        sample = self.to_unet_range(images).to(self.unet.dtype)
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
        truncate = self.truncate if truncate is None else truncate
        inference_mode = self.inference_mode if inference_mode is None else inference_mode
        context = torch.inference_mode() if inference_mode else torch.no_grad()
        with context:
            features = self._guest.taps.run(
                self.unet,
                self.unet_input(images, timesteps),
                timesteps,
                class_labels=self.teacher_labels(labels),
                stop_early=truncate,
            )
        if inference_mode:
            # Inference tensors cannot be saved for backward, and losses save their targets.
            features = {name: feature.clone() for name, feature in features.items()}
        return features

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.unet._apply(fn)
        return self

    def train(self, mode: bool = True) -> DiffusionTeacher:
        """Keep the guest UNet in eval mode whatever the parent's mode (dropout off, always)."""
        super().train(mode)
        self.unet.eval()
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
            f"source={self.source!r}, layers={self.layers}, mode={self.mode!r}, T={self.num_train_timesteps}"
        )
