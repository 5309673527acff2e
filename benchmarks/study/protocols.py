"""Choosing a fine-tuning protocol on the validation split, one for every backbone of a study.

Per fine-tuning column, each candidate protocol (a `FineTuneProtocol` and the run's length, as
classification-config overrides) fine-tunes random init and the first student of every arm once
(the first fine-tuning seed); the candidate with the best mean validation accuracy over those
backbones is chosen, and then every backbone, random init included, is evaluated on the test split
with it. The test split never takes part in the choice.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from study.runs import merge

#: What a validation run adds to a column's config: validate once, after the last epoch.
VALIDATE_AT_END = {"limit_val_batches": 1.0, "num_sanity_val_steps": 0}


def validation_overrides(candidate: dict, epochs: int) -> dict:
    """The candidate's overrides plus validation after the last of ``epochs`` (not every epoch)."""
    trainer = {**VALIDATE_AT_END, "check_val_every_n_epoch": epochs}
    return {**candidate, "trainer": {**candidate.get("trainer", {}), **trainer}}


def choose_protocol(
    candidates: dict[str, dict],
    backbones: dict[str, Path | None],
    validate: Callable[[str, Path | None, str, dict], float],
) -> tuple[str, dict[str, dict[str, float]]]:
    """The candidate with the best mean validation accuracy over ``backbones``, and every score.

    Args:
        candidates: Protocol name -> classification-config overrides.
        backbones: Arm name -> the weights fine-tuned (``None``: random init).
        validate: ``(arm, weights, candidate name, overrides) -> validation accuracy``.
    """
    scores = {
        name: {arm: validate(arm, weights, name, overrides) for arm, weights in backbones.items()}
        for name, overrides in candidates.items()
    }
    chosen = max(scores, key=lambda name: statistics.fmean(scores[name].values()))
    return chosen, scores


def choose_protocols(comparison: Any, students: dict[str, list[Path | None]], bar: tqdm) -> dict[str, dict]:
    """Per column of a `Comparison` with candidates, the protocol chosen on validation.

    The comparison's settings are updated in place: each column then fine-tunes with its choice.
    """
    selection: dict[str, dict] = {}
    first = {arm: runs[0] for arm, runs in students.items()}
    columns = {setting.name for setting in comparison.settings if setting.classify is not None}
    unknown = set(comparison.protocols or {}) - columns
    if unknown:
        raise ValueError(
            f"protocols for {sorted(unknown)}, which are not fine-tuning columns: {sorted(columns)}"
        )
    for index, setting in enumerate(comparison.settings):
        candidates = (comparison.protocols or {}).get(setting.name)
        if not candidates or setting.classify is None:
            continue
        validate = partial(validate_protocol, comparison, setting, bar)
        chosen, scores = choose_protocol(candidates, first, validate)
        selection[setting.name] = {"chosen": chosen, "seed": comparison.seeds[0], "validation": scores}
        classify = merge(setting.classify, candidates[chosen])
        comparison.settings[index] = dataclasses.replace(setting, classify=classify)
    return selection


def validate_protocol(
    comparison: Any, setting: Any, bar: tqdm, arm: str, weights: Path | None, name: str, overrides: dict
) -> float:
    """Validation accuracy of one backbone fine-tuned under one candidate protocol (the first seed)."""
    bar.set_postfix_str(f"choose: {setting.name} | {name} | {arm}")
    config = merge(merge(comparison.classify_base, setting.classify), overrides)
    protocol = (name, validation_overrides(overrides, int(config["trainer"]["max_epochs"])))
    score = comparison.evaluate(arm, weights, setting, comparison.seeds[0], protocol)
    bar.update()
    return score


def selection_table(selection: dict[str, dict]) -> str:
    """Markdown: per column, each candidate's validation accuracy per backbone and which was chosen."""
    lines = []
    for column, record in selection.items():
        arms = list(next(iter(record["validation"].values())))
        lines += [
            f"\n**{column}**: chosen *{record['chosen']}* (validation accuracy, %, fine-tuning seed "
            f"{record['seed']}; the validation split is fully labelled, and an LP-FT candidate trains "
            "its head-only epochs on top of the column's)\n",
            "| protocol | " + " | ".join(arms) + " | mean |",
            "|" + "---|" * (len(arms) + 2),
        ]
        for name, scores in record["validation"].items():
            cells = [f"{100 * scores[arm]:.1f}" for arm in arms]
            mean = f"{100 * statistics.fmean(scores.values()):.1f}"
            bold = name == record["chosen"]
            lines.append(f"| {'**' + name + '**' if bold else name} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines)
