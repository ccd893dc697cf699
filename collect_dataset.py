"""collect_dataset.py: offline datasets from the real environments, for users without internet.

Generates, from gymnasium / gymnasium-robotics environments, the datasets this project makes and stores them as
Minari datasets under $MINARI_DATASETS_PATH (minari's default ~/.minari/datasets when unset):

    python collect_dataset.py pointmaze-umaze-diverse            # planner + PD controller, 1M steps
    python collect_dataset.py hopper-random --steps 100000       # uniform random actions, Hopper-v4
    python collect_dataset.py antmaze-umaze --steps 2000         # random-action AntMaze data, for tests only

The other scripts (train_world_model.py, fqe_pretrain.py, leq_state.py) run this script (default size and seed)
when their default dataset is missing and it sits beside them; run it yourself to do that ahead of time, or with
another size, seed or location. After writing, it loads the dataset back and prints what the loaders see.
The collection code (planner, collectors, Minari writer) is in the `collect` block, which no other script carries.
"""

import contextlib
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro


@dataclass
class Args:
    env_id: tyro.conf.Positional[str]
    """the task whose dataset to generate: pointmaze-{umaze,medium,large,ultra}-{diverse,play},
    {hopper,walker2d,halfcheetah}-random, or antmaze-* (random actions, for tests only)"""
    steps: int = 1_000_000
    """number of transitions to collect"""
    seed: int = 0
    """seed of the environment, the controller noise and the random actions"""
    datasets_path: str | None = None
    """root folder of the Minari datasets to write into (default: $MINARI_DATASETS_PATH, else ~/.minari/datasets)"""
    dataset_id: str | None = None
    """Minari id to write (default: the id the other scripts read for this env id)"""
    force: bool = False
    """replace the dataset if it already exists"""
    random_action_share: float | None = None
    """pointmaze: share of the steps collected as uniform-random-action episodes (wall contacts; README Status);
    None = the default 0.2; 0 restores Minari-style planner-only data, written under the -v1 id"""
    random_action_hold: float = 1.0
    """pointmaze: mean number of steps each random action is held (a new one with probability 1/hold per step); 1 =
    a new action every step (the default data); longer holds press the point into walls and corners at rest"""


def main(args: Args) -> None:
    refuse(out_of_range(args, positive=("steps",)))  # generate_dataset refuses env ids it cannot make before work
    if args.datasets_path is not None:
        os.environ["MINARI_DATASETS_PATH"] = str(Path(args.datasets_path).expanduser().resolve())
    task = get_task(args.env_id)
    seed_everything(args.seed)
    start = time.perf_counter()
    share = POINTMAZE_RANDOM_ACTION_SHARE if args.random_action_share is None else args.random_action_share
    if not 0.0 <= share < 1.0:
        raise SystemExit(f"--random-action-share must be in [0, 1), got {share}.")
    if not args.random_action_hold >= 1.0:
        raise SystemExit(f"--random-action-hold is a mean number of steps, at least 1; got {args.random_action_hold}.")
    dataset_id = generate_dataset(task, args.steps, args.seed, args.force, args.dataset_id, share,
                                  args.random_action_hold)
    elapsed = time.perf_counter() - start
    print(f"wrote {minari_root() / dataset_id} in {elapsed:.1f} s ({1e6 * elapsed / args.steps:.0f} us/step)")
    data = load_dataset(task, dataset_id)
    print(f"read back: {len(data)} transitions, {int(data.episode_ends.sum())} trajectories, "
          f"{int(data.terminals.sum())} terminals, mean raw reward {data.rewards.mean():.4f}, "
          f"fingerprint {data.fingerprint[:10]}")


# =================================================================================================================
# Support code. Everything below is mirrored: each block is identical in the scripts its header names
# (edit one copy, then `python tools/sync_mirrors.py <script> -b NAME`; tests/test_mirrors.py checks).
# =================================================================================================================


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


# ==== mirror: generated_data (identical in collect_dataset.py, leq_state.py) ====
# The size of a generated default dataset: collect_dataset.py makes it, leq_state.py's plan prices it.


GENERATED_STEPS = 1_000_000  # transitions of a generated default dataset
# ==== end mirror: generated_data ====


# ==== mirror: collect (identical in collect_dataset.py) ====
# Data collection (collect_dataset.py only): the pointmaze planner, random-action collectors, Minari writer.
from collections import deque


PLAY_GOAL_CELLS = {  # "play" data: goals from these few cells only ("diverse": from every free cell)
    "umaze": [(1, 1), (1, 3), (3, 1)],
    "medium": [(1, 1), (2, 6), (5, 1), (6, 5), (6, 6)],
    "large": [(1, 1), (1, 6), (3, 5), (3, 10), (5, 2), (7, 4), (7, 6), (7, 9)],
    "ultra": [(1, 1), (1, 14), (3, 9), (5, 3), (5, 13), (8, 5), (8, 11), (10, 4), (10, 14)],
}
POINTMAZE_RANDOM_ACTION_SHARE = 0.2  # generated pointmaze data: share of uniform-random-action steps (README)
RANDOM_EPISODE_STEPS = 500  # length of each random-action episode, from a random reset


# ---- datasets this project generates -----------------------------------------------------------------------------

def generate_dataset(task: Task, steps: int = GENERATED_STEPS, seed: int = 0, force: bool = False,
                     dataset_id: str | None = None, random_action_share: float = POINTMAZE_RANDOM_ACTION_SHARE,
                     random_action_hold: float = 1.0) -> str:
    """Collect `steps` transitions in the real environment and store them as a Minari dataset; returns its id.

    pointmaze-*: cell planner + PD controller with action noise (D4RL/Minari style), a new goal at each success,
    then `random_action_share` of the steps as uniform-random-action episodes from random resets (the wall contacts
    the world model needs; 0 gives Minari-style data, stored under the -v1 id), each random action held for
    `random_action_hold` steps on average;
    {hopper,walker2d,halfcheetah}-random: uniform random actions in the gymnasium v4 env (D4RL's layout);
    antmaze-*: uniform random actions in gymnasium-robotics' AntMaze (for tests only: no ant controller here)."""
    if task.family == "pointmaze" or (task.family == "locomotion" and task.level == "random"):
        dataset_id = dataset_id or task.default_dataset
        collect = collect_locomotion_random
        if task.family == "pointmaze":
            if random_action_share != POINTMAZE_RANDOM_ACTION_SHARE and dataset_id == task.default_dataset:
                if random_action_share != 0.0:
                    raise SystemExit(f"--random-action-share {random_action_share} is neither the default "
                                     f"({POINTMAZE_RANDOM_ACTION_SHARE}) nor 0 (Minari-style): name the dataset with "
                                     f"--dataset-id.")
                dataset_id = dataset_id.removesuffix("-v2") + "-v1"
            if random_action_hold != 1.0 and dataset_id == task.default_dataset:
                raise SystemExit(f"--random-action-hold {random_action_hold} changes the default data: name the "
                                 f"dataset with --dataset-id.")
            collect = lambda task, steps, seed: collect_pointmaze(task, steps, seed, random_action_share,
                                                                  random_action_hold)
    elif task.family == "antmaze":
        dataset_id = dataset_id or f"{GENERATED_NAMESPACE}/antmaze/{task.maze}-random-v0"
        collect = collect_antmaze_random
    else:
        raise SystemExit(f"{task.env_id}: this project generates only pointmaze-*, *-random locomotion and (for "
                         f"tests) random-action antmaze data. {_how_to_get_data(task)}")
    target = minari_root() / dataset_id
    if (target / "data").is_dir() and not force:
        raise SystemExit(f"{target} already exists; pass --force to replace it.")
    episodes, env, summary = collect(task, steps, seed)
    _write_minari(dataset_id, episodes, env, summary, seed)
    print(summary)
    return dataset_id


def _write_minari(dataset_id: str, episodes: list, env, description: str, seed: int) -> None:
    """Write to a temporary root, then move into place: a crash never leaves half a dataset."""
    import shutil

    import minari

    root = minari_root()
    tmp_root = root / f".tmp-{os.getpid()}"
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(tmp_root)
    try:
        minari.create_dataset_from_buffers(
            dataset_id=dataset_id, buffer=episodes, env=env, eval_env=env.spec,
            algorithm_name=description.split(":")[0],
            author="leq-pytorch collect_dataset.py", author_email="n/a", code_permalink="collect_dataset.py",
            description=f"{description} (seed {seed})")
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH")
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous
        env.close()
    target = root / dataset_id
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp_root / dataset_id, target)
    shutil.rmtree(tmp_root, ignore_errors=True)


def _episode_buffer(index: int, seed, observations, actions, rewards, terminations, truncations):
    from minari.data_collector import EpisodeBuffer

    as_array = (lambda v: {k: np.asarray(x) for k, x in v.items()}) if isinstance(observations, dict) else np.asarray
    return EpisodeBuffer(id=index, seed=seed, observations=as_array(observations),
                         actions=np.asarray(actions, dtype=np.float32), rewards=np.asarray(rewards, dtype=np.float64),
                         terminations=np.asarray(terminations, dtype=bool),
                         truncations=np.asarray(truncations, dtype=bool))


class MazePlanner:
    """Shortest paths over maze cells (BFS from the goal cell) and the next waypoint toward the goal."""

    def __init__(self, task: Task):
        self.task, self.layout, self.distances = task, MAZE_LAYOUTS[task.maze], {}
        self.scale = MAZE_SCALING[task.family]

    def cell_of(self, xy) -> tuple:
        rows, cols = len(self.layout), len(self.layout[0])
        return int(np.floor(rows / 2 - xy[1] / self.scale)), int(np.floor(xy[0] / self.scale + cols / 2))

    def _distances_to(self, goal_cell) -> dict:
        if goal_cell not in self.distances:
            distance, queue = {goal_cell: 0}, deque([goal_cell])
            while queue:
                row, col = queue.popleft()
                for neighbour in ((row + 1, col), (row - 1, col), (row, col + 1), (row, col - 1)):
                    if self.layout[neighbour[0]][neighbour[1]] != 1 and neighbour not in distance:
                        distance[neighbour] = distance[(row, col)] + 1
                        queue.append(neighbour)
            self.distances[goal_cell] = distance
        return self.distances[goal_cell]

    def waypoint(self, xy, goal_xy) -> np.ndarray:
        """The goal itself in the goal's cell, else the centre of the neighbouring cell one step closer."""
        here, goal_cell = self.cell_of(xy), self.cell_of(goal_xy)
        distance = self._distances_to(goal_cell)
        if here == goal_cell or here not in distance:
            return np.asarray(goal_xy)
        row, col = here
        step = min(((row + 1, col), (row - 1, col), (row, col + 1), (row, col - 1)),
                   key=lambda cell: distance.get(cell, np.inf))
        return cell_centre(self.task, step)

    def next_waypoint(self, xy, goal_xy, rng: np.random.Generator) -> np.ndarray:
        """Minari's waypoint after the one at xy: the next cell centre jittered by -U(0, 0.2) per axis, or the goal."""
        waypoint = self.waypoint(cell_centre(self.task, self.cell_of(xy)), goal_xy)
        if self.cell_of(waypoint) == self.cell_of(goal_xy):
            return np.asarray(goal_xy)
        return waypoint - rng.uniform(0.0, 0.2, 2)


def collect_pointmaze(task: Task, steps: int, seed: int, random_action_share: float = 0.0,
                      random_action_hold: float = 1.0):
    """PointMaze driven as Minari's pointmaze data: PD control a = 10 (waypoint - xy) - v + N(0, 0.5^2) toward
    each waypoint of a shortest cell path (MazePlanner.next_waypoint), held until the point is within 0.1 of it.
    Holding each waypoint makes the point overshoot at turns and touch walls; without that contact data the world
    model cannot learn that walls stop the point. The env draws a new goal at each
    success, and an episode ends there (or after max_episode_steps without success, when the env is reset).
    The last `random_action_share` of the steps are uniform-random-action episodes of RANDOM_EPISODE_STEPS steps,
    each from a random reset: they press into walls and corners that the planner's paths never touch. Each random
    action is held for `random_action_hold` steps on average (a new one with probability 1 / hold at each step)."""
    from tqdm import tqdm

    layout = [list(row) for row in MAZE_LAYOUTS[task.maze]]
    if task.level == "play":
        for row, col in PLAY_GOAL_CELLS[task.maze]:
            layout[row][col] = "g"  # goals only here; resets anywhere
    env = make_maze_env(task, layout, continuing_task=True, max_episode_steps=10 * steps + 1, reset_target=True)
    planner, rng = MazePlanner(task), np.random.default_rng(seed)
    episodes, reached, timed_out = [], 0, 0
    obs, _ = env.reset(seed=seed)
    episode, waypoint = _new_maze_episode(obs), None
    planner_steps = steps - round(random_action_share * steps)
    for _ in tqdm(range(planner_steps), desc=f"collecting {task.env_id}", mininterval=1.0):
        point = obs["observation"]
        goal = env.unwrapped.goal.copy()  # the obs of a success step still shows the goal just reached
        if waypoint is None:
            waypoint = planner.next_waypoint(point[:2], goal, rng)
        elif np.linalg.norm(waypoint - point[:2]) < 0.1:  # Minari's waypoint threshold
            waypoint = planner.next_waypoint(waypoint, goal, rng)
        action = 10.0 * (waypoint - point[:2]) - point[2:] + rng.normal(0.0, 0.5, 2)
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        obs, reward, terminated, _, info = env.step(action)
        too_long = len(episode["actions"]) + 1 >= task.max_episode_steps and not info["success"]
        _append_maze_step(episode, obs, action, reward, terminated, info["success"] or too_long)
        reached += info["success"]
        if info["success"] or too_long:
            episodes.append(_episode_buffer(len(episodes), seed, **episode))
            timed_out += too_long
            if too_long:
                obs, _ = env.reset()
            episode, waypoint = _new_maze_episode(obs), None
    if episode["actions"]:
        episode["truncations"][-1] = True
        episodes.append(_episode_buffer(len(episodes), seed, **episode))
    rate = reached / max(reached + timed_out, 1)
    summary = (f"planner+PD: {planner_steps} steps, {len(episodes)} episodes; the controller reached its goal in "
               f"{reached} of {reached + timed_out} finished episodes ({100 * rate:.1f}%)")
    if planner_steps < steps:
        random_episodes = random_maze_episodes(env, steps - planner_steps, rng, seed, len(episodes), random_action_hold)
        episodes += random_episodes
        summary += (f"; then uniform random actions (each held {random_action_hold:g} steps on average): "
                    f"{steps - planner_steps} steps, {len(random_episodes)} episodes")
    return episodes, env, summary


def random_maze_episodes(env, steps: int, rng: np.random.Generator, seed: int, first_index: int,
                         hold: float = 1.0) -> list:
    """Episodes of uniform random actions, each RANDOM_EPISODE_STEPS long (the last one shorter) from a new reset;
    each action is kept for `hold` steps on average (hold 1 draws no extra random numbers: the default data)."""
    episodes = []
    for begin in range(0, steps, RANDOM_EPISODE_STEPS):
        obs, _ = env.reset()
        episode = _new_maze_episode(obs)
        length = min(RANDOM_EPISODE_STEPS, steps - begin)
        for t in range(length):
            if t == 0 or hold == 1.0 or rng.random() < 1.0 / hold:
                action = rng.uniform(-1.0, 1.0, 2).astype(np.float32)
            obs, reward, terminated, _, _ = env.step(action)
            _append_maze_step(episode, obs, action, reward, terminated, t == length - 1)
        episodes.append(_episode_buffer(first_index + len(episodes), seed, **episode))
    return episodes


def _new_maze_episode(obs) -> dict:
    return {"observations": {key: [value] for key, value in obs.items()}, "actions": [], "rewards": [],
            "terminations": [], "truncations": []}


def _append_maze_step(episode, obs, action, reward, terminated, truncated) -> None:
    for key, value in obs.items():
        episode["observations"][key].append(value)
    episode["actions"].append(action)
    episode["rewards"].append(reward)
    episode["terminations"].append(terminated)
    episode["truncations"].append(truncated)


def collect_antmaze_random(task: Task, steps: int, seed: int):
    """Uniform random actions in gymnasium-robotics' AntMaze on the eval map (tests only: the ant barely moves)."""
    from tqdm import tqdm

    env = make_maze_env(task, _maze_map(task, *MAZE_START_GOAL_CELLS[task.maze]), True, task.max_episode_steps)
    env.action_space.seed(seed)
    episodes = []
    obs, _ = env.reset(seed=seed)
    episode = _new_maze_episode(obs)
    for _ in tqdm(range(steps), desc=f"collecting random {task.env_id}", mininterval=1.0):
        action = env.action_space.sample()
        obs, reward, terminated, truncated, _ = env.step(action)
        _append_maze_step(episode, obs, action, reward, terminated, truncated)
        if terminated or truncated:
            episodes.append(_episode_buffer(len(episodes), seed, **episode))
            obs, _ = env.reset()
            episode = _new_maze_episode(obs)
    if episode["actions"]:
        episode["truncations"][-1] = True
        episodes.append(_episode_buffer(len(episodes), seed, **episode))
    return episodes, env, f"random actions: {steps} steps, {len(episodes)} episodes"


def collect_locomotion_random(task: Task, steps: int, seed: int):
    """Uniform random actions in the gymnasium v4 env (D4RL's observation layout), episodes of at most 1000 steps."""
    from tqdm import tqdm

    env = make_locomotion_env(task, _default_eval_gym_id(task))
    env.action_space.seed(seed)
    episodes, returns = [], []
    obs, _ = env.reset(seed=seed)
    episode = {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}
    for _ in tqdm(range(steps), desc=f"collecting {task.env_id}", mininterval=1.0):
        action = env.action_space.sample()
        obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in (("observations", obs), ("actions", action), ("rewards", reward),
                           ("terminations", terminated), ("truncations", truncated)):
            episode[key].append(value)
        if terminated or truncated:
            episodes.append(_episode_buffer(len(episodes), seed, **episode))
            returns.append(sum(episode["rewards"]))
            obs, _ = env.reset()
            episode = {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}
    if episode["actions"]:
        episode["truncations"][-1] = True
        episodes.append(_episode_buffer(len(episodes), seed, **episode))
    summary = (f"random actions: {steps} steps, {len(episodes)} episodes, mean finished-episode return "
               f"{np.mean(returns) if returns else float('nan'):.1f}")
    return episodes, env, summary
# ==== end mirror: collect ====


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


if __name__ == "__main__":
    main(tyro.cli(Args))
