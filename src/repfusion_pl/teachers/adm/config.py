"""OpenAI guided-diffusion (ADM) architectures: configs, presets and the equal diffusers ``UNet2DModel``.

RepFusion's Tiny-ImageNet teacher is guided-diffusion's ImageNet-64 class-conditional model
(``64x64_diffusion.pt``, a plain state dict), which has no diffusers release. Every ADM tensor is
mapped by walking the architecture that `AdmConfig` describes, so a checkpoint that does not match
the config fails with the keys and shapes at fault instead of converting into a wrong model; the
key walk is in `repfusion_pl.teachers.adm.layout`, the conversion and ``repfusion convert-adm`` in
`repfusion_pl.teachers.adm.convert`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from diffusers import DDPMScheduler, UNet2DModel


class AdmConversionError(ValueError):
    """A checkpoint, architecture or output folder that the converter refuses, and why."""


@dataclass(frozen=True)
class AdmConfig:
    """The architecture and noise schedule of a guided-diffusion ``UNetModel`` (defaults: its scripts').

    Attributes:
        image_size: Training resolution.
        model_channels: Base width (``--num_channels``).
        num_res_blocks: ResBlocks per level on the way down (one more per level on the way up).
        attention_resolutions: Downsample rates ``ds`` with attention, as ``UNetModel`` takes them: the
            scripts turn ``--attention_resolutions 32,16,8`` at 64 px into ``(2, 4, 8)``.
        channel_mult: Width multiplier per level.
        in_channels: Image channels.
        num_heads: Attention heads, used when ``num_head_channels`` (channels per head) is -1.
        num_head_channels: Channels per attention head, or -1.
        num_classes: Classes of ``label_emb``; None for an unconditional model.
        use_scale_shift_norm: FiLM-style ``norm(h) * (1 + scale) + shift`` time conditioning.
        resblock_updown: Resample with ResBlocks rather than a strided conv / nearest + conv.
        attention_order: ``"new"`` (``QKVAttention``: split q, k, v, then heads) or ``"legacy"``
            (``QKVAttentionLegacy``: split heads, then q, k, v); ``--use_new_attention_order``.
        learn_sigma: Twice the input channels out (epsilon, then the variance interpolation).
        noise_schedule: ``"linear"`` or ``"cosine"``.
        diffusion_steps: Training timesteps.
    """

    image_size: int
    model_channels: int
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    channel_mult: tuple[int, ...]
    in_channels: int = 3
    num_heads: int = 4
    num_head_channels: int = -1
    num_classes: int | None = None
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    attention_order: Literal["new", "legacy"] = "legacy"
    learn_sigma: bool = False
    noise_schedule: Literal["linear", "cosine"] = "linear"
    diffusion_steps: int = 1000

    def __post_init__(self) -> None:
        for name in ("attention_resolutions", "channel_mult"):  # hashable (cached) even if given lists
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.channel_mult or min(self.num_heads, self.num_res_blocks, self.model_channels) < 1:
            raise AdmConversionError("bad AdmConfig: it needs levels, heads, ResBlocks and channels")
        order, schedule, ds = self.attention_order, self.noise_schedule, self.attention_resolutions
        widths, attn = self.level_channels, sorted(self.attention_widths())
        rates = [2**level for level in range(len(widths))]
        head = self.num_head_channels if self.num_head_channels > 0 else self.num_heads
        checks = [
            (order in ("new", "legacy"), f"attention_order {order!r} is not 'new' or 'legacy'"),
            (schedule in ("linear", "cosine"), f"noise_schedule {schedule!r} is not 'linear' or 'cosine'"),
            # ADM would silently ignore a rate that no level has: most likely a resolution was given
            (set(ds) <= set(rates), f"attention rates {ds} are not all level rates {rates}"),
            (all(ch % 32 == 0 for ch in widths), f"widths {widths} are not all multiples of 32 (GroupNorm)"),
            (all(ch % head == 0 for ch in attn), f"attention widths {attn} do not split into heads"),
        ]
        if not all(ok for ok, _ in checks):
            raise AdmConversionError("bad AdmConfig: " + "; ".join(text for ok, text in checks if not ok))

    @property
    def out_channels(self) -> int:
        """Output channels: epsilon, plus the variance interpolation when ``learn_sigma``."""
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def level_channels(self) -> list[int]:
        """Output width of each level."""
        return [int(mult * self.model_channels) for mult in self.channel_mult]

    def has_attention(self, level: int) -> bool:
        """Whether the blocks of ``level`` (downsample rate ``2**level``) have attention."""
        return 2**level in self.attention_resolutions

    def attention_widths(self) -> set[int]:
        """Widths of the blocks with attention, the middle block's included (it always has one)."""
        widths = {ch for level, ch in enumerate(self.level_channels) if self.has_attention(level)}
        return widths | {self.level_channels[-1]}

    def heads_for(self, channels: int) -> int:
        """Attention heads of a block ``channels`` wide."""
        return channels // self.num_head_channels if self.num_head_channels > 0 else self.num_heads

    @classmethod
    def from_json(cls, path: str | Path) -> AdmConfig:
        """Read a JSON object of field names (lists become tuples), as ``--config_json`` does."""
        try:
            data = json.loads(Path(path).read_text())
            values: dict[str, Any] = {key: tuple(v) if isinstance(v, list) else v for key, v in data.items()}
            return cls(**values)
        except AdmConversionError:
            raise
        except (OSError, ValueError, TypeError, AttributeError) as err:
            known = [field.name for field in fields(cls)]
            raise AdmConversionError(
                f"{path} is not a JSON object of AdmConfig fields {known}: {err}"
            ) from None


# The MODEL_FLAGS of guided-diffusion's README; attention rates are image_size // (32, 16, 8).
ADM_PRESETS: dict[str, AdmConfig] = {
    "imagenet64-cond": AdmConfig(
        image_size=64, model_channels=192, num_res_blocks=3, attention_resolutions=(2, 4, 8),
        channel_mult=(1, 2, 3, 4), num_head_channels=64, num_classes=1000, resblock_updown=True,
        attention_order="new", learn_sigma=True, noise_schedule="cosine",
    ),
    "imagenet128-cond": AdmConfig(
        image_size=128, model_channels=256, num_res_blocks=2, attention_resolutions=(4, 8, 16),
        channel_mult=(1, 1, 2, 3, 4), num_heads=4, num_classes=1000, resblock_updown=True, learn_sigma=True,
    ),
    "imagenet256-cond": AdmConfig(
        image_size=256, model_channels=256, num_res_blocks=2, attention_resolutions=(8, 16, 32),
        channel_mult=(1, 1, 2, 2, 4, 4), num_head_channels=64, num_classes=1000, resblock_updown=True,
        learn_sigma=True,
    ),
    "imagenet256-uncond": AdmConfig(
        image_size=256, model_channels=256, num_res_blocks=2, attention_resolutions=(8, 16, 32),
        channel_mult=(1, 1, 2, 2, 4, 4), num_head_channels=64, resblock_updown=True, learn_sigma=True,
    ),
}  # fmt: skip


def diffusers_unet_for(config: AdmConfig) -> UNet2DModel:
    """The diffusers ``UNet2DModel`` whose structure and forward equal ADM's for ``config``.

    Raises:
        AdmConversionError: The architecture has no UNet2DModel equivalent.
    """
    # UNet2DModel has one attention_head_dim for all blocks, and ties the timestep-embedding width
    # to the first level's; under a fixed num_heads, ADM's head width follows the block width.
    head_dims = {ch // config.heads_for(ch) for ch in config.attention_widths()}
    problems = [f"one attention head width, not {sorted(head_dims)}"] if len(head_dims) > 1 else []
    if config.channel_mult[0] != 1:
        problems.append(f"a channel_mult that starts with 1, not {config.channel_mult}")
    if problems:
        raise AdmConversionError(
            f"a diffusers UNet2DModel cannot reproduce this model: it needs {' and '.join(problems)}"
        )
    attention = [config.has_attention(level) for level in range(len(config.channel_mult))]
    updown = config.resblock_updown
    down, up = (
        ("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if updown else ("DownBlock2D", "UpBlock2D")
    )
    return UNet2DModel(
        sample_size=config.image_size, in_channels=config.in_channels, out_channels=config.out_channels,
        # ADM's timestep embedding is [cos, sin] with frequencies exp(-ln(1e4) * i / half)
        time_embedding_type="positional", flip_sin_to_cos=True, freq_shift=0,
        down_block_types=tuple("AttnDownBlock2D" if attn else down for attn in attention),
        up_block_types=tuple("AttnUpBlock2D" if attn else up for attn in reversed(attention)),
        block_out_channels=tuple(config.level_channels), layers_per_block=config.num_res_blocks,
        downsample_type="resnet" if updown else "conv", upsample_type="resnet" if updown else "conv",
        attention_head_dim=head_dims.pop(), norm_num_groups=32, norm_eps=1e-5,
        attn_norm_num_groups=32,  # else the mid-block attention has no GroupNorm under scale_shift
        resnet_time_scale_shift="scale_shift" if config.use_scale_shift_norm else "default",
        num_class_embeds=config.num_classes,
    )  # fmt: skip


def scheduler_for(config: AdmConfig) -> DDPMScheduler:
    """The ``DDPMScheduler`` with guided-diffusion's betas (``get_named_beta_schedule``)."""
    scale = 1000 / config.diffusion_steps  # ADM stretches Ho et al.'s 1000-step range to any length
    betas: dict[str, Any] = {"beta_schedule": "linear", "beta_start": 1e-4 * scale, "beta_end": 0.02 * scale}
    return DDPMScheduler(
        num_train_timesteps=config.diffusion_steps,
        variance_type="learned_range" if config.learn_sigma else "fixed_large",
        **({"beta_schedule": "squaredcos_cap_v2"} if config.noise_schedule == "cosine" else betas),
    )
