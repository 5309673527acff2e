"""The ``repfusion`` command line: LightningCLI subcommands, probe, export, convert-adm, and their errors.

Nothing else in the package imports this: it sits on top of everything.
"""

from repfusion_pl.cli.lightning import RepFusionCLI, build_cli, run_lightning, with_checkpoint_config
from repfusion_pl.cli.main import SUBCOMMANDS, main, top_level_parser

__all__ = [
    "SUBCOMMANDS",
    "RepFusionCLI",
    "build_cli",
    "main",
    "run_lightning",
    "top_level_parser",
    "with_checkpoint_config",
]
