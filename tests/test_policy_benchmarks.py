"""benchmarks/policy_landscape.py and policy_settle.py end to end with --dry-run, on made-up Fashion-MNIST."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT
from test_quality import fake_fashion  # noqa: F401  (the fixture)


def bench(script: str, *args: str, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "benchmarks" / script), "--dry-run", "--setups", "fashion", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=900)


# In `make test-all` (30 s): the settle logic is tested in tests/test_policy_settle.py; these are the scripts.
@pytest.mark.slow
def test_the_landscape_then_the_settle_runs_write_their_tables(fake_fashion, tmp_path):  # noqa: F811
    shared = [
        "--root",
        str(fake_fashion),
        "--results-dir",
        str(tmp_path),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    done = bench("policy_settle.py", *shared, cwd=tmp_path)
    assert done.returncode != 0 and "run benchmarks/policy_landscape.py first" in done.stderr
    done = bench("policy_landscape.py", *shared, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    landscape = json.loads((tmp_path / "policy-landscape-dry-run.json").read_text())
    for read in ("head", "targets"):  # the fashion setup distils five layers: both reads are measured
        rows = landscape["setups"]["fashion"][read]
        assert set(rows) == {"task head", "least squares", "contrastive", "contrastive, whole batch"}
        for row in rows.values():
            assert row["grid"] == [0, 500, 999] and len(row["mean"]) == len(row["stderr"]) == 3
            assert row["best_t"] in row["top_region"]
        assert len(rows["contrastive"]["minority"]) > 0 and "minority" not in rows["task head"]
    done = bench("policy_settle.py", *shared, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    settle = json.loads((tmp_path / "policy-settle-dry-run.json").read_text())
    block = settle["setups"]["fashion"]["task head"]
    shipped = block["settings"]["grid 10, normalised (shipped)"]
    assert shipped["seeds"] == 2 and len(shipped["share"]) == 2 and len(shipped["t"]) == 2
    assert all(0 <= share <= 1 for share in shipped["share"])
    assert "| grid 10, normalised (shipped) |" in (tmp_path / "policy-settle-dry-run.md").read_text()
    assert (tmp_path / "policy-settle-dry-run.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "policy-landscape-dry-run.png").read_bytes()[:4] == b"\x89PNG"
