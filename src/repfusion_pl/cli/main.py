"""The ``repfusion`` command: LightningCLI's fit/validate/test, plus probe, export, embed, cache, convert-adm.

``repfusion --help`` lists every subcommand; each has its own ``--help``.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lightning.pytorch.cli import ArgsType

from repfusion_pl._version import __version__
from repfusion_pl.cli.cache import cache_command
from repfusion_pl.cli.commands import export_command, probe_command
from repfusion_pl.cli.embed import embed_command
from repfusion_pl.cli.lightning import run_lightning
from repfusion_pl.cli.optimize import optimize_command
from repfusion_pl.teachers.adm import convert_adm_command


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
    "probe": Subcommand(
        "linear-probe a teacher's layers x timesteps against a random-init student", probe_command
    ),
    "export": Subcommand(
        "write a distilled student backbone as safetensors, or a Hub folder with a model card", export_command
    ),
    "embed": Subcommand(
        "run a distilled student over a folder of images: embeddings.npy + index.csv", embed_command
    ),
    "cache": Subcommand(
        "run a teacher once over the training views at a timestep grid, for CachedTeacher", cache_command
    ),
    "optimize": Subcommand(
        "write an image folder or Hugging Face dataset as an optimized LitData dataset, for streaming",
        optimize_command,
    ),
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
