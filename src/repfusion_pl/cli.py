"""The ``repfusion`` command: LightningCLI's fit/validate/test/predict, plus probe and export.

``repfusion --help`` lists every subcommand; each has its own ``--help``. ``fit --ckpt_path CKPT``
without a config rebuilds the run from the config stored in CKPT (`with_checkpoint_config`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from argparse import ArgumentError
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

# Imported so that their classes are registered as subclasses for `class_path` resolution.
import repfusion_pl.data  # noqa: F401
import repfusion_pl.distill  # noqa: F401
import repfusion_pl.tasks  # noqa: F401
import repfusion_pl.teacher_training  # noqa: F401
from repfusion_pl._version import __version__
from repfusion_pl.adm_convert import convert_adm_command
from repfusion_pl.checkpoints import CONFIG_KEY, AtomicCheckpointIO, CheckpointError, read_checkpoint
from repfusion_pl.cli_errors import ConfigBuildError, build_error, config_error_hint, unwrap_worker_error
from repfusion_pl.preemption import Preemption
from repfusion_pl.probe import probe_teacher
from repfusion_pl.probe_report import DISTILL_CONFIG
from repfusion_pl.students import Student
from repfusion_pl.weights import export_backbone


class RecordConfigCallback(SaveConfigCallback):
    """LightningCLI's config writer that also stores the config in every checkpoint."""

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CONFIG_KEY] = self.parser.dump(self.config, skip_none=False)


class RepFusionCLI(LightningCLI):
    """LightningCLI whose ``--ckpt_path`` never silently overrides the given config.

    Stock LightningCLI replaces the model config with the checkpoint's hyperparameters, so a changed
    student or teacher flag would be ignored without a word. Here the config comes from the
    command line (or, with no ``--config``, from the checkpoint: `with_checkpoint_config`), and the
    distillation module refuses a checkpoint it does not match (`repfusion_pl.checkpoints.check_resumable`).
    """

    def _parse_ckpt_path(self) -> None:
        return

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        # `main` always passes the arguments (it may add the checkpoint's config), so LightningCLI's
        # warning against passing both `args` and a command line would fire on every run.
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
        else:
            self.config = parser.parse_args(args)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as err:  # a component's own error, buried in jsonargparse's Union report
            config = yaml.safe_load(self.parser.dump(self.config, format="yaml", skip_check=True))
            subcommand = self.config.get("subcommand")
            raise build_error(err, config.get(subcommand, config) if subcommand else config) from err

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        # Atomic local checkpoints unless the config brings its own CheckpointIO.
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        # A scheduler's SIGTERM (or SLURM's SIGUSR1) ends in a checkpoint and the resume command.
        listed = config.get("callbacks") or []
        listed = list(listed) if isinstance(listed, (list, tuple)) else [listed]
        if not any(isinstance(callback, Preemption) for callback in [*listed, *callbacks]):
            callbacks = [*callbacks, Preemption()]
        return super()._instantiate_trainer(config, callbacks)


def build_cli(args: ArgsType | Sequence[str] = None, run: bool = True) -> LightningCLI:
    """Build (and by default run) the LightningCLI; ``args`` replaces ``sys.argv``."""
    return RepFusionCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,  # type: ignore[arg-type]
        run=run,
        save_config_callback=RecordConfigCallback,
        # main() adds the fix to jsonargparse's message; `prog` names the command in every usage line.
        parser_kwargs={"exit_on_error": False, "prog": "repfusion"},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


def _option(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def with_checkpoint_config(argv: list[str]) -> list[str]:
    """``fit --ckpt_path CKPT`` without a config gets CKPT's stored config; a file CKPT is checked first.

    Args:
        argv: The arguments after ``repfusion``.

    Returns:
        ``argv``, with ``--config <stored config>`` inserted after the subcommand when needed.
    """
    ckpt_path = _option(argv, "--ckpt_path")
    if not argv or argv[0] not in ("fit", "validate", "test") or ckpt_path in (None, "last", "best", "hpc"):
        return argv
    checkpoint = read_checkpoint(ckpt_path)
    if _option(argv, "--config") is not None or _option(argv, "-c") is not None:
        return argv
    stored = checkpoint.get(CONFIG_KEY)
    if not stored:
        raise CheckpointError(
            f"{ckpt_path} does not record its run's config (written by an older version or another tool); "
            "resume with --config <the run's config.yaml> --ckpt_path ..."
        )
    handle = tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="repfusion-resume-", delete=False)
    with handle:
        handle.write(stored)
    return [argv[0], "--config", handle.name, *argv[1:]]


def run_lightning(argv: list[str], debug: bool = False) -> None:
    """A LightningCLI subcommand; a configuration error ends with the fix and exit status 2.

    A class of the configuration that fails to build prints as its own message and the key it came
    from (``--debug`` before the subcommand keeps the traceback); a pre-empted run exits with 143
    after saying how to resume; a data-loader worker's error is re-raised as the worker raised it.
    """
    try:
        build_cli(with_checkpoint_config(argv))
    except ArgumentError as err:
        print(f"repfusion: bad configuration\n{err}\n{config_error_hint(str(err))}", file=sys.stderr)
        raise SystemExit(2) from None
    except ConfigBuildError as err:
        if debug:
            raise
        print(f"repfusion: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except SIGTERMException:
        raise SystemExit(143) from None  # Preemption has saved the checkpoint and printed the command
    except Exception as err:
        unwrapped = unwrap_worker_error(err)
        if unwrapped is err or debug:
            raise
        raise unwrapped from None


def export_command(args: Sequence[str]) -> None:
    """``repfusion export CHECKPOINT OUTPUT.safetensors``: write the student backbone for reuse."""
    parser = ArgumentParser(prog="repfusion export", description=EXPORT_HELP)
    parser.add_argument("checkpoint", type=str, help="a RepFusionDistillation checkpoint (.ckpt)")
    parser.add_argument("output", type=str, help="the .safetensors file to write")
    parsed = parser.parse_args(list(args))
    print(f"wrote {export_backbone(parsed.checkpoint, parsed.output)}")


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
    return parser


def probe_command(args: Sequence[str]) -> None:
    """``repfusion probe``: linear-probe a teacher's layers x timesteps and write the best configs."""
    parser = probe_parser()
    config = parser.parse_args(list(args))
    data_config = yaml.safe_load(parser.dump(config))["data"]
    data = parser.instantiate_classes(config).data
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
    )
    for kind, path in result["files"].items():
        print(f"{kind:>15}: {path}")


EXPORT_HELP = (
    "Write the student backbone of a distillation checkpoint as safetensors, in its library's key format "
    "(loads strictly into torchvision, timm and smp encoders)."
)
PROBE_HELP = (
    "Which teacher layer and timestep carry the best features? Fits a streamed linear probe per (layer, "
    "timestep) and for a random-init student, then writes a table, a heatmap and ready-to-run "
    "distillation configs."
)


@dataclass(frozen=True)
class Subcommand:
    """One ``repfusion`` subcommand: its one-line summary and what runs it."""

    summary: str
    run: Callable[[list[str]], None]


def _lightning(name: str) -> Callable[[list[str]], None]:
    return lambda args: run_lightning([name, *args], debug=DEBUG.is_set())


#: Set by ``repfusion --debug``: errors keep their Python traceback.
DEBUG = threading.Event()

SUBCOMMANDS = {
    "fit": Subcommand("train a model: distillation, a teacher, or a downstream task", _lightning("fit")),
    "validate": Subcommand("run one evaluation epoch on the validation split", _lightning("validate")),
    "test": Subcommand("evaluate on the test split", _lightning("test")),
    "predict": Subcommand("run the model's predict_step over the predict split", _lightning("predict")),
    "probe": Subcommand(
        "linear-probe a teacher's layers x timesteps against a random-init student", probe_command
    ),
    "export": Subcommand("write a distilled student backbone as safetensors", export_command),
    "convert-adm": Subcommand(
        "convert an OpenAI guided-diffusion (ADM) checkpoint into a diffusers folder", convert_adm_command
    ),
}


def top_level_parser() -> argparse.ArgumentParser:
    """The parser behind ``repfusion --help``: every subcommand with its summary."""
    parser = argparse.ArgumentParser(
        prog="repfusion",
        description="Distil a diffusion model into a recognition backbone (RepFusion), then fine-tune it.",
        epilog="Each subcommand has its own --help, e.g. `repfusion fit --help`.",
    )
    parser.add_argument("--version", action="version", version=f"repfusion-pl {__version__}")
    parser.add_argument("--debug", action="store_true", help="keep Python tracebacks on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, subcommand in SUBCOMMANDS.items():
        # No help of their own here: `--help` after a subcommand goes to that subcommand's parser.
        commands.add_parser(name, help=subcommand.summary, add_help=False)
    return parser


def main(args: ArgsType | Sequence[str] = None) -> None:
    """Entry point of ``repfusion``: dispatch to the subcommand named first."""
    argv = [str(a) for a in (sys.argv[1:] if args is None else args)]  # type: ignore[union-attr]
    head = 1 + (argv[:1] == ["--debug"])  # the options before the subcommand, and the subcommand
    parsed, rest = top_level_parser().parse_known_args(argv[:head])
    if parsed.debug:
        DEBUG.set()
    else:
        DEBUG.clear()
    SUBCOMMANDS[parsed.command].run([*rest, *argv[head:]])


if __name__ == "__main__":
    main()
