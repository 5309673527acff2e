"""How far the student's probe is above its random bar, in units of the monitor's own noise.

Two things move a probe score without the features changing: which images are scored (a binomial
standard error, ``sqrt(p (1 - p) / n)`` for ``n`` validation images) and which random initialisation
draws the bar (its spread over a few seeds, when the monitor draws more than one). The noise of the
gap is both combined: ``sqrt(se_student^2 + se_bar^2 + spread^2)``.
"""

from __future__ import annotations

import math
from typing import Any


def sampling_error(accuracy: float, images: int) -> float:
    """The binomial standard error of an accuracy measured on ``images`` images."""
    return math.sqrt(max(accuracy * (1.0 - accuracy), 0.0) / max(images, 1))


def verdict(student: float, bar: dict[str, Any], images: int) -> dict[str, float]:
    """The gap student − bar, its noise, and the gap in units of that noise.

    Args:
        student: The student's probe accuracy.
        bar: The monitor's random bar: ``val_acc`` (mean over its inits) and ``std`` (their spread).
        images: Validation images each score was measured on.
    """
    random = float(bar["val_acc"])
    spread = float(bar.get("std", 0.0))
    noise = math.sqrt(sampling_error(student, images) ** 2 + sampling_error(random, images) ** 2 + spread**2)
    gap = student - random
    return {"gap": gap, "noise": noise, "gap_over_noise": gap / noise if noise > 0 else math.inf}


def verdict_line(entry: dict[str, Any], bar: dict[str, Any], images: int) -> str:
    """One line for the end of a run: student, random bar, teacher, and the gap against the noise."""
    found = verdict(float(entry["student"]), bar, images)
    inits = int(bar.get("inits", 1))
    spread = f" ± {bar['std']:.3f} over {inits} inits" if inits > 1 else ""
    teacher = f" | teacher {entry['teacher']:.3f} (t={entry['t']})" if "teacher" in entry else ""
    side = "above" if found["gap"] > 0 else "below"
    return (
        f"representation monitor, last probe: student {entry['student']:.3f} | random bar "
        f"{bar['val_acc']:.3f}{spread}{teacher}: {abs(found['gap']) * 100:.1f} points {side} the bar, "
        f"{abs(found['gap_over_noise']):.1f}x the monitor's noise ({found['noise'] * 100:.1f} points: "
        f"sampling on {images} images and the bar's init spread)"
    )
