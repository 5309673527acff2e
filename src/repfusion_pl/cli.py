"""The ``repfusion`` command: LightningCLI over every model and data module of the package."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningCLI

# Imported so that their classes are registered as subclasses for `class_path` resolution.
import repfusion_pl.data  # noqa: F401
import repfusion_pl.distill  # noqa: F401
import repfusion_pl.tasks  # noqa: F401
import repfusion_pl.teacher_training  # noqa: F401
from repfusion_pl.weights import export_backbone


def build_cli(args: ArgsType | Sequence[str] = None, run: bool = True) -> LightningCLI:
    """Build (and by default run) the LightningCLI; ``args`` replaces ``sys.argv`` for tests."""
    return LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,  # type: ignore[arg-type]
        run=run,
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


def main(args: ArgsType | Sequence[str] = None) -> None:
    """Entry point of ``repfusion``.

    Subcommands: LightningCLI's ``fit``, ``validate``, ``test``, ``predict``, plus ``export``.
    """
    argv = [str(a) for a in (sys.argv[1:] if args is None else args)]  # type: ignore[union-attr]
    if argv[:1] == ["export"]:
        export_command(argv[1:])
    else:
        build_cli(argv)


if __name__ == "__main__":
    main()
