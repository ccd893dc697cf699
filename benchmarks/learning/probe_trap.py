"""Where does a pointmaze run's policy end, and does its world model let it through the wall there?

    python benchmarks/learning/probe_trap.py runs/<run>      # from the folder the run was started in

Loads the run's checkpoint and its cached world model, prints how saturated the actor a = tanh(mu(s)) is (mean mu at
the evaluation starts, share of dataset states with every |mu| > 3), plays 10 evaluation episodes with the policy,
and prints the success rate, where each failed episode ended, its goal (the environment draws it around the goal
cell's centre), and how close it came to that centre (the data's rewards and the termination function use a disc
around the centre, so a failed episode that came within its radius was a success for the training reward). Then,
from rest at the most common end point, it rolls the policy for 10 imagined steps through each elite's mean
prediction, and prints how far each elite moves the point. A policy pinned against a wall stays put in the real
maze; a world model that moves it on leaks through the wall (README, Status).
"""

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import leq_state as L  # noqa: E402

EPISODES, IMAGINED_STEPS, EVAL_SEED = 10, 10, 100
SATURATION_STATES, SATURATED_MU = 2000, 3.0


def main(run_dir: str) -> None:
    torch.set_num_threads(1)
    checkpoint = torch.load(Path(run_dir) / "checkpoint.pt", weights_only=False)
    args = L.Args(**{k: v for k, v in checkpoint["args"].items() if k in L.Args.__dataclass_fields__})
    task = L.task_of(args)
    data = L.load_dataset(task, args.dataset_path)
    stats = L.normalization_stats(data.observations, data.actions)
    actor = L.Actor(stats["obs_mean"], stats["obs_std"], data.actions.shape[1],
                    trainable_scaler=args.actor_scaler == "trainable")
    actor.load_state_dict(checkpoint["actor"])
    world_model, _ = L.load_world_model(L.world_model_cache(args, data.fingerprint), data.fingerprint, "cpu")

    starts, goals = zip(*(episode_start(task, data, EVAL_SEED + i) for i in range(EPISODES)))
    print(actor_saturation(actor, np.stack(starts), data))
    centre = L.maze_goal_centre(task, data.maze_frame, data.source.removeprefix("minari:"))
    closest = np.full(EPISODES, np.inf)
    policy = L.numpy_policy(actor, "cpu")

    def recording_policy(obs):  # evaluate() calls it on every episode's observation at every step
        np.minimum(closest, np.linalg.norm(obs[:, :2] - centre, axis=1), out=closest)
        return policy(obs)

    result = L.evaluate(task, data, recording_policy, EPISODES, seed=EVAL_SEED)
    failed_episodes = np.nonzero(result["scores"] < 100.0)[0]  # maze scores: 100 x success
    failed = result["final_observations"][failed_episodes]
    ends, successes = [tuple(round(float(v), 1) for v in obs[:2]) for obs in failed], EPISODES - len(failed)
    print(f"step {checkpoint['step']}: {successes}/{EPISODES} successes; failed episodes ended at "
          f"{Counter(ends).most_common()}")
    if not ends:
        return
    failed_goals = [goals[i] for i in failed_episodes]
    print("their goals (distance from the end): " + ", ".join(
        f"({goal[0]:.2f}, {goal[1]:.2f}) ({np.linalg.norm(goal - obs[:2]):.2f})"
        for goal, obs in zip(failed_goals, failed)))
    print(f"their closest approach to the goal cell's centre: {np.round(closest[failed_episodes], 2).tolist()} "
          f"({success_radii(args, task)})")

    end_x, end_y = Counter(ends).most_common(1)[0][0]
    start = torch.zeros(world_model.num_elites, data.observations.shape[1])
    start[:, 0], start[:, 1] = end_x, end_y
    state = start.clone()
    each_elite = torch.arange(world_model.num_elites)  # row i goes through elite i, at its mean (zero noise)
    no_noise = torch.zeros(world_model.num_elites, world_model.obs_dim + 1)
    with torch.no_grad():
        for _ in range(IMAGINED_STEPS):
            state, _ = L.transition(world_model, state, actor(state), each_elite, no_noise)
    moved = (state[:, :2] - start[:, :2]).norm(dim=-1)
    action = np.round(actor(start[:1])[0].detach().double().numpy(), 2).tolist()  # float64: prints as rounded
    print(f"from rest at ({end_x}, {end_y}), action {action}: {IMAGINED_STEPS} imagined steps move the point by "
          f"{np.round(moved.double().numpy(), 2).tolist()} (one per elite)")


def success_radii(args, task) -> str:
    """Where the training reward counts a success: the data's rewards (the relabelling radius) and the imagined
    termination (--goal-radius, which defaults to the same radius)."""
    termination = task.goal_radius if args.goal_radius is None else args.goal_radius
    if termination == task.goal_radius:
        return f"the data's rewards and the termination count a success within {task.goal_radius:g} of it"
    return (f"the data's rewards count a success within {task.goal_radius:g} of it, the termination within "
            f"{termination:g}")


def actor_saturation(actor, starts: np.ndarray, data) -> str:
    """How deep a = tanh(mu(s)) sits in tanh's flat tails: mean mu at the evaluation starts, and the share of
    dataset states where every |mu| > 3 (tanh' < 0.01 there, so little gradient reaches mu)."""
    rows = np.random.default_rng(0).choice(len(data), min(SATURATION_STATES, len(data)), replace=False)
    with torch.no_grad():
        mu_starts, mu_data = actor.mu(torch.as_tensor(starts)), actor.mu(torch.as_tensor(data.observations[rows]))
    share = (mu_data.abs() > SATURATED_MU).all(dim=1).float().mean().item()
    mean_mu = ", ".join(f"{v:.1f}" for v in mu_starts.mean(dim=0).tolist())
    return (f"actor mu: [{mean_mu}] at the starts (mean); every "
            f"|mu| > {SATURATED_MU:g} at {share:.0%} of {len(rows)} dataset states")


def episode_start(task, data, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The first observation and the goal of the evaluation episode with this seed (evaluate() resets episode i
    with seed + i)."""
    env = L.make_eval_env(task, data)
    observation = env.reset(seed=seed)
    goal = np.asarray(env.env.unwrapped.goal[:2], dtype=np.float64)
    env.env.close()
    return observation, goal


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
