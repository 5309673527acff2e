"""Where every tensor of a guided-diffusion ``UNetModel`` lives, and what it becomes in diffusers.

`AdmConfig` describes the architecture; walking it yields each ADM key with its shape and the
diffusers key(s) it maps onto (a fused ``qkv`` becomes ``to_q``/``to_k``/``to_v``), in
``state_dict`` order. The converter checks checkpoints against this walk and copies along it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from repfusion_pl.teachers.adm.config import AdmConfig

#: One line of the conversion report: ADM key, its shape, and the diffusers key(s) it became.
ReportRow = tuple[str, tuple[int, ...], tuple[str, ...]]


@dataclass(frozen=True)
class AdmParam:
    """One ADM tensor: key, shape, the diffusers key(s) it becomes; ``heads`` > 0 marks a fused qkv."""

    adm_key: str
    shape: tuple[int, ...]
    targets: tuple[str, ...]
    heads: int = 0


def _layer(adm: str, diff: str, *weight: int) -> list[AdmParam]:
    """The weight (shape ``weight``) and bias (one per output channel) of a conv, linear or norm."""
    return [
        AdmParam(f"{adm}.weight", weight, (f"{diff}.weight",)),
        AdmParam(f"{adm}.bias", weight[:1], (f"{diff}.bias",)),
    ]


def _resblock(adm: str, diff: str, cin: int, cout: int, config: AdmConfig) -> list[AdmParam]:
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


def _attention(adm: str, diff: str, ch: int, config: AdmConfig) -> list[AdmParam]:
    """ADM ``AttentionBlock`` (1x1 Conv1d qkv / proj_out) -> diffusers ``Attention`` (Linear layers)."""
    qkv, heads = [f"{diff}.to_{name}" for name in "qkv"], config.heads_for(ch)
    return [
        *_layer(f"{adm}.norm", f"{diff}.group_norm", ch),
        AdmParam(f"{adm}.qkv.weight", (3 * ch, ch, 1), tuple(f"{key}.weight" for key in qkv), heads),
        AdmParam(f"{adm}.qkv.bias", (3 * ch,), tuple(f"{key}.bias" for key in qkv), heads),
        AdmParam(f"{adm}.proj_out.weight", (ch, ch, 1), (f"{diff}.to_out.0.weight",)),
        AdmParam(f"{adm}.proj_out.bias", (ch,), (f"{diff}.to_out.0.bias",)),
    ]


def _resample(adm: str, diff: str, ch: int, config: AdmConfig, conv_name: str) -> list[AdmParam]:
    if config.resblock_updown:
        return _resblock(adm, diff, ch, ch, config)
    return _layer(f"{adm}.{conv_name}", f"{diff}.conv", ch, ch, 3, 3)


def _down_path(config: AdmConfig) -> tuple[list[AdmParam], list[int]]:
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


def _up_path(config: AdmConfig, skips: list[int]) -> list[AdmParam]:
    """``output_blocks`` -> ``up_blocks``, deepest level first; each ResBlock takes the last skip."""
    params: list[AdmParam] = []
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
def adm_params(config: AdmConfig) -> tuple[AdmParam, ...]:
    """Every tensor of the ADM model that ``config`` describes, in ``state_dict`` order."""
    temb, first, mid = 4 * config.model_channels, config.level_channels[0], config.level_channels[-1]
    params = _layer("time_embed.0", "time_embedding.linear_1", temb, config.model_channels)
    params += _layer("time_embed.2", "time_embedding.linear_2", temb, temb)
    if config.num_classes is not None:
        params.append(AdmParam("label_emb.weight", (config.num_classes, temb), ("class_embedding.weight",)))
    down, skips = _down_path(config)
    params += down + _resblock("middle_block.0", "mid_block.resnets.0", mid, mid, config)
    params += _attention("middle_block.1", "mid_block.attentions.0", mid, config)
    params += _resblock("middle_block.2", "mid_block.resnets.1", mid, mid, config) + _up_path(config, skips)
    params += _layer("out.0", "conv_norm_out", first)
    return tuple(params + _layer("out.2", "conv_out", config.out_channels, first, 3, 3))


def expected_adm_shapes(config: AdmConfig) -> dict[str, tuple[int, ...]]:
    """The keys and shapes of the guided-diffusion ``state_dict`` of the model ``config`` describes."""
    return {param.adm_key: param.shape for param in adm_params(config)}
