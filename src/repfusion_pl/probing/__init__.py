"""Probing: how good are a teacher's (or a student's) features for recognition, before and while distilling.

`probe_teacher` (behind ``repfusion probe``) scores every teacher layer x timestep with a streamed
ridge classifier against a random-init student, and writes a report and ready distillation configs
(`repfusion_pl.probing.report`); `RepresentationMonitor` runs the same probe on the student during
distillation.
"""

from repfusion_pl.probing.monitor import RepresentationMonitor
from repfusion_pl.probing.probe import (
    best_single_layer,
    candidate_layers,
    default_layer_sets,
    probe_teacher,
    run_probe,
    split_loaders,
)
from repfusion_pl.probing.ridge import (
    RIDGE_STRENGTHS,
    LayerProbes,
    StreamingRidge,
    fit_ridge_probes,
    pooled_features,
    probe_student,
)

__all__ = [
    "RIDGE_STRENGTHS",
    "LayerProbes",
    "RepresentationMonitor",
    "StreamingRidge",
    "best_single_layer",
    "candidate_layers",
    "default_layer_sets",
    "fit_ridge_probes",
    "pooled_features",
    "probe_student",
    "probe_teacher",
    "run_probe",
    "split_loaders",
]
