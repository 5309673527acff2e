"""A library's pretrained weights, from the local cache only: a run never downloads behind a user's back.

torchvision keeps its downloads in ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub``); timm in
the Hugging Face cache (``$HF_HUB_CACHE``) or, for weights hosted elsewhere, the same torch hub
folder. Each lookup here reads those folders and never the network; a miss raises
`PretrainedWeightsError` with the one command that fills the cache (run once, online).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from repfusion_pl.checkpoints import CheckpointError, read_state_dict


class PretrainedWeightsError(ValueError):
    """Pretrained weights that do not exist for an architecture, or are not in the local cache."""


def torch_hub_checkpoints() -> Path:
    """The folder where torchvision (and timm, for URL-hosted weights) keeps downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_weights(arch: str) -> tuple[dict[str, Tensor], str]:
    """The default ImageNet weights of a torchvision model, read from the cache with ``weights_only``.

    Returns:
        The state dict (with the classification head) and the weights' name, e.g.
        ``ResNet18_Weights.IMAGENET1K_V1``.

    Raises:
        PretrainedWeightsError: torchvision has no weights for ``arch``, or they are not cached.
    """
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError) as err:
        raise PretrainedWeightsError(f"torchvision has no pretrained weights for {arch!r}") from err
    name = f"{type(weights).__name__}.{weights.name}"
    path = torch_hub_checkpoints() / Path(weights.url).name
    if not path.is_file():
        raise PretrainedWeightsError(
            f"torchvision's {name} for student {arch!r} are not in the local cache ({path} is absent); "
            f'download them once, online: python -c "import torchvision; torchvision.models.{arch}'
            "(weights='DEFAULT')\" (set TORCH_HOME to choose the cache), then run again; or give "
            "`weights:` a state-dict file instead of `pretrained: true`"
        )
    try:
        return read_state_dict(path), name
    except CheckpointError as err:  # e.g. a download cut short
        raise PretrainedWeightsError(f"{err}; delete {path} and download it again") from err


def timm_weights_file(arch: str) -> tuple[str, str]:
    """The cached file of timm's default pretrained weights for ``arch`` (a name, with or without tag).

    Returns:
        The local file and the weights' full name, e.g. ``resnet18.a1_in1k``.

    Raises:
        PretrainedWeightsError: timm has no pretrained weights for ``arch``, or they are not cached.
    """
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        base = arch.split(".")[0]
        tagged = [n for n in _timm_pretrained() if n.split(".")[0] == base]
        near = tagged or difflib.get_close_matches(base, _timm_pretrained(), n=5, cutoff=0.6)
        raise PretrainedWeightsError(
            f"timm has no pretrained weights for {arch!r}"
            + (f"; pretrained names near it: {near}" if near else "")
            + "; use pretrained: false, or give `weights:` a state-dict file"
        )
    name = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else str(cfg.architecture)
    found = _cached(cfg)
    if found is None:
        where = f"hf download {cfg.hf_hub_id}" if cfg.hf_hub_id else f"the file {cfg.url}"
        raise PretrainedWeightsError(
            f"timm weights {name} for student {arch!r} are not in the local cache (looked in HF_HUB_CACHE "
            f'and {torch_hub_checkpoints()}); download them once, online: `{where}` or python -c "import '
            f"timm; timm.create_model('{name}', pretrained=True)\", then run again; or give `weights:` a "
            "state-dict file instead of `pretrained: true`"
        )
    return found, name


def _cached(cfg: Any) -> str | None:
    if cfg.file and Path(cfg.file).is_file():
        return str(cfg.file)
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = str(cfg.hf_hub_id).partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in names:
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):  # the other answers are None and "known to be absent"
                return found
    if cfg.url:
        path = torch_hub_checkpoints() / Path(str(cfg.url)).name
        if path.is_file():
            return str(path)
    return None


def _timm_pretrained() -> list[str]:
    import timm

    return list(timm.list_pretrained())
