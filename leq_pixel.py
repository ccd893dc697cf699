"""LEQ from pixels: Lower Expectile Q-learning on V-D4RL with a DreamerV3-style world model.

Paper section 5.5 and Appendix A; the algorithm as the authors' pixel code runs it is leq-spec section 9.
The whole pipeline, top to bottom:
  1. data: V-D4RL 64px *.npz episodes or 84px *.hdf5 shards (resized to 64px), actions shifted so that
     action[t] is the one taken at obs t; or `--collect`, which writes a random-policy dataset in the
     V-D4RL 64px/84px format from dm_control (data for tests and demos).
  2. world model: CNN encoder/decoder, RSSM with a block GRU and discrete latents (unimix, free bits,
     KL balancing), a 7-member ensemble prior (one uniformly drawn member per imagination step),
     symexp two-hot reward head, continue head. Pretrained alone, then frozen.
  3. behaviour: imagination from every posterior state (H = 5), λ-return with Q at every step,
     expectile-weighted critic + slow-critic regulariser + one-step loss on replay transitions,
     value baseline, expectile-weighted likelihood-ratio actor with percentile return normalisation.
  4. evaluation on dm_control: action repeat 2, 64x64 camera 0, 500 agent steps, score = return / 10.

    python leq_pixel.py --collect --env-id walker_walk-random --dataset-path data/walker_random --collect-episodes 10
    python leq_pixel.py --env-id walker_walk-random --dataset-path data/walker_random --size 3m
    python leq_pixel.py --env-id walker_walk-medium_expert --dataset-path vd4rl_data/main/walker_walk/medium_expert/84px

Layout: Args, then tasks, data, environments, networks, losses, optimiser, evaluation and the
training loop, then main; below the banner, the support code shared with the other
scripts (mirrored blocks: one copy per script, kept identical by tools/sync_mirrors.py).
"""

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro


@dataclass
class Args:
    env_id: str = "walker_walk-random"
    """V-D4RL task '{domain}_{task}-{dataset}', e.g. cheetah_run-medium_expert; picks tau (paper Table 13)"""
    dataset_path: str | None = None
    """folder of V-D4RL 64px *.npz episodes or 84px *.hdf5 shards; None = V-D4RL's own layout in the working
    folder, vd4rl_data/main/{domain}_{task}/{dataset}/64px; with --collect, the folder to write"""
    collect: bool = False
    """write a random-policy dataset in V-D4RL format to --dataset-path from dm_control, then exit"""
    collect_episodes: int = 10
    """episodes to collect with --collect"""
    collect_episode_steps: int = 500
    """agent steps per collected episode (V-D4RL: 500, i.e. 501 rows with the reset frame)"""
    collect_format: Literal["64px", "84px"] = "64px"
    """64px: one DreamerV2-style npz per episode; 84px: one DrQ-style hdf5 shard"""
    size: Literal["12m", "3m", "tiny"] = "12m"
    """world-model and agent size: DreamerV3 12M (the paper), 3M (CPUs), tiny (tests)"""
    tau: float | None = None
    """expectile tau; None = paper Table 13 for the task"""
    ensemble: int = 7
    """members of the prior (dynamics) ensemble"""
    wm_steps: int = 150_000
    """world-model pretraining updates"""
    world_model_path: str | None = None
    """pretrained world model: loaded when it exists (skipping pretraining), else written after pretraining;
    None = checkpoints/pixel_world_model/{env_id}__{size}__seed{seed}__{fingerprint[:10]}.pt"""
    steps: int = 150_000
    """behaviour (actor/critic/value) updates"""
    batch_size: int = 16
    """sequences per batch"""
    batch_length: int = 65
    """steps per sequence"""
    horizon: int = 5
    """imagination horizon H"""
    gamma: float = 1 - 1 / 333
    """discount (DreamerV3 horizon 333); enters as the continue head's soft label and in the one-step target"""
    lam: float = 0.95
    """λ of the λ-return"""
    lr: float = 4e-5
    """learning rate of both phases (LaProp, cosine decay over the phase)"""
    warmup: int = 1000
    """linear learning-rate warm-up steps"""
    agc: float = 0.3
    """adaptive gradient clipping: |grad| <= agc * max(1e-3, |param|) per tensor"""
    free_bits: float = 1.0
    """KL free bits (nats) for the dynamics and representation losses"""
    rep_scale: float = 0.1
    """weight of the representation KL loss (the dynamics KL has weight 1)"""
    slow_critic_fraction: float = 0.02
    """EMA rate of the slow critic"""
    slowreg: float = 1.0
    """weight of the critic's regulariser toward the slow critic"""
    actor_entropy: float = 0.0
    """entropy bonus eta (the paper removes it; the authors' config has 3e-4)"""
    eval_episodes: int = 10
    """evaluation episodes (run in parallel environments)"""
    eval_every: int = 10_000
    """behaviour updates between evaluations (also evaluated at the end)"""
    eval_episode_steps: int = 500
    """agent steps per evaluation episode (the protocol: 500, score = return / 10)"""
    log_every: int = 500
    """updates between metric logs"""
    save_every: int = 10_000
    """updates between checkpoints"""
    resume: str | None = None
    """checkpoint.pt of an earlier run: continue it from its phase and step"""
    seed: int = 1
    """random seed"""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'"""
    compile: Annotated[bool | None, tyro.conf.DisallowNone] = None
    """torch.compile the update steps; None = on for CUDA, off for CPU (measured on a busy 2-core CPU, size 3m,
    batch 4 x 16: compiling the unrolled RSSM took over 13 minutes, then world-model updates ran 1.25x faster)"""
    cudagraphs: bool = False
    """capture the compiled update steps as CUDA graphs (CUDA only)"""
    bf16: bool = False
    """bf16 autocast for the world-model and behaviour updates (CUDA only)"""
    track: bool = False
    """log to Weights & Biases"""
    wandb_project_name: str = "leq-pytorch"
    """wandb project"""
    wandb_entity: str | None = None
    """wandb entity (team)"""
    exp_name: str = "leq_pixel"
    """experiment name, part of the run name"""


# ---------------------------------------------------------------------------------------------------------
# Tasks: V-D4RL ids and tau (paper Table 13)
# ---------------------------------------------------------------------------------------------------------
# Table 13 (the tau behind the paper's Table 4). Table 17's best column disagrees for some datasets; the
# paper states Table 13 is the summary of the values used, so that is the default here.
TABLE13_TAU = {
    "walker_walk-random": 0.5,
    "walker_walk-medium": 0.3,
    "walker_walk-medium_replay": 0.3,
    "walker_walk-medium_expert": 0.1,
    "cheetah_run-random": 0.3,
    "cheetah_run-medium": 0.1,
    "cheetah_run-medium_replay": 0.1,
    "cheetah_run-medium_expert": 0.5,
}
IMAGE_SIZE = 64
ACTION_REPEAT = 2


def parse_env_id(env_id: str) -> tuple[str, str, str]:
    """'walker_walk-medium_expert' -> ('walker', 'walk', 'medium_expert')."""
    task, _, dataset = env_id.partition("-")
    domain, _, task_name = task.partition("_")
    if not (domain and task_name and dataset):
        raise SystemExit(
            f"--env-id {env_id!r} is not '{{domain}}_{{task}}-{{dataset}}'; known V-D4RL ids: {sorted(TABLE13_TAU)}"
        )
    return domain, task_name, dataset


def default_dataset_path(env_id: str) -> str:
    """Where V-D4RL's download (huggingface.co/datasets/conglu/vd4rl) keeps the 64px data of a task."""
    domain, task_name, dataset = parse_env_id(env_id)
    return f"vd4rl_data/main/{domain}_{task_name}/{dataset}/64px"


def task_tau(env_id: str, tau: float | None) -> float:
    if tau is None:
        if env_id not in TABLE13_TAU:
            raise SystemExit(f"no Table 13 tau for {env_id!r} (known: {sorted(TABLE13_TAU)}); pass --tau.")
        tau = TABLE13_TAU[env_id]
    if not 0.0 < tau < 1.0:
        raise SystemExit(f"--tau must lie in (0, 1), got {tau}")
    return tau


# ---------------------------------------------------------------------------------------------------------
# Data: V-D4RL loaders (datasets-and-envs.md 7.1-7.2)
# ---------------------------------------------------------------------------------------------------------
@dataclass
class PixelData:
    """Episodes concatenated, one row per time step ("RSA" layout, as LEQ_DV3 trains on):
    images [N,64,64,3] uint8; actions [N,A] float32, the action TAKEN at obs t (zero on an episode's last row);
    rewards [N] float32, the reward received on arriving at obs t (zero on an episode's first row);
    is_first, is_last, is_terminal [N] bool."""

    images: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    is_first: np.ndarray
    is_last: np.ndarray
    is_terminal: np.ndarray
    fingerprint: str
    source: str


def _episode_rows(images, actions, rewards, discounts) -> dict:
    """One V-D4RL episode in its "ARS" layout (row t: obs t and the action/reward that LED to it) -> RSA rows."""
    length = len(images)
    taken = np.concatenate([actions[1:], np.zeros_like(actions[:1])]).astype(np.float32)
    is_first = np.zeros(length, bool)
    is_first[0] = True
    is_last = np.zeros(length, bool)
    is_last[-1] = True
    is_terminal = np.asarray(discounts, np.float32) == 0
    is_terminal[0] = False
    return dict(images=images, actions=taken, rewards=np.asarray(rewards, np.float32).reshape(length),
                is_first=is_first, is_last=is_last, is_terminal=is_terminal)


def _check_keys(found, needed, path):
    missing = [k for k in needed if k not in found]
    if missing:
        raise SystemExit(f"{path} lacks the V-D4RL key(s) {missing} (it has {sorted(found)}); is it a V-D4RL file?")


def load_npz_episode(path: Path) -> dict:
    """A V-D4RL 64px episode: image (L,64,64,3) uint8, action (L,A), reward (L,), discount (L,) optional."""
    try:
        with np.load(path) as archive:
            episode = {key: archive[key] for key in archive.files}
    except Exception as error:  # truncated download, not an npz: say which file
        raise SystemExit(f"{path} cannot be read as an npz episode ({type(error).__name__}: {error}).") from None
    _check_keys(episode, ["image", "action", "reward"], path)
    images, actions = episode["image"], episode["action"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise SystemExit(
            f"{path}: 'image' is {images.dtype} {images.shape}, expected uint8 (L, 64, 64, 3) frames "
            "(V-D4RL 64px). 84px V-D4RL data comes as *.hdf5 shards: point --dataset-path at the 84px folder."
        )
    length = len(images)
    if actions.ndim != 2 or len(actions) != length or episode["reward"].size != length or length < 2:
        raise SystemExit(f"{path}: action {actions.shape} / reward {episode['reward'].shape} do not match {length} frames")
    discounts = episode.get("discount", np.ones(length, np.float32))
    if "is_terminal" in episode:
        discounts = 1.0 - episode["is_terminal"].astype(np.float32)
    return _episode_rows(images, actions, episode["reward"], discounts)


def resize_frames(frames_chw: np.ndarray, size: int = IMAGE_SIZE, chunk: int = 2048) -> np.ndarray:
    """(N,3,H,W) uint8 -> (N,size,size,3) uint8 by bicubic resampling (LEQ_DV3 uses cv2 INTER_CUBIC)."""
    out = np.empty((len(frames_chw), size, size, 3), np.uint8)
    for start in range(0, len(frames_chw), chunk):
        block = torch.from_numpy(np.ascontiguousarray(frames_chw[start : start + chunk])).float()
        block = F.interpolate(block, size=(size, size), mode="bicubic", align_corners=False)
        out[start : start + chunk] = block.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def load_hdf5_shard(path: Path) -> list[dict]:
    """A V-D4RL 84px shard: observation (N,3,84,84) uint8, action, reward, discount, step_type (0 = first)."""
    import h5py

    try:
        with h5py.File(path, "r") as shard:
            _check_keys(shard.keys(), ["observation", "action", "reward", "discount", "step_type"], path)
            frames, actions = shard["observation"][()], shard["action"][()]
            rewards, discounts, step_type = shard["reward"][()], shard["discount"][()], shard["step_type"][()]
    except OSError as error:
        raise SystemExit(f"{path} cannot be read as an hdf5 shard ({error}).") from None
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise SystemExit(f"{path}: 'observation' is {frames.dtype} {frames.shape}, expected uint8 (N, 3, H, W)")
    n = len(frames)
    if not (len(actions) == n and rewards.size == n and discounts.size == n and step_type.size == n):
        raise SystemExit(f"{path}: observation/action/reward/discount/step_type lengths differ")
    starts = np.flatnonzero(step_type.reshape(n) == 0)
    if len(starts) == 0 or starts[0] != 0:
        raise SystemExit(f"{path}: step_type must start an episode (0) on the first row")
    if frames.shape[2:] == (IMAGE_SIZE, IMAGE_SIZE):
        images = np.ascontiguousarray(frames.transpose(0, 2, 3, 1))
    else:
        images = resize_frames(frames)
    bounds = list(starts) + [n]
    return [
        _episode_rows(images[a:b], actions[a:b], rewards.reshape(n)[a:b], discounts.reshape(n)[a:b])
        for a, b in zip(bounds[:-1], bounds[1:])
        if b - a >= 2
    ]


def load_vd4rl(dataset_path: str | None) -> PixelData:
    """All *.npz episodes (64px) or all *.hdf5 shards (84px) of a folder, concatenated."""
    if dataset_path is None:
        raise SystemExit(
            "--dataset-path is required: a V-D4RL folder such as vd4rl_data/main/walker_walk/random/64px "
            "(download from huggingface.co/datasets/conglu/vd4rl), or generate data first with "
            "`python leq_pixel.py --collect --dataset-path DIR`."
        )
    folder = Path(dataset_path)
    if not folder.is_dir():
        raise SystemExit(f"--dataset-path {folder} is not a folder (it should hold V-D4RL *.npz or *.hdf5 files; "
                         "download them from huggingface.co/datasets/conglu/vd4rl).")
    npz_files, hdf5_files = sorted(folder.glob("*.npz")), sorted(folder.glob("*.hdf5"))
    if npz_files and hdf5_files:
        raise SystemExit(f"{folder} holds both *.npz and *.hdf5 files; point --dataset-path at the 64px or the 84px folder.")
    if not npz_files and not hdf5_files:
        raise SystemExit(f"{folder} holds no *.npz (64px) or *.hdf5 (84px) V-D4RL files.")
    from tqdm import tqdm

    episodes = []
    for path in tqdm(npz_files or hdf5_files, desc=f"loading {folder}", leave=False):
        episodes.extend([load_npz_episode(path)] if npz_files else load_hdf5_shard(path))
    action_dims = {ep["actions"].shape[1] for ep in episodes}
    if len(action_dims) != 1:
        raise SystemExit(f"{folder}: episodes have different action sizes {sorted(action_dims)}")
    arrays = {key: np.concatenate([ep[key] for ep in episodes]) for key in episodes[0]}
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for key in ("actions", "rewards", "is_first"):
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    digest.update(np.ascontiguousarray(arrays["images"][::10]).tobytes())
    return PixelData(**arrays, fingerprint=digest.hexdigest(), source=str(folder))


class Replay:
    """The dataset on the device, sampled as fixed-shape windows [B, T] that lie inside one episode."""

    def __init__(self, data: PixelData, batch_size: int, batch_length: int, device: torch.device):
        ends = np.flatnonzero(data.is_last)
        starts = np.concatenate([[0], ends[:-1] + 1])
        valid = [np.arange(a, b - batch_length + 2) for a, b in zip(starts, ends) if b - a + 1 >= batch_length]
        if not valid:
            raise SystemExit(
                f"no episode is as long as --batch-length {batch_length} (longest: {int((ends - starts).max()) + 1} steps)"
            )
        self.window_starts = torch.as_tensor(np.concatenate(valid), device=device)
        self.offsets = torch.arange(batch_length, device=device)
        self.batch_size = batch_size
        to = dict(device=device)
        self.images = torch.as_tensor(data.images, **to)
        self.actions = torch.as_tensor(data.actions, **to)
        self.rewards = torch.as_tensor(data.rewards, **to)
        self.is_last = torch.as_tensor(data.is_last, **to)
        self.is_terminal = torch.as_tensor(data.is_terminal, **to)
        self.first_mask = (self.offsets == 0).expand(batch_size, batch_length)

    def sample(self) -> dict:
        pick = torch.randint(len(self.window_starts), (self.batch_size,), device=self.window_starts.device)
        index = self.window_starts[pick, None] + self.offsets  # [B, T]
        return dict(
            images=self.images[index], actions=self.actions[index], rewards=self.rewards[index],
            is_first=self.first_mask, is_last=self.is_last[index], is_terminal=self.is_terminal[index],
        )


# ---------------------------------------------------------------------------------------------------------
# dm_control: environments, rendering, random-policy collection, evaluation (datasets-and-envs.md 7.3, 8)
# ---------------------------------------------------------------------------------------------------------
RENDER_HELP = (
    "dm_control could not render offscreen with MUJOCO_GL={backend} ({error}). On a headless Linux machine "
    "install EGL (Debian/Ubuntu: apt-get install libegl1 libgbm1) and run with MUJOCO_GL=egl, or install "
    "OSMesa (apt-get install libosmesa6) and run with MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa."
)


def make_env(env_id: str, seed: int):
    """dm_control suite task of a V-D4RL id, checked to render. Headless machines default to EGL."""
    if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"
    import importlib.util

    if importlib.util.find_spec("dm_control") is None:
        raise SystemExit("evaluation and --collect need dm_control: pip install dm-control mujoco==3.17.0")
    try:  # importing dm_control already loads the OpenGL backend named by MUJOCO_GL
        from dm_control import suite
    except Exception as error:
        raise SystemExit(RENDER_HELP.format(backend=os.environ.get("MUJOCO_GL"), error=error)) from None
    domain, task, _ = parse_env_id(env_id)
    try:
        env = suite.load(domain, task, task_kwargs={"random": seed})
    except ValueError as error:
        raise SystemExit(f"dm_control has no task {domain}-{task} ({error})") from None
    try:
        env.reset()
        env.physics.render(IMAGE_SIZE, IMAGE_SIZE, camera_id=0)
    except Exception as error:
        raise SystemExit(RENDER_HELP.format(backend=os.environ.get("MUJOCO_GL"), error=error)) from None
    return env


def _env_action(env, action: np.ndarray) -> np.ndarray:
    """Agent actions in [-1, 1] -> the environment's action bounds."""
    spec = env.action_spec()
    return spec.minimum + (action + 1.0) * 0.5 * (spec.maximum - spec.minimum)


def _repeat_step(env, action: np.ndarray):
    """Action repeat 2: returns (summed reward, discount, episode over)."""
    reward = 0.0
    for _ in range(ACTION_REPEAT):
        time_step = env.step(action)
        reward += time_step.reward or 0.0
        if time_step.last():
            break
    return reward, time_step.discount, time_step.last()


def collect_dataset(args: Args) -> None:
    """A random-policy dataset in V-D4RL format ("ARS" rows: the reset frame with zero action and reward,
    then per agent step the new frame with the action and summed reward that led to it)."""
    if args.dataset_path is None:
        raise SystemExit("--collect needs --dataset-path, the folder to write the episodes to.")
    from tqdm import trange

    folder = Path(args.dataset_path)
    folder.mkdir(parents=True, exist_ok=True)
    env = make_env(args.env_id, args.seed)
    act_dim = env.action_spec().shape[0]
    size = IMAGE_SIZE if args.collect_format == "64px" else 84
    rng = np.random.default_rng(args.seed)
    episodes = []
    for index in trange(args.collect_episodes, desc=f"collecting {args.env_id} ({args.collect_format})"):
        env.reset()
        frames, actions = [env.physics.render(size, size, camera_id=0)], [np.zeros(act_dim, np.float32)]
        rewards, discounts = [0.0], [1.0]
        for _ in range(args.collect_episode_steps):
            action = rng.uniform(-1.0, 1.0, act_dim).astype(np.float32)
            reward, discount, over = _repeat_step(env, _env_action(env, action))
            frames.append(env.physics.render(size, size, camera_id=0))
            actions.append(action)
            rewards.append(reward)
            discounts.append(discount)
            if over:
                break
        episode = dict(image=np.stack(frames), action=np.stack(actions), reward=np.asarray(rewards, np.float32),
                       discount=np.asarray(discounts, np.float32))
        if args.collect_format == "64px":
            tmp = folder / f".tmp-{index}.npz"
            np.savez_compressed(tmp, **episode)
            os.replace(tmp, folder / f"{args.seed}-{index:05d}-{len(frames)}.npz")
        else:
            episodes.append(episode)
    if args.collect_format == "84px":
        import h5py

        step_type = np.concatenate([np.r_[0, np.ones(len(ep["reward"]) - 2), 2] for ep in episodes]).astype(np.int64)
        tmp, path = folder / ".tmp-shard.hdf5", folder / f"{args.env_id}-seed{args.seed}-0.hdf5"
        with h5py.File(tmp, "w") as shard:
            shard["observation"] = np.concatenate([ep["image"] for ep in episodes]).transpose(0, 3, 1, 2)
            for key, name in (("action", "action"), ("reward", "reward"), ("discount", "discount")):
                shard[name] = np.concatenate([ep[key] for ep in episodes])
            shard["step_type"] = step_type
        os.replace(tmp, path)
    print(f"wrote {args.collect_episodes} random-policy episodes of {args.env_id} ({args.collect_format}) to {folder}")


# ---------------------------------------------------------------------------------------------------------
# Distributions: symexp two-hot, discrete latents, tanh-normal actor
# ---------------------------------------------------------------------------------------------------------
def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


def twohot_bins(num_bins: int = 255, dtype=torch.float32) -> torch.Tensor:
    """DreamerV3's symexp two-hot bins: symexp of an even grid on [-20, 20], exactly symmetric around 0."""
    half = symexp(torch.linspace(-20.0, 0.0, (num_bins - 1) // 2 + 1, dtype=torch.float64))
    return torch.cat([half, -half[:-1].flip(0)]).to(dtype)


def twohot_encode(x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Weights on the two bins around x (linear in x, summing to one); values outside the bins clip."""
    num_bins = bins.shape[0]
    below = ((bins <= x[..., None]).sum(-1) - 1).clamp(0, num_bins - 1)
    above = (below + 1).clamp(max=num_bins - 1)
    low, high = bins[below], bins[above]
    span = high - low
    w_above = torch.where(span > 0, (x - low) / torch.where(span > 0, span, 1.0), 0.0).clamp(0.0, 1.0)
    return F.one_hot(below, num_bins) * (1 - w_above)[..., None] + F.one_hot(above, num_bins) * w_above[..., None]


def twohot_mean(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """E[x] under softmax(logits), summing negative and positive halves separately so that symmetric
    probabilities give exactly 0 despite bins up to 5e8."""
    probs = logits.float().softmax(-1)
    mid = (bins.shape[0] - 1) // 2
    negative = (probs[..., :mid].flip(-1) * bins[:mid].flip(-1)).sum(-1)
    positive = (probs[..., mid + 1 :] * bins[mid + 1 :]).sum(-1)
    return negative + positive


def twohot_log_prob(logits: torch.Tensor, target: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    return (twohot_encode(target.float(), bins) * logits.float().log_softmax(-1)).sum(-1)


def unimix_log_probs(logits: torch.Tensor, unimix: float = 0.01) -> torch.Tensor:
    """Log-probabilities of a categorical mixed with 1% uniform (DreamerV3's unimix)."""
    probs = logits.float().softmax(-1)
    return torch.log((1 - unimix) * probs + unimix / probs.shape[-1])


def sample_onehot(log_probs: torch.Tensor) -> torch.Tensor:
    """One-hot sample (Gumbel-max) with straight-through gradients."""
    uniform = torch.rand_like(log_probs).clamp(1e-20, 1.0 - 1e-7)
    index = (log_probs - torch.log(-torch.log(uniform))).argmax(-1)
    probs = log_probs.exp()
    return F.one_hot(index, log_probs.shape[-1]).to(probs.dtype) + probs - probs.detach()


def categorical_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of [..., stoch, classes] latents, summed over the stoch variables."""
    return (log_p.exp() * (log_p - log_q)).sum((-2, -1))


def tanh_normal_log_prob(mean, std, pre_tanh):
    """log pi(tanh(x)) of a Normal(mean, std) squashed by tanh, summed over action dimensions."""
    normal = -0.5 * ((pre_tanh - mean) / std).square() - std.log() - 0.5 * math.log(2 * math.pi)
    return (normal - torch.log(1 - torch.tanh(pre_tanh).square() + 1e-6)).sum(-1)


# ---------------------------------------------------------------------------------------------------------
# Networks (DreamerV3 as configured in LEQ_DV3: RMSNorm + SiLU everywhere)
# ---------------------------------------------------------------------------------------------------------
SIZES = {  # LEQ_DV3 configs.yaml presets; "tiny" is ours, for tests
    "12m": dict(deter=2048, hidden=256, stoch=32, classes=16, blocks=8, depth=16, units=256),
    "3m": dict(deter=200, hidden=128, stoch=16, classes=16, blocks=8, depth=16, units=128),
    "tiny": dict(deter=32, hidden=16, stoch=4, classes=4, blocks=4, depth=2, units=16),
}
TWOHOT_BINS = 255


class LinearNormAct(nn.Sequential):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, out_dim), nn.RMSNorm(out_dim, eps=1e-4), nn.SiLU())


def mlp(in_dim: int, units: int, layers: int, out_dim: int, out_scale: float = 1.0) -> nn.Sequential:
    """`layers` hidden layers (Linear, RMSNorm, SiLU) and a linear output scaled at init (0 = zero output)."""
    hidden = [LinearNormAct(in_dim if i == 0 else units, units) for i in range(layers)]
    out = nn.Linear(units, out_dim)
    with torch.no_grad():
        out.weight.mul_(out_scale)
        out.bias.zero_()
    return nn.Sequential(*hidden, out)


class ChannelRMSNorm(nn.RMSNorm):
    """RMSNorm over the channels of an NCHW feature map."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Encoder(nn.Module):
    """64x64x3 -> 5 conv stages (kernel 5, channels depth x [1,2,3,4,4], stride 1 then 2) -> 4x4 -> flat."""

    def __init__(self, depth: int):
        super().__init__()
        channels, layers = 3, []
        for stage, mult in enumerate([1, 2, 3, 4, 4]):
            layers += [nn.Conv2d(channels, depth * mult, 5, 1 if stage == 0 else 2, 2), ChannelRMSNorm(depth * mult, eps=1e-4), nn.SiLU()]
            channels = depth * mult
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.out_dim = channels * 4 * 4

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # [..., 64, 64, 3] uint8 -> [..., out_dim]
        lead = images.shape[:-3]
        x = images.reshape(-1, *images.shape[-3:]).permute(0, 3, 1, 2).float() / 255.0 - 0.5
        return self.net(x).reshape(*lead, -1)


class Decoder(nn.Module):
    """feat -> 4x4 x 4depth -> 4 transposed convs (stride 2) -> conv to 3 channels -> sigmoid, 64x64."""

    def __init__(self, feat_dim: int, depth: int):
        super().__init__()
        self.depth = depth
        self.project = LinearNormAct(feat_dim, 4 * depth * 16)
        layers, channels = [], 4 * depth
        for mult in [4, 3, 2, 1]:
            layers += [nn.ConvTranspose2d(channels, depth * mult, 5, 2, 2, output_padding=1), ChannelRMSNorm(depth * mult, eps=1e-4), nn.SiLU()]
            channels = depth * mult
        self.net = nn.Sequential(*layers, nn.Conv2d(channels, 3, 5, 1, 2))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:  # [..., F] -> [..., 3, 64, 64] in [0, 1]
        lead = feat.shape[:-1]
        x = self.project(feat.reshape(-1, feat.shape[-1])).reshape(-1, 4 * self.depth, 4, 4)
        return torch.sigmoid(self.net(x).float()).reshape(*lead, 3, IMAGE_SIZE, IMAGE_SIZE)


class BlockLinear(nn.Module):
    """`blocks` independent linear maps on equal slices of the input (the block GRU's weights)."""

    def __init__(self, blocks: int, in_per_block: int, out_per_block: int):
        super().__init__()
        bound = 1 / math.sqrt(in_per_block)
        self.weight = nn.Parameter(torch.empty(blocks, in_per_block, out_per_block).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(blocks, out_per_block))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, G, in] -> [N, G, out]
        return torch.einsum("ngi,gio->ngo", x, self.weight.to(x.dtype)) + self.bias.to(x.dtype)


class EnsembleLinear(nn.Module):
    """`members` independent Linear (+ RMSNorm + SiLU) layers applied to the same or per-member inputs."""

    def __init__(self, members: int, in_dim: int, out_dim: int, norm_act: bool):
        super().__init__()
        bound = 1 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(members, 1, out_dim))
        self.scale = nn.Parameter(torch.ones(members, 1, out_dim)) if norm_act else None

    def forward(self, x: torch.Tensor, member: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, in] or [E', N, in]; member: None (all members -> [E, N, out]) or a [1] index (-> [1, N, out])."""
        weight, bias, scale = self.weight, self.bias, self.scale
        if member is not None:
            weight, bias = weight.index_select(0, member), bias.index_select(0, member)
            scale = scale.index_select(0, member) if scale is not None else None
        x = torch.matmul(x, weight.to(x.dtype)) + bias.to(x.dtype)
        if scale is None:
            return x
        x = x * torch.rsqrt(x.float().square().mean(-1, keepdim=True) + 1e-4).to(x.dtype) * scale.to(x.dtype)
        return F.silu(x)


class RSSM(nn.Module):
    """Recurrent state-space model: deterministic state h (block GRU) and discrete stochastic state z
    (stoch categoricals of `classes` classes). Posterior q(z | h, embed); prior p(z | h) is an ensemble."""

    def __init__(self, deter, hidden, stoch, classes, blocks, act_dim, embed_dim, members):
        super().__init__()
        if deter % blocks:
            raise SystemExit(f"deter {deter} must be divisible by blocks {blocks}")
        self.deter, self.stoch, self.classes, self.blocks = deter, stoch, classes, blocks
        self.in_deter = LinearNormAct(deter, hidden)
        self.in_stoch = LinearNormAct(stoch * classes, hidden)
        self.in_action = LinearNormAct(act_dim, hidden)
        self.gru_hidden = BlockLinear(blocks, deter // blocks + 3 * hidden, deter // blocks)
        self.gru_hidden_norm = nn.RMSNorm(deter, eps=1e-4)
        self.gru_gates = BlockLinear(blocks, deter // blocks, 3 * deter // blocks)
        self.posterior_net = nn.Sequential(LinearNormAct(deter + embed_dim, hidden), nn.Linear(hidden, stoch * classes))
        self.prior_layers = nn.ModuleList([
            EnsembleLinear(members, deter, hidden, True),
            EnsembleLinear(members, hidden, hidden, True),
            EnsembleLinear(members, hidden, stoch * classes, False),
        ])

    def gru(self, deter, stoch, action):
        """One block-GRU step: h' = u * tanh(r * c) + (1 - u) * h, gates computed per block."""
        action = action / action.detach().abs().clamp(min=1.0)
        shared = torch.cat([self.in_deter(deter), self.in_stoch(stoch), self.in_action(action)], -1)
        groups = deter.reshape(-1, self.blocks, self.deter // self.blocks)
        x = torch.cat([groups, shared[:, None].expand(-1, self.blocks, -1)], -1)
        x = F.silu(self.gru_hidden_norm(self.gru_hidden(x).reshape(-1, self.deter)))
        reset, cand, update = self.gru_gates(x.reshape(-1, self.blocks, self.deter // self.blocks)).chunk(3, -1)
        reset, cand, update = (g.reshape(-1, self.deter) for g in (reset, cand, update))
        update = torch.sigmoid(update - 1)
        return update * torch.tanh(torch.sigmoid(reset) * cand) + (1 - update) * deter

    def posterior(self, deter, embed) -> torch.Tensor:  # -> log-probs [N, stoch, classes]
        logits = self.posterior_net(torch.cat([deter, embed], -1))
        return unimix_log_probs(logits.reshape(-1, self.stoch, self.classes))

    def prior(self, deter, member: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probs of every member [E, N, stoch, classes] (member=None) or of one member [N, stoch, classes]."""
        x = deter
        for layer in self.prior_layers:
            x = layer(x, member)
        log_probs = unimix_log_probs(x.reshape(*x.shape[:-1], self.stoch, self.classes))
        return log_probs if member is None else log_probs[0]

    def observe(self, embed, prev_actions, is_first):
        """Posterior rollout over a batch of sequences [B, T, ...]; the state resets where is_first."""
        batch, length = embed.shape[:2]
        deter = embed.new_zeros(batch, self.deter)
        stoch = embed.new_zeros(batch, self.stoch * self.classes)
        deters, stochs, posts = [], [], []
        for t in range(length):
            keep = (~is_first[:, t]).to(embed.dtype)[:, None]
            deter = self.gru(deter * keep, stoch * keep, prev_actions[:, t] * keep)
            post = self.posterior(deter, embed[:, t])
            stoch = sample_onehot(post).reshape(batch, -1).to(deter.dtype)
            deters.append(deter)
            stochs.append(stoch)
            posts.append(post)
        return torch.stack(deters, 1), torch.stack(stochs, 1), torch.stack(posts, 1)

    def imagine_step(self, deter, stoch, action, member):
        """One prior step with ensemble member `member` ([1] index tensor, the same for the whole batch)."""
        deter = self.gru(deter, stoch, action)
        stoch = sample_onehot(self.prior(deter, member)).reshape(deter.shape[0], -1).to(deter.dtype)
        return deter, stoch


class WorldModel(nn.Module):
    def __init__(self, size: str, act_dim: int, members: int):
        super().__init__()
        cfg = SIZES[size]
        self.encoder = Encoder(cfg["depth"])
        self.rssm = RSSM(cfg["deter"], cfg["hidden"], cfg["stoch"], cfg["classes"], cfg["blocks"], act_dim,
                         self.encoder.out_dim, members)
        self.feat_dim = cfg["deter"] + cfg["stoch"] * cfg["classes"]
        self.decoder = Decoder(self.feat_dim, cfg["depth"])
        self.reward_head = mlp(self.feat_dim, cfg["units"], 1, TWOHOT_BINS, out_scale=0.0)
        self.cont_head = mlp(self.feat_dim, cfg["units"], 1, 1)
        self.members = members
        self.register_buffer("bins", twohot_bins(TWOHOT_BINS))

    def posterior_states(self, batch):
        """Encode and filter a replay batch: deter [B,T,D], stoch [B,T,S*C], posterior log-probs."""
        embed = self.encoder(batch["images"])
        prev_actions = torch.cat([torch.zeros_like(batch["actions"][:, :1]), batch["actions"][:, :-1]], 1)
        return self.rssm.observe(embed, prev_actions, batch["is_first"])


def world_model_loss(wm: WorldModel, batch: dict, args: Args):
    """DreamerV3 world-model loss: image MSE (sum over pixels) + two-hot reward NLL + continue BCE toward
    the soft label gamma * (1 - terminal) + dynamics KL + rep_scale * representation KL, free bits on each.
    The KL terms are taken against every prior member (leq-spec section 9)."""
    deter, stoch, post = wm.posterior_states(batch)
    feat = torch.cat([deter, stoch], -1)
    target = batch["images"].permute(0, 1, 4, 2, 3).float() / 255.0
    image_loss = (wm.decoder(feat) - target).square().sum((-3, -2, -1)).mean()
    reward_loss = -twohot_log_prob(wm.reward_head(feat), batch["rewards"], wm.bins).mean()
    cont_target = args.gamma * (1.0 - batch["is_terminal"].float())
    cont_loss = F.binary_cross_entropy_with_logits(wm.cont_head(feat).squeeze(-1).float(), cont_target)
    prior = wm.rssm.prior(deter.flatten(0, 1))  # [E, B*T, S, C]
    post = post.flatten(0, 1)
    dyn_loss = categorical_kl(post.detach(), prior).clamp(min=args.free_bits).mean()
    rep_loss = categorical_kl(post, prior.detach()).clamp(min=args.free_bits).mean()
    loss = image_loss + reward_loss + cont_loss + dyn_loss + args.rep_scale * rep_loss
    metrics = dict(wm_loss=loss, image_loss=image_loss, reward_loss=reward_loss, cont_loss=cont_loss,
                   dyn_loss=dyn_loss, rep_loss=rep_loss)
    return loss, {k: v.detach() for k, v in metrics.items()}


class Agent(nn.Module):
    """Actor pi(a | s) (tanh-normal, std in [0.1, 1]), critic Q(s, a) and value V(s) (symexp two-hot),
    a slow (EMA) critic, and the 5-95 percentile return scale. s = (deter, stoch) of the world model."""

    def __init__(self, feat_dim: int, act_dim: int, units: int):
        super().__init__()
        self.actor = mlp(feat_dim, units, 3, 2 * act_dim, out_scale=0.01)
        self.critic = mlp(feat_dim + act_dim, units, 3, TWOHOT_BINS, out_scale=0.0)
        self.slow_critic = mlp(feat_dim + act_dim, units, 3, TWOHOT_BINS, out_scale=0.0)
        self.slow_critic.load_state_dict(self.critic.state_dict())
        self.slow_critic.requires_grad_(False)
        self.value = mlp(feat_dim, units, 3, TWOHOT_BINS, out_scale=0.0)
        self.register_buffer("bins", twohot_bins(TWOHOT_BINS))
        self.register_buffer("return_percentiles", torch.zeros(2))  # EMA of the 5% and 95% percentiles

    def policy(self, feat):
        mean, std = self.actor(feat).float().chunk(2, -1)
        return mean, 0.9 * torch.sigmoid(std + 2.0) + 0.1

    def q(self, critic, feat, action):
        return twohot_mean(critic(torch.cat([feat, action.to(feat.dtype)], -1)), self.bins)

    def update_return_scale(self, returns, rate: float = 0.01):
        """S = max(1, EMA p95 - EMA p5) of the λ-returns (DreamerV3 'perc' return normalisation)."""
        flat = returns.detach().float().flatten()
        current = torch.stack([torch.quantile(flat, 0.05), torch.quantile(flat, 0.95)])
        self.return_percentiles.lerp_(current, rate)
        return (self.return_percentiles[1] - self.return_percentiles[0]).clamp(min=1.0)


def imagine(wm: WorldModel, agent: Agent, deter, stoch, horizon: int):
    """Roll the actor out in the frozen model from every start state; each step draws ONE prior member
    uniformly for the whole batch. Returns feats [H+1, N, F], pre-tanh actions and their Normal noise."""
    feats, pre_tanh, noises = [], [], []
    for t in range(horizon + 1):
        feat = torch.cat([deter, stoch], -1)
        mean, std = agent.policy(feat)
        noise = torch.randn_like(mean)
        feats.append(feat)
        pre_tanh.append(mean + std * noise)
        noises.append(noise)
        if t < horizon:
            member = torch.randint(wm.members, (1,), device=deter.device)
            deter, stoch = wm.rssm.imagine_step(deter, stoch, torch.tanh(pre_tanh[-1]), member)
    return torch.stack(feats), torch.stack(pre_tanh), torch.stack(noises)


def behaviour_loss(wm: WorldModel, agent: Agent, batch: dict, args: Args, tau: float):
    """LEQ's pixel objective (leq-spec section 9, LEQ_DV3 agent.py): critic, value, actor and replay terms."""
    with torch.no_grad():
        deter, stoch, _ = wm.posterior_states(batch)
        replay_feat = torch.cat([deter, stoch], -1)  # [B, T, F]
        feats, pre_tanh, noise = imagine(wm, agent, deter.flatten(0, 1), stoch.flatten(0, 1), args.horizon)
        actions = torch.tanh(pre_tanh)
        rewards = twohot_mean(wm.reward_head(feats[1:]), wm.bins)  # r_t predicted at s_{t+1}: [H, N]
        cont = torch.sigmoid(wm.cont_head(feats[1:]).squeeze(-1).float())  # includes gamma (soft label)
        alive = torch.cat([torch.ones_like(cont[:1]), torch.cumprod(cont, 0)])  # m_t, cumulative continuation
        slow_q = agent.q(agent.slow_critic, feats, actions)

    critic_logits = agent.critic(torch.cat([feats, actions.to(feats.dtype)], -1))
    q = twohot_mean(critic_logits, agent.bins).detach()  # Q(s_t, a_t), t = 0..H
    # Eq. 8 as the authors' code computes it; gamma is already inside the continuation m (contdisc).
    returns = lambda_returns(q, rewards, alive, 1.0, args.lam)
    weight = expectile_weight(returns, q, tau)  # Eq. 1: tau where the return exceeds Q, else 1 - tau
    horizon = args.horizon
    critic_loss = -(alive[:horizon] * (
        weight[:horizon] * twohot_log_prob(critic_logits[:horizon], returns[:horizon], agent.bins)
        + args.slowreg * twohot_log_prob(critic_logits[:horizon], slow_q[:horizon], agent.bins)
    )).mean()

    value_logits = agent.value(feats)
    value_loss = -(alive * twohot_log_prob(value_logits, q, agent.bins)).mean()
    baseline = twohot_mean(value_logits, agent.bins).detach()

    scale = agent.update_return_scale(returns)
    advantage = (weight * (returns - baseline) / scale).detach()  # Eq. 11 with a value baseline
    mean, std = agent.policy(feats)
    log_pi = tanh_normal_log_prob(mean, std, pre_tanh)
    entropy = -tanh_normal_log_prob(mean, std, mean + std * noise)  # one-sample estimate, reparameterised
    actor_loss = -(alive * (log_pi * advantage + args.actor_entropy * entropy)).mean()

    with torch.no_grad():  # one-step target on replay transitions: r + gamma (1 - terminal) Q(s', a' ~ pi)
        next_mean, next_std = agent.policy(replay_feat[:, 1:])
        next_action = torch.tanh(next_mean + next_std * torch.randn_like(next_mean))
        next_q = agent.q(agent.critic, replay_feat[:, 1:], next_action)
        replay_target = batch["rewards"][:, 1:] + args.gamma * (1 - batch["is_terminal"][:, 1:].float()) * next_q
        replay_slow = agent.q(agent.slow_critic, replay_feat[:, :-1], batch["actions"][:, :-1])
    replay_logits = agent.critic(torch.cat([replay_feat[:, :-1], batch["actions"][:, :-1].to(replay_feat.dtype)], -1))
    valid = (~batch["is_last"][:, :-1]).float()
    replay_loss = -(valid * (
        twohot_log_prob(replay_logits, replay_target, agent.bins)
        + args.slowreg * twohot_log_prob(replay_logits, replay_slow, agent.bins)
    )).mean()

    loss = actor_loss + critic_loss + value_loss + replay_loss
    metrics = dict(actor_loss=actor_loss, critic_loss=critic_loss, value_loss=value_loss, replay_loss=replay_loss,
                   imagined_return=returns.mean(), q=q.mean(), return_scale=scale, imagined_reward=rewards.mean(),
                   entropy=entropy.mean(), expectile_weight=weight.mean())
    return loss, {k: v.detach() for k, v in metrics.items()}


# ---------------------------------------------------------------------------------------------------------
# Optimisation: LaProp with adaptive gradient clipping (the LEQ_DV3 optimiser), compiled update steps
# ---------------------------------------------------------------------------------------------------------
class LaProp(torch.optim.Optimizer):
    """AGC (clip each tensor's gradient to agc * max(1e-3, |param|)), then LaProp: divide the gradient by its
    running RMS, then momentum; bias-corrected. DreamerV3's optimiser (opt: scaler rms, momentum, eps 1e-20)."""

    def __init__(self, params, lr: float, agc: float, beta1=0.9, beta2=0.999, eps=1e-20):
        super().__init__(params, dict(lr=lr, agc=agc, beta1=beta1, beta2=beta2, eps=eps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            for p in params:
                if not self.state[p]:
                    self.state[p].update(step=0, nu=torch.zeros_like(p), momentum=torch.zeros_like(p))
            states = [self.state[p] for p in params]
            step = states[0]["step"] + 1
            for state in states:
                state["step"] = step
            clip = torch._foreach_div(torch._foreach_clamp_min(torch._foreach_norm(params), 1e-3),
                                      torch._foreach_clamp_min(torch._foreach_norm(grads), 1e-12))
            torch._foreach_mul_(clip, group["agc"])
            torch._foreach_clamp_max_(clip, 1.0)
            torch._foreach_mul_(grads, clip)
            nus, momenta = [s["nu"] for s in states], [s["momentum"] for s in states]
            beta1, beta2 = group["beta1"], group["beta2"]
            torch._foreach_mul_(nus, beta2)
            torch._foreach_addcmul_(nus, grads, grads, 1 - beta2)
            denom = torch._foreach_div(nus, 1 - beta2**step)
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, group["eps"])
            torch._foreach_lerp_(momenta, torch._foreach_div(grads, denom), 1 - beta1)
            torch._foreach_add_(params, momenta, alpha=-group["lr"] / (1 - beta1**step))


def learning_rate(step: int, args: Args, total: int) -> float:
    """Linear warm-up, then cosine decay to 0 over the phase (LEQ_DV3 dmc_vision: schedule cosine)."""
    warm = min(1.0, (step + 1) / max(1, args.warmup))
    return args.lr * warm * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(1, total)))


class Updater:
    """A (compiled) loss function, its optimiser and learning-rate schedule: update() = one gradient step.
    Metrics come back as detached device tensors; nothing here reads a value to the host."""

    def __init__(self, loss_fn, params, args: Args, total_steps: int, device: torch.device):
        use_compile = resolve_compile(args.compile, device)
        self.loss_fn = compile_step(loss_fn, use_compile, args.cudagraphs, device)
        self.params = [p for p in params if p.requires_grad]
        self.optimizer = LaProp(self.params, lr=args.lr, agc=args.agc)
        self.args, self.total_steps, self.device, self.step = args, total_steps, device, 0

    def update(self, *inputs) -> dict:
        if self.args.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.args.bf16):
            loss, metrics = self.loss_fn(*inputs)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, self.args, self.total_steps)
        self.optimizer.step()
        self.step += 1
        return {k: v.clone() for k, v in metrics.items()} if self.args.cudagraphs else metrics


def soft_update_(slow: nn.Module, fast: nn.Module, rate: float) -> None:
    with torch.no_grad():
        torch._foreach_lerp_(list(slow.parameters()), list(fast.parameters()), rate)


# ---------------------------------------------------------------------------------------------------------
# Evaluation: the V-D4RL protocol, episodes batched through the policy
# ---------------------------------------------------------------------------------------------------------
def evaluation_seed(run_seed: int, step: int) -> int:
    """The seed of the first episode of a run's evaluation at `step` (evaluate() seeds episode i with it + i), drawn
    from (run seed, step) so that runs of neighbouring seeds play independent episodes. 31 bits: dm_control's
    RandomState needs every episode's seed below 2**32."""
    return int(np.random.SeedSequence([run_seed, step]).generate_state(1)[0]) >> 1


@torch.no_grad()
def evaluate(wm: WorldModel, agent: Agent, args: Args, num_episodes: int, seed: int, device) -> dict:
    """Deterministic policy tanh(mean) filtered through the world model's posterior; score = return / 10."""
    envs = [make_env(args.env_id, seed + i) for i in range(num_episodes)]
    for env in envs:
        env.reset()
    act_dim = envs[0].action_spec().shape[0]
    rssm = wm.rssm
    deter = torch.zeros(num_episodes, rssm.deter, device=device)
    stoch = torch.zeros(num_episodes, rssm.stoch * rssm.classes, device=device)
    action = torch.zeros(num_episodes, act_dim, device=device)
    returns, done = np.zeros(num_episodes), np.zeros(num_episodes, bool)
    from tqdm import trange

    for _ in trange(args.eval_episode_steps, desc=f"evaluating {num_episodes} episodes", leave=False):
        frames = np.stack([env.physics.render(IMAGE_SIZE, IMAGE_SIZE, camera_id=0) for env in envs])
        embed = wm.encoder(torch.as_tensor(frames, device=device))
        deter = rssm.gru(deter, stoch, action)
        stoch = sample_onehot(rssm.posterior(deter, embed)).flatten(1)
        action = torch.tanh(agent.policy(torch.cat([deter, stoch], -1))[0])
        for i, (env, act) in enumerate(zip(envs, action.cpu().numpy())):
            if not done[i]:
                reward, _, done[i] = _repeat_step(env, _env_action(env, act.astype(np.float64)))
                returns[i] += reward
        if done.all():
            break
    scores = returns / 10.0
    return dict(mean=float(scores.mean()), std=float(scores.std()), scores=scores.tolist(), returns=returns.tolist())


# ---------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------
def default_world_model_path(args: Args, fingerprint: str) -> Path:
    return Path("checkpoints/pixel_world_model") / f"{args.env_id}__{args.size}__seed{args.seed}__{fingerprint[:10]}.pt"


def save_run(path, args, data, phase, wm, agent, wm_updater, agent_updater, history: list) -> None:
    atomic_save(dict(
        kind="leq_pixel", fingerprint=data.fingerprint, args=asdict(args), phase=phase,
        world_model=wm.state_dict(), agent=agent.state_dict(),
        wm_optimizer=wm_updater.optimizer.state_dict(), wm_step=wm_updater.step,
        agent_optimizer=agent_updater.optimizer.state_dict(), agent_step=agent_updater.step,
        rng=rng_states(), versions=software_versions(), history=history,
    ), path)


# ---------------------------------------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------------------------------------
class MetricLog:
    """Collects detached metric tensors; reads them to the host (one sync) only when writing a log line."""

    def __init__(self, run_dir: Path, tracker):
        self.path, self.tracker = run_dir / "metrics.jsonl", tracker

    def write(self, phase: str, step: int, metrics: dict, progress=None) -> dict:
        values = dict(zip(metrics, torch.stack([v.float() for v in metrics.values()]).tolist()))
        with open(self.path, "a") as log:
            log.write(json.dumps(dict(phase=phase, step=step, **values)) + "\n")
        if self.tracker is not None:
            self.tracker.log({f"{phase}/{k}": v for k, v in values.items()}, step=step)
        if progress is not None:
            progress.set_postfix({k: f"{v:.3g}" for k, v in list(values.items())[:4]})
        return values


def stop_if_diverged(phase: str, step: int, losses: dict, params, last_good: str) -> None:
    """At log and checkpoint time only (one read of each tensor): stop when a loss or a parameter is NaN/inf."""
    bad = non_finite({"losses": losses, "parameters": list(params)})
    if bad:
        raise SystemExit(f"{phase} diverged at step {step}: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} "
                         f"not finite. Stopped; the last good checkpoint is {last_good}. Try a lower --lr.")


def train_phase(name, updater, replay, total, log, args, on_step=None, save=None, evaluate_fn=None,
                checkpoint_path=None):
    """Run updates from updater.step to `total` with a progress bar, logs, periodic checkpoints/evaluation,
    stopping with a diagnostic when the losses or parameters stop being finite."""
    from tqdm import tqdm

    last_good = f"{checkpoint_path}, if written before this phase's step {updater.step}"
    progress = tqdm(total=total, initial=updater.step, desc=name, dynamic_ncols=True)
    while updater.step < total:
        metrics = updater.update(replay.sample())
        if on_step is not None:
            on_step()
        step = updater.step
        progress.update(1)
        if step % args.log_every == 0 or step == total or step == 1:
            stop_if_diverged(name, step, log.write(name, step, metrics, progress), updater.params, last_good)
        if evaluate_fn is not None and (step % args.eval_every == 0 and step < total):
            evaluate_fn(step)  # before the checkpoint of the same step, which then holds this evaluation
        if save is not None and (step % args.save_every == 0 or step == total):
            stop_if_diverged(name, step, {}, updater.params, last_good)
            save()
            last_good = f"{checkpoint_path} ({name} step {step})"
    progress.close()


def check_args(args: Args) -> torch.device:
    """Every argument and the device checked in seconds, before any work. Returns the device."""
    device = check_device(args)
    problems = out_of_range(
        args,
        positive=("batch_size", "horizon", "eval_episodes", "eval_episode_steps", "log_every", "save_every",
                  "eval_every", "ensemble", "collect_episodes", "collect_episode_steps", "lr"),
        non_negative=("wm_steps", "steps", "warmup", "agc", "free_bits", "rep_scale", "slowreg", "actor_entropy"),
        fractions=("lam", "slow_critic_fraction"),
        rates=("gamma",),
        open_fractions=("tau",),
    )
    if args.batch_length < 2:
        problems.append(f"--batch-length must be at least 2 (one-step targets), got {args.batch_length}")
    if args.resume is not None and not Path(args.resume).is_file():
        problems.append(f"--resume {args.resume} is not a file: pass the checkpoint.pt of an earlier run")
    refuse(problems)
    return device


def main(args: Args) -> None:
    device = check_args(args)
    if args.collect:
        collect_dataset(args)
        return
    tau = task_tau(args.env_id, args.tau)
    seed_everything(args.seed)
    data = load_vd4rl(args.dataset_path or default_dataset_path(args.env_id))
    act_dim = data.actions.shape[1]
    replay = Replay(data, args.batch_size, args.batch_length, device)
    print(f"{args.env_id}: {len(data.rewards)} steps, {int(data.is_first.sum())} episodes from {data.source}; tau={tau}")

    wm = WorldModel(args.size, act_dim, args.ensemble).to(device)
    agent = Agent(wm.feat_dim, act_dim, SIZES[args.size]["units"]).to(device)
    print(f"world model: {sum(p.numel() for p in wm.parameters()) / 1e6:.2f}M parameters; "
          f"actor/critic/value: {sum(p.numel() for p in agent.parameters()) / 1e6:.2f}M ({args.size})")
    wm_updater = Updater(lambda batch: world_model_loss(wm, batch, args), wm.parameters(), args, args.wm_steps, device)
    agent_params = [*agent.actor.parameters(), *agent.critic.parameters(), *agent.value.parameters()]
    agent_updater = Updater(lambda batch: behaviour_loss(wm, agent, batch, args, tau), agent_params, args, args.steps, device)

    phase, history = "world_model", []  # history: the evaluations as eval.csv rows
    if args.resume:
        checkpoint = load_checkpoint(args.resume, "leq_pixel", data.fingerprint, device)
        wm.load_state_dict(checkpoint["world_model"])
        agent.load_state_dict(checkpoint["agent"])
        wm_updater.optimizer.load_state_dict(checkpoint["wm_optimizer"])
        agent_updater.optimizer.load_state_dict(checkpoint["agent_optimizer"])
        wm_updater.step, agent_updater.step, phase = checkpoint["wm_step"], checkpoint["agent_step"], checkpoint["phase"]
        set_rng_states(checkpoint["rng"])
        history = checkpoint.get("history", [])
        run_dir = Path(args.resume).parent
        print(f"resuming {run_dir} in phase {phase} (world model step {wm_updater.step}, behaviour step {agent_updater.step})")
    else:
        run_dir = Path("runs") / new_run_name(args.env_id, args.exp_name, args.seed)
    write_run_config(run_dir, args, env_id=args.env_id, seed=args.seed, tau=tau, run_name=run_dir.name,
                     dataset=data.source, dataset_fingerprint=data.fingerprint)
    append_eval_row = eval_csv_writer(run_dir, history)
    log = MetricLog(run_dir, init_tracking(args, run_dir.name))
    save = lambda: save_run(  # noqa: E731
        run_dir / "checkpoint.pt", args, data, phase, wm, agent, wm_updater, agent_updater, history)

    wm_path = Path(args.world_model_path) if args.world_model_path else default_world_model_path(args, data.fingerprint)
    if phase == "world_model" and wm_path.is_file():
        wm.load_state_dict(load_checkpoint(wm_path, "pixel_world_model", data.fingerprint, device)["world_model"])
        print(f"loaded the pretrained world model {wm_path} (skipping pretraining; delete it to retrain)")
        phase = "behaviour"
    if phase == "world_model":
        train_phase("world_model", wm_updater, replay, args.wm_steps, log, args, save=save,
                    checkpoint_path=run_dir / "checkpoint.pt")
        atomic_save(dict(kind="pixel_world_model", fingerprint=data.fingerprint, world_model=wm.state_dict(),
                         size=args.size, ensemble=args.ensemble, act_dim=act_dim, steps=args.wm_steps), wm_path)
        print(f"world model saved to {wm_path}")
        phase = "behaviour"
        save()

    wm.requires_grad_(False)  # frozen: only the actor, critic and value train from here on

    def evaluate_and_log(step, policy="leq"):
        result = evaluate(wm, agent, args, args.eval_episodes, evaluation_seed(args.seed, step), device)
        log.write("eval", step, {"score": torch.tensor(result["mean"]), "score_std": torch.tensor(result["std"])})
        row = {"step": step, "policy": policy, "episodes": args.eval_episodes, "mean": result["mean"], "std": result["std"]}
        history.append(row)
        append_eval_row(row)
        print(f"behaviour step {step}: score {result['mean']:.1f} +- {result['std']:.1f} over {args.eval_episodes} episodes")
        return result

    train_phase("behaviour", agent_updater, replay, args.steps, log, args,
                on_step=lambda: soft_update_(agent.slow_critic, agent.critic, args.slow_critic_fraction),
                save=save, evaluate_fn=evaluate_and_log, checkpoint_path=run_dir / "checkpoint.pt")
    result = evaluate_and_log(agent_updater.step, policy="leq_final")
    (run_dir / "final_eval.json").write_text(json.dumps(result))
    print(f"final score {result['mean']:.1f} +- {result['std']:.1f}; run saved in {run_dir}")


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


# ==== mirror: checkpoints (identical in leq_state.py, leq_pixel.py) ====
# Loading a checkpoint: kind, format and dataset fingerprint are checked before anything is used.


def load_checkpoint(path, kind: str, fingerprint: str | None, device) -> dict:
    """Load a checkpoint written with atomic_save as {"kind": ..., "fingerprint": ..., ...}.

    Refuses, with a message that says what to do, a missing file, a checkpoint of another kind, or one
    trained on another dataset (fingerprint=None skips that check)."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"checkpoint {path} does not exist; check the path, or train one first.")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=False)
    except Exception as error:  # a truncated or foreign file: say which, not a pickle traceback
        raise SystemExit(f"checkpoint {path} cannot be read ({type(error).__name__}: {error}).") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("kind") != kind:
        found = checkpoint.get("kind") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise SystemExit(f"{path} is not a {kind} checkpoint (it holds: {found}).")
    if fingerprint is not None:
        refuse_other_dataset(checkpoint, fingerprint, path)
    return checkpoint


def refuse_other_dataset(checkpoint: dict, fingerprint: str, path) -> None:
    """Refuse, saying what to do, a checkpoint trained on data other than the one with this fingerprint."""
    if checkpoint.get("fingerprint") != fingerprint:
        raise SystemExit(
            f"{path} was trained on another dataset (fingerprint {checkpoint.get('fingerprint')}, this dataset "
            f"is {fingerprint}). Pass the checkpoint trained on this data, or retrain on it."
        )


def new_run_name(env_id: str, exp_name: str, seed: int) -> str:
    """CleanRL's run name plus a random suffix, so that runs of a sweep started in the same second never share
    a run dir."""
    return f"{env_id}__{exp_name}__{seed}__{int(time.time())}_{os.urandom(3).hex()}"


EVAL_CSV_HEADER = "step,policy,episodes,mean,std"  # policy: leq (periodic), leq_final, bc


def write_run_config(run_dir, args, **resolved) -> None:
    """runs/<run_name>/config.json: every argument, the values resolved from them (e.g. tau from the env id)
    and the software versions, written when the run starts."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"args": dict(vars(args)), **resolved, "software": software_versions()}
    (run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")


def eval_csv_writer(run_dir, rows: list):
    """Rewrite runs/<run_name>/eval.csv with `rows` (a resumed run's checkpointed evaluations, so no row is
    written twice) and return append(row), which adds one evaluation row and closes (flushes) the file."""
    path = Path(run_dir) / "eval.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join([EVAL_CSV_HEADER + "\n", *map(_eval_csv_line, rows)]))

    def append(row: dict) -> None:
        with open(path, "a") as file:
            file.write(_eval_csv_line(row))

    return append


def _eval_csv_line(row: dict) -> str:
    return ",".join(str(row.get(key, "")) for key in EVAL_CSV_HEADER.split(",")) + "\n"


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ==== end mirror: checkpoints ====


# ==== mirror: returns (identical in leq_state.py, leq_pixel.py) ====
def lambda_returns(q: torch.Tensor, rewards: torch.Tensor, alive: torch.Tensor, gamma: float, lam: float):
    """λ-returns V_0..V_H of an imagined rollout, as the authors' code computes them (leq-spec §5).

    q: [H+1, B] critic values Q(s_t, a_t); rewards: [H, B]; alive: [H+1, B], m_t = 1 until a termination
    happens before step t (a continuation probability in the pixel model). V_t is the average of the
    n-step returns n = 0..H-t (n = 0 is q_t itself) with weights λ^n normalised to sum to one; the paper's
    Eq. (8) writes another normaliser, the code's is the one behind the tables.
    """
    horizon = rewards.shape[0]
    values = [q[horizon]]
    weight_sum = 1.0  # c_t = 1 + λ c_{t+1}, c_{H-1} = 1: the λ-weights of the returns longer than 0 steps
    for t in range(horizon - 1, -1, -1):
        one_step = alive[t] * rewards[t] + gamma * alive[t + 1] * values[-1]
        values.append((q[t] + lam * weight_sum * one_step) / (1 + lam * weight_sum))
        weight_sum = 1 + lam * weight_sum
    return torch.stack(values[::-1])


def expectile_weight(target: torch.Tensor, prediction: torch.Tensor, tau: float) -> torch.Tensor:
    """|tau - 1(prediction > target)| (Eq. 1): tau where the target is above the prediction, else 1 - tau,
    in the prediction's dtype (Python-scalar branches would give float32 even in a float64 computation)."""
    return torch.where(target > prediction, torch.full_like(prediction, tau), torch.full_like(prediction, 1.0 - tau))
# ==== end mirror: returns ====


if __name__ == "__main__":
    main(tyro.cli(Args))
