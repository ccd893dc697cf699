"""benchmarks/gpu_check.sh's own logic, on the CPU: its dry run goes through every stage and prints one table, and
a failing stage stops it there with that stage's output."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STAGES = ["install", "pytest -m gpu", "bench_leq eager", "bench_leq compile", "bench_leq compile+cudagraphs",
          "bench_world_model", "pointmaze data", "leq_state run"]


def run(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "--dry-run"], env={**os.environ, "OMP_NUM_THREADS": "1", **env},
                          capture_output=True, text=True, timeout=900)


def table(stdout: str) -> dict:
    """{stage: (status, key figure)} from the printed table."""
    rows = {}
    for line in stdout.splitlines():
        for stage in STAGES:
            if line.startswith(stage + " ") and line[len(stage):].split()[0] in ("ok", "FAILED", "skipped"):
                status, seconds, *figure = line[len(stage):].split(maxsplit=2)
                rows[stage] = (status, figure[0] if figure else "")
    return rows


def test_the_dry_run_goes_through_every_stage_and_prints_one_table():
    result = run({})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = table(result.stdout)
    assert list(rows) == STAGES
    assert rows["install"][0] == "skipped" and all(status == "ok" for status, _ in list(rows.values())[1:])
    assert "skipped" in rows["pytest -m gpu"][1]  # the gpu tests skip without CUDA
    assert "steps/s" in rows["bench_leq eager"][1] and "s/epoch" in rows["bench_world_model"][1]
    assert rows["pointmaze data"][1] == "read back: 2000 transitions"
    assert "final score over 2 episodes" in rows["leq_state run"][1] and "steps/s at step 40" in rows["leq_state run"][1]


def test_a_failing_stage_stops_the_check_with_its_output(tmp_path):
    failing_python = tmp_path / "python"
    failing_python.write_text("#!/bin/sh\necho 'this interpreter always fails'\nexit 3\n")
    failing_python.chmod(0o755)
    result = run({"PYTHON": str(failing_python)})
    assert result.returncode == 1
    assert list(table(result.stdout)) == ["install", "pytest -m gpu"]
    assert table(result.stdout)["pytest -m gpu"][0] == "FAILED"
    assert "pytest -m gpu failed" in result.stdout and "this interpreter always fails" in result.stdout
