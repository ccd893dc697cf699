"""How sharply does the cached world model predict a maze's sparse goal reward?

    python benchmarks/learning/reward_fit.py --preset cpu-check --seed 9     # any leq_state.py flags

Loads the world model that `leq_state.py` with the same flags trains and caches (run that first), and on dataset
transitions prints the ensemble's mean predicted reward (the elites' means, averaged) by how far the transition's
next state lies from the goal cell's centre: inside the rewarded disc (the data's reward is 1) and in rings
outside it (the data's reward is 0). LEQ's imagined rollouts take their rewards from this model, so a reward that
is smeared beyond the disc rewards paths that the environment does not (README, Status).
"""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import leq_state as L  # noqa: E402
from cached_models import cached_world_model  # noqa: E402

SAMPLES_PER_BAND, SAMPLE_SEED = 2000, 0
RINGS, FAR = ((1.0, 1.5), (1.5, 2.2)), 2.2  # bands outside the disc, in multiples of its radius


def predicted_reward(world_model, observations, actions) -> np.ndarray:
    """The elites' mean reward prediction, averaged over the elites (raw scale)."""
    with torch.no_grad():
        inputs = world_model.normalize(torch.as_tensor(observations), torch.as_tensor(actions))
        mean, _ = world_model(inputs, members=world_model.elites)
    return mean[..., -1].mean(0).double().numpy()


def reward_fit(args: L.Args) -> list[tuple[str, int, float, float]]:
    """[(band, transitions in the dataset, mean data reward, mean predicted reward)] by next-state distance."""
    task = L.task_of(args)
    if task.maze is None:
        raise SystemExit(f"{args.env_id}: the reward-fit probe needs a maze task (antmaze-* or pointmaze-*).")
    data = L.load_dataset(task, args.dataset_path)
    _, world_model = cached_world_model(args, data)
    centre = L.maze_goal_centre(task, data.maze_frame, data.source.removeprefix("minari:"))
    distance = np.linalg.norm(data.next_observations[:, :2] - centre, axis=1)
    radius = task.goal_radius  # the relabelling radius: the data's reward is 1 inside it
    bands = [(f"inside the disc (< {radius:g})", distance < radius)]
    bands += [(f"{lo * radius:.2f} to {hi * radius:.2f}", (distance >= lo * radius) & (distance < hi * radius))
              for lo, hi in RINGS]
    bands.append((f">= {FAR * radius:.2f}", distance >= FAR * radius))
    rng = np.random.default_rng(SAMPLE_SEED)
    rows = []
    for name, in_band in bands:
        members = np.nonzero(in_band)[0]
        if len(members) == 0:
            rows.append((name, 0, float("nan"), float("nan")))
            continue
        pick = rng.choice(members, min(SAMPLES_PER_BAND, len(members)), replace=False)
        prediction = predicted_reward(world_model, data.observations[pick], data.actions[pick])
        rows.append((name, len(members), float(data.rewards[pick].mean()), float(prediction.mean())))
    return rows


def main(argv: list[str] | None = None) -> None:
    torch.set_num_threads(1)
    args = L.parse_args(argv)
    epochs = f"{args.world_model_max_epochs} epochs" if args.world_model_max_epochs else "its early stop"
    print(f"{args.env_id} seed {args.seed}, world model trained to {epochs}: "
          "mean reward by the next state's distance from the goal cell's centre (data | model)")
    for name, count, data_reward, model_reward in reward_fit(args):
        print(f"  {name:>28}: {count:>7} transitions, data {data_reward:.2f} | model {model_reward:.2f}")


if __name__ == "__main__":
    main()
