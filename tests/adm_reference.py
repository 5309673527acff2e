"""An independent reference of guided-diffusion's (ADM) UNetModel, for testing `repfusion convert-adm`.

Written from the architecture's description, not from diffusers: its ``state_dict()`` has exactly
guided-diffusion's key layout (``time_embed.0``, ``input_blocks.N.M``, ``middle_block``,
``output_blocks``, ``out.0`` / ``out.2``), so a converted copy of its weights must reproduce its
forward in diffusers. Only what the tests need: 2-D images, no dropout, no fp16, no checkpointing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repfusion_pl.teachers.adm.config import AdmConfig


class GroupNorm32(nn.GroupNorm):
    """ADM's normalisation: 32 groups, computed in float32 whatever the input dtype."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """[cos, sin] of t * exp(-ln(max_period) * i / half), i < half."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = timesteps.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Resample(nn.Module):
    """Nearest 2x upsampling or 2x average pooling, with an optional 3x3 conv (named as ADM names it)."""

    def __init__(self, channels: int, up: bool, use_conv: bool) -> None:
        super().__init__()
        self.up, self.use_conv = up, use_conv
        if use_conv and up:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        elif use_conv:
            self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            return self.conv(x) if self.use_conv else x
        return self.op(x) if self.use_conv else F.avg_pool2d(x, kernel_size=2, stride=2)


class ResBlock(nn.Module):
    """in_layers (norm, SiLU, conv) -> + time embedding (or scale-shift norm) -> out_layers, + skip."""

    def __init__(
        self, cin: int, cout: int, emb: int, scale_shift: bool, up: bool = False, down: bool = False
    ):
        super().__init__()
        self.scale_shift, self.updown = scale_shift, up or down
        self.in_layers = nn.Sequential(GroupNorm32(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.h_upd = Resample(cin, up, use_conv=False) if self.updown else nn.Identity()
        self.x_upd = Resample(cin, up, use_conv=False) if self.updown else nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, 2 * cout if scale_shift else cout))
        self.out_layers = nn.Sequential(
            GroupNorm32(cout), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(cout, cout, 3, padding=1)
        )
        self.skip_connection = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.updown:  # resample after the input norm + activation, on both branches
            h = self.h_upd(self.in_layers[1](self.in_layers[0](x)))
            x = self.x_upd(x)
            h = self.in_layers[2](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb)[:, :, None, None]
        if self.scale_shift:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over positions with a fused 1x1 Conv1d qkv, in the new or the legacy split order."""

    def __init__(self, channels: int, heads: int, order: str) -> None:
        super().__init__()
        self.heads, self.order = heads, order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        ch, length = c // self.heads, flat.shape[-1]
        if self.order == "new":  # q | k | v, each then cut into heads
            q, k, v = (part.reshape(b * self.heads, ch, length) for part in qkv.chunk(3, dim=1))
        else:  # heads first, each holding its own q | k | v
            q, k, v = qkv.reshape(b * self.heads, 3 * ch, length).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale).float(), dim=-1)
        out = torch.einsum("bts,bcs->bct", weight.type(v.dtype), v).reshape(b, c, length)
        return (flat + self.proj_out(out)).reshape(b, c, *spatial)


class Step(nn.ModuleList):
    """One entry of input_blocks / output_blocks: layers applied in turn, ResBlocks given the embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ReferenceUNet(nn.Module):
    """guided-diffusion's UNetModel for `AdmConfig`, with its exact ``state_dict`` keys."""

    def __init__(self, config: AdmConfig) -> None:
        super().__init__()
        self.config = config
        mc, emb = config.model_channels, 4 * config.model_channels
        widths = [int(mult * mc) for mult in config.channel_mult]

        def res(cin: int, cout: int, **updown: bool) -> ResBlock:
            return ResBlock(cin, cout, emb, config.use_scale_shift_norm, **updown)

        def attention(ch: int) -> AttentionBlock:
            heads = ch // config.num_head_channels if config.num_head_channels > 0 else config.num_heads
            return AttentionBlock(ch, heads, config.attention_order)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        if config.num_classes is not None:
            self.label_emb = nn.Embedding(config.num_classes, emb)
        ch = widths[0]
        self.input_blocks = nn.ModuleList([Step([nn.Conv2d(config.in_channels, ch, 3, padding=1)])])
        skips, ds = [ch], 1
        for level, width in enumerate(widths):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res(ch, width)]
                ch = width
                if ds in config.attention_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(Step(layers))
                skips.append(ch)
            if level < len(widths) - 1:
                down = res(ch, ch, down=True) if config.resblock_updown else Resample(ch, False, True)
                self.input_blocks.append(Step([down]))
                skips.append(ch)
                ds *= 2
        self.middle_block = Step([res(ch, ch), attention(ch), res(ch, ch)])
        self.output_blocks = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for i in range(config.num_res_blocks + 1):
                layers = [res(ch + skips.pop(), width)]
                ch = width
                if ds in config.attention_resolutions:
                    layers.append(attention(ch))
                if level and i == config.num_res_blocks:
                    layers.append(
                        res(ch, ch, up=True) if config.resblock_updown else Resample(ch, True, True)
                    )
                    ds //= 2
                self.output_blocks.append(Step(layers))
        out_channels = config.in_channels * (2 if config.learn_sigma else 1)
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(widths[0], out_channels, 3, padding=1))

    def forward(self, x: Tensor, timesteps: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels))
        if self.config.num_classes is not None:
            assert y is not None, "a class-conditional model needs labels"
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def random_reference(config: AdmConfig, seed: int = 0, std: float = 0.2) -> ReferenceUNet:
    """A reference model with every weight drawn from N(0, std), zero-initialised ones included."""
    torch.manual_seed(seed)
    model = ReferenceUNet(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, std)
    return model.eval()
