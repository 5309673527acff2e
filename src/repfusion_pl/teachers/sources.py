"""Where a teacher comes from: a hub id (offline), a local folder or a checkpoint, and which family it is.

A family is recognised by the folder's layout, the way diffusers pipelines save themselves:

* ``pixel_unet``: a ``UNet2DModel`` alone, or ``unet/`` (+ ``scheduler/``) as ``DDPMPipeline`` saves it,
  or a ``.ckpt`` of `DiffusionTeacherTraining`;
* ``latent_unet``: ``unet/`` holding a ``UNet2DConditionModel`` with ``vae/``, ``text_encoder/``,
  ``tokenizer/`` and ``scheduler/`` (Stable Diffusion 1.x / 2.x);
* ``dit``: ``transformer/`` holding a ``DiTTransformer2DModel`` with ``vae/`` and ``scheduler/``.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import DDPMScheduler

Family = Literal["pixel_unet", "latent_unet", "dit"]

EXPECTED_LAYOUTS = """expected one of these layouts:
  pixel_unet   <dir>/config.json + diffusion_pytorch_model.safetensors        (a UNet2DModel saved alone)
               <dir>/unet/config.json + <dir>/scheduler/scheduler_config.json (e.g. DDPMPipeline)
               <file>.ckpt                                   (a checkpoint of DiffusionTeacherTraining)
  latent_unet  <dir>/unet/ (UNet2DConditionModel) + vae/ + text_encoder/ + tokenizer/ + scheduler/
               (Stable Diffusion 1.x/2.x as StableDiffusionPipeline saves it)
  dit          <dir>/transformer/ (DiTTransformer2DModel) + vae/ + scheduler/ (as DiTPipeline saves it)
  guided-diffusion / ADM .pt files: convert first with `repfusion convert-adm`"""

_UNET_CLASSES = {"UNet2DModel": "pixel_unet", "UNet2DConditionModel": "latent_unet"}
_TRANSFORMER_CLASSES = {"DiTTransformer2DModel", "Transformer2DModel"}


def resolve_hub_id(source: str, revision: str | None) -> Path:
    """The local snapshot folder of a hub id, read from the Hugging Face cache only (never a download)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(source, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError as err:
        local = Path(source).resolve()
        raise FileNotFoundError(
            f"teacher {source!r} is neither a local path (no folder {local}; a `repfusion convert-adm` "
            "output must be written first) nor a hub id in the local Hugging Face cache (this package "
            f"never downloads). Fetch it once on a machine with network, e.g. `hf download "
            f"{source}`, then copy the cache (HF_HUB_CACHE) here, or point `source` at a local diffusers "
            "directory."
        ) from err


def resolve_source(source: str, revision: str | None = None) -> Path:
    """A teacher source as a local path: a folder, a ``.ckpt`` file, or a cached hub snapshot."""
    path = Path(source).expanduser()
    if path.suffix == ".ckpt" or path.is_dir():
        return path
    if path.exists():
        hint = " (a guided-diffusion checkpoint? convert it with `repfusion convert-adm`)" * (
            path.suffix == ".pt"
        )
        raise ValueError(f"teacher source {source!r} is a file but not a .ckpt{hint}; {EXPECTED_LAYOUTS}")
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise FileNotFoundError(f"teacher source {source!r} does not exist; {EXPECTED_LAYOUTS}")
    return resolve_hub_id(source, revision)


def _class_name(config: Path) -> str:
    return str(json.loads(config.read_text()).get("_class_name", "UNet2DModel"))


def _is_dit(config: Path) -> bool:
    """A DiT transformer config: class-conditional adaLN-Zero (PixArt and others share the class name)."""
    values = json.loads(config.read_text())
    return (
        values.get("_class_name") in _TRANSFORMER_CLASSES
        and values.get("norm_type", "ada_norm_zero") == "ada_norm_zero"
        and values.get("num_embeds_ada_norm") is not None
    )


def load_strict(model_class: Any, path: Path, subfolder: str | None) -> Any:
    """``from_pretrained`` refusing weights that do not fit the config (diffusers only warns).

    Weights stored in half precision (to halve a folder's size) load as float32 parameters: the
    run's precision (``bf16-mixed`` autocast, or plain float32) decides what the forward computes in.
    """
    model, info = model_class.from_pretrained(
        path,
        subfolder=subfolder,
        low_cpu_mem_usage=False,
        output_loading_info=True,
        torch_dtype=torch.float32,
    )
    problems = {kind: info.get(kind) for kind in ("missing_keys", "mismatched_keys") if info.get(kind)}
    if problems:
        where = path / subfolder if subfolder else path
        summary = "; ".join(
            f"{kind} {list(keys)[:5]} ({len(keys)} in all)" for kind, keys in problems.items()
        )
        raise ValueError(
            f"the weights in {where} do not fit its config.json ({summary}): the folder mixes files of "
            "different models; copy it again from one source"
        )
    return model


def detect_family(path: Path) -> Family:
    """Which teacher family a resolved source holds, from its layout; an unknown layout is an error."""
    if path.suffix == ".ckpt":
        return "pixel_unet"
    for folder in (path, path / "unet"):
        if (folder / "config.json").is_file() and (
            name := _class_name(folder / "config.json")
        ) in _UNET_CLASSES:
            if _UNET_CLASSES[name] == "latent_unet" and not (path / "vae").is_dir():
                raise FileNotFoundError(
                    f"{folder} holds a latent UNet2DConditionModel but {path} has no vae/ folder to encode "
                    f"images with; give the whole Stable Diffusion folder; {EXPECTED_LAYOUTS}"
                )
            return _UNET_CLASSES[name]  # type: ignore[return-value]
    transformer = path / "transformer" / "config.json"
    if transformer.is_file() and _class_name(transformer) in _TRANSFORMER_CLASSES:
        if not _is_dit(transformer):
            raise ValueError(
                f"{transformer} is a {_class_name(transformer)} but not a class-conditional DiT "
                "(norm_type ada_norm_zero with num_embeds_ada_norm); only DiT transformers are supported"
            )
        if not (path / "vae").is_dir():
            raise FileNotFoundError(f"{path} has a DiT transformer/ but no vae/; {EXPECTED_LAYOUTS}")
        return "dit"
    raise FileNotFoundError(
        f"no diffusion model found in {path}: {describe_folder(path)}; {EXPECTED_LAYOUTS}"
    )


def describe_folder(path: Path) -> str:
    """What a folder holds, for error messages: its entries and the class of each model config."""
    if not path.is_dir():
        return "not a folder"
    found = []
    for entry in sorted(path.iterdir())[:20]:
        config = entry / "config.json" if entry.is_dir() else entry
        label = entry.name + ("/" if entry.is_dir() else "")
        if config.name == "config.json" and config.is_file():
            label += f" ({_class_name(config)})"
        found.append(label)
    return "found " + (", ".join(found) if found else "an empty folder")


def load_scheduler(directory: Path, num_train_timesteps: int | None = None) -> DDPMScheduler:
    """The noise schedule of a diffusers folder as a `DDPMScheduler` (the betas are all a teacher needs).

    Pipelines ship other samplers (PNDM, DDIM, ...) built on the same betas; their config is read into
    a `DDPMScheduler`, keeping only the arguments it takes. Without a schedule: 1000 linear steps.
    """
    for folder in (directory / "scheduler", directory):
        if (folder / "scheduler_config.json").is_file():
            config = json.loads((folder / "scheduler_config.json").read_text())
            accepted = inspect.signature(DDPMScheduler.__init__).parameters
            return DDPMScheduler(**{key: value for key, value in config.items() if key in accepted})
    return DDPMScheduler(num_train_timesteps=num_train_timesteps or 1000)
