"""OpenAI guided-diffusion (ADM) architectures: configs, key layout and the equal diffusers ``UNet2DModel``.

RepFusion's Tiny-ImageNet teacher is guided-diffusion's ImageNet-64 class-conditional model
(``64x64_diffusion.pt``, a plain state dict), which has no diffusers release. Every ADM tensor is
mapped by walking the architecture that `AdmConfig` describes, so a checkpoint that does not match
the config fails with the keys and shapes at fault instead of converting into a wrong model; the
conversion itself and ``repfusion convert-adm`` are in `repfusion_pl.adm_convert`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from diffusers import DDPMScheduler, UNet2DModel

#: One line of the conversion report: ADM key, its shape, and the diffusers key(s) it became.
ReportRow = tuple[str, tuple[int, ...], tuple[str, ...]]


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


@dataclass(frozen=True)
class _Param:
    """One ADM tensor: key, shape, the diffusers key(s) it becomes; ``heads`` > 0 marks a fused qkv."""

    adm_key: str
    shape: tuple[int, ...]
    targets: tuple[str, ...]
    heads: int = 0


def _layer(adm: str, diff: str, *weight: int) -> list[_Param]:
    """The weight (shape ``weight``) and bias (one per output channel) of a conv, linear or norm."""
    return [
        _Param(f"{adm}.weight", weight, (f"{diff}.weight",)),
        _Param(f"{adm}.bias", weight[:1], (f"{diff}.bias",)),
    ]


def _resblock(adm: str, diff: str, cin: int, cout: int, config: AdmConfig) -> list[_Param]:
    """ADM ``ResBlock`` -> diffusers ``ResnetBlock2D`` (their up/down variants have the same tensors)."""
    emb_out = cout * (2 if config.use_scale_shift_norm else 1)
    params = [
        *_layer(f"{adm}.in_layers.0", f"{diff}.norm1", cin),
        *_layer(f"{adm}.in_layers.2", f"{diff}.conv1", cout, cin, 3, 3),
        *_layer(f"{adm}.emb_layers.1", f"{diff}.time_emb_proj", emb_out, 4 * config.model_channels),
        *_layer(f"{adm}.out_layers.0", f"{diff}.norm2", cout),
        *_layer(f"{adm}.out_layers.3", f"{diff}.conv2", cout, cout, 3, 3),
    ]
    if cin != cout:  # both libraries add a 1x1 shortcut exactly when the width changes
        params += _layer(f"{adm}.skip_connection", f"{diff}.conv_shortcut", cout, cin, 1, 1)
    return params


def _attention(adm: str, diff: str, ch: int, config: AdmConfig) -> list[_Param]:
    """ADM ``AttentionBlock`` (1x1 Conv1d qkv / proj_out) -> diffusers ``Attention`` (Linear layers)."""
    qkv, heads = [f"{diff}.to_{name}" for name in "qkv"], config.heads_for(ch)
    return [
        *_layer(f"{adm}.norm", f"{diff}.group_norm", ch),
        _Param(f"{adm}.qkv.weight", (3 * ch, ch, 1), tuple(f"{key}.weight" for key in qkv), heads),
        _Param(f"{adm}.qkv.bias", (3 * ch,), tuple(f"{key}.bias" for key in qkv), heads),
        _Param(f"{adm}.proj_out.weight", (ch, ch, 1), (f"{diff}.to_out.0.weight",)),
        _Param(f"{adm}.proj_out.bias", (ch,), (f"{diff}.to_out.0.bias",)),
    ]


def _resample(adm: str, diff: str, ch: int, config: AdmConfig, conv_name: str) -> list[_Param]:
    if config.resblock_updown:
        return _resblock(adm, diff, ch, ch, config)
    return _layer(f"{adm}.{conv_name}", f"{diff}.conv", ch, ch, 3, 3)


def _down_path(config: AdmConfig) -> tuple[list[_Param], list[int]]:
    """``input_blocks`` -> ``conv_in`` + ``down_blocks``, and the widths of the skips they leave."""
    ch = config.level_channels[0]
    params, skips, index = _layer("input_blocks.0.0", "conv_in", ch, config.in_channels, 3, 3), [ch], 1
    for level, out in enumerate(config.level_channels):
        diff = f"down_blocks.{level}"
        for j in range(config.num_res_blocks):
            params += _resblock(f"input_blocks.{index}.0", f"{diff}.resnets.{j}", ch, out, config)
            if config.has_attention(level):
                params += _attention(f"input_blocks.{index}.1", f"{diff}.attentions.{j}", out, config)
            ch, index = out, index + 1
            skips.append(ch)
        if level < len(config.channel_mult) - 1:
            params += _resample(f"input_blocks.{index}.0", f"{diff}.downsamplers.0", ch, config, "op")
            index += 1
            skips.append(ch)
    return params, skips


def _up_path(config: AdmConfig, skips: list[int]) -> list[_Param]:
    """``output_blocks`` -> ``up_blocks``, deepest level first; each ResBlock takes the last skip."""
    params: list[_Param] = []
    ch, index = config.level_channels[-1], 0
    for up, level in enumerate(reversed(range(len(config.channel_mult)))):
        diff, out = f"up_blocks.{up}", config.level_channels[level]
        for j in range(config.num_res_blocks + 1):
            adm = f"output_blocks.{index}"
            params += _resblock(f"{adm}.0", f"{diff}.resnets.{j}", ch + skips.pop(), out, config)
            ch, slot = out, 1
            if config.has_attention(level):
                params += _attention(f"{adm}.1", f"{diff}.attentions.{j}", out, config)
                slot = 2
            if level and j == config.num_res_blocks:
                params += _resample(f"{adm}.{slot}", f"{diff}.upsamplers.0", ch, config, "conv")
            index += 1
    return params


@functools.cache
def _adm_params(config: AdmConfig) -> tuple[_Param, ...]:
    """Every tensor of the ADM model that ``config`` describes, in ``state_dict`` order."""
    temb, first, mid = 4 * config.model_channels, config.level_channels[0], config.level_channels[-1]
    params = _layer("time_embed.0", "time_embedding.linear_1", temb, config.model_channels)
    params += _layer("time_embed.2", "time_embedding.linear_2", temb, temb)
    if config.num_classes is not None:
        params.append(_Param("label_emb.weight", (config.num_classes, temb), ("class_embedding.weight",)))
    down, skips = _down_path(config)
    params += down + _resblock("middle_block.0", "mid_block.resnets.0", mid, mid, config)
    params += _attention("middle_block.1", "mid_block.attentions.0", mid, config)
    params += _resblock("middle_block.2", "mid_block.resnets.1", mid, mid, config) + _up_path(config, skips)
    params += _layer("out.0", "conv_norm_out", first)
    return tuple(params + _layer("out.2", "conv_out", config.out_channels, first, 3, 3))


def expected_adm_shapes(config: AdmConfig) -> dict[str, tuple[int, ...]]:
    """The keys and shapes of the guided-diffusion ``state_dict`` of the model ``config`` describes."""
    return {param.adm_key: param.shape for param in _adm_params(config)}


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
