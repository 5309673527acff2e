"""The GPU check's short table: read what `gpu_check.sh` wrote into one folder, print and save it.

Usage: ``python benchmarks/gpu_summary.py OUT`` (writes ``OUT/summary.md``). A section that did not
run (or failed) is listed as missing, so the table always says what was measured.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else None


def speed_lines(folder: Path) -> list[str]:
    lines = []
    for path in sorted(folder.glob("speed-*.json")):
        run = json.loads(path.read_text())
        n, rows = run["batch_size"], run["rows"]
        captured = rows.get("3 ours, captured step (compile_step)", {}).get("seconds")
        lines.append(
            f"| speed, batch {n}, {run['precision']} | ours {run['ours_seconds']:.4f} s "
            f"({n / run['ours_seconds']:,.0f} img/s)"
            f"; defaults {rows['3 ours (defaults)']['seconds']:.4f} s"
            + (f"; captured {captured:.4f} s" if captured else "")
            + f" | authors/ours {run['authors_over_ours']:.2f} (target >= 2.5); ours/floor "
            f"{run['ours_over_floor']:.3f} (target <= 1.10) |"
        )
    return lines


def family_lines(folder: Path) -> list[str]:
    run = load(folder, "families.json")
    if run is None:
        return []
    lines = []
    for name, family in run["families"].items():
        step = next(t for row, t in family["rows"].items() if row.startswith("distillation step"))
        lines.append(
            f"| family {name} ({family['image_size']} px), batch {run['batch_size']} | distillation step "
            f"{step['seconds']:.3f} s ({run['batch_size'] / step['seconds']:.1f} img/s) | |"
        )
    return lines


def training_lines(folder: Path) -> list[str]:
    run = load(folder, "teacher-training.json")
    if run is None:
        return []
    rates = "; ".join(f"{name} {row['it_per_s']:.1f} it/s" for name, row in run["rows"].items())
    best = max(row["it_per_s"] for row in run["rows"].values())
    what = f"teacher training, batch {run['batch_size']}, {run['precision']}"
    return [f"| {what} | {rates} | best / 11.2 it/s = {best / 11.2:.1f}x (target >= 5) |"]


def probe_lines(folder: Path) -> list[str]:
    run = load(folder, "probe-speed.json")
    if run is None:
        return []
    grid = f"{run['training_images']:,} images x {len(run['timesteps'])} timesteps"
    measured = f"{run['seconds']:.1f} s ({run['images_per_s']:,.0f} img/s)"
    return [f"| probe, {grid}, {run['precision']} | {measured} | target < 60 s |"]


SECTIONS = {"speed": speed_lines, "teacher families": family_lines, "teacher training": training_lines}
SECTIONS["probe"] = probe_lines


def main() -> None:
    folder = Path(sys.argv[1])
    device = next(
        (json.loads(p.read_text())["environment"]["device"] for p in sorted(folder.glob("*.json"))), "?"
    )
    lines = [f"GPU check on {device}", "", "| what | measured | against the targets |", "|---|---|---|"]
    for section, read in SECTIONS.items():
        found = read(folder)
        lines += found or [f"| {section} | missing (did not run or failed: see its log in {folder}) | |"]
    text = "\n".join(lines) + "\n"
    (folder / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
