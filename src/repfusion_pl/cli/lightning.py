"""The LightningCLI subcommands (fit/validate/test) as ``repfusion`` runs them.

``fit --ckpt_path CKPT`` without a config rebuilds the run from the config stored in CKPT
(`with_checkpoint_config`); a configuration error ends in one message with the fix.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from argparse import ArgumentError
from collections.abc import Sequence
from typing import Any

import yaml
from jsonargparse import Namespace
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

# Imported so that their classes are registered as subclasses for `class_path` resolution.
import repfusion_pl.data  # noqa: F401
import repfusion_pl.distillation  # noqa: F401
import repfusion_pl.probing  # noqa: F401
import repfusion_pl.tasks  # noqa: F401
import repfusion_pl.teachers  # noqa: F401
from repfusion_pl.checkpoints import CONFIG_KEY, AtomicCheckpointIO, CheckpointError, read_checkpoint
from repfusion_pl.cli.errors import (
    ConfigBuildError,
    build_error,
    config_error_hint,
    parse_error_summary,
    unwrap_worker_error,
)
from repfusion_pl.cli.preemption import Preemption
from repfusion_pl.data.target_store import CacheError


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

    def before_instantiate_classes(self) -> None:
        # A second run into the same folder must replace last.ckpt (what task configs and --ckpt_path
        # read), never leave it as the older run's beside a last-v1.ckpt: so for every checkpoint
        # callback that keeps a last.ckpt, the shipped configs' or the user's, no version counter.
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else self.config
        for callback in (config.get("trainer.callbacks") or []) if config is not None else []:
            if keeps_last_checkpoint(callback):
                callback.init_args.enable_version_counter = False

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


def keeps_last_checkpoint(callback: Any) -> bool:
    """Whether a callback of the config is a `ModelCheckpoint` (or subclass) with ``save_last``."""
    class_path = getattr(callback, "class_path", None)
    init_args = getattr(callback, "init_args", None)
    if not isinstance(class_path, str) or init_args is None or not getattr(init_args, "save_last", None):
        return False
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, ModelCheckpoint)


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
        summary = None if debug else parse_error_summary(str(err))
        report = summary or str(err)  # --debug (or a report of another shape) keeps jsonargparse's text
        print(f"repfusion: bad configuration\n{report}\n{config_error_hint(str(err))}", file=sys.stderr)
        raise SystemExit(2) from None
    except (ConfigBuildError, CacheError) as err:
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
