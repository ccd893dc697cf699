"""Which way does LEQ's first actor step push at the evaluation start, and how flat is the pretrained critic there?

    python benchmarks/learning/start_gradient.py --preset cpu-check --seed 5     # any leq_state.py flags

Loads the world model and the BC + FQE checkpoint that `leq_state.py` with the same flags uses (so run that, or
train_world_model.py and fqe_pretrain.py, first), resets the evaluation episodes, and at their start states
prints the BC action, the direction of g_0 = dV_0/da_0 (the gradient of the λ-return that LEQ's first actor
steps follow, Eq. 11, averaged over imagined rollouts from every start), and the FQE critic's Q(s, a) for the
eight unit actions. A critic that is flat over the actions at the start leaves g_0's direction to chance, and
the actor's early steps commit to it (README, Status).
"""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import leq_state as L  # noqa: E402
from cached_models import cached_world_model, require_cached  # noqa: E402

EPISODES, ROLLOUTS_PER_START, EVAL_SEED = 20, 50, 100


def start_gradient(args: L.Args) -> dict:
    """At the first evaluation states: mean start xy, mean BC action, unit mean g_0, and [(angle, mean Q)]."""
    task = L.task_of(args)
    if task.family != "pointmaze":  # the only maze family with a 2-D action
        raise SystemExit(f"{args.env_id}: the start-gradient probe needs a 2-D action maze task (pointmaze-*).")
    data = L.load_dataset(task, args.dataset_path)
    pretrain_path = L.pretrain_cache(args, data.fingerprint)
    require_cached(pretrain_path)
    _, world_model = cached_world_model(args, data)
    actor, critic, _, _ = L.load_pretrain_checkpoint(pretrain_path, data.fingerprint, "cpu")
    env = L.make_eval_env(task, data)
    starts = torch.tensor(np.stack([env.reset(seed=EVAL_SEED + i) for i in range(EPISODES)]), dtype=torch.float32)
    env.env.close()

    torch.manual_seed(args.seed)
    transition = L.make_model_transition(world_model, args.routing, data.reward_scale, data.reward_shift)
    terminated = L.make_termination_fn(task, data, args.goal_radius)
    alpha, beta = L.return_coefficients(args.actor_objective, args.horizon, args.lam)
    tau = task.tau if args.tau is None else args.tau
    _, _, _, gradients = L.actor_loss_one_sweep(actor, critic, transition, terminated,
                                                starts.repeat(ROLLOUTS_PER_START, 1), args.horizon, args.gamma,
                                                alpha, beta, tau)
    mean_gradient = gradients[0].mean(0)
    with torch.no_grad():
        q_by_angle = []
        for angle in range(0, 360, 45):
            unit = torch.tensor([np.cos(np.radians(angle)), np.sin(np.radians(angle))], dtype=torch.float32)
            q_by_angle.append((angle, float(critic(starts, unit.expand(EPISODES, 2)).mean())))
        bc_action = actor(starts).mean(0)
    return {"start": starts[:, :2].mean(0).numpy(), "bc_action": bc_action.numpy(),
            "direction": (mean_gradient / mean_gradient.norm()).numpy(), "q_by_angle": q_by_angle}


def main(argv: list[str] | None = None) -> None:
    torch.set_num_threads(1)
    probe = start_gradient(L.parse_args(argv))
    direction = probe["direction"]
    angle = np.degrees(np.arctan2(direction[1], direction[0])) % 360
    bc_action = ", ".join(f"{v:.2f}" for v in probe["bc_action"])
    print(f"start ({probe['start'][0]:.2f}, {probe['start'][1]:.2f}), {EPISODES} episodes: BC action ({bc_action}); "
          f"g_0 direction ({direction[0]:.2f}, {direction[1]:.2f}), {angle:.0f}°")
    q_values = [q for _, q in probe["q_by_angle"]]
    print(f"FQE Q(s, a) at the start, spread {max(q_values) - min(q_values):.2f}: "
          + ", ".join(f"{angle}°: {q:.1f}" for angle, q in probe["q_by_angle"]))


if __name__ == "__main__":
    main()
