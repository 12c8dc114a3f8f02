"""The benchmark's Triton fused-MoE baseline (bench/triton_moe.py, a column of bench/gpu_bench.py) against its
float32 reference, on the CPU under Triton's interpreter; on a GPU, `bench/gpu_session.sh triton` runs the same check
compiled."""
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("triton")


def test_triton_baseline_matches_its_reference():
    script = pathlib.Path(__file__).resolve().parents[2] / "bench" / "triton_moe.py"
    run = subprocess.run([sys.executable, str(script)], env={**os.environ, "TRITON_INTERPRET": "1"},
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "self-check passed" in run.stdout
