"""``repfusion cache``: the teacher once over every training view at a timestep grid, for `CachedTeacher`.

It takes the distillation config that ``repfusion fit`` takes (the same ``--config`` files and
overrides) plus its own ``--cache.*`` options, builds the model and data module from it and writes
the targets that config's losses need. Run again after a stop, it resumes at the first missing shard.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from typing import Literal

from jsonargparse import ArgumentParser

from repfusion_pl.accelerators import resolve_device
from repfusion_pl.cli.lightning import build_cli
from repfusion_pl.data.target_store import CacheError
from repfusion_pl.data.views import ViewSpec
from repfusion_pl.distillation import RepFusionDistillation
from repfusion_pl.distillation.cache_build import build_cache

CACHE_HELP = (
    "Run the teacher of a distillation config once over the training images' views at a grid of "
    "timesteps, and write the targets its losses compare with; then distil with teacher: "
    "{class_path: repfusion_pl.CachedTeacher, init_args: {cache: DIR}}. Takes fit's --config and overrides."
)


def cache_parser() -> ArgumentParser:
    """The ``--cache.*`` options of ``repfusion cache``."""
    parser = ArgumentParser(prog="repfusion cache", description=CACHE_HELP)
    parser.add_argument(
        "--cache.dir", type=str, required=True, help="the cache folder (resumed if it exists)"
    )
    parser.add_argument("--cache.t_grid", type=list[int], required=True, help="timesteps, e.g. [0, 50, 100]")
    parser.add_argument("--cache.flip", type=bool, default=True, help="also cache each image's mirror")
    parser.add_argument("--cache.augmented", type=int, default=0, help="seeded draws of the augmentation")
    parser.add_argument("--cache.seed", type=int, default=0, help="the seed of those draws")
    parser.add_argument("--cache.shard_size", type=int, default=1024, help="images per shard file")
    parser.add_argument("--cache.accelerator", type=Literal["auto", "cpu", "gpu"], default="auto")
    parser.add_argument("--cache.precision", type=Literal["32", "bf16"], default="32")
    return parser


def split_arguments(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """``--cache.*`` options (with their values) apart from the rest, which is fit's config."""
    own: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        takes_value = arg.startswith("--cache.") and "=" not in arg and index + 1 < len(args)
        (own if arg.startswith("--cache.") or arg in ("-h", "--help") else rest).append(arg)
        if takes_value:
            own.append(args[index + 1])
            index += 1
        index += 1
    return own, rest


def cache_command(args: Sequence[str]) -> None:
    """``repfusion cache --config distill.yaml --cache.dir DIR --cache.t_grid [...]``."""
    own, rest = split_arguments(list(args))
    parser = cache_parser()
    options = parser.parse_args(own).cache
    try:
        device = resolve_device(options.accelerator)
    except ValueError as err:
        parser.error(str(err))
    cli = build_cli(rest, run=False)
    # Any data module: `build_cache` refuses one whose images cannot be read by index, saying why.
    if not isinstance(cli.model, RepFusionDistillation) or cli.datamodule is None:
        parser.error(
            "repfusion cache takes a distillation config: model RepFusionDistillation and a data module"
        )
    spec = ViewSpec(options.flip, options.augmented, options.seed)
    command = "repfusion cache " + " ".join(shlex.quote(arg) for arg in args)
    try:
        store = build_cache(
            cli.model, cli.datamodule, options.dir, options.t_grid, spec, command, device, options.precision,
            options.shard_size,
        )  # fmt: skip
    except CacheError as err:
        print(f"repfusion: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    splits = ", ".join(
        f"{name} {info['images']} images x {info['views']} views"
        for name, info in store.manifest["splits"].items()
    )
    teacher = f"{{class_path: repfusion_pl.CachedTeacher, init_args: {{cache: {options.dir}}}}}"
    print(
        f"cached {splits} x {len(options.t_grid)} timesteps in {options.dir}. Distil from it with\n"
        f"  model.init_args.teacher: {teacher}\n"
        f"and a sampler on the grid (FixedTimestep at a grid point, or grid: {options.t_grid})"
    )
