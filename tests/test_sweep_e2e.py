"""The offline path end to end: a sweep file of two tiny leq_state.py runs (seeds 1 and 2 on generated PointMaze
data) through sweeps/launch.py with 2 workers on the CPU, then benchmarks/results.py over the run dirs."""

import subprocess
import sys
from pathlib import Path

import collect_dataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import results  # noqa: E402

TINY_FLAGS = [  # the sizes of tests/test_leq_pipeline.py's tiny runs
    "--device=cpu", "--no-compile", "--total-steps=60", "--batch-size=16", "--model-batch-size=16", "--horizon=3",
    "--expansion-interval=25", "--expansion-size=64", "--rollout-length=2", "--expansion-keep=2",
    "--eval-interval=20", "--eval-episodes=2", "--final-eval-episodes=2", "--checkpoint-interval=60",
    "--log-interval=20", "--world-model-max-epochs=1", "--bc-steps=5", "--bc-batch-size=32", "--fqe-steps=5",
    "--fqe-batch-size=32",
]


def test_two_tiny_runs_through_the_launcher_then_aggregated(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    collect_dataset.generate_dataset(collect_dataset.get_task("pointmaze-umaze-diverse"), steps=2000, seed=0)
    command = "".join(f"\n  - '{item}'" for item in ["${interpreter}", "${program}", *TINY_FLAGS, "${args}"])
    (tmp_path / "tiny.yaml").write_text(
        f"program: {ROOT / 'leq_state.py'}\nmethod: grid\ncommand:{command}\nparameters:\n"
        "  env_id: {value: pointmaze-umaze-diverse}\n  exp_name: {value: tiny}\n  seed: {values: [1, 2]}\n")
    launched = subprocess.run([sys.executable, str(ROOT / "sweeps" / "launch.py"), "tiny.yaml", "--workers", "2"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    assert "2 of 2 runs succeeded" in launched.stdout
    assert sorted(path.name for path in (tmp_path / "sweep_logs" / "tiny").iterdir()) == ["0.log", "1.log"]

    text = results.main([str(tmp_path / "runs"), "--out", str(tmp_path / "results" / "table.md")])
    (row,) = [line for line in text.splitlines() if line.startswith("| tiny |")]
    experiment, task, setting, ours, paper, seeds, unfinished, bc = [cell.strip() for cell in row.strip("|").split("|")]
    assert (task, setting, paper, seeds, unfinished) == ("pointmaze-umaze-diverse", "—", "—", "2", "0")
    finals = [float(line.split(",")[3]) for run in (tmp_path / "runs").iterdir()
              for line in (run / "eval.csv").read_text().splitlines() if ",leq_final," in line]
    mean, std = (float(x) for x in ours.split(" ± "))
    assert len(finals) == 2 and abs(mean - sum(finals) / 2) < 0.051 and abs(std - abs(finals[0] - finals[1]) / 2) < 0.051
    assert (tmp_path / "results" / "curves" / "tiny__pointmaze-umaze-diverse.png").is_file()
