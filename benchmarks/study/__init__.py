"""Studies over the package: teacher, probe, distillation arms and evaluation, as real CLI runs.

Orchestration lives here, beside the benchmarks that use it (`benchmarks/demo.py`,
`benchmarks/quality.py`), not in the package: the package holds the reusable pieces.
"""

from study.comparison import RANDOM_INIT, Comparison, Setting, sampler_arms
from study.pipeline import ensure_teacher, run_study
from study.report import markdown_table, mean_std, write_results
from study.runs import fit_config, merge, write_yaml

__all__ = [
    "RANDOM_INIT",
    "Comparison",
    "Setting",
    "ensure_teacher",
    "fit_config",
    "markdown_table",
    "mean_std",
    "merge",
    "run_study",
    "sampler_arms",
    "write_results",
    "write_yaml",
]
