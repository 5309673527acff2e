"""The ``repfusion`` command: LightningCLI over every model and data module of the package."""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import sys
from argparse import ArgumentError
from collections.abc import Sequence
from typing import Any

import torch
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

# Imported so that their classes are registered as subclasses for `class_path` resolution.
import repfusion_pl.data  # noqa: F401
import repfusion_pl.distill  # noqa: F401
import repfusion_pl.tasks  # noqa: F401
import repfusion_pl.teacher_training  # noqa: F401
from repfusion_pl.checkpoint_io import AtomicCheckpointIO
from repfusion_pl.probe import print_probe_table, run_probe, write_distill_configs, write_report
from repfusion_pl.resume import RecordConfigCallback, with_checkpoint_config
from repfusion_pl.students import Student
from repfusion_pl.weights import export_backbone


class RepFusionCLI(LightningCLI):
    """LightningCLI whose ``--ckpt_path`` never silently overrides the given config.

    Stock LightningCLI replaces the model config with the checkpoint's hyperparameters, so a changed
    student or teacher flag would be ignored without a word. Here the config comes from the
    command line (or, with no ``--config``, from the checkpoint: `with_checkpoint_config`), and the
    distillation module refuses a checkpoint it does not match (`repfusion_pl.distill.check_compatible`).
    """

    def _parse_ckpt_path(self) -> None:
        return

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        # Atomic local checkpoints unless the config brings its own CheckpointIO.
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super()._instantiate_trainer(config, callbacks)


def build_cli(args: ArgsType | Sequence[str] = None, run: bool = True) -> LightningCLI:
    """Build (and by default run) the LightningCLI; ``args`` replaces ``sys.argv`` for tests."""
    return RepFusionCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,  # type: ignore[arg-type]
        run=run,
        save_config_callback=RecordConfigCallback,
        parser_kwargs={"exit_on_error": False},  # main() adds the fix to jsonargparse's message
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


def export_command(args: Sequence[str]) -> None:
    """``repfusion export CHECKPOINT OUTPUT.safetensors``: write the student backbone for reuse."""
    parser = ArgumentParser(
        prog="repfusion export",
        description="Write the student backbone of a distillation checkpoint as safetensors, in its "
        "library's key format (loads strictly into torchvision, timm and smp encoders).",
    )
    parser.add_argument("checkpoint", type=str, help="a RepFusionDistillation checkpoint (.ckpt)")
    parser.add_argument("output", type=str, help="the .safetensors file to write")
    parsed = parser.parse_args(list(args))
    path = export_backbone(parsed.checkpoint, parsed.output)
    print(f"wrote {path}")


def probe_command(args: Sequence[str]) -> None:
    """``repfusion probe``: linear-probe a teacher's layers x timesteps and write the best configs."""
    parser = ArgumentParser(
        prog="repfusion probe",
        description="Which teacher layer and timestep carry the best features? Fits a streamed linear probe "
        "per (layer, timestep) and for a random-init student, then writes a table, a heatmap and "
        "ready-to-run distillation configs.",
    )
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument(
        "--teacher", type=str, required=True, help="hub id, diffusers folder or teacher .ckpt"
    )
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    parser.add_argument("--num_classes", type=int | None, default=None, help="default: data.num_classes")
    parser.add_argument("--layers", type=list[str] | None, default=None, help="default: one per UNet level")
    parser.add_argument("--timesteps", type=list[int], default=[0, 25, 50, 100, 200, 400, 700, 999])
    parser.add_argument("--student.arch", type=str, default="resnet18")
    parser.add_argument("--student.stem", type=str, default="cifar")
    parser.add_argument("--out_dir", type=str, default="artifacts/probe")
    parser.add_argument("--seed", type=int, default=0)
    config = parser.parse_args(list(args))
    data_config = yaml.safe_load(parser.dump(config))["data"]
    data = parser.instantiate_classes(config).data
    data.setup("fit")
    loaders = {"train": data.train_dataloader(), "val": data.val_dataloader()}
    try:
        loaders["test"] = data.test_dataloader()
    except Exception:  # a data module without a test split: report validation accuracy twice
        loaders["test"] = loaders["val"]
    num_classes = config.num_classes or getattr(data, "num_classes", None)
    if not num_classes:
        parser.error("give --num_classes: the data module has no num_classes attribute")
    torch.manual_seed(config.seed)
    in_channels = next(iter(loaders["train"]))[0].shape[1]
    student = Student(config.student.arch, stem=config.student.stem, in_channels=in_channels)
    result = run_probe(config.teacher, loaders, num_classes, config.timesteps, config.layers, student)
    paths = write_report(result, config.out_dir)
    student_spec = {"arch": config.student.arch, "stem": config.student.stem, "in_channels": in_channels}
    paths.update(write_distill_configs(result, data_config, student_spec, num_classes, config.out_dir))
    print_probe_table(result)
    for kind, path in paths.items():
        print(f"{kind:>15}: {path}")


#: Modules whose classes a config usually names; near matches for a mistyped class_path come from them.
CLASS_PATH_MODULES = (
    "repfusion_pl",
    "repfusion_pl.data",
    "repfusion_pl.tasks",
    "torch.optim",
    "torch.optim.lr_scheduler",
    "lightning.pytorch.callbacks",
    "lightning.pytorch.loggers",
)


def _known_class_paths() -> list[str]:
    paths = []
    for name in CLASS_PATH_MODULES:
        module = importlib.import_module(name)
        paths += [f"{name}.{attr}" for attr, value in vars(module).items() if inspect.isclass(value)]
    return paths


def config_error_hint(message: str) -> str:
    """How to fix a config error: near matches for an unknown class_path, else where to see the schema."""
    hints = []
    known = _known_class_paths()
    for path in dict.fromkeys(re.findall(r"class_path '([\w.]+)'", message)):
        if path in known:
            continue
        close = difflib.get_close_matches(path, known, n=3, cutoff=0.6)
        close = close or difflib.get_close_matches(
            path.rsplit(".", 1)[-1], [k.rsplit(".", 1)[-1] for k in known], n=3, cutoff=0.6
        )
        if close:
            hints.append(f"unknown class_path {path!r}: did you mean {' or '.join(map(repr, close))}?")
        else:
            hints.append(
                f"unknown class_path {path!r}: give an importable class, e.g. repfusion_pl.FixedTimestep"
            )
    hints.append(
        "Every accepted key, its type and default: repfusion fit --config <your.yaml> --print_config "
        "(or --help)."
    )
    return "How to fix:\n" + "\n".join(f"  - {hint}" for hint in hints)


def main(args: ArgsType | Sequence[str] = None) -> None:
    """Entry point of ``repfusion``.

    Subcommands: LightningCLI's ``fit``, ``validate``, ``test``, ``predict``, plus ``export`` and
    ``probe``. ``fit --ckpt_path CKPT`` alone resumes the run with the config stored in CKPT.
    """
    argv = [str(a) for a in (sys.argv[1:] if args is None else args)]  # type: ignore[union-attr]
    if argv[:1] == ["export"]:
        export_command(argv[1:])
    elif argv[:1] == ["probe"]:
        probe_command(argv[1:])
    else:
        try:
            build_cli(with_checkpoint_config(argv))
        except ArgumentError as err:
            print(f"repfusion: bad configuration\n{err}\n{config_error_hint(str(err))}", file=sys.stderr)
            raise SystemExit(2) from None


if __name__ == "__main__":
    main()
