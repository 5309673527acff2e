"""MkDocs hooks of the manual (``hooks:`` in mkdocs.yml)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

#: Figures the manual shows, served from the benchmarks' results folder (not copied into docs/).
RESULTS = Path(__file__).resolve().parent / "benchmarks" / "results"
SHOWN = (
    "policy-landscape.png",
    "policy-settle.png",
    "policy-distill.png",
    "quality-cpu.png",
    "quality-cpu-monitor.png",
    "main-job.png",
)

_CODE_SPAN = re.compile(r"`[^`\n]*`")


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    r"""Drop the backslash of ``\|`` inside code spans of table rows.

    GitHub needs a pipe in a table cell escaped even inside backticks; Python-Markdown splits no cell
    at a pipe inside backticks and would show the backslash. The pages stay readable on GitHub.
    """

    def unescape(span: re.Match[str]) -> str:
        return span.group(0).replace("\\|", "|")

    return "\n".join(
        _CODE_SPAN.sub(unescape, line) if line.lstrip().startswith("|") else line
        for line in markdown.split("\n")
    )


def on_files(files: Files, config: Any, **kwargs: Any) -> Files:
    """Serve the shown result figures as ``results/<name>`` pages' images (a missing one fails the build)."""
    for name in SHOWN:
        files.append(File.generated(config, f"results/{name}", abs_src_path=str(RESULTS / name)))
    return files
