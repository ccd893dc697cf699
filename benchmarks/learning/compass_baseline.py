"""How far does a policy get on a maze task without looking at the state? Scores the 8 constant-action policies.

    python benchmarks/learning/compass_baseline.py pointmaze-medium-diverse [--episodes 100] [--seed 2001]
    python benchmarks/learning/compass_baseline.py pointmaze-medium-diverse --run-seed 3 --step 8000  # its final
    python benchmarks/learning/compass_baseline.py pointmaze-medium-diverse --goal-cell 1 6  # another goal cell

Each policy pushes with the same unit action, a = (cos θ, sin θ) for θ = 0°, 45°, ..., 315°, at every step of every
evaluation episode (leq_state.py's evaluate(); with --run-seed and --step, the episodes of that run's evaluation at
that step, e.g. its final one). On a maze whose walls funnel a constant push into the goal, the best of them is the
score a learned policy must beat before its success says anything about learning (README, Status).
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import leq_state as L  # noqa: E402


def compass_scores(env_id: str, episodes: int, seed: int, dataset_path: str | None = None,
                   goal_cell: tuple[int, int] | None = None) -> list[tuple[int, float]]:
    """[(angle in degrees, success x100)] of the 8 constant unit actions, best first (goal_cell: leq_state.py's
    --goal-cell)."""
    task = L.get_task(env_id)
    if task.family != "pointmaze":  # the only maze family with a 2-D action
        raise SystemExit(f"{env_id}: the compass baseline needs a 2-D action maze task (pointmaze-*).")
    if goal_cell is not None:
        L.refuse(L.goal_cell_problems(task, L.locate_dataset(task, dataset_path)[0], tuple(goal_cell)))
        task = L.replace(task, goal_cell=tuple(goal_cell))
    data = L.load_dataset(task, dataset_path)
    scores = []
    for angle in range(0, 360, 45):
        action = np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))], dtype=np.float32)
        result = L.evaluate(task, data, lambda obs, a=action: np.tile(a, (len(obs), 1)), episodes, seed)
        scores.append((angle, float(result["mean"])))
    return sorted(scores, key=lambda row: -row[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("env_id")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=2001, help="the first episode's seed (evaluate() adds i)")
    parser.add_argument("--run-seed", type=int, default=None, help="with --step: play that run's evaluation episodes")
    parser.add_argument("--step", type=int, default=None, help="with --run-seed: the evaluation's step")
    parser.add_argument("--dataset-path", default=None)
    parser.add_argument("--goal-cell", type=int, nargs=2, default=None, metavar=("ROW", "COL"),
                        help="leq_state.py's --goal-cell: another goal cell of a pointmaze")
    cli = parser.parse_args(argv)
    if (cli.run_seed is None) != (cli.step is None):
        parser.error("--run-seed and --step go together: they name one evaluation of one run")
    seed = cli.seed if cli.run_seed is None else L.evaluation_seed(cli.run_seed, cli.step)
    scores = compass_scores(cli.env_id, cli.episodes, seed, cli.dataset_path, cli.goal_cell)
    goal = "" if cli.goal_cell is None else f", goal cell {tuple(cli.goal_cell)}"
    print(f"{cli.env_id}{goal}, {cli.episodes} episodes: " + ", ".join(f"{angle}°: {score:.0f}%" for angle, score in scores))


if __name__ == "__main__":
    main()
