"""Keep every measured figure the README and the manual quote equal to its results file.

Two marks, invisible where Markdown is rendered (GitHub, MkDocs):

* a table: ``<!-- results: NAME.md -->`` ... ``<!-- /results -->`` holds
  ``benchmarks/results/NAME.md`` as it is, less its ``# title`` line;
* a number: ``<!-- fig NAME.json#/a/b/0 | SPEC -->2.71<!-- /fig -->`` holds the value at that JSON
  pointer (RFC 6901: ``/`` between keys, which may hold spaces; ``~1`` for a ``/`` inside one)
  formatted with the Python format ``SPEC`` (``.2f``, ``.1%``, ``,d``). A ratio is two of them:
  ``A.json#/x / B.json#/y``; ``SPEC`` may start with ``x100`` to show a fraction in percent points
  (``x100.1f``).

``python benchmarks/figures.py`` rewrites every mark in README.md and docs/*.md from the files;
``--check`` changes nothing and lists the marks that differ (a test runs it), so a page cannot quote
a figure its JSON does not hold.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TABLE = re.compile(r"(<!-- results: (?P<name>[\w.-]+\.md) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)
FIGURE = re.compile(r"(<!-- fig (?P<expr>.+?) \| (?P<spec>\S+) -->)(?P<body>.*?)(<!-- /fig -->)")
REFERENCE = re.compile(r"^(?P<name>[\w.-]+\.json)#(?P<pointer>/.*)$")


def shown(path: Path) -> str:
    """A path as a message shows it: relative to the repository when inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def pages() -> list[Path]:
    """The pages whose marks are kept: the README and the manual."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@cache
def results_json(path: Path) -> object:
    """A results file, read once."""
    if not path.is_file():
        raise SystemExit(f"a page quotes {shown(path)}, which does not exist; run its benchmark")
    return json.loads(path.read_text())


def table(name: str, results_dir: Path) -> str:
    """A results table's markdown without its leading ``# title`` line."""
    path = results_dir / name
    if not path.is_file():
        raise SystemExit(f"a page quotes {shown(path)}, which does not exist; run its benchmark")
    return re.sub(r"\A# [^\n]*\n+", "", path.read_text()).rstrip("\n") + "\n"


def value_at(reference: str, results_dir: Path) -> float:
    """The number a ``NAME.json#/pointer`` reference names."""
    match = REFERENCE.match(reference.strip())
    if match is None:
        raise SystemExit(f"{reference!r} is not NAME.json#/pointer")
    value = results_json(results_dir / match.group("name"))
    for key in [k.replace("~1", "/").replace("~0", "~") for k in match.group("pointer").split("/")[1:]]:
        try:
            value = value[int(key)] if isinstance(value, list) else value[key]  # type: ignore[index]
        except (KeyError, IndexError, ValueError, TypeError):
            raise SystemExit(f"{reference}: no {key!r} there") from None
    return value  # type: ignore[return-value]


def figure(expression: str, spec: str, results_dir: Path) -> str:
    """A reference, or the ratio of two (``A / B``), formatted by ``spec``."""
    parts = expression.split(" / ")
    value = value_at(parts[0], results_dir)
    if len(parts) == 2:
        value = value / value_at(parts[1], results_dir)
    elif len(parts) > 2:
        raise SystemExit(f"{expression!r}: one reference or the ratio of two")
    if spec.startswith("x100"):
        value, spec = 100 * value, spec[4:]
    return format(value, spec)


def render(text: str, results_dir: Path = RESULTS) -> str:
    """``text`` with every table and figure mark filled from its results file."""
    for opening, mark in (("<!-- fig ", FIGURE), ("<!-- results: ", TABLE)):
        if text.count(opening) != len(mark.findall(text)):  # e.g. a mark wrapped across lines
            raise SystemExit(
                f"a {opening.strip()} mark is malformed or wrapped across lines: keep each on one line"
            )
    text = TABLE.sub(lambda m: m.group(1) + table(m.group("name"), results_dir) + m.group(4), text)
    return FIGURE.sub(
        lambda m: m.group(1) + figure(m.group("expr"), m.group("spec"), results_dir) + m.group(5),
        text,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a mark differs")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    stale = []
    for page in pages():
        text = page.read_text()
        rendered = render(text, args.results_dir)
        if rendered != text:
            stale.append(str(page.relative_to(ROOT)))
            if not args.check:
                page.write_text(rendered)
    if args.check and stale:
        print(
            f"figures differ from benchmarks/results in {stale}: run python benchmarks/figures.py",
            file=sys.stderr,
        )
        sys.exit(1)
    print(("rewrote " if stale else "every figure is current") + (", ".join(stale) if stale else ""))


if __name__ == "__main__":
    main()
