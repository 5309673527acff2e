"""Tiny random Stable Diffusion and DiT pipelines, built from the real library classes and saved in the
layouts their pipelines write (and the hub serves): unet/ or transformer/, vae/, text_encoder/,
tokenizer/, scheduler/, model_index.json."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    UNet2DConditionModel,
)

from teacher_families import save_sd_pipeline

#: Tiny models take 16 px RGB images: the VAE halves them to 8 px latents.
IMAGE_SIZE = 16


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random non-zero weights everywhere (diffusers zero-initialises output and modulation layers)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.2)
    return model.eval()


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=IMAGE_SIZE,
    )
    return randomise(vae, seed)


def save_stable_diffusion(
    directory: Path, seed: int = 0, text: bool = True, unet_in_channels: int = 4
) -> Path:
    """A tiny Stable-Diffusion-1.x-shaped pipeline (text-conditioned latent UNet) saved at ``directory``."""
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2,
        in_channels=unet_in_channels,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    text_config = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }
    torch.manual_seed(seed)  # the text encoder's random initialisation
    save_sd_pipeline(directory, randomise(unet, seed + 1), tiny_vae(seed), text_config, max_length=8)
    if not text:
        for folder in ("tokenizer", "text_encoder"):
            shutil.rmtree(directory / folder)
    return directory


def tiny_dit(seed: int = 0, num_classes: int = 10) -> DiTTransformer2DModel:
    dit = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,  # learned sigma, as DiT-XL/2
        num_layers=4,
        sample_size=IMAGE_SIZE // 2,
        patch_size=2,
        num_embeds_ada_norm=num_classes,
    )
    return randomise(dit, seed)


def save_dit(directory: Path, seed: int = 0, num_classes: int = 10) -> Path:
    """A tiny class-conditional DiT pipeline saved at ``directory``."""
    pipeline = DiTPipeline(
        transformer=tiny_dit(seed, num_classes),
        vae=tiny_vae(seed),
        scheduler=DDIMScheduler(num_train_timesteps=1000),
    )
    pipeline.save_pretrained(directory)
    return directory
