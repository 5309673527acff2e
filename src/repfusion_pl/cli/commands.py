"""The subcommands that are not Lightning runs: ``repfusion probe`` and ``repfusion export``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch import LightningDataModule
from lightning.pytorch.loggers import Logger

from repfusion_pl.accelerators import resolve_device
from repfusion_pl.checkpoints import CheckpointError, atomic_write_bytes
from repfusion_pl.probing import probe_teacher
from repfusion_pl.probing.report import DISTILL_CONFIG
from repfusion_pl.students import HubFolderError, Student, export_backbone, push_hub_folder
from repfusion_pl.students.hub import read_source, write_hub_folder
from repfusion_pl.students.weights import backbone_bytes


def export_parser() -> ArgumentParser:
    """The arguments of ``repfusion export``."""
    parser = ArgumentParser(prog="repfusion export", description=EXPORT_HELP)
    parser.add_argument("checkpoint", type=str, help="a RepFusionDistillation checkpoint (.ckpt)")
    parser.add_argument(
        "output", type=str | None, nargs="?", default=None, help="the .safetensors file to write"
    )
    parser.add_argument(
        "--hub-folder",
        type=str | None,
        default=None,
        help="also (or only) write a Hub folder: model.safetensors, timm's config.json, a model card",
    )
    parser.add_argument(
        "--push-to-hub", type=str | None, default=None, help="upload the hub folder to this Hub repo (online)"
    )
    parser.add_argument("--private", type=bool, default=False, help="create the Hub repo private")
    parser.add_argument(
        "--license", type=str | None, default=None, help="the card's licence id (default: left to fill in)"
    )
    return parser


def export_command(args: Sequence[str]) -> None:
    """``repfusion export CHECKPOINT [OUTPUT.safetensors] [--hub-folder DIR [--push-to-hub REPO]]``."""
    parser = export_parser()
    parsed = parser.parse_args(list(args))
    if parsed.output is None and parsed.hub_folder is None:
        parser.error("give an OUTPUT.safetensors file, --hub-folder DIR, or both")
    if parsed.push_to_hub and parsed.hub_folder is None:
        parser.error("--push-to-hub uploads the --hub-folder: give --hub-folder DIR too")
    try:
        if parsed.hub_folder is None:
            print(f"wrote {export_backbone(parsed.checkpoint, parsed.output)}")
        else:  # the checkpoint read once for both
            weights, record = read_source(Path(parsed.checkpoint).expanduser())
            if parsed.output is not None:
                written = atomic_write_bytes(parsed.output, backbone_bytes(weights, parsed.checkpoint))
                print(f"wrote {written}")
            folder = write_hub_folder(
                weights, record, parsed.hub_folder, license=parsed.license, repo_id=parsed.push_to_hub
            )
            print(f"wrote {folder}")
    except (CheckpointError, HubFolderError) as err:
        parser.error(str(err))
    if parsed.push_to_hub:
        try:
            print(f"pushed {push_hub_folder(parsed.hub_folder, parsed.push_to_hub, private=parsed.private)}")
        except Exception as err:  # offline, not logged in, no rights: huggingface_hub's many errors
            parser.error(
                f"could not upload {parsed.hub_folder} to {parsed.push_to_hub} ({type(err).__name__}: {err});"
                " the folder is complete: log in (`hf auth login`) and run again, or `hf upload "
                f"{parsed.push_to_hub} {parsed.hub_folder}`"
            )


def probe_parser() -> ArgumentParser:
    """The arguments of ``repfusion probe``."""
    parser = ArgumentParser(prog="repfusion probe", description=PROBE_HELP)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument(
        "--teacher", type=str, required=True, help="hub id, diffusers folder or teacher .ckpt"
    )
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    parser.add_argument(
        "--teacher_options",
        type=dict | None,
        default=None,
        help="more DiffusionTeacher arguments, e.g. {image_size: 256, prompt: ''}",
    )
    parser.add_argument("--num_classes", type=int | None, default=None, help="default: data.num_classes")
    parser.add_argument(
        "--layers",
        type=list[str] | None,
        default=None,
        help="default: encoder, middle and decoder layers of the family",
    )
    parser.add_argument(
        "--layer_sets",
        type=list[list[str]] | None,
        default=None,
        help="concatenations to probe too; default: encoder, decoder and all layers",
    )
    parser.add_argument("--timesteps", type=list[int], default=[0, 25, 50, 100, 200, 400, 700, 999])
    parser.add_argument("--student.arch", type=str, default="resnet18")
    parser.add_argument("--student.stem", type=str, default="cifar")
    parser.add_argument("--out_dir", type=str, default="artifacts/probe")
    parser.add_argument(
        "--distill_config", type=str, default=DISTILL_CONFIG, help="what the configs override"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--accelerator",
        type=Literal["auto", "cpu", "gpu"],
        default="auto",
        help="where the feature passes and the ridge statistics run; auto: the GPU when PyTorch sees one",
    )
    parser.add_argument(
        "--precision",
        type=Literal["32", "bf16"],
        default="32",
        help="precision of the feature passes (the ridge solve is float64 either way)",
    )
    parser.add_argument(
        "--logger",
        type=Logger | None,
        default=None,
        help="a Lightning logger that also receives the heatmap, e.g. {class_path: "
        "lightning.pytorch.loggers.WandbLogger, init_args: {project: repfusion}}",
    )
    return parser


def probe_command(args: Sequence[str]) -> None:
    """``repfusion probe``: linear-probe a teacher's layers x timesteps and write the best configs."""
    parser = probe_parser()
    config = parser.parse_args(list(args))
    try:
        resolve_device(config.accelerator)  # before any data is read: a missing GPU is said at once
    except ValueError as err:
        parser.error(str(err))
    data_config = yaml.safe_load(parser.dump(config))["data"]
    built = parser.instantiate_classes(config)
    data, loggers = built.data, [built.logger] if built.logger is not None else []
    num_classes = config.num_classes or getattr(data, "num_classes", None)
    if not num_classes:
        parser.error("give --num_classes: the data module has no num_classes attribute")
    torch.manual_seed(config.seed)
    data.setup("fit")
    in_channels = next(iter(data.train_dataloader()))[0].shape[1]
    student = Student(config.student.arch, stem=config.student.stem, in_channels=in_channels)
    result = probe_teacher(
        {**(config.teacher_options or {}), "source": config.teacher},
        data,
        data_config,
        config.timesteps,
        config.out_dir,
        student,
        layers=config.layers,
        layer_sets=config.layer_sets,
        num_classes=num_classes,
        distill_config=config.distill_config,
        accelerator=config.accelerator,
        precision=config.precision,
        loggers=loggers,
    )
    for logger in loggers:
        logger.finalize("success")  # flushes TensorBoard's file, ends a W&B or MLflow run
    for kind, path in result["files"].items():
        print(f"{kind:>15}: {path}")


EXPORT_HELP = (
    "Write the student backbone of a distillation checkpoint as safetensors, in its library's key format "
    "(loads strictly into torchvision, timm and smp encoders), and/or as a Hub folder with timm's "
    "config.json and a model card (--hub-folder), optionally uploaded (--push-to-hub)."
)
PROBE_HELP = (
    "Which teacher layer and timestep carry the best features? Fits a streamed linear probe per (layer, "
    "timestep) and for a random-init student, then writes a table, a heatmap and ready-to-run "
    "distillation configs."
)
