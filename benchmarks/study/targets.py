"""The quality study's targets, checked against its summary: which hold, and by how much one misses.

Two targets, in the columns where they are set (the linear probe and 100 labels per class):

- the best fixed-t arm beats random init by more than 2σ;
- the policy arm reaches the best fixed-t arm's mean less 1σ.

σ is the larger spread of the two arms compared (over fine-tuning and distillation seeds), as in
`study.report.summary`. Other columns are reported, with no target.
"""

from __future__ import annotations

from typing import Any

BASELINE = "random init"
POLICY = "policy (REINFORCE)"
TARGET_COLUMNS = ("linear probe, all labels", "100 labels/class")


def best_fixed_arm(summary: dict[str, dict[str, dict[str, float]]], column: str) -> str | None:
    """The fixed-t arm (``fixed t=...``) with the highest mean in ``column``; None without one."""
    fixed = [arm for arm in summary if arm.startswith("fixed t=") and column in summary[arm]]
    return max(fixed, key=lambda arm: summary[arm][column]["mean"], default=None)


def check_targets(summary: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    """One row per target and column that the summary's arms allow: measured, needed, held."""
    rows: list[dict[str, Any]] = []
    for column in TARGET_COLUMNS:
        fixed = best_fixed_arm(summary, column)
        if fixed is None:
            continue
        best = summary[fixed][column]
        if "gap_sigma" in best:
            rows.append({
                "target": f"{fixed} beats {BASELINE} by more than 2σ",
                "column": column,
                "measured": f"+{best['gap']:.1f} points = {best['gap_sigma']:.1f}σ",
                "held": best["gap_sigma"] > 2,
                "short_by_sigma": round(max(0.0, 2 - best["gap_sigma"]), 2),
            })  # fmt: skip
        if POLICY in summary and column in summary[POLICY]:
            policy = summary[POLICY][column]
            sigma = max(policy["std"], best["std"])
            needed = best["mean"] - sigma
            rows.append({
                "target": f"{POLICY} ≥ {fixed} − 1σ",
                "column": column,
                "measured": f"{policy['mean']:.1f} vs {best['mean']:.1f} − {sigma:.1f} = {needed:.1f}",
                "held": policy["mean"] >= needed,
                "short_by_points": round(max(0.0, needed - policy["mean"]), 2),
            })  # fmt: skip
    return rows


def targets_table(rows: list[dict[str, Any]]) -> str:
    """The rows of `check_targets` as a markdown table."""
    lines = ["| target | column | measured | held |", "|---|---|---|---|"]
    for row in rows:
        short = row.get("short_by_points") or row.get("short_by_sigma")
        unit = "points" if "short_by_points" in row else "σ"
        held = "yes" if row["held"] else f"**no**: short by {short:.1f} {unit}"
        lines.append(f"| {row['target']} | {row['column']} | {row['measured']} | {held} |")
    return "\n".join(lines)
