"""Latent teachers: Stable Diffusion's text-conditioned UNet and DiT, both reading VAE latents.

Images are encoded with the pipeline's own VAE (the mean of the latent distribution, shifted and
scaled as the pipeline does), so the denoiser sees exactly what it was trained on. The fixed text
conditioning of a Stable Diffusion teacher is computed once at load time with the pipeline's own
tokenizer and text encoder, which are then dropped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DiTTransformer2DModel, UNet2DConditionModel
from torch import Tensor, nn

from repfusion_pl.teachers.family import TeacherFamily, unet_candidate_layers
from repfusion_pl.teachers.sources import Family, describe_folder, load_scheduler, load_strict


class VaeEncoder(nn.Module):
    """The encoder half of a diffusers ``AutoencoderKL``: images in [-1, 1] -> scaled latent means."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.encoder, self.quant_conv = vae.encoder, vae.quant_conv  # the decoder is never needed
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(vae.config.get("shift_factor") or 0.0)
        self.in_channels = int(vae.config.in_channels)
        self.latent_channels = int(vae.config.latent_channels)
        self.downscale = 2 ** (len(vae.config.block_out_channels) - 1)

    def forward(self, images: Tensor) -> Tensor:
        moments = self.encoder(images)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean = moments.chunk(2, dim=1)[0]  # deterministic: the mean, never a sample
        return (mean - self.shift_factor) * self.scaling_factor

    @classmethod
    def load(cls, path: Path) -> VaeEncoder:
        """Read ``<path>/vae``."""
        return cls(load_strict(AutoencoderKL, path, "vae"))


class LatentFamily(TeacherFamily):
    """A denoiser on VAE latents: images are encoded before the denoiser sees them."""

    vae: VaeEncoder

    def __init__(self, denoiser: nn.Module, scheduler, vae: VaeEncoder, **extra: nn.Module) -> None:
        super().__init__(denoiser, scheduler, vae=vae, **extra)
        self.vae = vae

    @property
    def image_channels(self) -> int:
        return self.vae.in_channels

    @property
    def native_image_size(self) -> int:
        return super().native_image_size * self.vae.downscale

    @property
    def size_multiple(self) -> int:
        return super().size_multiple * self.vae.downscale

    def encode(self, images: Tensor) -> Tensor:
        return self.vae(images.to(next(self.vae.parameters()).dtype))

    def architecture(self) -> dict[str, Any]:
        return {**super().architecture(), "vae_scaling_factor": self.vae.scaling_factor}


class TextCondition(nn.Module):
    """A fixed text embedding (a buffer, so that it moves with the teacher)."""

    def __init__(self, embedding: Tensor, prompt: str) -> None:
        super().__init__()
        self.prompt = prompt
        self.register_buffer("embedding", embedding, persistent=False)


def _component_class(path: Path, component: str, fallback: str) -> Any:
    """The transformers class a pipeline names for a component in ``model_index.json``."""
    import transformers

    index = path / "model_index.json"
    library, name = "transformers", fallback
    if index.is_file():
        library, name = json.loads(index.read_text()).get(component, [library, name])
    if library != "transformers" or not hasattr(transformers, name):
        raise ValueError(f"{index} names {library}.{name} for {component}; expected a transformers class")
    return getattr(transformers, name)


def encode_prompt(path: Path, prompt: str, width: int) -> Tensor:
    """The text encoder's last hidden state for ``prompt``, padded as Stable Diffusion pipelines pad it."""
    missing = [name for name in ("tokenizer", "text_encoder") if not (path / name).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"teacher {path} is text-conditioned (cross_attention_dim={width}) but has no "
            f"{' or '.join(f'{m}/' for m in missing)} to embed the prompt with ({describe_folder(path)}); "
            "copy the whole Stable Diffusion folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/)"
        )
    tokenizer = _component_class(path, "tokenizer", "AutoTokenizer").from_pretrained(path / "tokenizer")
    encoder = _component_class(path, "text_encoder", "CLIPTextModel").from_pretrained(path / "text_encoder")
    ids = tokenizer(
        prompt,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        embedding = encoder(ids)[0]
    if embedding.shape[-1] != width:
        raise ValueError(
            f"{path}/text_encoder embeds to {embedding.shape[-1]} channels but the UNet cross-attends to "
            f"{width}; the folder mixes components of different models"
        )
    return embedding.float()


class LatentUNet(LatentFamily):
    """Stable Diffusion 1.x / 2.x: a ``UNet2DConditionModel`` on VAE latents, with one fixed prompt."""

    name: Family = "latent_unet"
    denoiser: UNet2DConditionModel

    @classmethod
    def load(cls, path: Path, prompt: str) -> LatentUNet:
        """Read ``unet/``, ``vae/``, ``scheduler/``; embed ``prompt`` with the pipeline's text encoder."""
        config = UNet2DConditionModel.load_config(path, subfolder="unet")
        vae = VaeEncoder.load(path)
        extra = {k: config.get(k) for k in ("class_embed_type", "addition_embed_type", "num_class_embeds")}
        if any(extra.values()) or config.get("in_channels") != vae.latent_channels:
            raise ValueError(
                f"teacher {path}: a UNet with extra conditioning ({extra}; SDXL, an upscaler) or extra input "
                f"channels ({config.get('in_channels')} for {vae.latent_channels}-channel latents: "
                "inpainting, depth) is not supported; use a Stable Diffusion 1.x/2.x text-to-image folder"
            )
        # The prompt first: the text encoder is freed before the UNet is loaded (lower peak memory).
        embedding = encode_prompt(path, prompt, int(config["cross_attention_dim"]))
        unet = load_strict(UNet2DConditionModel, path, "unet")
        return cls(unet, load_scheduler(path), vae, condition=TextCondition(embedding, prompt))

    def call_kwargs(self, batch_size: int, class_ids: Tensor | None) -> dict[str, Any]:
        embedding = self.modules["condition"].get_buffer("embedding")
        return {"encoder_hidden_states": embedding.expand(batch_size, -1, -1).to(self.denoiser.dtype)}

    def candidate_layers(self) -> list[str]:
        return unet_candidate_layers(self.denoiser)

    def architecture(self) -> dict[str, Any]:
        return {**super().architecture(), "prompt": self.modules["condition"].prompt}


class LatentDiT(LatentFamily):
    """DiT: a class-conditional ``DiTTransformer2DModel`` on VAE latents; token outputs become maps."""

    name: Family = "dit"
    denoiser: DiTTransformer2DModel

    @classmethod
    def load(cls, path: Path) -> LatentDiT:
        """Read ``transformer/``, ``vae/`` and ``scheduler/``."""
        transformer = load_strict(DiTTransformer2DModel, path, "transformer")
        return cls(transformer, load_scheduler(path), VaeEncoder.load(path))

    @property
    def num_classes(self) -> int | None:
        return int(self.denoiser.config.num_embeds_ada_norm)

    @property
    def null_class(self) -> int | None:  # type: ignore[override]
        # DiT trains with label dropout: the extra last row of its label table is "no class".
        table = self.denoiser.transformer_blocks[0].norm1.emb.class_embedder.embedding_table
        return self.num_classes if table.num_embeddings > (self.num_classes or 0) else None

    def call_kwargs(self, batch_size: int, class_ids: Tensor | None) -> dict[str, Any]:
        return {"class_labels": class_ids}

    def feature_map(self, feature: Tensor, sample: Tensor) -> Tensor:
        patch = int(self.denoiser.config.patch_size)
        height, width = sample.shape[-2] // patch, sample.shape[-1] // patch
        if feature.ndim != 3 or feature.shape[1] != height * width:
            return feature
        return feature.transpose(1, 2).reshape(len(feature), feature.shape[2], height, width)

    @property
    def size_multiple(self) -> int:
        return int(self.denoiser.config.patch_size) * self.vae.downscale

    def default_layer(self) -> str:
        return f"transformer_blocks.{len(self.denoiser.transformer_blocks) // 2}"

    def candidate_layers(self) -> list[str]:
        """Six transformer blocks spread from the first to the last."""
        depth = len(self.denoiser.transformer_blocks)
        picks = sorted({round(k * (depth - 1) / 5) for k in range(6)})
        return [f"transformer_blocks.{i}" for i in picks]

    def is_decoder_layer(self, layer: str) -> bool:
        parts = layer.split(".")
        depth = len(self.denoiser.transformer_blocks)
        return len(parts) > 1 and parts[0] == "transformer_blocks" and int(parts[1]) >= math.ceil(depth / 2)
