"""The ``repfusion`` command: LightningCLI over every model and data module of the package."""

from __future__ import annotations

from collections.abc import Sequence

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningCLI

# Imported so that their classes are registered as subclasses for `class_path` resolution.
import repfusion_pl.data  # noqa: F401
import repfusion_pl.distill  # noqa: F401
import repfusion_pl.teacher_training  # noqa: F401


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


def main(args: ArgsType | Sequence[str] = None) -> None:
    """Entry point of ``repfusion``, e.g. ``repfusion fit --config configs/distill.yaml``."""
    build_cli(args)


if __name__ == "__main__":
    main()
