"""The benchmark scripts run end to end on their smallest settings (speed is theirs to measure,
not the tests'): a script that no longer runs is found here, not by the next person timing."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow


def _run(*args: str) -> str:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_generation_sweep_and_its_figure(tmp_path):
    result, figure = tmp_path / "sweep.json", tmp_path / "bounds.png"
    _run("bench/generate_vs_hf.py", "--smoke", "--vision", "light", "--settings", "sample,beam5", "--batch-sizes", "2",
         "--new-tokens", "3", "--reps", "1", "--json", str(result))
    rows = json.loads(result.read_text())["rows"]
    assert [(r["setting"], r["decode_rows"]) for r in rows] == [("sample", 2), ("beam5", 10)]
    assert all(r["ratio"] > 0 and r["bound_ms_per_token"] > 0 for r in rows) and rows[1]["tokens_equal"] == "2/2"
    _run("bench/plot_generate_sweep.py", str(figure), str(result))
    assert figure.stat().st_size > 0


def test_train_step_bench_measures_memory_at_the_timed_shape(tmp_path):
    result = tmp_path / "step.json"
    _run("bench/train_step.py", "--tiny", "--variants", "vlrm", "--batch", "4", "--micro-batches", "2",
         "--new-tokens", "5", "--remat", "on", "--json", str(result))
    row = json.loads(result.read_text())["rows"][0]
    shape = {"batch": 4, "micro_batches": 2, "new_tokens": 5, "remat": True}
    assert row["memory"]["jax"]["shape"] == shape and row["memory"]["torch"]["shape"] == shape
    assert row["jax"]["peak_bytes"] > 0 and row["torch"]["peak_bytes"] > 0
