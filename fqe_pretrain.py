"""fqe_pretrain.py: behaviour cloning and Fitted Q Evaluation, LEQ's pretraining (Algorithm 1 line 3).

Paper: Park & Lee, "Model-based Offline Reinforcement Learning with Lower Expectile Q-Learning", Appendix A
(BC for the actor, FQE of that actor for the critic; Table 19: without it the medium and ultra AntMazes collapse).
Exact settings: leq-spec §4. BC 200k steps of batch 4096, Adam 3e-5, loss mean (tanh(mu(s)) - a)^2; then FQE of
the BC policy, 200k steps of batch 256, Adam 1e-4, loss mean (Q(s,a) - y)^2 + mean (Q(s,a) - Q_bar(s,a))^2 with
y = r + gamma * mask * sg Q(s', pi(s')) and Q_bar an EMA (rate 0.005) of Q; gamma is LEQ's 0.997.

Writes one checkpoint (actor, critic, EMA critic, normalisation statistics, dataset fingerprint, args) that
leq_state.py loads, then prints the sanity check: the FQE estimate of the BC policy's value at episode start
states next to the policy's actual discounted return in the environment.

    python fqe_pretrain.py --env-id pointmaze-umaze-diverse
    python fqe_pretrain.py --env-id antmaze-umaze-diverse --dataset-path /path/to/dataset

Data flow: offline dataset (load_dataset) -> BC of the actor -> FQE of the critic (the agent block's losses and
updates) -> checkpoint -> sanity check: FQE's value estimate against returns in the real environment.
Layout: Args, then the argument checks and the sanity check, then main; below the banner, the support code shared with the other
scripts (mirrored blocks: one copy per script, kept identical by tools/sync_mirrors.py).
"""

import contextlib
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import tyro


@dataclass
class Args:
    env_id: str = "antmaze-umaze-diverse"
    """task id (see collect_dataset.py for the list); pointmaze-* data is generated when missing"""
    dataset_path: str | None = None
    """where the offline dataset lives (None: the task's default location)"""
    download: bool = False
    """download the dataset when it is missing (where the task allows it)"""
    seed: int = 1
    """random seed"""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'"""
    compile: Annotated[bool | None, tyro.conf.DisallowNone] = None
    """torch.compile the BC and FQE steps; default: on for CUDA, and on the CPU for a phase of at least 20k steps,
    where it repays its compile time (README, Speed); --compile / --no-compile override"""
    cudagraphs: bool = False
    """capture the compiled steps as CUDA graphs (CUDA only)"""
    track: bool = False
    """log to Weights & Biases"""
    wandb_project_name: str = "leq-pytorch"
    """the wandb project"""
    wandb_entity: str | None = None
    """the wandb entity (team)"""
    exp_name: str = "fqe_pretrain"
    """the name of this experiment (part of the wandb run name)"""

    gamma: float = 0.997
    """discount factor: LEQ's (paper Table 9)"""
    hidden_dim: int = 256
    """width of the actor and critic hidden layers (paper: 256)"""
    num_layers: int = 3
    """number of hidden layers of the actor and critic (paper: 3)"""
    bc_steps: int = 200_000
    """behaviour-cloning gradient steps (leq-spec §4)"""
    bc_batch_size: int = 4096
    """behaviour-cloning batch size"""
    bc_lr: float = 3e-5
    """behaviour-cloning Adam learning rate"""
    fqe_steps: int = 200_000
    """FQE gradient steps (leq-spec §4)"""
    fqe_batch_size: int = 256
    """FQE batch size"""
    fqe_lr: float = 1e-4
    """FQE Adam learning rate"""
    ema_rate: float = 0.005
    """rate of the critic's EMA copy Q_bar (decay 0.995)"""
    eval_episodes: int = 100
    """episodes of the final sanity check in the environment (0: skip it)"""
    log_interval: int = 1000
    """steps between progress-bar / wandb updates of the averaged losses"""
    checkpoint_path: str | None = None
    """where to write the checkpoint (None: checkpoints/pretrain/{env_id}__seed{seed}__{fingerprint[:10]}.pt,
    where leq_state.py looks for it)"""


# Measured on the development CPU (eager and compiled steps interleaved, cold compile included): compiling pays
# back after about 7.5k BC steps (4% faster) and 11k FQE steps (16% faster); eager below this many steps.
CPU_COMPILE_PAYS_AFTER = 20_000


def check_args(args: Args) -> torch.device:
    """Every argument, the device and where the data is, checked in seconds before any work. Returns the device."""
    device = check_device(args)
    refuse(out_of_range(
        args,
        positive=("bc_batch_size", "fqe_batch_size", "hidden_dim", "num_layers", "log_interval", "bc_lr", "fqe_lr"),
        non_negative=("bc_steps", "fqe_steps", "eval_episodes"),
        rates=("gamma", "ema_rate"),
    ))
    locate_dataset(get_task(args.env_id), args.dataset_path)
    return device


def episode_start_indices(episode_ends: np.ndarray) -> np.ndarray:
    """Index 0 and every transition that follows the end of a trajectory."""
    ends = np.flatnonzero(np.asarray(episode_ends)[:-1] > 0.5)
    return np.concatenate([[0], ends + 1])


@torch.no_grad()
def policy_value(critic: "Critic", actor: "Actor", obs: torch.Tensor) -> torch.Tensor:
    return critic(obs, actor(obs))


def sanity_check(task, data, actor, critic, args: Args, device) -> dict:
    """FQE's value of the BC policy at start states next to the policy's discounted return in the environment."""
    start_obs = torch.as_tensor(data.observations[episode_start_indices(data.episode_ends)], device=device)
    dataset_estimate = policy_value(critic, actor, start_obs)
    result = {"fqe_value_dataset_starts": dataset_estimate.mean().item(), "dataset_starts": len(start_obs)}
    if args.eval_episodes == 0:
        return result
    env_start_values = []

    @torch.no_grad()
    def policy(obs: np.ndarray) -> np.ndarray:
        obs = torch.as_tensor(obs, dtype=torch.float32, device=device)
        if not env_start_values:  # the first call sees every episode's initial state
            env_start_values.append(policy_value(critic, actor, obs).cpu().numpy())
        return actor(obs).cpu().numpy()

    # step 0: the episodes are the run seed's own, independent of every other seed's
    stats = evaluate(task, data, policy, num_episodes=args.eval_episodes, seed=evaluation_seed(args.seed, 0),
                     gamma=args.gamma)
    # FQE values the task without a time limit; episodes stop after T steps, leaving out gamma^T V(s_T).
    largest_reward = np.abs(np.asarray(data.rewards) * data.reward_scale + data.reward_shift).max()
    tail = args.gamma ** task.max_episode_steps * largest_reward / (1 - args.gamma) if args.gamma < 1 else np.inf
    result.update(
        truncation_tail_bound=float(tail),
        fqe_value_env_starts=float(np.mean(env_start_values[0])),
        discounted_return=float(np.mean(stats["discounted_returns"])),
        discounted_return_std=float(np.std(stats["discounted_returns"])),
        score=float(stats["mean"]),
        score_std=float(stats["std"]),
    )
    return result


def main(args: Args) -> dict:
    device = check_args(args)
    seed_everything(args.seed)
    task = get_task(args.env_id)
    data = load_dataset(task, args.dataset_path, args.download)
    checkpoint_path = Path(args.checkpoint_path or pretrain_checkpoint_path(args.env_id, args.seed, data.fingerprint))
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run = init_tracking(args, run_name)
    print(f"{args.env_id}: {len(data.observations)} transitions from {data.source}; device {device}, "
          f"compile {'auto' if args.compile is None else args.compile}, cudagraphs {args.cudagraphs}")

    transitions = transition_tensors(data, device)
    stats = normalization_stats(data.observations, data.actions)
    sizes = {"hidden_dim": args.hidden_dim, "num_layers": args.num_layers}
    actor = Actor(stats["obs_mean"], stats["obs_std"], task.act_dim, **sizes).to(device)
    critic = Critic(stats["obs_act_mean"], stats["obs_act_std"], **sizes).to(device)
    ema_critic = ema_copy(critic)

    def log_to(prefix: str, offset: int):
        if run is None:
            return None
        return lambda step, metrics: run.log({f"{prefix}/{k}": v for k, v in metrics.items()}, step=offset + step)

    metrics, timings = {}, {}
    phases = (
        ("bc", args.bc_steps, lambda: make_bc_update(
            actor, torch.optim.Adam(actor.parameters(), lr=args.bc_lr), transitions, args.bc_batch_size)),
        ("fqe", args.fqe_steps, lambda: make_fqe_update(
            critic, ema_critic, actor, torch.optim.Adam(critic.parameters(), lr=args.fqe_lr), transitions,
            args.fqe_batch_size, args.gamma, args.ema_rate)),
    )
    offset = 0
    for name, steps, make_update in phases:
        if steps == 0:
            continue
        use_compile = resolve_compile(args.compile, device, on_cpu=steps >= CPU_COMPILE_PAYS_AFTER)
        update = compile_step(make_update(), use_compile, args.cudagraphs, device)
        start = time.perf_counter()
        metrics.update(run_updates(update, steps, name.upper(), args.log_interval, args.cudagraphs,
                                   log_to(name, offset)))
        timings[f"{name}_seconds"] = time.perf_counter() - start
        print(f"{name.upper()}: {steps} steps in {timings[f'{name}_seconds']:.1f} s "
              f"({steps / timings[f'{name}_seconds']:.1f} steps/s, compilation included)")
        offset += steps

    save_pretrain_checkpoint(checkpoint_path, actor, critic, ema_critic, data.fingerprint, args,
                             metrics={**metrics, **timings})
    print(f"checkpoint written: {checkpoint_path}")

    check = sanity_check(task, data, actor, critic, args, device)
    metrics.update(check)
    print("final losses: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.endswith("loss")))
    print(f"FQE estimate of the BC policy's value, Q(s0, pi(s0)) averaged over {check['dataset_starts']} "
          f"starts of dataset trajectories: {check['fqe_value_dataset_starts']:.3f}")
    if "discounted_return" in check:
        print(f"FQE estimate at the environment's start states: {check['fqe_value_env_starts']:.3f}; actual "
              f"discounted return (gamma {args.gamma}) over {args.eval_episodes} episodes: "
              f"{check['discounted_return']:.3f} +- {check['discounted_return_std']:.3f} (episodes stop after "
              f"{task.max_episode_steps} steps; the part of the value beyond is at most {check['truncation_tail_bound']:.3g})")
        print(f"BC policy score (success rate x 100 for mazes): {check['score']:.1f} +- {check['score_std']:.1f}")
    if run is not None:
        run.summary.update({f"final/{k}": v for k, v in metrics.items()})
        run.finish()
    return metrics


# =================================================================================================================
# Support code. Everything below is mirrored: each block is identical in the scripts its header names
# (edit one copy, then `python tools/sync_mirrors.py <script> -b NAME`; tests/test_mirrors.py checks).
# =================================================================================================================


# ==== mirror: training (identical in train_world_model.py, fqe_pretrain.py, leq_state.py, leq_pixel.py) ====
# Device, seeding of compiled steps, atomic saves, versions and wandb: what every training script needs.


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when torch sees a GPU, else the CPU; an explicit 'cuda' without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"--device {name} was asked for, but torch {torch.__version__} sees no CUDA device "
            f"(built with CUDA {torch.version.cuda}). Run with --device cpu, or install a CUDA build of torch."
        )
    return device


def check_device(args) -> torch.device:
    """The device --device names, after refusing the CUDA-only flags (--cudagraphs, --bf16) anywhere else."""
    device = resolve_device(args.device)
    for flag in ("cudagraphs", "bf16"):
        if getattr(args, flag, False) and device.type != "cuda":
            raise SystemExit(f"{os.path.basename(__file__)}: --{flag} needs a CUDA device, but the device is "
                             f"{device}. Drop --{flag}.")
    return device


def resolve_compile(use_compile: bool | None, device: torch.device, on_cpu: bool = False) -> bool:
    """--compile, or its default (None): on for CUDA; on the CPU `on_cpu`, the script's measured choice (README,
    Speed: a CPU compile takes minutes and the compiled LEQ step is barely faster)."""
    if use_compile is not None:
        return use_compile
    return device.type == "cuda" or on_cpu


# mode="reduce-overhead", except that inductor raises where it would silently skip capturing a graph
CUDAGRAPH_COMPILE_OPTIONS = {"triton.cudagraphs": True, "triton.cudagraph_or_error": True}


def compile_step(fn, use_compile: bool, use_cudagraphs: bool, device: torch.device):
    """The same step function eager, compiled, or compiled and captured as CUDA graphs.

    CUDA-graph capture is asked for explicitly and fails loudly where it cannot work (no CUDA device here;
    on CUDA, inductor's error at the first call names the op it cannot capture). Outputs of a captured step
    are overwritten by the next call: clone what must outlive it."""
    if use_cudagraphs and device.type != "cuda":
        raise SystemExit(f"--cudagraphs needs a CUDA device, but the device is {device}. Drop --cudagraphs.")
    if use_cudagraphs:
        return torch.compile(fn, options=CUDAGRAPH_COMPILE_OPTIONS)
    return torch.compile(fn) if use_compile else fn


def atomic_save(obj, path) -> None:
    """torch.save to a temporary file beside `path`, synced to disk, read back and found finite, then renamed
    over `path` (and the folder synced): a crash, a power loss or a diverged state never replaces a good file."""
    path = Path(path)
    refuse_non_finite(obj, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        refuse_non_finite(torch.load(tmp, map_location="cpu", weights_only=False), path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself reaches the disk
    finally:
        os.close(folder)


def non_finite(tree, name: str = "") -> list[str]:
    """Names of the NaN/inf floats and floating-point tensors in nested dicts, lists and tuples (one read of each
    tensor: call it at log or checkpoint time, not every step)."""
    if isinstance(tree, dict):
        return [bad for key, value in tree.items() for bad in non_finite(value, f"{name}.{key}" if name else str(key))]
    if isinstance(tree, (list, tuple)):
        return [bad for i, value in enumerate(tree) for bad in non_finite(value, f"{name}[{i}]")]
    if isinstance(tree, torch.Tensor) and tree.is_floating_point():
        return [] if bool(torch.isfinite(tree).all()) else [name]
    if isinstance(tree, float):
        return [] if math.isfinite(tree) else [name]
    return []


def refuse_non_finite(obj, path) -> None:
    bad = non_finite(obj)
    if bad:
        raise SystemExit(f"not writing {path}: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} not finite "
                         f"(the run diverged). The file already there, if any, is kept.")


def software_versions() -> dict:
    return {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__}


def init_tracking(args, run_name: str):
    """A wandb run when --track is given (CleanRL conventions: project, entity, run name, config), else None."""
    if not args.track:
        return None
    try:
        import wandb
    except ImportError:
        raise SystemExit("--track needs wandb: pip install wandb (or drop --track).") from None
    return wandb.init(
        project=args.wandb_project_name, entity=args.wandb_entity, name=run_name, config=vars(args), save_code=True
    )
# ==== end mirror: training ====


# ==== mirror: common (identical in collect_dataset.py, train_world_model.py, fqe_pretrain.py, leq_state.py, leq_pixel.py) ====
def out_of_range(args, positive=(), non_negative=(), fractions=(), rates=(), open_fractions=()) -> list[str]:
    """One message per field of `args` outside its range: positive (> 0), non_negative (>= 0), fractions
    (0 <= x <= 1), rates (0 < x <= 1), open_fractions (0 < x < 1). Fields set to None (a default chosen later)
    are skipped."""
    rules = [(positive, lambda v: v > 0, "> 0"), (non_negative, lambda v: v >= 0, ">= 0"),
             (fractions, lambda v: 0 <= v <= 1, "in [0, 1]"), (rates, lambda v: 0 < v <= 1, "in (0, 1]"),
             (open_fractions, lambda v: 0 < v < 1, "in (0, 1)")]
    return [f"--{name.replace('_', '-')} must be {bound}, got {getattr(args, name)}"
            for names, within, bound in rules for name in names
            if getattr(args, name) is not None and not within(getattr(args, name))]


def refuse(problems: list[str]) -> None:
    """Stop before any work with every problem found, on one line."""
    if problems:
        raise SystemExit(f"{os.path.basename(__file__)}: " + "; ".join(problems))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
# ==== end mirror: common ====


# ==== mirror: d4rl_antmaze_maps (identical in d4rl_antmaze.py, collect_dataset.py, train_world_model.py, fqe_pretrain.py, leq_state.py) ====
# D4RL's AntMaze layouts and goal centres (the d4rl_antmaze block builds its environment from them).

# The evaluation layouts: D4RL maze_env.py U_MAZE_TEST, BIG_MAZE_TEST, HARDEST_MAZE_TEST (registered
# for antmaze-{umaze,medium,large}-*-v2) and LEQ d4rl_ext maze_env.py ULTRA_MAZE_TEST (antmaze-ultra-*-v0).
D4RL_ANTMAZE_MAPS = {
    "umaze": [
        [1, 1, 1, 1, 1],
        [1, "r", 0, 0, 1],
        [1, 1, 1, 0, 1],
        [1, "g", 0, 0, 1],
        [1, 1, 1, 1, 1],
    ],
    "medium": [
        [1, 1, 1, 1, 1, 1, 1, 1],
        [1, "r", 0, 1, 1, 0, 0, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 1, 0, 0, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 0, 0, 1, 0, 1],
        [1, 0, 0, 0, 1, 0, "g", 1],
        [1, 1, 1, 1, 1, 1, 1, 1],
    ],
    "large": [
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, "r", 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1],
        [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1],
        [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1, 0, "g", 0, 1],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    ],
    "ultra": [
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, "r", 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1],
        [1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 0, 1, 0, 1],
        [1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0, 1, 0, 1, 0, 1],
        [1, 0, 0, 0, 1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 0, 1],
        [1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 1, 1, 0, 1, 1],
        [1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 1, 0, 1, 1],
        [1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 1],
        [1, 1, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1, 1, 0, 1],
        [1, 1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, "g", 1],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    ],
}
# leq-spec section 6 / LEQ dynamics/termination_fns.py: the termination centres, = goal cell + 0.75, the
# mean of D4RL's one-sided goal noise. (LEQ's ultra eval goals have mean goal cell - 0.25, see below.)
D4RL_ANTMAZE_GOAL_CENTRES = {
    "umaze": (0.75, 8.75),
    "medium": (20.75, 20.75),
    "large": (32.75, 24.75),
    "ultra": (52.75, 36.75),
}
# ==== end mirror: d4rl_antmaze_maps ====


# ==== mirror: d4rl_antmaze (identical in d4rl_antmaze.py, fqe_pretrain.py, leq_state.py) ====
import os
import tempfile
import xml.etree.ElementTree as ET

import gymnasium
import mujoco
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

# D4RL's AntMaze on gymnasium's MujocoEnv. API:
#   make_d4rl_antmaze_env(maze, seed=None, eval_goal_variant=None, render_mode=None, width=480, height=480,
#                         max_episode_steps=None) -> gymnasium.Env (TimeLimit-wrapped D4RLAntMazeEnv)
#       maze: "umaze" | "medium" | "large" | "ultra", or a D4RL env id ("antmaze-medium-play-v2", ...).
#       seed seeds the first reset() called without a seed (goal sampling and reset noise).
#       Observation: float64 [29] = qpos[:15] ++ qvel[:14] = x, y, z, quaternion (w, x, y, z), 8 joint
#       angles, vx, vy, vz, 3 angular velocities, 8 joint velocities; xy in the D4RL frame.
#       Action: float [8] in [-1, 1]; motor torque = 30 * action (D4RL's NormalizedBoxEnv over ctrlrange +-30).
#       Reward 1.0 and terminated=True when the torso xy is within 0.5 of the episode's goal, else 0.0;
#       truncated after 700 (umaze), 1000 (medium, large) or 2000 (ultra) steps. info: success, goal.
#   d4rl_antmaze_name(env_id) -> maze name;  d4rl_antmaze_cell_xy(maze, row, col) -> cell centre (x, y)
#   sample_d4rl_antmaze_goal(maze, variant, rng) -> goal xy  (d4rl_antmaze_goal_box: in d4rl_antmaze.py only)
#   d4rl_antmaze_xml(maze) -> the MJCF text of the ant in the maze
#   Constants: D4RL_ANTMAZE_MAPS, D4RL_ANTMAZE_GOAL_CENTRES (the d4rl_antmaze_maps block; leq-spec section 6
#   termination centres, D4RL frame), D4RL_ANTMAZE_MAX_EPISODE_STEPS, D4RL_ANTMAZE_DEFAULT_GOAL_VARIANT, D4RL_ANT_XML_CHANGES, ...
# The D4RL frame puts (0, 0) at the centre of the start cell "r", x grows with the column and y with the
# row: cell (row, col) has its centre at (col * 4 - col_r * 4, row * 4 - row_r * 4).
# Sources: D4RL d4rl/locomotion/{ant.py, maze_env.py, goal_reaching_env.py, wrappers.py, __init__.py,
# assets/ant.xml}; kwanyoungpark/LEQ d4rl_ext/locomotion/{maze_env.py, ant.py, assets/ant.xml, __init__.py}.


# D4RL __init__.py (v2 ids) and LEQ d4rl_ext __init__.py (ultra v0 ids): max_episode_steps.
D4RL_ANTMAZE_MAX_EPISODE_STEPS = {"umaze": 700, "medium": 1000, "large": 1000, "ultra": 2000}
D4RL_ANTMAZE_SCALING = 4.0  # metres per cell (registrations: maze_size_scaling=4.0)
D4RL_ANTMAZE_WALL_HEIGHT = 0.5  # wall height in cells (MazeEnv default): walls are 2 m high boxes
D4RL_ANTMAZE_SUCCESS_RADIUS = 0.5  # goal_reaching_env.py: sparse reward and eval termination iff ||xy - goal|| <= 0.5
D4RL_ANT_FRAME_SKIP = 5  # ant.py: MujocoEnv.__init__(self, file_path, 5); with timestep 0.02 -> dt 0.1 s (10 Hz)
D4RL_ANT_RESET_QPOS_NOISE = 0.1  # ant.py reset_model: qpos = init_qpos + U(-0.1, 0.1)
D4RL_ANT_RESET_QVEL_NOISE = 0.1  # ant.py reset_model: qvel = init_qvel + 0.1 * N(0, 1)
# Eval goal = goal cell + offset + U(0, s/4) + U(0, 1/2) * s/4 per axis, then max(., 0) (s = 4 m).
#   "d4rl": maze_env.py _rowcol_to_xy / goal_sampler: offset 0, goal in cell + [0, 1.5], mean +0.75.
#   "leq":  d4rl_ext maze_env.py subtracts s/8 in _rowcol_to_xy and s/8 from its noise: offset -s/4 = -1,
#           goal in cell + [-1, 0.5], mean -0.25 (LEQ evaluated ultra with d4rl_ext, the others with d4rl).
D4RL_ANTMAZE_GOAL_OFFSETS = {"d4rl": 0.0, "leq": -0.25 * D4RL_ANTMAZE_SCALING}
D4RL_ANTMAZE_DEFAULT_GOAL_VARIANT = {"umaze": "d4rl", "medium": "d4rl", "large": "d4rl", "ultra": "leq"}

# How D4RL's ant.xml (d4rl/locomotion/assets/ant.xml; LEQ's d4rl_ext copy is the same but for the floor)
# differs from the ant.xml gymnasium 1.4.0 installs. Each row: (element path, attribute, value in
# gymnasium's file, D4RL's value (None: attribute absent), effect / source). The builder checks the
# gymnasium value first, so a changed gymnasium file fails loudly instead of silently giving other physics.
D4RL_ANT_XML_CHANGES = (
    ("option", "timestep", "0.01", "0.02", "physics: 0.02 s x frame skip 5 = dt 0.1 s (D4RL 10 Hz, gymnasium 20 Hz)"),
    ("default/geom", "solimp", None, ".8 .8 .01", "contact impedance (MuJoCo's default is 0.9 0.95 0.001)"),
    ("actuator/motor", "gear", "150", None, "motor gear 1 (attribute absent) instead of 150"),
    ("actuator/motor", "ctrlrange", "-1.0 1.0", "-30.0 30.0", "torque range +-30; actions map to 30 * a"),
    ("asset/texture[@name='texplane']", "rgb1", "0 0 0", "0.2 0.3 0.4", "visual only: floor colour"),
    ("asset/texture[@name='texplane']", "rgb2", "0.8 0.8 0.8", "0.1 0.2 0.3", "visual only: floor colour"),
    ("asset/material[@name='MatPlane']", "reflectance", "0.5", "0.0", "visual only: floor reflection"),
    ("worldbody/body/geom[@name='torso_geom']", "rgba", None, "0.3 0.9 0.5 1", "visual only: green torso"),
)
# Same in both files (kept): RK4 integrator, joint armature 1 / damping 1 and limits, geom friction
# 1 0.5 0.5, margin 0.01, density 5, condim 3, solref .02 1 (explicit in D4RL, MuJoCo's default in
# gymnasium), the body tree and geom sizes. Ignored: the free joint's axis (meaningless for a free joint)
# and gymnasium's "track" camera (no physics). The floor plane is infinite for collisions; only its drawn
# size differs: 40 in D4RL's file, 200 in d4rl_ext's (used for ultra, whose walls reach x = 58).
D4RL_ANTMAZE_FLOOR_SIZE = {"umaze": "40 40 40", "medium": "40 40 40", "large": "40 40 40", "ultra": "200 200 200"}
# Remaining, unavoidable difference: D4RL ran on MuJoCo 2.x through mujoco-py, this runs on MuJoCo 3.x,
# and D4RL drew its noise from numpy's global RandomState where this env uses its own seeded Generator.


def d4rl_antmaze_name(env_id: str) -> str:
    """'umaze' | 'medium' | 'large' | 'ultra' from a maze name or an id like antmaze-large-play-v2."""
    parts = env_id.lower().split("-")
    name = parts[1] if len(parts) > 1 and parts[0] == "antmaze" else parts[0]
    if name not in D4RL_ANTMAZE_MAPS:
        raise ValueError(
            f"unknown D4RL antmaze {env_id!r}: give one of {sorted(D4RL_ANTMAZE_MAPS)} "
            "or an id such as antmaze-umaze-v2, antmaze-medium-play-v2, antmaze-ultra-diverse-v0"
        )
    return name


def _d4rl_antmaze_cells(maze: str, kind) -> list[tuple[int, int]]:
    layout = D4RL_ANTMAZE_MAPS[maze]
    return [(i, j) for i, row in enumerate(layout) for j, cell in enumerate(row) if cell == kind]


def d4rl_antmaze_cell_xy(maze: str, row: int, col: int) -> np.ndarray:
    """Centre of cell (row, col) in the D4RL frame: (0, 0) at the start cell, y grows with the row."""
    ((start_row, start_col),) = _d4rl_antmaze_cells(maze, "r")
    return np.array([(col - start_col) * D4RL_ANTMAZE_SCALING, (row - start_row) * D4RL_ANTMAZE_SCALING])


def _d4rl_antmaze_variant(variant: str) -> str:
    if variant not in D4RL_ANTMAZE_GOAL_OFFSETS:
        raise ValueError(f"unknown eval goal variant {variant!r}: use one of {sorted(D4RL_ANTMAZE_GOAL_OFFSETS)}")
    return variant


def sample_d4rl_antmaze_goal(maze: str, variant: str, rng: np.random.Generator) -> np.ndarray:
    """One eval goal as D4RL's goal_sampler draws it (see D4RL_ANTMAZE_GOAL_OFFSETS)."""
    goal_cells = _d4rl_antmaze_cells(maze, "g")
    cell = goal_cells[rng.integers(len(goal_cells))]
    corner = d4rl_antmaze_cell_xy(maze, *cell) + D4RL_ANTMAZE_GOAL_OFFSETS[_d4rl_antmaze_variant(variant)]
    cell_noise = rng.uniform(0.0, 0.25 * D4RL_ANTMAZE_SCALING, size=2)  # _rowcol_to_xy(add_random_noise=True)
    extra_noise = rng.uniform(0.0, 0.5, size=2) * 0.25 * D4RL_ANTMAZE_SCALING  # goal_sampler's random_x/y
    return np.maximum(corner + cell_noise + extra_noise, 0.0)


def _gymnasium_ant_xml_path() -> str:
    return os.path.join(os.path.dirname(gymnasium.envs.mujoco.__file__), "assets", "ant.xml")


def d4rl_antmaze_xml(maze: str) -> str:
    """D4RL's ant model (gymnasium's ant.xml with D4RL_ANT_XML_CHANGES) with the maze's walls added."""
    tree = ET.parse(_gymnasium_ant_xml_path())
    root = tree.getroot()
    for path, attribute, gymnasium_value, d4rl_value, _ in D4RL_ANT_XML_CHANGES:
        elements = root.findall(path)
        found = {element.get(attribute) for element in elements}
        if not elements or found != {gymnasium_value}:
            raise RuntimeError(
                f"gymnasium's ant.xml ({_gymnasium_ant_xml_path()}) has {path} {attribute}={sorted(map(str, found))}, "
                f"expected {gymnasium_value!r}; this env was written for gymnasium 1.4.0 (see requirements.txt)."
            )
        for element in elements:
            if d4rl_value is None:
                del element.attrib[attribute]
            else:
                element.set(attribute, d4rl_value)
    root.find("worldbody/geom[@name='floor']").set("size", D4RL_ANTMAZE_FLOOR_SIZE[maze])
    worldbody = root.find("worldbody")
    half_height = D4RL_ANTMAZE_WALL_HEIGHT / 2 * D4RL_ANTMAZE_SCALING
    for i, row in enumerate(D4RL_ANTMAZE_MAPS[maze]):  # maze_env.py: one box per 1, centred on its cell
        for j, cell in enumerate(row):
            if cell == 1:
                x, y = d4rl_antmaze_cell_xy(maze, i, j)
                ET.SubElement(
                    worldbody, "geom", name=f"block_{i}_{j}", type="box", material="",
                    pos=f"{x} {y} {half_height}",
                    size=f"{0.5 * D4RL_ANTMAZE_SCALING} {0.5 * D4RL_ANTMAZE_SCALING} {half_height}",
                    contype="1", conaffinity="1", rgba="0.7 0.5 0.3 1.0",
                )  # fmt: skip
    # A goal marker for videos, as big as the success radius: a site has no mass and no contacts.
    ET.SubElement(worldbody, "site", name="goal", type="sphere", size=f"{D4RL_ANTMAZE_SUCCESS_RADIUS}",
                  pos="0 0 0.5", rgba="1 0.2 0.2 0.5")  # fmt: skip
    return ET.tostring(root, encoding="unicode")


def _d4rl_antmaze_camera(maze: str) -> dict:
    layout = D4RL_ANTMAZE_MAPS[maze]
    rows, cols = len(layout), len(layout[0])
    centre = (d4rl_antmaze_cell_xy(maze, 0, 0) + d4rl_antmaze_cell_xy(maze, rows - 1, cols - 1)) / 2
    # Straight down, x to the right and y up: the picture shows the layout upside down (row 0 at the bottom).
    return dict(lookat=np.array([*centre, 0.0]), distance=1.25 * D4RL_ANTMAZE_SCALING * max(rows, cols),
                elevation=-90.0, azimuth=90.0)  # fmt: skip


class D4RLAntMazeEnv(MujocoEnv):
    """D4RL's eval AntMaze (eval=True, v2_resets=True, non_zero_reset=False, sparse reward) on gymnasium."""

    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 10}

    def __init__(self, maze: str, eval_goal_variant: str | None = None, seed: int | None = None,
                 render_mode: str | None = None, width: int = 480, height: int = 480):  # fmt: skip
        self.maze = d4rl_antmaze_name(maze)
        variant = eval_goal_variant or D4RL_ANTMAZE_DEFAULT_GOAL_VARIANT[self.maze]
        self.eval_goal_variant = _d4rl_antmaze_variant(variant)
        with tempfile.TemporaryDirectory() as folder:  # MujocoEnv loads its model from a file
            xml_path = os.path.join(folder, f"d4rl_antmaze_{self.maze}.xml")
            with open(xml_path, "w") as file:
                file.write(d4rl_antmaze_xml(self.maze))
            observation_space = gymnasium.spaces.Box(-np.inf, np.inf, shape=(29,), dtype=np.float64)
            super().__init__(xml_path, D4RL_ANT_FRAME_SKIP, observation_space, render_mode=render_mode, width=width,
                             height=height, default_camera_config=_d4rl_antmaze_camera(self.maze))  # fmt: skip
        # The policy acts in [-1, 1]; D4RL's NormalizedBoxEnv rescales to the +-30 control range.
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, shape=(self.model.nu,), dtype=np.float32)
        self.goal, self._pinned_goal = np.zeros(2), None
        self._goal_site = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, "goal")
        self._first_reset_seed = seed

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """A new eval goal (or options["goal"], an xy in the D4RL frame) and a noisy start at (0, 0)."""
        if seed is None:
            seed, self._first_reset_seed = self._first_reset_seed, None
        self._pinned_goal = None if options is None or "goal" not in options else np.asarray(options["goal"], float)
        return super().reset(seed=seed)

    def reset_model(self) -> np.ndarray:
        # v2_resets: a fresh goal every episode, drawn before the ant's reset noise (ant.py AntMazeEnv.reset).
        self.goal = self._pinned_goal if self._pinned_goal is not None else sample_d4rl_antmaze_goal(
            self.maze, self.eval_goal_variant, self.np_random
        )  # fmt: skip
        self.model.site_pos[self._goal_site, :2] = self.goal
        noise = D4RL_ANT_RESET_QPOS_NOISE
        qpos = self.init_qpos + self.np_random.uniform(-noise, noise, size=self.model.nq)
        qvel = self.init_qvel + self.np_random.standard_normal(self.model.nv) * D4RL_ANT_RESET_QVEL_NOISE
        self.set_state(qpos, qvel)
        return self._get_obs()

    def _get_reset_info(self) -> dict:
        return {"success": False, "goal": self.goal.copy()}

    def _get_obs(self) -> np.ndarray:
        return np.concatenate([self.data.qpos[:15], self.data.qvel[:14]])  # ant.py expose_all_qpos=True

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape or not np.all(np.isfinite(action)):
            raise ValueError(f"expected a finite action of shape {self.action_space.shape}, got {action!r}")
        low, high = self.model.actuator_ctrlrange.T
        ctrl = np.clip(low + (action + 1.0) * 0.5 * (high - low), low, high)  # wrappers.py NormalizedBoxEnv
        self.do_simulation(ctrl, self.frame_skip)
        observation = self._get_obs()
        # goal_reaching_env.py: sparse reward, and with eval=True the episode ends on success. The ant's
        # own "unhealthy" done (z outside [0.2, 1]) is dropped there, so it is not a termination here.
        success = bool(np.linalg.norm(observation[:2] - self.goal) <= D4RL_ANTMAZE_SUCCESS_RADIUS)
        if self.render_mode == "human":
            self.render()
        return observation, float(success), success, False, {"success": success, "goal": self.goal.copy()}


def make_d4rl_antmaze_env(maze: str, seed: int | None = None, eval_goal_variant: str | None = None,
                          render_mode: str | None = None, width: int = 480, height: int = 480,
                          max_episode_steps: int | None = None) -> gymnasium.Env:  # fmt: skip
    """The D4RL AntMaze eval env, ended after D4RL's episode length (or max_episode_steps)."""
    if max_episode_steps is not None and max_episode_steps < 1:
        raise ValueError(f"max_episode_steps must be at least 1 (or None for D4RL's length), got {max_episode_steps}")
    env = D4RLAntMazeEnv(maze, eval_goal_variant, seed, render_mode, width, height)
    steps = max_episode_steps or D4RL_ANTMAZE_MAX_EPISODE_STEPS[env.maze]
    return gymnasium.wrappers.TimeLimit(env, max_episode_steps=steps)
# ==== end mirror: d4rl_antmaze ====


# ==== mirror: task (identical in collect_dataset.py, train_world_model.py, fqe_pretrain.py, leq_state.py) ====
"""Everything about a state-based task: registry, datasets, maze geometry. Built on it: the envs and evaluate
blocks, the collect block (collect_dataset.py) and make_termination_fn (leq_state.py).

    task = get_task("pointmaze-umaze-diverse")        # Task: family, obs/act dims, tau (paper Table 10), ...
    data = load_dataset(task, dataset_path=None, download=False)   # OfflineData (flat float32 arrays)
    done = make_termination_fn(task, data)(obs, act, next_obs)     # batched torch bool [B] (leq-spec §6)
    result = evaluate(task, data, policy, num_episodes=10, seed=0) # mean/std/scores/returns (x100 scores)

Dataset sources (`dataset_path`): None = the task's default (default_data_file() for D4RL locomotion, TAP ultra
and NeoRL, and for AntMaze and *-random when D4RL's file is there: the paper's data; else a Minari dataset, made by
running collect_dataset.py for the datasets this project makes), a Minari id (e.g. "D4RL/antmaze/umaze-v1",
"mujoco/hopper/medium-v0"), a D4RL-format .hdf5 file (D4RL locomotion/antmaze, TAP antmaze-ultra) or a NeoRL .npz
file. The reward LEQ and FQE train on is `rewards * reward_scale + reward_shift` (leq-spec §1); `rewards` stay raw
for the world model.
"""
import hashlib
import subprocess
import warnings

# 1 = wall, 0 = free: D4RL's layouts (the d4rl_antmaze block) without the start and goal letters; rows in D4RL's
# order (gymnasium-robotics draws row 0 at the top, +y).
MAZE_LAYOUTS = {maze: [[1 if cell == 1 else 0 for cell in row] for row in rows] for maze, rows in D4RL_ANTMAZE_MAPS.items()}
MAZE_START_GOAL_CELLS = {"umaze": ((1, 1), (3, 1)), "medium": ((1, 1), (6, 6)), "large": ((1, 1), (7, 9)),
                         "ultra": ((1, 1), (10, 14))}  # D4RL's eval start and goal (row, column)
# Minari's D4RL/antmaze/umaze data map puts the goal at (1,1) and the start at (3,1): the same U with the rows
# reversed, i.e. D4RL's umaze moved without mirroring (datasets-and-envs.md §2.4). We evaluate on that map.
MINARI_ANTMAZE_UMAZE_START_GOAL = ((3, 1), (1, 1))
MAZE_SCALING = {"antmaze": 4.0, "pointmaze": 1.0}  # metres per cell (hard-coded in gymnasium-robotics)
# gymnasium-robotics' PointMaze episode lengths; ultra (not registered there) twice large's, as for the antmaze
POINTMAZE_EPISODE_STEPS = {"umaze": 300, "medium": 600, "large": 800, "ultra": 1600}
ANTMAZE_EPISODE_STEPS = {"umaze": 700, "medium": 1000, "large": 1000, "ultra": 2000}  # D4RL episode lengths
MINARI_ANTMAZE_IDS = {"umaze": "D4RL/antmaze/umaze-v1", "umaze-diverse": "D4RL/antmaze/umaze-diverse-v1",
                      "medium-play": "D4RL/antmaze/medium-play-v1", "medium-diverse": "D4RL/antmaze/medium-diverse-v1",
                      "large-play": "D4RL/antmaze/large-play-v1", "large-diverse": "D4RL/antmaze/large-diverse-v1"}
TAP_ULTRA_URL = ("https://github.com/ZhengyaoJiang/d4rl/releases/download/public/"
                 "Ant_maze_ultra_noisy_multistart_True_multigoal_{}_sparse.hdf5")
ROBOTS = {  # gymnasium class name, action dim, obs dim (D4RL layout), obs dim (NeoRL layout, with x)
    "hopper": ("Hopper", 3, 11, 12), "walker2d": ("Walker2d", 6, 17, 18), "halfcheetah": ("HalfCheetah", 6, 17, 18)}
TAU_TABLE_10 = {  # paper Table 10; 0.1 where the paper has no entry
    "antmaze-umaze": 0.1, "antmaze-umaze-diverse": 0.1, "antmaze-medium-play": 0.3, "antmaze-medium-diverse": 0.1,
    "antmaze-large-play": 0.3, "antmaze-large-diverse": 0.3, "antmaze-ultra-play": 0.1, "antmaze-ultra-diverse": 0.1,
    "hopper-random": 0.1, "hopper-medium": 0.1, "hopper-medium-replay": 0.3, "hopper-medium-expert": 0.1,
    "walker2d-random": 0.1, "walker2d-medium": 0.3, "walker2d-medium-replay": 0.5, "walker2d-medium-expert": 0.1,
    "halfcheetah-random": 0.3, "halfcheetah-medium": 0.3, "halfcheetah-medium-replay": 0.4,
    "halfcheetah-medium-expert": 0.1,
    "Hopper-v3-low": 0.1, "Hopper-v3-medium": 0.1, "Hopper-v3-high": 0.1, "Walker2d-v3-low": 0.3,
    "Walker2d-v3-medium": 0.1, "Walker2d-v3-high": 0.1, "HalfCheetah-v3-low": 0.1, "HalfCheetah-v3-medium": 0.3,
    "HalfCheetah-v3-high": 0.3,
}
GENERATED_NAMESPACE = "leq"  # Minari namespace of the datasets this project generates


@dataclass(frozen=True)
class Task:
    env_id: str
    family: str  # "antmaze" | "pointmaze" | "locomotion" | "neorl"
    obs_dim: int
    act_dim: int
    tau: float  # paper Table 10
    max_episode_steps: int
    robot: str  # "ant" | "point" | "hopper" | "walker2d" | "halfcheetah"
    level: str  # dataset level: "diverse", "play", "random", "medium", "low", ...
    maze: str | None = None  # "umaze" | "medium" | "large" | "ultra"
    goal_radius: float | None = None  # default radius of the goal region (relabelling and termination)
    default_dataset: str | None = None  # Minari id read when no dataset path is given
    generated: bool = False  # default dataset is made by this project (collect_dataset.py) when missing
    goal_cell: tuple | None = None  # pointmaze: a goal cell (row, column) that replaces the maze's (--goal-cell)


def _build_registry() -> dict:
    tasks = {}
    for maze, levels in [("umaze", ["", "-diverse"]), ("medium", ["-play", "-diverse"]),
                         ("large", ["-play", "-diverse"]), ("ultra", ["-play", "-diverse"])]:
        for level in levels:
            env_id = f"antmaze-{maze}{level}"
            tasks[env_id] = Task(env_id, "antmaze", 29, 8, TAU_TABLE_10[env_id], ANTMAZE_EPISODE_STEPS[maze], "ant",
                                 level.lstrip("-") or "play", maze, 0.5, MINARI_ANTMAZE_IDS.get(f"{maze}{level}"))
    for maze in MAZE_LAYOUTS:
        for level in ["diverse", "play"]:
            env_id = f"pointmaze-{maze}-{level}"
            tasks[env_id] = Task(env_id, "pointmaze", 4, 2, 0.1, POINTMAZE_EPISODE_STEPS[maze], "point", level, maze,
                                 0.45, f"{GENERATED_NAMESPACE}/pointmaze/{maze}-{level}-v2", generated=True)
    for robot, (name, act_dim, obs_dim, neorl_obs_dim) in ROBOTS.items():
        for level in ["random", "medium", "medium-replay", "medium-expert", "expert"]:
            env_id = f"{robot}-{level}"
            generated = level == "random"
            default = f"{GENERATED_NAMESPACE}/mujoco/{robot}-random-v0" if generated else None
            tasks[env_id] = Task(env_id, "locomotion", obs_dim, act_dim, TAU_TABLE_10.get(env_id, 0.1), 1000, robot,
                                 level, default_dataset=default, generated=generated)
        for level in ["low", "medium", "high"]:
            env_id = f"{name}-v3-{level}"
            tasks[env_id] = Task(env_id, "neorl", neorl_obs_dim, act_dim, TAU_TABLE_10[env_id], 1000, robot, level)
    return tasks


TASKS = _build_registry()


def get_task(env_id: str) -> Task:
    if env_id not in TASKS:
        import difflib

        close = difflib.get_close_matches(env_id, TASKS, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise SystemExit(f"unknown env id '{env_id}'.{hint} Known env ids: {', '.join(TASKS)}")
    return TASKS[env_id]


@dataclass
class OfflineData:
    observations: np.ndarray  # [N, obs] float32
    actions: np.ndarray  # [N, act] float32, in [-1, 1]
    rewards: np.ndarray  # [N] float32, raw (what the world model learns)
    next_observations: np.ndarray  # [N, obs] float32
    terminals: np.ndarray  # [N] float32, 1.0 = true terminal
    episode_ends: np.ndarray  # [N] float32, 1.0 where the trajectory ends (terminal, timeout or discontinuity)
    reward_scale: float  # training reward = rewards * reward_scale + reward_shift (leq-spec §1)
    reward_shift: float
    fingerprint: str  # stable hash of the env id and the arrays
    source: str  # where the data came from (Minari id or file path)
    maze_frame: str | None = None  # mazes: "gymnasium_robotics" (centred, y up) or "d4rl" (start cell at (0,0))
    eval_gym_id: str | None = None  # locomotion/NeoRL: the gymnasium env that evaluates (matches the data)

    def __len__(self) -> int:
        return len(self.observations)


# ---- datasets ---------------------------------------------------------------------------------------------------

def minari_root() -> Path:
    """Where Minari datasets live: $MINARI_DATASETS_PATH, else minari's default ~/.minari/datasets."""
    return Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets")


def load_dataset(task: Task, dataset_path: str | None = None, download: bool = False) -> OfflineData:
    """The task's offline data as flat float32 arrays; see the block docstring for the accepted sources."""
    kind, location = locate_dataset(task, dataset_path)
    if kind == "generate":
        run_collect_dataset(task)
    if kind == "hdf5":
        return load_d4rl_hdf5(task, Path(location))
    if kind == "npz":
        return load_neorl_npz(task, Path(location))
    return load_minari(task, location, download)


def locate_dataset(task: Task, dataset_path: str | None = None) -> tuple[str, str]:
    """Where the task's data comes from, found without reading it: ("generate" or "minari", a Minari id), or
    ("hdf5" or "npz", a file path). A source that cannot work is refused with how to get the data."""
    if dataset_path is None and (task.default_dataset is None or paper_data_present(task)):
        dataset_path = str(default_data_file(task))  # when it is missing, the error below says how to get it
    if dataset_path is None:
        missing = not (minari_root() / task.default_dataset / "data").is_dir()
        return ("generate" if task.generated and missing else "minari"), task.default_dataset
    path = Path(dataset_path).expanduser()
    if path.is_file() and path.suffix in (".hdf5", ".h5"):
        return "hdf5", str(path)
    if path.is_file() and path.suffix == ".npz":
        return "npz", str(path)
    if path.exists():
        raise SystemExit(f"--dataset-path {dataset_path}: expected a D4RL-format .hdf5 file, a NeoRL .npz file "
                         f"or a Minari dataset id; got a {'folder' if path.is_dir() else 'file of unknown type'}.")
    if "/" in dataset_path and not dataset_path.endswith((".hdf5", ".h5", ".npz")):
        return "minari", dataset_path
    raise SystemExit(f"--dataset-path {dataset_path} does not exist. {_how_to_get_data(task)}")



def run_collect_dataset(task: Task) -> None:
    """Make a missing generated default dataset with collect_dataset.py from this script's folder (same Python)."""
    command = f"python collect_dataset.py {task.env_id}"
    collector = Path(__file__).resolve().with_name("collect_dataset.py")
    if not collector.is_file():
        raise SystemExit(f"{task.default_dataset} is not in {minari_root()}: make it with `{command}` (the "
                         f"collect_dataset.py that comes with this script), or pass --dataset-path.")
    print(f"{task.default_dataset} is not in {minari_root()}: generating it now (once) with `{command}`.")
    if subprocess.run([sys.executable, str(collector), task.env_id]).returncode != 0:
        raise SystemExit(f"`{command}` failed (its error is above); fix that and run it again.")

def default_data_file(task: Task) -> Path:
    """The task's file in the default folders, read when no path is given (see load_dataset): D4RL's own download
    folder ($D4RL_DATASET_DIR, else ~/.d4rl/datasets) for D4RL and TAP files, $NEORL_DATASET_DIR (else
    ~/.neorl/datasets) for NeoRL's; so a sweep over env ids needs no per-task path."""
    if task.family == "neorl":
        folder = os.environ.get("NEORL_DATASET_DIR") or "~/.neorl/datasets"
        return Path(folder).expanduser() / f"{task.env_id}-1000-train-noise.npz"
    folder = Path(os.environ.get("D4RL_DATASET_DIR") or "~/.d4rl/datasets").expanduser()
    if task.family == "antmaze" and task.maze == "ultra":
        return folder / TAP_ULTRA_URL.format("True" if task.level == "diverse" else "False").rsplit("/", 1)[1]
    if task.family == "antmaze":
        maze = {"umaze": "u-maze", "medium": "big-maze", "large": "hardest-maze"}[task.maze]
        starts = "False_multigoal_False" if task.env_id == "antmaze-umaze" else f"True_multigoal_{task.level == 'diverse'}"
        return folder / f"Ant_maze_{maze}_noisy_multistart_{starts}_sparse_fixed.hdf5"  # D4RL's antmaze-*-v2 files
    return folder / f"{task.robot}_{task.level.replace('-', '_')}-v2.hdf5"


def paper_data_present(task: Task) -> bool:
    """D4RL's file in the default folder for a task whose default is Minari or generated data (AntMaze, *-random):
    the paper's data, read instead."""
    return task.family in ("antmaze", "locomotion") and default_data_file(task).is_file()


def _how_to_get_data(task: Task) -> str:
    if task.family == "antmaze" and task.maze == "ultra":
        variant = "True" if task.level == "diverse" else "False"
        return (f"{task.env_id} needs TAP's D4RL-format file: download {TAP_ULTRA_URL.format(variant)} and pass "
                f"--dataset-path /path/to/that.hdf5.")
    if task.family == "locomotion":
        d4rl_name = f"{task.robot}_{task.level.replace('-', '_')}-v2.hdf5"
        return (f"{task.env_id} needs a dataset: pass --dataset-path /path/to/{d4rl_name} (the D4RL file, "
                f"http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/{d4rl_name}), or a Minari id such "
                f"as --dataset-path mujoco/{task.robot}/{task.level}-v0 (different data: gymnasium v5 envs) with "
                f"--download. Only the *-random datasets are generated here: `python collect_dataset.py "
                f"{task.robot}-random`.")
    if task.family == "neorl":
        name = task.env_id.split("-")[0]
        return (f"{task.env_id} needs NeoRL's file {task.env_id}-1000-train-noise.npz (from the polixir/NeoRL "
                f"repository's data links, http://datasets.polixir.site/v2/{name}/...; NOT the unrelated `neorl` "
                f"package on PyPI): pass --dataset-path /path/to/{task.env_id}-1000-train-noise.npz.")
    return f"{task.env_id} has no default dataset; pass --dataset-path."


def load_minari(task: Task, dataset_id: str, download: bool = False) -> OfflineData:
    """A Minari dataset (D4RL/antmaze, D4RL/pointmaze, mujoco/*, or one this project generated) as OfflineData."""
    arrays = _read_minari_flat(task, dataset_id, download)
    eval_gym_id = str(arrays.pop("env_spec_id")) or _default_eval_gym_id(task)
    episode_ends = np.maximum(arrays.pop("ends"), arrays["terminals"])
    source = f"minari:{dataset_id}"
    _check_arrays(task, arrays, source)
    if task.family not in ("antmaze", "pointmaze"):
        return _finish(task, arrays, episode_ends, source, None, eval_gym_id)
    # Minari maze rewards are relative to each episode's own goal: relabel against the single eval goal (§1).
    frame = "gymnasium_robotics"
    hit = _in_goal_region(arrays["next_observations"], maze_goal_centre(task, frame, dataset_id), task.goal_radius)
    arrays["rewards"], arrays["terminals"] = hit, hit.copy()
    return _finish(task, arrays, np.maximum(episode_ends, hit), source, frame, None)


def _read_minari_flat(task: Task, dataset_id: str, download: bool) -> dict:
    """Episodes of a Minari dataset concatenated into flat arrays. Reading episode by episode costs about 4 ms per
    episode (a minute for 15k episodes), so the result is cached beside the dataset, keyed by its files."""
    import minari
    from tqdm import tqdm

    location = minari_root() / dataset_id
    try:
        if not (location / "data").is_dir():
            if not download:
                raise SystemExit(
                    f"Minari dataset {dataset_id} is not in {minari_root()} (set MINARI_DATASETS_PATH to look "
                    f"elsewhere). Get it with --download (needs internet and `pip install \"minari[hf]\"`), or "
                    f"`minari download {dataset_id}`, or copy its data/main_data.hdf5 and metadata.json into "
                    f"{location}/"
                    + (". A D4RL-format antmaze .hdf5 file also works: --dataset-path /path/to/file.hdf5 (see the "
                       "README on its evaluation)." if task.family == "antmaze" else "."))
            minari.load_dataset(dataset_id, download=True)
        files = sorted((location / "data").iterdir())
        stamp = ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
        cache = location / f"leq_flat_{task.family}.npz"
        if cache.is_file():
            with np.load(cache) as cached:
                if str(cached["stamp"]) == stamp:
                    return {key: cached[key] for key in cached.files if key != "stamp"}
        dataset = minari.load_dataset(dataset_id)
    except ImportError as error:
        raise SystemExit(f"downloading {dataset_id} failed: {error}") from None
    except (OSError, ValueError, KeyError, RuntimeError) as error:  # a broken or foreign folder: name it
        raise SystemExit(f"Minari dataset {dataset_id} at {location} cannot be read "
                         f"({type(error).__name__}: {error}).") from None
    pieces = {key: [] for key in ("observations", "actions", "rewards", "next_observations", "terminals", "ends")}
    for episode in tqdm(dataset.iterate_episodes(), total=dataset.total_episodes, desc=f"reading {dataset_id}",
                        mininterval=1.0):
        obs = episode.observations
        if isinstance(obs, dict):  # mazes: achieved_goal (xy) ++ observation (ant 27 -> 29, point: xy is in obs)
            obs = obs["observation"] if task.family == "pointmaze" else np.concatenate(
                [obs["achieved_goal"], obs["observation"]], axis=-1)
        obs = np.asarray(obs, dtype=np.float32)
        steps = len(episode.actions)
        pieces["observations"].append(obs[:-1])
        pieces["next_observations"].append(obs[1:])
        pieces["actions"].append(np.asarray(episode.actions, dtype=np.float32).reshape(steps, -1))
        pieces["rewards"].append(np.asarray(episode.rewards, dtype=np.float32).reshape(steps))
        pieces["terminals"].append(np.asarray(episode.terminations, dtype=np.float32).reshape(steps))
        pieces["ends"].append(np.arange(steps) == steps - 1)
    if not pieces["actions"]:
        raise SystemExit(f"Minari dataset {dataset_id} at {location} holds no episodes.")
    arrays = {key: np.concatenate(value) for key, value in pieces.items()}
    arrays["ends"] = arrays["ends"].astype(np.float32)
    arrays["env_spec_id"] = np.array(dataset.env_spec.id if dataset.env_spec is not None else "")
    tmp = location / f".{cache.name}.tmp{os.getpid()}.npz"
    try:
        np.savez(tmp, stamp=np.array(stamp), **arrays)
        os.replace(tmp, cache)
    except OSError:  # a read-only dataset folder: no cache, just slower next time
        tmp.unlink(missing_ok=True)
    return arrays


def load_d4rl_hdf5(task: Task, path: Path) -> OfflineData:
    """A D4RL-format hdf5 file (D4RL locomotion/antmaze, TAP antmaze-ultra), with or without `timeouts` and
    `next_observations`. Episodes end at timeouts, terminals (locomotion), goal changes (`infos/goal`) and, without
    `timeouts`, every max_episode_steps steps (D4RL's qlearning_dataset rule); rows whose next observation would be
    the next episode's first observation are dropped."""
    import h5py

    try:
        with h5py.File(path, "r") as file:
            raw = {}
            file.visititems(lambda key, item: raw.update({key: item[()]}) if isinstance(item, h5py.Dataset) else None)
    except OSError as error:
        raise SystemExit(f"{path} is not a readable hdf5 file ({error}).") from None
    missing = [key for key in ("observations", "actions", "rewards", "terminals") if key not in raw]
    if missing:
        raise SystemExit(f"{path} is missing the key(s) {missing}; a D4RL-format file has observations, actions, "
                         f"rewards, terminals (and optionally timeouts, next_observations, infos/goal). "
                         f"It has: {sorted(raw)}.")
    n = len(raw["observations"])
    for key in ("actions", "rewards", "terminals", "timeouts", "next_observations", "infos/goal"):
        if key in raw and len(raw[key]) != n:
            raise SystemExit(f"{path}: '{key}' has {len(raw[key])} rows but 'observations' has {n}.")
    _require_one_value_per_row(path, raw, ("rewards", "terminals", "timeouts"), n)
    obs = np.asarray(raw["observations"], dtype=np.float32)
    terminals = np.asarray(raw["terminals"]).reshape(n).astype(bool)
    timeouts = np.asarray(raw["timeouts"]).reshape(n).astype(bool) if "timeouts" in raw else None
    boundary = timeouts.copy() if timeouts is not None else np.zeros(n, dtype=bool)
    if "infos/goal" in raw:  # TAP's loader: a new goal means a new episode
        goals = np.asarray(raw["infos/goal"])
        boundary[:-1] |= np.any(goals[1:] != goals[:-1], axis=-1)
    if timeouts is None:  # D4RL's qlearning_dataset: an episode also ends every max_episode_steps steps
        boundary |= _every_k_steps_since_reset(terminals if task.family != "antmaze" else boundary,
                                               task.max_episode_steps)
    if "next_observations" in raw:
        next_obs = np.asarray(raw["next_observations"], dtype=np.float32)
        keep = np.ones(n, dtype=bool)
    else:
        next_obs = np.concatenate([obs[1:], obs[-1:]])
        if task.family == "antmaze":  # a reset teleports the ant to the start: never pair across that jump
            boundary[:-1] |= np.linalg.norm(obs[1:, :2] - obs[:-1, :2], axis=-1) > 2.0
            ends_episode = boundary
        else:  # a locomotion terminal ends its episode: obs[i+1] is the next episode's first observation
            ends_episode = boundary | terminals
            if terminals.any():
                print(f"{path}: no next_observations, so the {int(terminals.sum())} terminal transitions (whose "
                      f"next observation is not in the file) are dropped.")
        keep = ~ends_episode
        keep[-1] = False
    arrays = {"observations": obs[keep], "actions": np.asarray(raw["actions"], dtype=np.float32)[keep],
              "rewards": np.asarray(raw["rewards"], dtype=np.float32).reshape(n)[keep],
              "next_observations": next_obs[keep], "terminals": terminals[keep].astype(np.float32)}
    source = f"hdf5:{path}"
    _check_arrays(task, arrays, source)
    ends = boundary | terminals
    ends[:-1] |= ~keep[1:]  # a dropped row's predecessor is now the last of its trajectory
    episode_ends = ends[keep].astype(np.float32)
    frame = "d4rl" if task.family in ("antmaze", "pointmaze") else None
    return _finish(task, arrays, episode_ends, source, frame, None if frame else _default_eval_gym_id(task))


def _require_one_value_per_row(path, raw: dict, keys, n: int) -> None:
    for key in keys:
        if key in raw and np.size(raw[key]) != n:
            raise SystemExit(f"{path}: '{key}' has shape {np.shape(raw[key])}; expected one value per row ({n}).")


def _every_k_steps_since_reset(resets: np.ndarray, k: int) -> np.ndarray:
    """True at the k-th, 2k-th, ... step after each reset (a reset follows a True in `resets`)."""
    out = np.zeros(len(resets), dtype=bool)
    step = 0
    for i, reset in enumerate(resets):
        step += 1
        if step == k:
            out[i] = True
        if reset or step == k:
            step = 0
    return out


def load_neorl_npz(task: Task, path: Path) -> OfflineData:
    """A NeoRL npz file (obs, next_obs, action, reward, done, index = trajectory start offsets)."""
    try:
        raw = dict(np.load(path))
    except Exception as error:
        raise SystemExit(f"{path} is not a readable npz file ({type(error).__name__}: {error}).") from None
    missing = [key for key in ("obs", "next_obs", "action", "reward", "done") if key not in raw]
    if missing:
        raise SystemExit(f"{path} is missing the key(s) {missing}; a NeoRL file has obs, next_obs, action, reward, "
                         f"done, index. It has: {sorted(raw)}.")
    n = len(raw["obs"])
    for key in ("next_obs", "action", "reward", "done"):
        if len(raw[key]) != n:
            raise SystemExit(f"{path}: '{key}' has {len(raw[key])} rows but 'obs' has {n}.")
    _require_one_value_per_row(path, raw, ("reward", "done"), n)
    arrays = {"observations": raw["obs"].astype(np.float32), "actions": raw["action"].astype(np.float32),
              "rewards": raw["reward"].astype(np.float32).reshape(n),
              "next_observations": raw["next_obs"].astype(np.float32),
              "terminals": raw["done"].astype(np.float32).reshape(n)}
    source = f"npz:{path}"
    _check_arrays(task, arrays, source)
    episode_ends = arrays["terminals"].copy()
    starts = np.asarray(raw.get("index", []), dtype=np.int64).reshape(-1)
    starts = starts[(starts > 0) & (starts <= n)]
    episode_ends[starts - 1] = 1.0
    return _finish(task, arrays, episode_ends, source, None, _default_eval_gym_id(task))


def _check_arrays(task: Task, arrays: dict, source: str) -> None:
    """Refuse data that does not fit the task: wrong dimensions or non-finite values, naming the source."""
    n = len(arrays["observations"])
    if n == 0:
        raise SystemExit(f"{source}: no transitions left after splitting into episodes.")
    for key, width in (("observations", task.obs_dim), ("next_observations", task.obs_dim), ("actions", task.act_dim)):
        shape = arrays[key].shape
        if arrays[key].ndim != 2 or shape[1] != width:
            raise SystemExit(f"{source}: '{key}' has shape {shape}, but {task.env_id} needs [N, {width}]. "
                             f"Is this the dataset of {task.env_id}?")
    for key, value in arrays.items():
        if len(value) != n:
            raise SystemExit(f"{source}: '{key}' has {len(value)} rows but observations has {n}.")
        bad = ~np.isfinite(value)
        if bad.any():
            rows = np.nonzero(bad.reshape(n, -1).any(-1))[0]
            raise SystemExit(f"{source}: '{key}' has {len(rows)} rows with NaN or inf (first: row {rows[0]}).")


def _finish(task, arrays, episode_ends, source, frame, eval_gym_id) -> OfflineData:
    obs, next_obs = arrays["observations"], arrays["next_observations"]
    jumps = np.zeros(len(obs), dtype=bool)
    jumps[:-1] = np.any(np.abs(next_obs[:-1] - obs[1:]) > 1e-6, axis=-1)  # discontinuity ends a trajectory (§1)
    episode_ends = np.maximum(episode_ends, jumps.astype(np.float32))
    episode_ends[-1] = 1.0
    # IQL/LEQ clip dataset actions into the open interval so that tanh policies can represent them.
    actions = np.clip(arrays["actions"], -1 + 1e-5, 1 - 1e-5)
    scale, shift = reward_scale_and_shift(task, arrays["rewards"], episode_ends)
    digest = hashlib.sha1(task.env_id.encode())
    for value in (obs, actions, arrays["rewards"], next_obs, arrays["terminals"], episode_ends):
        digest.update(np.ascontiguousarray(value).tobytes())
    return OfflineData(obs, actions, arrays["rewards"], next_obs, arrays["terminals"].astype(np.float32),
                       episode_ends.astype(np.float32), scale, shift, digest.hexdigest(), source, frame, eval_gym_id)


def reward_scale_and_shift(task: Task, rewards: np.ndarray, episode_ends: np.ndarray) -> tuple[float, float]:
    """leq-spec §1: mazes r - 1; locomotion/NeoRL r * 1000 / (max - min trajectory return), random data raw."""
    if task.family in ("antmaze", "pointmaze"):
        return 1.0, -1.0
    if task.family == "locomotion" and task.level == "random":
        return 1.0, 0.0
    ends = np.nonzero(episode_ends)[0]
    returns = np.add.reduceat(rewards.astype(np.float64), np.concatenate([[0], ends[:-1] + 1]))
    spread = float(returns.max() - returns.min())
    if spread <= 0:
        warnings.warn(f"{task.env_id}: all {len(returns)} trajectories have the same return ({returns[0]:.3f}), so the "
                      f"IQL scaling 1000 / (max - min return) is undefined; training on raw rewards (scale 1).")
        return 1.0, 0.0
    return 1000.0 / spread, 0.0


def _default_eval_gym_id(task: Task) -> str:
    return f"{ROBOTS[task.robot][0]}-v4"  # D4RL's layout and dynamics (v3 XML on current bindings)


# ---- mazes: geometry ---------------------------------------------------------------------------------------------

def maze_start_goal_cells(task: Task, dataset_id: str | None = None) -> tuple:
    """(start, goal) cells of the eval task, in the row order of the maze the data was collected in."""
    if task.family == "antmaze" and task.maze == "umaze" and dataset_id and dataset_id.startswith("D4RL/antmaze"):
        return MINARI_ANTMAZE_UMAZE_START_GOAL
    start, goal = MAZE_START_GOAL_CELLS[task.maze]
    return start, task.goal_cell or goal


def cell_centre(task: Task, cell) -> np.ndarray:
    """Centre of maze cell (row, column) in the gymnasium-robotics frame (maze centred at 0, row 0 at the top)."""
    rows, cols, scale = len(MAZE_LAYOUTS[task.maze]), len(MAZE_LAYOUTS[task.maze][0]), MAZE_SCALING[task.family]
    return np.array([(cell[1] + 0.5) * scale - cols * scale / 2, rows * scale / 2 - (cell[0] + 0.5) * scale])


def maze_goal_centre(task: Task, frame: str, dataset_id: str | None = None) -> np.ndarray:
    """Centre of the goal region in the data's frame (leq-spec §6)."""
    if frame == "d4rl":
        if task.family != "antmaze":
            raise SystemExit(f"{task.env_id}: D4RL-frame data is only supported for antmaze.")
        return np.array(D4RL_ANTMAZE_GOAL_CENTRES[task.maze])
    return cell_centre(task, maze_start_goal_cells(task, dataset_id)[1])


def _in_goal_region(next_obs: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    return (np.linalg.norm(next_obs[:, :2] - centre, axis=-1) <= radius).astype(np.float32)
# ==== end mirror: task ====


# ==== mirror: evaluate (identical in fqe_pretrain.py, leq_state.py) ====
# Evaluation in the real environment: episodes, success, D4RL-normalised scores, videos.


D4RL_REF_RETURNS = {"hopper": (-20.272305, 3234.3), "walker2d": (1.629008, 4592.3),
                    "halfcheetah": (-280.178953, 12135.0)}  # (random, expert), d4rl/gym_mujoco/__init__.py
NEORL_REF_RETURNS = {"hopper": (5.0, 3294.0), "walker2d": (1.0, 5143.0),
                     "halfcheetah": (-298.0, 12284.0)}  # (min, max), leq-spec §1


# ---- evaluation ---------------------------------------------------------------------------------------------------

class EvalEnv:
    """A gymnasium env seen in the dataset's layout: reset(seed) -> obs, step(a) -> (obs, reward, done, success).

    `done` is termination or the time limit; `success` (mazes) is whether the goal was reached."""

    def __init__(self, env, to_obs):
        self.env, self.to_obs = env, to_obs

    def reset(self, seed: int) -> np.ndarray:
        obs, _ = self.env.reset(seed=seed)
        return self.to_obs(obs)

    def step(self, action: np.ndarray):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self.to_obs(obs), float(reward), bool(terminated or truncated), bool(info.get("success", False))

    def render(self):
        return self.env.render()


def _flat_maze_obs(task: Task):
    def to_obs(obs):
        if task.family == "pointmaze":
            return obs["observation"].astype(np.float32)
        return np.concatenate([obs["achieved_goal"], obs["observation"]]).astype(np.float32)
    return to_obs


def make_eval_env(task: Task, data: OfflineData, render_mode=None) -> EvalEnv:
    """The environment that scores a policy trained on `data`: episodes end on success for mazes."""
    if task.family == "antmaze" and data.maze_frame == "d4rl":
        return make_antmaze_eval_env_for_d4rl_data(task, render_mode)
    if task.family in ("antmaze", "pointmaze"):
        start, goal = maze_start_goal_cells(task, data.source.removeprefix("minari:"))
        env = make_maze_env(task, _maze_map(task, start, goal), False, task.max_episode_steps, render_mode)
        return EvalEnv(env, _flat_maze_obs(task))
    kwargs = {"exclude_current_positions_from_observation": False} if task.family == "neorl" else {}
    if render_mode is not None:
        kwargs.update(width=VIDEO_SIZE, height=VIDEO_SIZE)
    env = make_locomotion_env(task, data.eval_gym_id or _default_eval_gym_id(task), render_mode=render_mode, **kwargs)
    return EvalEnv(env, lambda obs: obs.astype(np.float32))


def make_antmaze_eval_env_for_d4rl_data(task: Task, render_mode=None) -> EvalEnv:
    """Eval env for D4RL-format antmaze data: D4RL's own AntMaze rebuilt on MuJoCo 3 (the d4rl_antmaze block):
    10 Hz, torque 30 * action, (0, 0) at the start cell, D4RL's reset noise and eval goals (LEQ's for ultra),
    observations already in the data's 29-dim layout and frame."""
    env = make_d4rl_antmaze_env(task.maze, render_mode=render_mode, width=VIDEO_SIZE, height=VIDEO_SIZE,
                                max_episode_steps=task.max_episode_steps)
    return EvalEnv(env, lambda obs: obs.astype(np.float32))


def normalized_score(task: Task, episode_return: float, success: bool) -> float:
    """x100: success rate for mazes, D4RL / NeoRL normalised return otherwise."""
    if task.family in ("antmaze", "pointmaze"):
        return 100.0 * float(success)
    low, high = (NEORL_REF_RETURNS if task.family == "neorl" else D4RL_REF_RETURNS)[task.robot]
    return 100.0 * (episode_return - low) / (high - low)


def evaluation_seed(run_seed: int, step: int) -> int:
    """The seed of the first episode of a run's evaluation at `step` (evaluate() resets episode i with it + i).
    Drawn from (run seed, step) so that runs of neighbouring seeds, and evaluations of one run, play independent
    episodes; policies evaluated at the same (run seed, step) play the same ones."""
    return int(np.random.SeedSequence([run_seed, step]).generate_state(1)[0])


def evaluate(task: Task, data: OfflineData, policy, num_episodes: int, seed: int, gamma: float | None = None,
             video_path: str | None = None) -> dict:
    """Run `num_episodes` episodes side by side with the deterministic `policy` (numpy [n, obs] -> [n, act]),
    called once per step on all n episodes (finished ones repeat their last observation: a fixed batch shape).

    Returns mean/std of the x100 scores, per-episode scores, returns and final observations, and (with gamma) the
    discounted return of the training reward r * reward_scale + reward_shift, to compare with a critic's estimate."""
    if video_path and not os.environ.get("DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")  # headless: MuJoCo renders offscreen through EGL
    envs = [make_eval_env(task, data, "rgb_array" if video_path and i == 0 else None) for i in range(num_episodes)]
    obs = np.stack([env.reset(seed=seed + i) for i, env in enumerate(envs)])
    active = np.ones(num_episodes, dtype=bool)
    returns, discounted = np.zeros(num_episodes), np.zeros(num_episodes)
    success = np.zeros(num_episodes, dtype=bool)
    frames = [envs[0].render()] if video_path else None
    for t in range(task.max_episode_steps):
        actions = np.asarray(policy(obs), dtype=np.float32)
        if actions.shape != (num_episodes, task.act_dim):
            raise ValueError(f"policy returned actions of shape {actions.shape}, "
                             f"expected {(num_episodes, task.act_dim)}")
        for i in np.nonzero(active)[0]:
            obs[i], reward, done, reached = envs[i].step(np.clip(actions[i], -1.0, 1.0))
            returns[i] += reward
            if gamma is not None:
                discounted[i] += gamma ** t * (reward * data.reward_scale + data.reward_shift)
            success[i] |= reached
            active[i] = not done
            if i == 0 and frames is not None:
                frames.append(envs[0].render())
        if not active.any():
            break
    if video_path:
        _write_video(frames, video_path, fps=envs[0].env.metadata.get("render_fps", 30))
    for env in envs:
        env.env.close()
    scores = np.array([normalized_score(task, r, s) for r, s in zip(returns, success)])
    result = {"mean": float(scores.mean()), "std": float(scores.std()), "scores": scores, "returns": returns,
              "final_observations": obs}
    if gamma is not None:
        result["discounted_returns"] = discounted
    return result


def _write_video(frames: list, path: str, fps: int) -> None:
    import imageio  # installed with gymnasium-robotics; .gif needs only pillow, .mp4 needs imageio-ffmpeg

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    timing = {"duration": 1000 / fps} if path.endswith(".gif") else {"fps": fps}  # gif frames last `duration` ms
    try:
        imageio.mimsave(path, frames, **timing)
    except Exception as error:
        raise SystemExit(f"could not write the video {path} ({type(error).__name__}: {error}); a .gif path needs "
                         f"no extra package, .mp4 needs `pip install imageio-ffmpeg`.") from None
# ==== end mirror: evaluate ====


# ==== mirror: envs (identical in collect_dataset.py, fqe_pretrain.py, leq_state.py) ====
# The real environments of the state tasks: pointmaze and antmaze from gymnasium-robotics, locomotion.
import warnings


VIDEO_SIZE = 256  # pixels per side of evaluation videos


def _maze_map(task: Task, start, goal) -> list:
    layout = [list(row) for row in MAZE_LAYOUTS[task.maze]]
    layout[start[0]][start[1]], layout[goal[0]][goal[1]] = "r", "g"
    return layout


ADROIT_NOTICE = "environment's reward functions were updated in v1.2.1 without an environment version update"


def import_gymnasium_robotics():
    """gymnasium_robotics, without the notice it prints at import about its Adroit hand envs' rewards (none of
    our tasks). It is a print to stderr, not a warning, so it is caught there; anything else printed passes."""
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stderr(printed):
        import gymnasium_robotics
    lines = printed.getvalue().splitlines(keepends=True)
    sys.stderr.write("".join(line for line in lines if ADROIT_NOTICE not in line))
    return gymnasium_robotics


def make_maze_env(task: Task, maze_map, continuing_task: bool, max_episode_steps: int, render_mode=None, **kwargs):
    """A gymnasium-robotics PointMaze (v3) or AntMaze (v4, 27-dim ant obs as Minari's data) on `maze_map`."""
    import gymnasium as gym

    gym.register_envs(import_gymnasium_robotics())
    env_id = "PointMaze_UMaze-v3" if task.family == "pointmaze" else "AntMaze_UMaze-v4"
    if render_mode is not None:
        kwargs.update(width=VIDEO_SIZE, height=VIDEO_SIZE)
    return gym.make(env_id, maze_map=maze_map, continuing_task=continuing_task, max_episode_steps=max_episode_steps,
                    render_mode=render_mode, **kwargs)


def make_locomotion_env(task: Task, gym_id: str, **kwargs):
    """gymnasium's MuJoCo env `gym_id`; v4 is chosen on purpose (D4RL's dynamics), so its deprecation note is muted."""
    import gymnasium as gym

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is out of date", category=DeprecationWarning)
        return gym.make(gym_id, max_episode_steps=task.max_episode_steps, **kwargs)
# ==== end mirror: envs ====


# ==== mirror: agent (identical in fqe_pretrain.py, leq_state.py) ====
"""Actor, critic and their pretraining (leq-spec §1, §2, §4). Public API (kept stable):

  normalization_stats(observations, actions) -> dict of float32 tensors obs_mean, obs_std, obs_act_mean,
      obs_act_std: the dataset statistics both networks standardise with (std < 1e-12 -> 1).
  symlog(x) = sign(x) log(1 + |x|);  InputNormalizer(mean, std)(x) = symlog((x - mean) / std).
  Actor(obs_mean, obs_std, act_dim, hidden_dim=256, num_layers=3, trainable_scaler=False)
      actor(obs [..., obs]) -> tanh(mu(obs)) [..., act] (deterministic); actor.mu(obs): pre-tanh mean;
      actor.explore(obs) -> tanh(mu + exp(log_std) * eps), eps ~ N(0, 1); actor.log_std: [act], starts at 0.
  Critic(obs_act_mean, obs_act_std, hidden_dim=256, num_layers=3)
      critic(obs [..., obs], act [..., act]) -> Q [...] (one Q; LayerNorm + ReLU after every hidden layer).
  ema_copy(critic) -> frozen copy;  ema_update_(ema_critic, critic, rate): ema <- (1 - rate) ema + rate critic.
  transition_tensors(data, device) -> dict obs, act, reward (training reward rewards * reward_scale +
      reward_shift), mask (1 - terminal), next_obs: float32 tensors on the device.
  bc_loss(actor, obs, act);  fqe_loss(critic, ema_critic, policy, batch, gamma)
  make_bc_update(actor, optimizer, data, batch_size) / make_fqe_update(critic, ema_critic, policy, optimizer,
      data, batch_size, gamma, ema_rate): one gradient step on a uniform minibatch
      drawn on the device; returns detached metric tensors (no host sync), so it can be compiled.
  run_updates(update, steps, desc, log_interval, use_cudagraphs=False, log_fn=None) -> dict of
      floats: runs the (compiled) update with a tqdm progress bar (losses, ETA); metrics are averaged over each
      log interval and read back only at log time.
  policy_value(critic, actor, obs) -> Q(obs, actor(obs)), no grad (in fqe_pretrain.py only).
  pretrain_checkpoint_path(env_id, seed, fingerprint) -> checkpoints/pretrain/{env_id}__seed{seed}__{fp[:10]}.pt
  save_pretrain_checkpoint(path, actor, critic, ema_critic, fingerprint, args, metrics=None): kind "pretrain";
      actor and critic must share hidden_dim and num_layers; ema_critic is FQE's own EMA copy (LEQ restarts its EMA
      from the FQE critic, leq-spec §4).
  load_pretrain_checkpoint(path, fingerprint, device) -> (actor, critic, ema_critic, checkpoint dict) (in leq_state.py
      only); refuses a missing file, another kind, or a checkpoint trained on another dataset (checkpoints block).
"""
import copy
import math

from torch import nn


def normalization_stats(observations, actions) -> dict:
    """Mean and std of the observations (actor input) and of observation+action (critic input); leq-spec §1."""
    obs = np.asarray(observations, dtype=np.float64)
    obs_act = np.concatenate([obs, np.asarray(actions, dtype=np.float64)], axis=-1)
    stats = {}
    for name, x in (("obs", obs), ("obs_act", obs_act)):
        std = x.std(axis=0)
        std[std < 1e-12] = 1.0  # constant inputs stay unscaled (OfflineRL-Kit's scaler rule)
        stats[f"{name}_mean"] = torch.as_tensor(x.mean(axis=0), dtype=torch.float32)
        stats[f"{name}_std"] = torch.as_tensor(std, dtype=torch.float32)
    return stats


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


class InputNormalizer(nn.Module):
    """Standardise with dataset statistics, then symlog (leq-spec §1). trainable=True makes mean and std
    parameters that the owner's optimiser updates, as the authors' actor does (their policy.py)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, trainable: bool = False):
        super().__init__()
        for name, value in (("mean", mean), ("std", std)):
            value = torch.as_tensor(value, dtype=torch.float32).clone()
            if trainable:
                self.register_parameter(name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return symlog((x - self.mean) / self.std)


def _mlp(in_dim: int, hidden_dim: int, num_layers: int, out_dim: int, layer_norm: bool) -> nn.Sequential:
    layers = []
    for i in range(num_layers):
        layers.append(nn.Linear(in_dim if i == 0 else hidden_dim, hidden_dim))
        if layer_norm:
            layers.append(nn.LayerNorm(hidden_dim, eps=1e-6))  # flax's default eps, as in the authors' code
        layers.append(nn.ReLU())
    layers.append(nn.Linear(hidden_dim, out_dim))
    for layer in layers:
        if isinstance(layer, nn.Linear):  # orthogonal init with gain sqrt(2), zero bias, every layer (leq-spec §2)
            nn.init.orthogonal_(layer.weight, gain=math.sqrt(2.0))
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """Deterministic a = tanh(mu(s)), 3 x 256 ReLU; log_std is state-independent exploration noise (leq-spec §2)."""

    def __init__(self, obs_mean, obs_std, act_dim: int, hidden_dim: int = 256, num_layers: int = 3,
                 trainable_scaler: bool = False):
        super().__init__()
        self.normalizer = InputNormalizer(obs_mean, obs_std, trainable_scaler)
        self.net = _mlp(self.normalizer.mean.numel(), hidden_dim, num_layers, act_dim, layer_norm=False)
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def mu(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalizer(obs))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mu(obs))

    def explore(self, obs: torch.Tensor) -> torch.Tensor:
        """tanh(mu + exp(log_std) * eps): the noisy action of dataset expansion (sigma_exp = exp(0) = 1)."""
        mu = self.mu(obs)
        return torch.tanh(mu + self.log_std.exp() * torch.randn_like(mu))


class Critic(nn.Module):
    """One Q(s, a): 3 x 256, LayerNorm then ReLU after every hidden layer (leq-spec §2)."""

    def __init__(self, obs_act_mean, obs_act_std, hidden_dim: int = 256, num_layers: int = 3):
        super().__init__()
        self.normalizer = InputNormalizer(obs_act_mean, obs_act_std)
        self.net = _mlp(self.normalizer.mean.numel(), hidden_dim, num_layers, 1, layer_norm=True)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalizer(torch.cat([obs, act], dim=-1))).squeeze(-1)


def ema_copy(critic: Critic) -> Critic:
    return copy.deepcopy(critic).requires_grad_(False)


@torch.no_grad()
def ema_update_(ema_critic: nn.Module, critic: nn.Module, rate: float) -> None:
    """Q_bar <- (1 - rate) Q_bar + rate Q, one fused multi-tensor op."""
    torch._foreach_lerp_(list(ema_critic.parameters()), list(critic.parameters()), rate)


def transition_tensors(data, device) -> dict:
    """The offline transitions on the device, with the reward and mask the critic trains on (leq-spec §1)."""

    def tensor(x):
        return torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)

    tensors = {
        "obs": tensor(data.observations),
        "act": tensor(data.actions),
        "reward": tensor(np.asarray(data.rewards, dtype=np.float32) * data.reward_scale + data.reward_shift),
        "mask": 1.0 - tensor(data.terminals),
        "next_obs": tensor(data.next_observations),
    }
    if torch.device(device).type == "cuda":  # fixed addresses: CUDA-graph replays read the data in place, no copy
        for t in tensors.values():
            torch._dynamo.mark_static_address(t)
    return tensors


def bc_loss(actor: Actor, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """Mean over batch and action dims of (tanh(mu(s)) - a)^2 (leq-spec §4)."""
    return (actor(obs) - act).pow(2).mean()


def fqe_loss(critic, ema_critic, policy, batch: dict, gamma: float):
    """FQE with the EMA regulariser (leq-spec §4, paper Algorithm 2 with gamma), as the authors' LEQ code
    (update_q_fqe) computes it: mean (Q(s,a) - y)^2 + mean (Q(s,a) - Q_bar(s,a))^2, y = r + gamma * mask *
    sg Q(s', pi(s')). Returns (loss, td_loss, ema_loss, q)."""
    obs, act = batch["obs"], batch["act"]
    with torch.no_grad():
        next_act = policy(batch["next_obs"])
        target = batch["reward"] + gamma * batch["mask"] * critic(batch["next_obs"], next_act)
        ema_q = ema_critic(obs, act)
    q = critic(obs, act)
    td_loss = (q - target).pow(2).mean()
    ema_loss = (q - ema_q).pow(2).mean()
    return td_loss + ema_loss, td_loss, ema_loss, q


def _sample(data: dict, batch_size: int, keys) -> dict:
    n = data["obs"].shape[0]
    index = torch.randint(0, n, (batch_size,), device=data["obs"].device)
    return {key: data[key][index] for key in keys}


def make_bc_update(actor: Actor, optimizer, data: dict, batch_size: int):
    def update() -> dict:
        batch = _sample(data, batch_size, ("obs", "act"))
        loss = bc_loss(actor, batch["obs"], batch["act"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"bc_loss": loss.detach()}

    return update


def make_fqe_update(critic, ema_critic, policy, optimizer, data: dict, batch_size: int, gamma: float,
                    ema_rate: float):
    def update() -> dict:
        batch = _sample(data, batch_size, ("obs", "act", "reward", "mask", "next_obs"))
        loss, td_loss, ema_loss, q = fqe_loss(critic, ema_critic, policy, batch, gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema_update_(ema_critic, critic, ema_rate)
        return {"fqe_loss": loss.detach(), "td_loss": td_loss.detach(), "ema_loss": ema_loss.detach(),
                "q_mean": q.detach().mean()}

    return update


def run_updates(update, steps: int, desc: str, log_interval: int, use_cudagraphs: bool = False, log_fn=None) -> dict:
    """Call update() `steps` times behind a progress bar. Metrics are summed on the device and read back
    (averaged) once per log interval; log_fn(step, metrics) receives them, e.g. for wandb."""
    from tqdm import tqdm

    sums, count, averages = None, 0, {}
    bar = tqdm(range(1, steps + 1), desc=desc, dynamic_ncols=True)
    for step in bar:
        if use_cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        metrics = update()
        sums = {k: v.clone() for k, v in metrics.items()} if sums is None else {k: sums[k] + metrics[k] for k in sums}
        count += 1
        if step % log_interval == 0 or step == steps:
            averages = {k: v.item() / count for k, v in sums.items()}
            sums, count = None, 0
            diverged = [k for k, v in averages.items() if not math.isfinite(v)]
            if diverged:
                raise SystemExit(f"{desc} diverged at step {step}: {', '.join(diverged)} not finite. Stopped before "
                                 f"writing a checkpoint; try a lower learning rate.")
            bar.set_postfix({k: f"{v:.4g}" for k, v in averages.items()})
            if log_fn is not None:
                log_fn(step, averages)
    return averages


def pretrain_checkpoint_path(env_id: str, seed: int, fingerprint: str) -> Path:
    return Path("checkpoints") / "pretrain" / f"{env_id}__seed{seed}__{fingerprint[:10]}.pt"


def _network_sizes(actor: Actor) -> dict:
    linears = [m for m in actor.net if isinstance(m, nn.Linear)]
    return {"act_dim": linears[-1].out_features, "hidden_dim": linears[0].out_features, "num_layers": len(linears) - 1,
            "trainable_scaler": isinstance(actor.normalizer.mean, nn.Parameter)}


def save_pretrain_checkpoint(path, actor: Actor, critic: Critic, ema_critic: Critic, fingerprint: str, args,
                             metrics: dict | None = None) -> None:
    """Write actor, critic, EMA critic, normalisation statistics, fingerprint and args atomically."""
    atomic_save(
        {
            "kind": "pretrain",
            "fingerprint": fingerprint,
            "args": dict(vars(args)) if not isinstance(args, dict) else dict(args),
            "network": _network_sizes(actor),
            "normalization": {
                "obs_mean": actor.normalizer.mean.cpu(), "obs_std": actor.normalizer.std.cpu(),
                "obs_act_mean": critic.normalizer.mean.cpu(), "obs_act_std": critic.normalizer.std.cpu(),
            },
            "actor": {k: v.cpu() for k, v in actor.state_dict().items()},
            "critic": {k: v.cpu() for k, v in critic.state_dict().items()},
            "ema_critic": {k: v.cpu() for k, v in ema_critic.state_dict().items()},
            "metrics": metrics or {},
            "software": software_versions(),
        },
        path,
    )
# ==== end mirror: agent ====


if __name__ == "__main__":
    main(tyro.cli(Args))
