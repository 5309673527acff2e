"""Speed of each teacher family at its real architecture: full forward, truncated forward, distillation step.

Each family is built from its published config with random weights (no download), saved in its
pipeline's folder layout and loaded through `DiffusionTeacher` like a user's teacher:

* ``sd15``: Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5 ``unet`` + ``vae`` configs) at 256 px;
  the text encoder is CLIP ViT-L/14's text tower (its embedding is computed once at load);
* ``dit-xl2``: DiT-XL/2-256 (facebook/DiT-XL-2-256 ``transformer`` + the same VAE) at 256 px;
* ``adm64``: the guided-diffusion ImageNet-64 class-conditional UNet (``repfusion convert-adm``'s
  ``imagenet64-cond`` preset) at 64 px.

For each: the teacher forward with the whole denoiser, the truncated forward at the default layer
(the middle of the network), and one `RepFusionDistillation` step (uniform t, pooled MSE, ResNet-18
student). Usage: ``python benchmarks/speed.py --families sd15,dit-xl2,adm64 [--family-batch 2]``.
"""

from __future__ import annotations

import json
import shutil
import string
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)

from repfusion_pl import DiffusionTeacher, RepFusionDistillation, Student, UniformTimestep
from repfusion_pl.teachers.adm import ADM_PRESETS, AdmConfig, diffusers_unet_for
from study.report import environment
from timing import measure

SPECIAL_TOKENS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}

# runwayml/stable-diffusion-v1-5 unet/config.json and vae/config.json (the DiT VAE has the same shape).
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
# CLIP ViT-L/14's text tower, as SD 1.x ships it in text_encoder/config.json.
CLIP_L_TEXT = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    hidden_act="quick_gelu",
)  # fmt: skip
# facebook/DiT-XL-2-256 transformer/config.json.
DIT_XL2_256 = dict(
    num_attention_heads=16,
    attention_head_dim=72,
    in_channels=4,
    out_channels=8,
    num_layers=28,
    sample_size=32,
    patch_size=2,
    num_embeds_ada_norm=1000,
)


def save_letter_tokenizer(directory: Path, max_length: int = 77) -> int:
    """A CLIP BPE tokenizer over single letters (and the word "cat") in the hub's file layout.

    Real vocabularies cannot be downloaded here; the tokenizer's vocabulary does not change the
    cost of a step (the prompt is embedded once at load). Returns the vocabulary size.
    """
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {SPECIAL_TOKENS["bos_token"]: 0, SPECIAL_TOKENS["eos_token"]: 1}
    for suffix in ("", "</w>"):
        vocab.update({letter + suffix: len(vocab) + i for i, letter in enumerate(string.ascii_lowercase)})
    vocab.update({"ca": len(vocab), "cat</w>": len(vocab) + 1})
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\n")
    special = {**SPECIAL_TOKENS, "pad_token": SPECIAL_TOKENS["eos_token"]}
    (directory / "special_tokens_map.json").write_text(json.dumps(special))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, **special}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return len(vocab)


def save_sd_pipeline(
    directory: Path, unet: UNet2DConditionModel, vae: AutoencoderKL, text_config: dict, max_length: int = 77
) -> Path:
    """A Stable-Diffusion-1.x-layout folder with these models, a CLIP text encoder and the letter tokenizer.

    ``text_config`` sizes the CLIP text encoder (randomly initialised); ``tokenizer/`` is written in the
    hub's layout (``vocab.json`` + ``merges.txt``), as the real pipelines are served.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    staging = directory / "_tokenizer"
    vocab = save_letter_tokenizer(staging, max_length)
    specials = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}  # the letter tokenizer's
    text = CLIPTextModel(
        CLIPTextConfig(vocab_size=vocab, max_position_embeddings=max_length, **specials, **text_config)
    )
    StableDiffusionPipeline(
        vae=vae,
        text_encoder=text.eval(),
        tokenizer=CLIPTokenizer.from_pretrained(staging),
        unet=unet,
        scheduler=PNDMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            steps_offset=1,
            skip_prk_steps=True,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(directory)
    shutil.rmtree(staging)
    shutil.rmtree(directory / "tokenizer")  # saved in transformers' own format: replace with the hub's
    save_letter_tokenizer(directory / "tokenizer", max_length)
    return directory


def save_sd15(directory: Path) -> dict[str, Any]:
    """SD-1.5's UNet, VAE and text tower with random weights, in StableDiffusionPipeline's layout."""
    save_sd_pipeline(directory, UNet2DConditionModel(**SD15_UNET), AutoencoderKL(**SD_VAE), CLIP_L_TEXT)
    return {"image_size": 256, "stem": "imagenet"}


def save_dit_xl2(directory: Path) -> dict[str, Any]:
    """DiT-XL/2-256 and its VAE with random weights, in DiTPipeline's layout."""
    DiTPipeline(
        transformer=DiTTransformer2DModel(**DIT_XL2_256),
        vae=AutoencoderKL(**SD_VAE),
        scheduler=DDPMScheduler(),
    ).save_pretrained(directory)
    return {"image_size": 256, "stem": "imagenet"}


def save_adm64(directory: Path, config: AdmConfig = ADM_PRESETS["imagenet64-cond"]) -> dict[str, Any]:
    """guided-diffusion's ImageNet-64 class-conditional UNet as `repfusion convert-adm` writes it."""
    unet = diffusers_unet_for(config)
    unet.save_pretrained(directory / "unet")
    DDPMScheduler(beta_schedule="squaredcos_cap_v2").save_pretrained(directory / "scheduler")
    return {"image_size": config.image_size, "stem": "cifar", "class_label_map": {0: 1}}


#: The same kind of model at a toy size, for the GPU check's --dry-run (the code path, not the timing).
ADM_TINY = AdmConfig(
    image_size=16, model_channels=32, num_res_blocks=1, attention_resolutions=(2,), channel_mult=(1, 2),
    num_classes=10, resblock_updown=True,
)  # fmt: skip


FAMILIES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "sd15": save_sd15,
    "dit-xl2": save_dit_xl2,
    "adm64": save_adm64,
    "adm-tiny": lambda directory: save_adm64(directory, ADM_TINY),
}


def family_rows(name: str, batch: int, measure: Callable, device: torch.device, repeats: int) -> dict:
    """Full and truncated teacher forward, one distillation step (and the VAE alone), timed."""
    with tempfile.TemporaryDirectory() as tmp:
        options = FAMILIES[name](Path(tmp))
        stem, size = options.pop("stem"), options["image_size"]
        teacher = DiffusionTeacher(tmp, **options).to(device)
        images = torch.rand(batch, 3, size, size, device=device)
        labels = torch.zeros(batch, dtype=torch.long, device=device)
        timesteps = torch.randint(0, 1000, (batch,), device=device)
        module = RepFusionDistillation(teacher, Student("resnet18", stem=stem), UniformTimestep(1000))
        module.to(device).on_fit_start()
        module.log = lambda *a, **k: None  # type: ignore[method-assign]  # no Trainer attached
        optimiser = module.configure_optimizers()

        def step() -> None:
            optimiser.zero_grad(set_to_none=True)
            module.training_step((images, labels), 0)["loss"].backward()
            optimiser.step()

        rows = {
            "teacher forward, full": lambda: teacher(images, timesteps, labels, truncate=False),
            f"teacher forward, truncated at {teacher.layers[0]}": lambda: teacher(images, timesteps, labels),
            "distillation step (truncated teacher + ResNet-18)": step,
        }
        if teacher.family.name != "pixel_unet":  # the VAE encoder runs in every forward of a latent teacher
            rows["of which: VAE encode"] = torch.inference_mode()(
                lambda: teacher.unet_input(images, timesteps)
            )
        params = sum(p.numel() for p in teacher.family.modules.parameters()) / 1e6
        return {
            "family": teacher.family.name,
            "image_size": size,
            "teacher_params_m": round(params, 1),
            "rows": {row: measure(fn, device, 1, repeats) for row, fn in rows.items()},
        }


def run_families(names: list[str], batch: int, device: torch.device, repeats: int, out: Path) -> dict:
    """Time every named family, print one table, write ``out`` (JSON with the machine)."""
    unknown = sorted(set(names) - set(FAMILIES))
    if unknown:
        raise SystemExit(f"unknown families {unknown}; choose from {sorted(FAMILIES)}")
    results = {}
    for name in names:
        print(f"building and timing {name} ...", flush=True)
        results[name] = family_rows(name, batch, measure, device, repeats)
    env = environment()
    extensions = ", ".join(env["cpu_vector_extensions"])
    print(f"\n{env['device']} [{extensions}], {env['threads']} threads, batch {batch}")
    header = f"{'family':<8} {'px':>4} {'params M':>9}  {'measurement':<52} {'median s':>9} {'img/s':>7}"
    print(f"{header} {'peak MB':>8}")
    for name, result in results.items():
        for row, timing in result["rows"].items():
            print(
                f"{name:<8} {result['image_size']:>4} {result['teacher_params_m']:>9.1f}  {row:<52} "
                f"{timing['seconds']:9.3f} {batch / timing['seconds']:7.2f} {timing['peak_mb']:8.0f}"
            )
    payload = {"batch_size": batch, "device": device.type, "environment": env, "families": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")
    return payload
