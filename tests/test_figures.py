"""The README and the manual quote measured figures only through marks that their results files fill."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import figures  # noqa: E402


def test_every_quoted_figure_and_table_equals_its_results_file():
    stale = [p.name for p in figures.pages() if figures.render(p.read_text()) != p.read_text()]
    assert stale == [], f"run python benchmarks/figures.py: {stale} quote figures their JSON does not hold"
    marked = sum(len(figures.FIGURE.findall(p.read_text())) for p in figures.pages())
    assert marked >= 8


def test_a_figure_is_a_pointer_a_ratio_or_percent_points_and_a_table_loses_its_title(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"rows": {"x / y": [0.5, {"s": 3.0}]}, "b": 1.5}))
    (tmp_path / "t.md").write_text("# t\n\n| a |\n|---|\n")
    page = (
        "<!-- fig a.json#/rows/x ~1 y/1/s | .2f -->?<!-- /fig --> "
        "<!-- fig a.json#/rows/x ~1 y/1/s / a.json#/b | .1f -->?<!-- /fig --> "
        "<!-- fig a.json#/rows/x ~1 y/0 | x100.1f -->?<!-- /fig -->\n"
        "<!-- results: t.md -->\nold\n<!-- /results -->"
    )
    assert figures.render(page, tmp_path) == (
        "<!-- fig a.json#/rows/x ~1 y/1/s | .2f -->3.00<!-- /fig --> "
        "<!-- fig a.json#/rows/x ~1 y/1/s / a.json#/b | .1f -->2.0<!-- /fig --> "
        "<!-- fig a.json#/rows/x ~1 y/0 | x100.1f -->50.0<!-- /fig -->\n"
        "<!-- results: t.md -->\n| a |\n|---|\n<!-- /results -->"
    )
    with pytest.raises(SystemExit, match=r"a.json#/rows/z: no 'z' there"):
        figures.render("<!-- fig a.json#/rows/z | .1f -->?<!-- /fig -->", tmp_path)
    with pytest.raises(SystemExit, match=r"quotes .*missing.json, which does not exist"):
        figures.render("<!-- fig missing.json#/a | .1f -->?<!-- /fig -->", tmp_path)


def test_the_speed_tables_equal_their_json():
    import result_tables

    for name in result_tables.DEFAULT:
        path = result_tables.RESULTS / name
        assert path.with_suffix(".md").read_text() == result_tables.render(path), name
