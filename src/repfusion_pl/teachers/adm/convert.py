"""``repfusion convert-adm``: an OpenAI guided-diffusion (ADM) ``.pt`` converted into a diffusers folder.

Every key is checked against the architecture (`repfusion_pl.teachers.adm.layout`), mapped once, and
loaded strictly; the folder is written under a temporary name and renamed at the end, so a failure
leaves nothing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from diffusers import DDPMPipeline, UNet2DModel
from torch import Tensor

from repfusion_pl.teachers.adm.config import (
    ADM_PRESETS,
    AdmConfig,
    AdmConversionError,
    diffusers_unet_for,
    scheduler_for,
)
from repfusion_pl.teachers.adm.layout import ReportRow, adm_params, expected_adm_shapes


def _resolve(config: str | AdmConfig) -> tuple[AdmConfig, str]:
    """The config, and the name errors call it by."""
    if isinstance(config, AdmConfig):
        return config, next((name for name, cfg in ADM_PRESETS.items() if cfg == config), "the AdmConfig")
    if config not in ADM_PRESETS:
        raise AdmConversionError(f"unknown ADM preset {config!r}; choose one of {sorted(ADM_PRESETS)}")
    return ADM_PRESETS[config], config


def _check_is_adm(state_dict: object) -> None:
    """Refuse anything that is not a guided-diffusion ``UNetModel`` state dict, saying what it is."""
    keys = [str(key) for key in state_dict] if isinstance(state_dict, Mapping) else []
    if "time_embed.0.weight" in keys or "input_blocks.0.0.weight" in keys:
        return
    nested = [key for key in keys if isinstance(state_dict[key], Mapping)]  # type: ignore[index]
    if not isinstance(state_dict, Mapping):
        kind = f"a {type(state_dict).__name__}, not a dict"
    elif any(key.startswith(("conv_in.", "down_blocks.", "time_embedding.")) for key in keys):
        kind = "a diffusers UNet state dict (conv_in.weight, down_blocks.*), i.e. already converted"
    else:
        kind = f"a dict of dicts under {nested[:5]}" if nested else f"a dict whose first keys are {keys[:5]}"
    raise AdmConversionError(
        f"the checkpoint is {kind}; guided-diffusion's are plain state dicts "
        "(time_embed.0.weight, input_blocks.0.0.weight, ...). Give the UNet's .pt as openai/guided-diffusion "
        "publishes it (e.g. 64x64_diffusion.pt, not a classifier or a training checkpoint); a diffusers "
        "folder needs no conversion: point the teacher's `source` at it"
    )


def _listed(keys: Sequence[str], limit: int = 20) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _check_matches(state_dict: Mapping[str, Tensor], config: AdmConfig, name: str) -> None:
    """Refuse a checkpoint whose keys or shapes differ from ``config``'s; name the presets that fit."""
    expected = expected_adm_shapes(config)
    given = {key: tuple(getattr(value, "shape", ())) for key, value in state_dict.items()}  # non-tensors: ()
    missing, extra = [k for k in expected if k not in given], [k for k in given if k not in expected]
    wrong = [f"{k} {given[k]} (expected {s})" for k, s in expected.items() if given.get(k, s) != s]
    if not (missing or extra or wrong):
        return
    fits = [other for other, cfg in ADM_PRESETS.items() if expected_adm_shapes(cfg) == given]
    hint = f" The checkpoint fits --config {' or '.join(fits)}." if fits else ""
    if wrong or (missing and extra):  # another architecture, not a damaged file
        raise AdmConversionError(
            f"the checkpoint is not the model of {name}: {len(wrong)} shapes differ ({_listed(wrong, 3)}); "
            f"{len(missing)} keys missing ({_listed(missing, 3)}); {len(extra)} unexpected "
            f"({_listed(extra, 3)}).{hint or ' No preset fits: give its architecture as an AdmConfig.'}"
        )
    if missing:
        raise AdmConversionError(
            f"the checkpoint lacks {len(missing)} key(s) of {name}: {_listed(missing)}.{hint}"
        )
    raise AdmConversionError(
        f"the checkpoint has {len(extra)} key(s) that {name} lacks: {_listed(extra)}.{hint}"
    )


def _split_qkv(tensor: Tensor, heads: int, order: str) -> list[Tensor]:
    """A fused ``(3C, C, 1)`` / ``(3C,)`` qkv tensor -> q, k, v, each ``(C, C)`` / ``(C,)``."""
    fused = tensor.reshape(tensor.shape[0], -1)
    if order == "new":  # QKVAttention: q, k, v are contiguous thirds, each then cut into heads
        parts = list(fused.chunk(3, dim=0))
    else:  # QKVAttentionLegacy: each head's rows hold its own q, k, v in turn
        grouped = fused.reshape(heads, 3, -1, fused.shape[1])
        parts = [grouped[:, index].reshape(-1, fused.shape[1]) for index in range(3)]
    return [part.reshape(-1) if tensor.dim() == 1 else part for part in parts]


def convert_adm_state_dict(
    state_dict: Mapping[str, Tensor], config: str | AdmConfig
) -> tuple[dict[str, Tensor], list[ReportRow]]:
    """Map a guided-diffusion ``UNetModel`` state dict onto the keys of `diffusers_unet_for`'s model.

    Args:
        state_dict: The checkpoint's tensors, by guided-diffusion key.
        config: A preset name of `ADM_PRESETS` or the model's `AdmConfig`.

    Returns:
        The diffusers state dict (float32), and one report row per ADM key (each used exactly once).

    Raises:
        AdmConversionError: ``state_dict`` is not an ADM state dict, or not of ``config``'s model.
    """
    config, name = _resolve(config)
    _check_is_adm(state_dict)
    _check_matches(state_dict, config, name)
    converted: dict[str, Tensor] = {}
    for param in adm_params(config):
        tensor = state_dict[param.adm_key].float()  # the released files are float32; fp16 ones upcast
        if param.heads:
            values = _split_qkv(tensor, param.heads, config.attention_order)
        else:  # a Conv1d weight (C, C, 1) becomes a Linear one
            values = [tensor[..., 0] if tensor.dim() == 3 else tensor]
        for key, value in zip(param.targets, values, strict=True):
            if key in converted:
                raise RuntimeError(f"internal error: diffusers key {key} produced twice")
            converted[key] = value.contiguous()
    return converted, [(param.adm_key, param.shape, param.targets) for param in adm_params(config)]


def _refuse_existing(out_dir: Path) -> None:
    if out_dir.exists() and not (out_dir.is_dir() and not any(out_dir.iterdir())):
        raise AdmConversionError(f"{out_dir} already exists and is not an empty folder; choose a new OUT_DIR")


def _load_checkpoint(path: Path) -> object:
    if not path.is_file():
        raise AdmConversionError(f"checkpoint {path} does not exist or is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and "unsupported global" errors all mean the same here
        raise AdmConversionError(f"{path} is not a torch checkpoint of plain tensors: {err}") from None


def _write_folder(out_dir: Path, unet: UNet2DModel, config: AdmConfig, report: list[str]) -> None:
    """Write the pipeline folder beside ``out_dir``, then rename it into place: failures leave nothing."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        pipeline = DDPMPipeline(unet=unet, scheduler=scheduler_for(config))
        pipeline.save_pretrained(staging, safe_serialization=True)
        (staging / "conversion_report.txt").write_text("\n".join(report) + "\n")
        _refuse_existing(out_dir)  # it may have appeared meanwhile
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def convert_adm(checkpoint_path: str | Path, out_dir: str | Path, config: str | AdmConfig) -> Path:
    """Convert a guided-diffusion checkpoint into a diffusers folder: ``unet/``, ``scheduler/``, a report.

    Args:
        checkpoint_path: The ``.pt`` state dict, e.g. ``64x64_diffusion.pt``.
        out_dir: The folder to create (absent or empty); nothing is written if the conversion fails.
        config: A preset name of `ADM_PRESETS` or the model's `AdmConfig`.

    Returns:
        ``out_dir``.

    Raises:
        AdmConversionError: The checkpoint, config or output folder is refused (the message says why).
    """
    (config, name), source, out_dir = _resolve(config), Path(checkpoint_path), Path(out_dir)
    _refuse_existing(out_dir)
    with torch.device("meta"):  # no second copy of the weights: the converted tensors are assigned
        unet = diffusers_unet_for(config)
    converted, rows = convert_adm_state_dict(_load_checkpoint(source), config)  # type: ignore[arg-type]
    unet.load_state_dict(converted, strict=True, assign=True)
    count = sum(value.numel() for value in converted.values()) / 1e6
    print(f"convert-adm: {source} ({len(rows)} tensors, {count:.1f}M parameters, {name}) -> {out_dir}")
    report = [f"# {source} converted as {name}: {config}", "# adm key, shape -> diffusers key(s)"]
    report += [f"{key} {'x'.join(map(str, shape))} -> {', '.join(targets)}" for key, shape, targets in rows]
    _write_folder(out_dir, unet, config, report)
    return out_dir


CONVERT_ADM_HELP = (
    "Convert an OpenAI guided-diffusion (ADM) checkpoint, e.g. 64x64_diffusion.pt (RepFusion's "
    "Tiny-ImageNet teacher), into a diffusers folder (unet/, scheduler/, conversion_report.txt) that "
    "DiffusionTeacher loads. Every tensor is checked against the architecture: a checkpoint that does not "
    "match it is refused, naming the keys at fault. imagenet128-cond only identifies that checkpoint: its "
    "attention head width varies by level, which a diffusers UNet2DModel cannot express."
)


def convert_adm_parser() -> argparse.ArgumentParser:
    """The arguments of ``repfusion convert-adm``."""
    parser = argparse.ArgumentParser(prog="repfusion convert-adm", description=CONVERT_ADM_HELP)
    parser.add_argument("checkpoint", help="the guided-diffusion .pt state dict")
    parser.add_argument("out_dir", help="the folder to create (absent or empty)")
    which = parser.add_mutually_exclusive_group(required=True)
    presets = ", ".join(ADM_PRESETS)
    which.add_argument(
        "--config", choices=list(ADM_PRESETS), metavar="PRESET", help=f"a released model: {presets}"
    )
    which.add_argument("--config_json", metavar="FILE", help="any other: a JSON object of AdmConfig fields")
    return parser


def convert_adm_command(args: Sequence[str]) -> None:
    """``repfusion convert-adm CHECKPOINT OUT_DIR --config PRESET``; a refused conversion exits with 2."""
    parser = convert_adm_parser()
    parsed = parser.parse_args(list(args))
    try:
        config = parsed.config or AdmConfig.from_json(parsed.config_json)
        out_dir = convert_adm(parsed.checkpoint, parsed.out_dir, config)
    except AdmConversionError as err:
        print(f"repfusion: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {out_dir}: unet/ (UNet2DModel), scheduler/ (DDPMScheduler), conversion_report.txt")
