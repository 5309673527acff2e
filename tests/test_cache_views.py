"""benchmarks/cache_views.py end to end with --dry-run: live teacher against caches of 1 and 8 views."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT
from test_quality import fake_fashion  # noqa: F401  (the fixture)


# In `make test-all` (30 s): the cache itself is tested in tests/test_cache.py; this is the study script.
@pytest.mark.slow
def test_the_views_study_dry_run_builds_each_cache_and_compares_it_with_the_live_teacher(
    fake_fashion,  # noqa: F811
    tmp_path,
):
    results, work = tmp_path / "results", tmp_path / "work"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "cache_views.py"), "--dry-run", "--views", "1", "8",
        "--root", str(fake_fashion), "--results-dir", str(results), "--work-dir", str(work),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((results / "cache-views-dry-run.json").read_text())
    assert [row["arm"] for row in result["summary"]] == ["live teacher", "cache, 1 view", "cache, 8 views"]
    assert set(result["cache_build_seconds"]) == {"cache, 1 view", "cache, 8 views"}
    for views in (1, 8):
        manifest = json.loads((work / f"cache-{views}" / "manifest.json").read_text())
        assert manifest["complete"] and manifest["splits"]["train"]["views"] == views
    probe = "linear probe, all labels"
    for row in result["summary"]:
        assert row["linear_probe"] == result["scores"][row["arm"]][probe][0]
        assert 0 <= row["plateau_epoch"] <= result["epochs"] and row["best"] >= row["last"]
        assert len(result["distillation"][row["arm"]]["monitor"]) == result["epochs"] + 1
    assert "| cache, 8 views |" in (results / "cache-views-dry-run.md").read_text()
    assert (results / "cache-views-dry-run-monitor.png").read_bytes()[:4] == b"\x89PNG"
