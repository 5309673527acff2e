"""Markdown tables of the speed benchmarks' committed JSON, rendered without measuring anything.

``benchmarks/speed.py`` and ``benchmarks/cache_tradeoff.py`` write JSON only; this writes each file's
table next to it as ``<name>.md``, which the manual quotes through ``<!-- results: NAME.md -->``
marks (``benchmarks/figures.py``):

* the step's speed (``speed.py``: ``speed.json``): each row's median, images/s and peak memory, the
  compute floor and the two ratios;
* the teacher families (``speed.py --families``: ``speed-families.json``);
* the cache's trade-off (``cache_tradeoff.py --families``: ``cache-tradeoff.json``).

Usage: ``python benchmarks/result_tables.py [F.json ...]`` (default: those three in
``benchmarks/results``); ``--check`` writes nothing and exits 1 when a table differs from its JSON.
Only ``json`` is imported, so it runs in a second.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT = ("speed.json", "speed-families.json", "cache-tradeoff.json")
FAMILIES = {
    "adm64": "ADM-64 (guided-diffusion `imagenet64-cond`)",
    "sd15": "SD-1.5 (UNet + VAE)",
    "dit-xl2": "DiT-XL/2-256 (transformer + VAE)",
}
STEPS = ("live distillation step", "cached distillation step", "student-only supervised step")


def machine(result: dict) -> str:
    """Where a result was measured, from its ``environment``."""
    env = result.get("environment", {})
    return f"{env.get('device', '?')}, {env.get('threads', '?')} threads, torch {env.get('torch', '?')}"


def speed(result: dict) -> list[str]:
    """``speed.py``'s table: every row, the floor, and the ratios under it."""
    batch = result["batch_size"]

    def row(label: str, seconds: float, peak: str) -> str:
        return f"| {label} | {seconds:.3f} | {batch / seconds:.0f} | {peak} |"

    lines = ["| measurement | median s | img/s | peak MB |", "|---|---:|---:|---:|"]
    data = {k: v for k, v in result["rows"].items() if k.startswith("data")}
    for name, timing in result["rows"].items():
        if name in data:
            continue
        number, _, rest = name.partition(" ")
        label = f"({number}) {rest}" if number.isdigit() else name
        lines.append(row(label, timing["seconds"], f"{timing['peak_mb']:.0f}"))
    floor = "(4) compute floor: fastest truncated teacher + fastest student step, timed apart"
    lines.append(row(floor, result["floor_seconds"], "–"))
    lines += [f"| {name} | {timing['seconds']:.3f} | – | – |" for name, timing in data.items()]
    return [
        *lines,
        "",
        f"(2) / (3) = **{result['authors_over_ours']:.2f}**: the authors' step against ours; "
        f"(3) / (4) = **{result['ours_over_floor']:.3f}**: ours against its floor. Median after warm-up, "
        f"batch {batch}, {result['image_size']} px, precision {result['precision']}; {machine(result)}. "
        "Peak MB: on a CPU the rise of the resident set (a lower bound: memory freed by an earlier row is "
        "reused), on CUDA `max_memory_allocated`.",
    ]


def families(result: dict) -> list[str]:
    """``speed.py --families``' table: per family, its rows."""
    batch = result["batch_size"]
    lines = [
        f"| family | image | teacher params | measurement | median s (batch {batch}) | img/s |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for name, family in result["families"].items():
        params = f"{family['teacher_params_m']:.1f} M"
        first = [FAMILIES.get(name, name), f"{family['image_size']} px", params]
        for measurement, timing in family["rows"].items():
            seconds = timing["seconds"]
            cells = [*first, measurement, f"{seconds:.3f}", f"{batch / seconds:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
            first = ["", "", ""]
    return [*lines, "", f"Median after warm-up, random weights; {machine(result)}."]


def cache_tradeoff(result: dict) -> list[str]:
    """``cache_tradeoff.py``'s table: the three steps per teacher and their ratios."""
    lines = [
        "| teacher | batch | live step | cached step | student-only step | cached / student-only "
        "| live / cached |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    teachers = {
        "fashion": ("shipped Fashion-MNIST DDPM, its best cell (5 layers, t = 0), 32 px", result["batch"]),
        "sd15": ("SD-1.5 (UNet + VAE), its middle layer, 256 px", 2),
        "dit-xl2": ("DiT-XL/2-256 (transformer + VAE), middle block, 256 px", 2),
    }
    for key, (label, batch) in teachers.items():
        if key not in result:
            continue
        live, cached, student = (result[key][step]["seconds"] for step in STEPS)
        lines.append(
            f"| {label} | {batch} | {live:.3f} s | {cached:.3f} s | {student:.3f} s "
            f"| **{cached / student:.2f}** | {live / cached:.1f} |"
        )
    return [*lines, "", f"Median after warm-up, ResNet-18 student; {machine(result)}."]


def render(path: Path) -> str:
    """The markdown table of one results JSON, with a ``# title`` line."""
    result = json.loads(path.read_text())
    if "families" in result:
        body = families(result)
    elif "floor_seconds" in result:
        body = speed(result)
    elif all(key in result for key in ("fashion", "batch")):
        body = cache_tradeoff(result)
    else:
        raise SystemExit(f"{path}: not a result of speed.py or cache_tradeoff.py")
    return "\n".join([f"# {path.stem}", "", *body]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*", type=Path, default=[RESULTS / name for name in DEFAULT])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a table differs")
    args = parser.parse_args()
    stale = []
    for path in args.files:
        table, out = render(path), path.with_suffix(".md")
        if not out.is_file() or out.read_text() != table:
            stale.append(out.name)
            if not args.check:
                out.write_text(table)
    if args.check and stale:
        sys.exit(f"tables differ from their JSON: {stale}; run python benchmarks/result_tables.py")
    print(("wrote " + ", ".join(stale)) if stale else "every table is current")


if __name__ == "__main__":
    main()
