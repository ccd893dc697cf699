"""Train the probabilistic ensemble world model of LEQ (OfflineRL-Kit's training, batched and fast).

    python train_world_model.py --env-id pointmaze-umaze-diverse
    python train_world_model.py --env-id hopper-medium --dataset-path hopper_medium-v2.hdf5

Seven probabilistic MLPs (4 x 200, SiLU) predict (next_obs - obs, reward) as Gaussians; training reproduces
OfflineRL-Kit's EnsembleDynamics.train, which the LEQ authors used (leq-spec section 3): holdout min(20%, 1000),
bootstrap per member, Adam 1e-3, batch 256, early stop after 5 epochs without a >1% holdout improvement,
every member restored to its best snapshot, elites = the 5 best. All members run in one batched matmul per
layer; data, bootstrap and shuffles stay on the device; --compile / --cudagraphs compile the training step.
The checkpoint (checkpoints/world_model/{env_id}__seed{seed}__{fingerprint[:10]}.pt by default) is what
leq_state.py loads.

Data flow: offline dataset (load_dataset; a missing generated default is made by collect_dataset.py) ->
train/holdout split and scaling -> train_dynamics (the world_model block) -> checkpoint [-> --export-offlinerlkit].
Layout: Args, then the training run and the OfflineRL-Kit export, then main; below the banner, the support code shared with the other
scripts (mirrored blocks: one copy per script, kept identical by tools/sync_mirrors.py).
"""

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
    env_id: str = "pointmaze-umaze-diverse"
    """task id of the shared registry (e.g. antmaze-umaze, hopper-medium, pointmaze-umaze-diverse)"""
    dataset_path: str | None = None
    """a D4RL-format hdf5 or NeoRL npz file to use instead of the registry's default source"""
    download: bool = False
    """let Minari download the dataset when it is not on disk"""
    seed: int = 1
    """random seed (also part of the default checkpoint name)"""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'"""
    compile: Annotated[bool | None, tyro.conf.DisallowNone] = None
    """torch.compile the training step; default: on (CUDA, and the CPU where it measured faster per epoch, compile
    included: README, Speed); --compile / --no-compile override"""
    cudagraphs: bool = False
    """capture the compiled training step as CUDA graphs (CUDA only)"""
    torch_threads: int = 0
    """CPU threads for torch (0: torch's default); 1 is far faster when other processes share the cores"""
    track: bool = False
    """log to Weights & Biases"""
    wandb_project_name: str = "leq-pytorch"
    """wandb project"""
    wandb_entity: str | None = None
    """wandb entity (team)"""
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """name of this experiment"""
    checkpoint_path: str | None = None
    """where to write the checkpoint; None = checkpoints/world_model/{env_id}__seed{seed}__{fingerprint[:10]}.pt"""

    num_members: int = 7
    """ensemble size"""
    num_elites: int = 5
    """members kept for imagined rollouts (lowest holdout MSE)"""
    hidden_dims: tuple[int, ...] = (200, 200, 200, 200)
    """hidden layer widths"""
    weight_decays: tuple[float, ...] = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)
    """L2 coefficient of each layer's weights in the loss (one per hidden layer, then the output layer)"""
    learning_rate: float = 1e-3
    """Adam learning rate"""
    batch_size: int = 256
    """minibatch size per member"""
    holdout_ratio: float = 0.2
    """share of transitions held out for validation (capped by max_holdout_size)"""
    max_holdout_size: int = 1000
    """at most this many holdout transitions"""
    logvar_loss_coef: float = 0.01
    """weight of the penalty on the learned log-variance bounds"""
    improvement_threshold: float = 0.01
    """a member improves when its holdout MSE drops by more than this fraction of its best"""
    max_epochs_since_update: int = 5
    """stop after this many epochs without any member improving"""
    max_epochs: int | None = None
    """hard cap on epochs (None: run until the early stop, as the LEQ authors did)"""
    export_offlinerlkit: str | None = None
    """also write dynamics.pth, mu.npy, std.npy in OfflineRL-Kit's layout (what the authors' JAX LEQ loads) here"""


def export_offlinerlkit(model: "EnsembleDynamics", folder) -> None:
    """Write the model as OfflineRL-Kit saves it (anchors 4.7): dynamics.pth, the state_dict of its
    EnsembleDynamicsModel (backbones.{i} / output_layer with weight, bias, saved_weight, saved_bias; max_logvar,
    min_logvar, elites), and the scaler as mu.npy / std.npy of shape [1, obs_dim + act_dim]."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    last = len(model.weights) - 1
    for i, (weight, bias) in enumerate(zip(model.weights, model.biases)):
        prefix = "output_layer" if i == last else f"backbones.{i}"
        for name, value in [("weight", weight), ("bias", bias), ("saved_weight", weight), ("saved_bias", bias)]:
            state[f"{prefix}.{name}"] = value.detach().cpu().clone()  # snapshots already restored: saved = live
    for name in ["max_logvar", "min_logvar", "elites"]:
        state[name] = getattr(model, name).detach().cpu().clone()
    atomic_save(state, folder / "dynamics.pth")
    np.save(folder / "mu.npy", model.input_mean.cpu().numpy()[None])
    np.save(folder / "std.npy", model.input_std.cpu().numpy()[None])


def check_args(args: Args) -> torch.device:
    """Every argument, the device and where the data is, checked in seconds before any work. Returns the device."""
    device = check_device(args)
    problems = out_of_range(
        args,
        positive=("num_members", "batch_size", "max_holdout_size", "max_epochs_since_update", "max_epochs",
                  "learning_rate"),
        non_negative=("torch_threads", "logvar_loss_coef", "improvement_threshold"),
        open_fractions=("holdout_ratio",),
    )
    if len(args.weight_decays) != len(args.hidden_dims) + 1:
        problems.append(f"--weight-decays needs one value per layer: {len(args.hidden_dims)} hidden layers + the "
                        f"output layer = {len(args.hidden_dims) + 1} values, got {len(args.weight_decays)}")
    if not 0 < args.num_elites <= args.num_members:
        problems.append(f"--num-elites must be between 1 and --num-members ({args.num_members}), got {args.num_elites}")
    if min(args.hidden_dims, default=0) < 1 or min(args.weight_decays) < 0:
        problems.append(f"--hidden-dims must be positive and --weight-decays >= 0, got {args.hidden_dims} and "
                        f"{args.weight_decays}")
    refuse(problems)
    locate_dataset(get_task(args.env_id), args.dataset_path)
    return device


def train_world_model(args: Args) -> Path:
    """The whole pipeline: data -> ensemble training -> checkpoint. Returns the checkpoint path."""
    device = check_args(args)
    # on the CPU too: the compiled step measured 1.04x (quiet) to 1.22x (loaded) faster per epoch of 1M
    # transitions, which repays its 40-70 s cold compile within the first epochs (README, Speed)
    use_compile = resolve_compile(args.compile, device, on_cpu=True)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    seed_everything(args.seed)
    task = get_task(args.env_id)
    data = load_dataset(task, args.dataset_path, args.download)
    path = Path(args.checkpoint_path or world_model_path(task.env_id, args.seed, data.fingerprint))
    run_name = f"{task.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    tracker = init_tracking(args, run_name)
    print(
        f"world model for {task.env_id}: {len(data.rewards)} transitions from {data.source}, "
        f"{args.num_members} members of {list(args.hidden_dims)}, device {device}, "
        f"{'compiled' if use_compile else 'eager'}{' + CUDA graphs' if args.cudagraphs else ''}",
        flush=True,
    )
    model = EnsembleDynamics(
        task.obs_dim, task.act_dim, args.num_members, args.num_elites, args.hidden_dims, args.weight_decays, device
    )

    def log_epoch(stats):
        if tracker is not None:
            per_member = {f"world_model/holdout_mse_{i}": v for i, v in enumerate(stats["holdout_mse"])}
            tracker.log(
                {
                    "world_model/train_loss": stats["train_loss"],
                    "world_model/elites_holdout_mse": stats["elites_holdout_mse"],
                    "world_model/epochs_since_update": stats["epochs_since_update"],
                    "world_model/epoch_time": stats["epoch_time"],
                    **per_member,
                },
                step=stats["epoch"],
            )

    start = time.perf_counter()
    result = train_dynamics(
        model, data.observations, data.actions, data.rewards, data.next_observations,
        batch_size=args.batch_size, lr=args.learning_rate, holdout_ratio=args.holdout_ratio,
        max_holdout_size=args.max_holdout_size, logvar_loss_coef=args.logvar_loss_coef,
        improvement_threshold=args.improvement_threshold, max_epochs_since_update=args.max_epochs_since_update,
        max_epochs=args.max_epochs, use_compile=use_compile, use_cudagraphs=args.cudagraphs, log_epoch=log_epoch,
    )
    train_time = time.perf_counter() - start
    elite_losses = [result["holdout_losses"][i] for i in result["elites"]]
    save_world_model(
        path, model, data.fingerprint, env_id=task.env_id, holdout_losses=result["holdout_losses"],
        elites=result["elites"], epochs=result["epochs"], train_time_s=train_time, args=vars(args),
        history=result["history"],
    )
    print(
        f"done in {train_time:.0f}s ({result['epochs']} epochs): elites {result['elites']}, "
        f"holdout MSE per elite [{' '.join(f'{v:.4g}' for v in elite_losses)}], "
        f"mean {np.mean(elite_losses):.4g}\nsaved {path}",
        flush=True,
    )
    if args.export_offlinerlkit:
        export_offlinerlkit(model, args.export_offlinerlkit)
        print(f"OfflineRL-Kit copy: {args.export_offlinerlkit}/dynamics.pth, mu.npy, std.npy")
    if tracker is not None:
        tracker.summary["world_model/elites_holdout_mse"] = float(np.mean(elite_losses))
        tracker.finish()
    return path


def main(args: Args) -> Path:
    return train_world_model(args)


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


# ==== mirror: world_model (identical in train_world_model.py, leq_state.py) ====
"""World model: OfflineRL-Kit's probabilistic ensemble (what the LEQ authors trained), batched and fast.

Public API (stable; leq_state.py builds on it):
  EnsembleDynamics(obs_dim, act_dim, num_members=7, num_elites=5, hidden_dims=(200, 200, 200, 200),
                   weight_decays=(2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4), device="cpu")   nn.Module
      forward(x, members=None) -> (mean, logvar), each [E, B, obs_dim + 1] = (delta obs, reward).
          x: standardised inputs [B, in] (shared by all members) or [E, B, in]; members: long [E] ids of the
          members to run (default: all). One batched matmul per layer for all members.
      normalize(obs, act) -> standardised [B, obs_dim + act_dim] with the train-split scaler.
      buffers (saved with the weights): input_mean, input_std [obs_dim + act_dim], elites long [num_elites].
  train_dynamics(model, observations, actions, rewards, next_observations, ...) -> dict
      OfflineRL-Kit's EnsembleDynamics.train exactly (leq-spec section 3); arrays numpy or torch, rewards RAW
      [N]. Returns {"holdout_losses": [E] best holdout MSE per member, "elites", "epochs", "history"}.
      Its parts (used by benchmarks/bench_world_model.py): split_and_scale, make_train_step, epoch_minibatches,
      run_epoch, ensemble_loss, holdout_mse, early_stopping_update, update_snapshots.
  Sampling, in the world_model_sampling block (leq_state.py only):
  draw_route(model, batch_size, routing) -> long [B]: the elite slot (0..num_elites-1) of each sample.
      "exact": iid uniform per sample (OfflineRL-Kit); "balanced": a random permutation split evenly.
  transition(model, obs, act, route, noise, routing) -> (next_obs [B, obs_dim], reward [B] RAW)
      reparameterised draw mean + exp(logvar / 2) * noise from the routed elite (noise [B, obs_dim + 1] ~ N(0, 1);
      zeros give the mean): differentiable w.r.t. obs and act. "exact" runs every elite on every sample and
      picks; "balanced" runs each elite on its share only (one member's cost). The model's own weights get
      gradients too unless frozen: call model.requires_grad_(False) for rollouts.
  sample_step(model, obs, act, routing="exact") -> (next_obs, reward): draws route and noise, then transition.
  world_model_path(env_id, seed, fingerprint) -> Path of the default checkpoint.
  save_world_model(path, model, fingerprint, **extra);  load_world_model(path, fingerprint, device) (in
      world_model_sampling) -> (model, checkpoint dict); a checkpoint of another dataset is refused.
"""
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class EnsembleDynamics(nn.Module):
    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        num_members: int = 7,
        num_elites: int = 5,
        hidden_dims: tuple[int, ...] = (200, 200, 200, 200),
        weight_decays: tuple[float, ...] = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4),
        device="cpu",
    ):
        super().__init__()
        if len(weight_decays) != len(hidden_dims) + 1:
            raise ValueError(f"need one weight decay per layer ({len(hidden_dims) + 1}), got {len(weight_decays)}")
        if not 0 < num_elites <= num_members:
            raise ValueError(f"num_elites must be in 1..num_members={num_members}, got {num_elites}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.num_members, self.num_elites = num_members, num_elites
        self.hidden_dims, self.weight_decays = tuple(hidden_dims), tuple(weight_decays)
        sizes = [obs_dim + act_dim, *hidden_dims, 2 * (obs_dim + 1)]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            weight = torch.empty(num_members, fan_in, fan_out, device=device)
            nn.init.trunc_normal_(weight, std=1 / (2 * fan_in**0.5))  # bounds +-2 absolute: barely truncates
            self.weights.append(nn.Parameter(weight))
            self.biases.append(nn.Parameter(torch.zeros(num_members, 1, fan_out, device=device)))
        self.max_logvar = nn.Parameter(torch.full((obs_dim + 1,), 0.5, device=device))
        self.min_logvar = nn.Parameter(torch.full((obs_dim + 1,), -10.0, device=device))
        self.register_buffer("input_mean", torch.zeros(obs_dim + act_dim, device=device))
        self.register_buffer("input_std", torch.ones(obs_dim + act_dim, device=device))
        self.register_buffer("elites", torch.arange(num_elites, device=device))

    def config(self) -> dict:
        return dict(
            obs_dim=self.obs_dim, act_dim=self.act_dim, num_members=self.num_members, num_elites=self.num_elites,
            hidden_dims=self.hidden_dims, weight_decays=self.weight_decays,
        )

    def normalize(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return (torch.cat([obs, act], dim=-1) - self.input_mean) / self.input_std

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None):
        count = self.num_members if members is None else members.shape[0]
        if x.dim() == 2:
            x = x.expand(count, *x.shape)
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            if members is not None:
                weight, bias = weight[members], bias[members]
            x = torch.baddbmm(bias, x, weight)
            if i < last:
                x = F.silu(x)
        mean, logvar = x.chunk(2, dim=-1)
        # learned soft bounds on the log-variance (OfflineRL-Kit soft_clamp)
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar

    def decay_loss(self) -> torch.Tensor:
        """Per-layer L2 on the weights only (not biases), summed over members: sum_l wd_l * 0.5 * ||W_l||^2."""
        return sum(wd * 0.5 * weight.square().sum() for wd, weight in zip(self.weight_decays, self.weights))


def ensemble_loss(model, inputs, targets, mask, logvar_loss_coef: float) -> torch.Tensor:
    """OfflineRL-Kit's training loss on a minibatch [E, B, *]: Gaussian NLL (inverse-variance weighted MSE plus
    log-variance, each averaged over batch and dims, summed over members) + L2 + logvar-bound penalty.
    mask [B] (1 = real sample) makes a padded batch give exactly the loss of its real samples."""
    mean, logvar = model(inputs)
    weight = mask / mask.sum()  # [B]: the mean over the real samples of each member's batch
    mse_inv = ((mean - targets).square() * torch.exp(-logvar)).mean(-1)
    per_member = (mse_inv * weight).sum(-1) + (logvar.mean(-1) * weight).sum(-1)
    bounds = logvar_loss_coef * (model.max_logvar.sum() - model.min_logvar.sum())
    return per_member.sum() + model.decay_loss() + bounds


@torch.no_grad()
def holdout_mse(model, inputs, targets) -> torch.Tensor:
    """MSE of each member's mean on the whole holdout in one call: [E]."""
    mean, _ = model(inputs)
    return (mean - targets).square().mean(dim=(1, 2))


def update_snapshots(model, snapshots: list[torch.Tensor], improved: torch.Tensor, restore: bool = False) -> None:
    """Copy live -> snapshot (restore=False) or snapshot -> live (restore=True) for the members in `improved`
    ([E] bool). Like OfflineRL-Kit, snapshots hold the layer weights and biases, not the logvar bounds."""
    live = [*model.weights, *model.biases]
    with torch.no_grad():
        for param, saved in zip(live, snapshots):
            keep = improved.view(-1, 1, 1)
            if restore:
                param.copy_(torch.where(keep, saved, param))
            else:
                saved.copy_(torch.where(keep, param, saved))


def early_stopping_update(best: list[float], new: list[float], threshold: float) -> list[bool]:
    """OfflineRL-Kit's rule: a member improves when (best - new) / best > threshold; its best is then updated
    in place. Returns, per member, whether it improved."""
    improved = [(old - value) / old > threshold for old, value in zip(best, new)]
    for i, better in enumerate(improved):
        if better:
            best[i] = new[i]
    return improved


def _progress(iterable, show: bool, description: str):
    if not show:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=description, leave=False, unit="batch", mininterval=1.0)


def _epoch_line(stats: dict, history: list, patience: int, max_epochs: int | None) -> str:
    """One progress line. ETA: the run stops after at least `patience - epochs_since_update` more epochs
    (the early stop if no member improves again) and at most max_epochs."""
    seconds = np.mean([h["epoch_time"] for h in history[-3:]])
    at_least = patience - stats["epochs_since_update"]
    if max_epochs:
        at_most = max_epochs - stats["epoch"]
        eta = f"{min(at_least, at_most) * seconds:.0f}-{at_most * seconds:.0f}s"
    else:
        eta = f">= {at_least * seconds:.0f}s"
    members = " ".join(f"{loss:.4g}" for loss in stats["holdout_mse"])
    return (
        f"epoch {stats['epoch']}: train loss {stats['train_loss']:.4f} | holdout MSE per member [{members}] | "
        f"elites {stats['elites_holdout_mse']:.4g} | {stats['epochs_since_update']} epoch(s) since improvement | "
        f"{stats['epoch_time']:.1f}s/epoch, ETA {eta}"
    )


def split_and_scale(model, observations, actions, rewards, next_observations, holdout_ratio: float = 0.2,
                    max_holdout_size: int = 1000):
    """OfflineRL-Kit's data preparation, on the model's device: inputs (obs, act), targets (next_obs - obs,
    reward); a random holdout of min(holdout_ratio * N, max_holdout_size) transitions; the scaler (population
    std, 1 where below 1e-12) fit on the train inputs and stored in the model.
    Returns (train_inputs, train_targets, holdout_inputs, holdout_targets), inputs standardised."""
    device = model.input_mean.device
    tensors = [torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a, dtype=torch.float32).to(device)
               for a in (observations, actions, rewards, next_observations)]
    obs, act, rew, next_obs = tensors
    n = obs.shape[0]
    shapes_agree = act.shape[0] == rew.shape[0] == next_obs.shape[0] == n and rew.dim() == 1
    if not shapes_agree or obs.shape[1:] != (model.obs_dim,) or act.shape[1:] != (model.act_dim,) or \
            next_obs.shape[1:] != (model.obs_dim,):
        raise ValueError(
            f"inconsistent data: observations {tuple(obs.shape)}, actions {tuple(act.shape)}, rewards "
            f"{tuple(rew.shape)}, next_observations {tuple(next_obs.shape)}; the model expects obs_dim "
            f"{model.obs_dim}, act_dim {model.act_dim} and rewards of shape [N]"
        )
    holdout_size = min(int(n * holdout_ratio), max_holdout_size)
    if holdout_size < 1 or n - holdout_size < 1:
        raise ValueError(f"{n} transitions are too few for a holdout split (ratio {holdout_ratio})")
    inputs = torch.cat([obs, act], dim=-1)
    targets = torch.cat([next_obs - obs, rew[:, None]], dim=-1)
    split = torch.randperm(n, device=device)
    train_idx, holdout_idx = split[: n - holdout_size], split[n - holdout_size :]
    with torch.no_grad():
        std = inputs[train_idx].std(0, unbiased=False)
        model.input_mean.copy_(inputs[train_idx].mean(0))
        model.input_std.copy_(torch.where(std < 1e-12, torch.ones_like(std), std))
    scale = lambda x: ((x - model.input_mean) / model.input_std).contiguous()
    return scale(inputs[train_idx]), targets[train_idx].contiguous(), scale(inputs[holdout_idx]), targets[holdout_idx]


def make_train_step(model, optimizer, train_inputs, train_targets, logvar_loss_coef: float, use_compile: bool,
                    use_cudagraphs: bool):
    """step(batch_idx long [E, B], mask [B]) -> detached loss: one Adam step of all members on their own rows
    of the train set, eager, compiled or captured (compile_step)."""

    def train_step(batch_idx, mask):
        optimizer.zero_grad(set_to_none=True)
        rows = batch_idx.reshape(-1)  # index_select of flat rows: ~3x faster than 2-D fancy indexing on CPU
        inputs = train_inputs.index_select(0, rows).view(*batch_idx.shape, -1)
        targets = train_targets.index_select(0, rows).view(*batch_idx.shape, -1)
        loss = ensemble_loss(model, inputs, targets, mask, logvar_loss_coef)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return compile_step(train_step, use_compile, use_cudagraphs, model.input_mean.device)


def epoch_minibatches(bootstrap: torch.Tensor, batch_size: int):
    """Fixed-shape minibatches of an epoch: batches long [num_batches, E, batch_size] (member e's rows in its
    bootstrap order) and masks [num_batches, batch_size]. OfflineRL-Kit's last batch is short; here it is
    padded with rows from the start and masked out of the loss, so every step has the same shapes."""
    members, train_size = bootstrap.shape
    num_batches = -(-train_size // batch_size)
    padding = num_batches * batch_size - train_size
    padded = torch.cat([bootstrap, bootstrap[:, :padding]], dim=1)
    batches = padded.view(members, num_batches, batch_size).transpose(0, 1).contiguous()
    masks = torch.ones(num_batches, batch_size, device=bootstrap.device)
    masks[-1, batch_size - padding :] = 0
    return batches, masks


def run_epoch(step, batches, masks, use_cudagraphs: bool = False, progress: bool = False, description: str = ""):
    """All minibatches through `step`; returns the summed loss as a device tensor (no host sync)."""
    loss_sum = torch.zeros((), device=batches.device)
    for b in _progress(range(batches.shape[0]), progress, description):
        if use_cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        loss_sum += step(batches[b], masks[b])
    return loss_sum


def train_dynamics(
    model: EnsembleDynamics,
    observations,
    actions,
    rewards,
    next_observations,
    batch_size: int = 256,
    lr: float = 1e-3,
    holdout_ratio: float = 0.2,
    max_holdout_size: int = 1000,
    logvar_loss_coef: float = 0.01,
    improvement_threshold: float = 0.01,
    max_epochs_since_update: int = 5,
    max_epochs: int | None = None,
    use_compile: bool = False,
    use_cudagraphs: bool = False,
    progress: bool = True,
    log_epoch=None,
) -> dict:
    """Train the ensemble exactly as OfflineRL-Kit's EnsembleDynamics.train (anchors 4.3), on the model's device.

    Holdout split and scaler as split_and_scale; one bootstrap (with replacement) per member, reshuffled after
    every epoch; Adam on the loss of ensemble_loss; a member's weights are snapshot when its holdout MSE
    improves by more than improvement_threshold (relative); stop after max_epochs_since_update epochs without
    any such improvement (or at max_epochs); elites = lowest best holdout MSE; every member is restored to its
    snapshot. Randomness comes from torch's global RNG (seed it first).
    progress: a bar over each epoch's minibatches and one line per epoch (train loss, holdout MSE per member,
    epochs since improvement, ETA). log_epoch(stats dict) is called after every epoch with host floats (the
    epoch's only device reads)."""
    device, members = model.input_mean.device, model.num_members
    train_inputs, train_targets, holdout_inputs, holdout_targets = split_and_scale(
        model, observations, actions, rewards, next_observations, holdout_ratio, max_holdout_size
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    step = make_train_step(model, optimizer, train_inputs, train_targets, logvar_loss_coef, use_compile,
                           use_cudagraphs)
    train_size = train_inputs.shape[0]
    bootstrap = torch.randint(train_size, (members, train_size), device=device)
    snapshots = [p.detach().clone() for p in [*model.weights, *model.biases]]
    best = [1e10] * members
    history, epoch, epochs_since_update = [], 0, 0
    while True:
        epoch += 1
        start = time.perf_counter()
        batches, masks = epoch_minibatches(bootstrap, batch_size)
        loss_sum = run_epoch(step, batches, masks, use_cudagraphs, progress, f"world model epoch {epoch}")
        holdout = holdout_mse(model, holdout_inputs, holdout_targets)  # the whole holdout in one eager call
        train_loss, *new_losses = torch.cat([loss_sum[None] / batches.shape[0], holdout]).tolist()  # one read
        bootstrap = bootstrap.gather(1, torch.rand(members, train_size, device=device).argsort(dim=1))
        improved = early_stopping_update(best, new_losses, improvement_threshold)
        if any(improved):
            update_snapshots(model, snapshots, torch.tensor(improved, device=device))
            epochs_since_update = 0
        else:
            epochs_since_update += 1
        stats = dict(
            epoch=epoch,
            train_loss=train_loss,
            holdout_mse=new_losses,
            elites_holdout_mse=float(np.mean(sorted(new_losses)[: model.num_elites])),
            epochs_since_update=epochs_since_update,
            epoch_time=time.perf_counter() - start,
        )
        history.append(stats)
        if progress:
            print(_epoch_line(stats, history, max_epochs_since_update, max_epochs), flush=True)
        if log_epoch is not None:
            log_epoch(stats)
        if epochs_since_update >= max_epochs_since_update or (max_epochs and epoch >= max_epochs):
            break
    elites = sorted(range(members), key=lambda i: best[i])[: model.num_elites]
    model.elites.copy_(torch.tensor(elites, device=device))
    update_snapshots(model, snapshots, torch.ones(members, dtype=torch.bool, device=device), restore=True)
    return dict(holdout_losses=best, elites=elites, epochs=epoch, history=history)


def world_model_path(env_id: str, seed: int, fingerprint: str) -> Path:
    """Default checkpoint path shared by train_world_model.py (writes) and leq_state.py (reads)."""
    return Path("checkpoints") / "world_model" / f"{env_id}__seed{seed}__{fingerprint[:10]}.pt"


def save_world_model(path, model: EnsembleDynamics, fingerprint: str, **extra) -> None:
    """One file: kind, fingerprint, architecture, weights + scaler + elites, software versions, and `extra`
    (e.g. holdout_losses, args), written atomically."""
    checkpoint = dict(kind="world_model", fingerprint=fingerprint, config=model.config(), versions=software_versions())
    checkpoint.update(extra, state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()})
    atomic_save(checkpoint, path)
# ==== end mirror: world_model ====


if __name__ == "__main__":
    main(tyro.cli(Args))
