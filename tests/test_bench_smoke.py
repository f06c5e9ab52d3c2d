"""Smoke test of the benchmark suite: the CPU quick path on one tiny shape runs end to end and every column it times
computes the conv (checked against the float32 conv inside the bench), and the rewrite really ran.

The bench sets process-wide Dynamo and Inductor settings (bench/config.py), so it runs in a process of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_cpu_quick_tiny_shape_runs_and_checks_every_column(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--device",
            "cpu",
            "--quick",
            "--shapes",
            "tiny",
            "--no-models",
            "--no-tokens",
            "--variants",
            "conv,rw_backend,floor",
            "--rep-ms",
            "5",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    by_variant = {(r["variant"], r["mode"]): r for r in results}
    assert set(by_variant) == {(v, m) for v in ("conv", "rw_backend", "floor") for m in ("fwd", "fwd+bwd")}
    for row in results:
        assert "error" not in row, row
        assert row["ok"] and row["err"] < 1e-5, row
        assert row["ms"] > 0
    assert by_variant[("rw_backend", "fwd")]["rewritten"] >= 1
    assert by_variant[("conv", "fwd")]["rewritten"] == 0
    text = (tmp_path / "results.md").read_text()
    assert "| tiny " in text and "## Targets" in text
    assert "rw_backend" in done.stdout
