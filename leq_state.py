"""LEQ (Lower Expectile Q-learning, Park & Lee) on state inputs: the whole pipeline in one file.

Data -> world model (train_world_model.py's checkpoint, or trained here and cached) -> BC + FQE pretraining
(fqe_pretrain.py's checkpoint, or run here and cached) -> the LEQ loop (Algorithm 1) -> evaluation.
The math follows the authors' code as written down in leq-spec §5 (paper Eq. 7, 8, 11); defaults are the
paper's Table 9, and tau per env id from Table 10.

    python leq_state.py                                     # generated pointmaze data, no network needed
    python leq_state.py --env-id antmaze-ultra-diverse --tau 0.1
    python leq_state.py --resume runs/<run_name>            # continue an interrupted run

Layout: Args, then LEQ itself (return targets, imagined rollouts, critic loss, one-sweep actor gradient,
the update, the loop's pieces), then main; below the banner, the support code shared with the other
scripts (mirrored blocks: one copy per script, kept identical by tools/sync_mirrors.py).
"""

import contextlib
import copy
import fcntl
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import tyro
from tqdm import tqdm


@dataclass
class Args:
    preset: Literal["none", "cpu-check"] = "none"
    """a named budget whose values replace the defaults below (explicit flags still win). cpu-check: the learning
    check of README Status on generated pointmaze-medium-diverse data (8000 LEQ steps, critic EMA rate 0.05; the
    plan printed at start estimates its time)"""
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (part of the run name)"""
    env_id: str = "pointmaze-medium-diverse"
    """task id (see collect_dataset.py for the list); pointmaze ids are generated here when missing"""
    dataset_path: str | None = None
    """a local dataset file or folder instead of the default location"""
    download: bool = False
    """download the dataset with minari when it is missing (needs network)"""
    seed: int = 1
    """random seed (also selects the cached world model and pretraining)"""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'"""
    compile: Annotated[bool | None, tyro.conf.DisallowNone] = None
    """torch.compile the update step; default: on for CUDA, off for the CPU (there a cold compile takes minutes and
    the compiled step is barely faster: README, Speed); --compile / --no-compile override"""
    cudagraphs: bool = False
    """capture the update step as CUDA graphs (CUDA only)"""
    track: bool = False
    """log to Weights & Biases"""
    wandb_project_name: str = "leq-pytorch"
    """the wandb project"""
    wandb_entity: str | None = None
    """the wandb entity (team)"""

    total_steps: int = 1_000_000
    """N_iter: number of LEQ gradient steps (Table 9)"""
    batch_size: int = 256
    """B_env: dataset transitions per step"""
    model_batch_size: int = 256
    """B_model: imagined rollouts per step, started from D_model"""
    gamma: float = 0.997
    """discount factor"""
    lam: float = 0.95
    """lambda of the lambda-returns"""
    horizon: int = 10
    """H: imagination length"""
    beta: float = 0.25
    """weight of the imagined terms in the critic loss (Eq. 7); 1 - beta for the dataset terms"""
    tau: float | None = None
    """expectile; None = the paper's Table 10 value for the env id"""
    ema_weight: float = 1.0
    """omega_EMA: weight of the critic's EMA regulariser"""
    ema_rate: float = 0.005
    """1 - epsilon_EMA: rate of the critic's EMA copy in LEQ"""
    actor_lr: float = 3e-5
    """actor learning rate (cosine decay to 0 over the run)"""
    critic_lr: float = 1e-4
    """critic learning rate"""
    expansion_interval: int = 5000
    """T_expand: steps between dataset expansions"""
    expansion_size: int = 50_000
    """N_expand: start states per expansion"""
    rollout_length: int = 5
    """R: model steps per expansion rollout"""
    expansion_keep: int = 5
    """D_model keeps the states of this many most recent expansions (FIFO)"""
    critic_target: Literal["lambda", "multi-step", "one-step"] = "lambda"
    """ablation: target of the imagined critic term"""
    actor_objective: Literal["lambda", "multi-step", "q"] = "lambda"
    """ablation: what the actor maximises (lambda-return, H-step return, or Q(s, a))"""
    expansion: bool = True
    """dataset expansion; --no-expansion starts imagined rollouts from dataset states (ablation)"""
    pretrain: bool = True
    """BC + FQE pretraining; --no-pretrain starts from random networks (ablation)"""
    goal_radius: float | None = None
    """maze goal radius of the termination function (None = the relabelling radius below)"""
    relabel_radius: float | None = None
    """maze goal radius that relabels Minari and generated maze data's rewards, and the termination's default
    (None = the task's: antmaze 0.5, pointmaze 0.45, the environments' success radii); D4RL hdf5 files keep theirs"""
    goal_cell: tuple[int, int] | None = None
    """pointmaze: evaluate on, and relabel the data's rewards against, this free cell (row column, rows counted from
    the top) instead of the task's goal cell; e.g. 1 6 on the medium maze, which no constant action reaches (README
    Status)"""
    imagined_reward: Literal["model", "goal"] = "model"
    """where imagined steps take their reward: the world model's reward head (paper), or, on mazes, the data's own
    rule applied to the imagined next state (1 inside the relabelling disc, 0 outside; README Status)"""
    actor_scaler: Literal["fixed", "trainable"] = "fixed"
    """the actor's input mean/std: fixed dataset statistics, or parameters trained by BC and LEQ as in the
    authors' code (on the learning check it changed no evaluation: README Status)"""
    routing: Literal["exact", "balanced"] = "exact"
    """world-model elite choice: exact iid per sample (OfflineRL-Kit), or balanced shares (faster)"""

    world_model_path: str | None = None
    """a world-model checkpoint; default: train_world_model.py's path for (env id, seed, dataset), trained if missing"""
    world_model_max_epochs: int | None = None
    """cap on world-model epochs when it is trained here (None: early stopping only)"""
    pretrain_path: str | None = None
    """a BC+FQE checkpoint; default: fqe_pretrain.py's path for (env id, seed, dataset), pretrained if missing"""
    bc_steps: int = 200_000
    """BC steps when pretraining here"""
    bc_batch_size: int = 4096
    """BC batch size"""
    bc_lr: float = 3e-5
    """BC learning rate"""
    fqe_steps: int = 200_000
    """FQE steps when pretraining here"""
    fqe_batch_size: int = 256
    """FQE batch size"""
    fqe_lr: float = 1e-4
    """FQE learning rate"""
    fqe_ema_rate: float = 0.005
    """rate of the FQE critic's EMA copy (fqe_pretrain.py --ema-rate)"""

    log_interval: int = 1000
    """steps between console/wandb log lines"""
    eval_interval: int = 50_000
    """steps between evaluations"""
    eval_episodes: int = 10
    """episodes per evaluation"""
    final_eval_episodes: int = 100
    """episodes of the final evaluation"""
    checkpoint_interval: int = 50_000
    """steps between checkpoints (runs/<run_name>/checkpoint.pt, written atomically)"""
    resume: str | None = None
    """continue the run in this directory (or checkpoint file) with its own hyperparameters"""


# Named budgets for --preset. They change budgets (data, pretraining, batch sizes, steps, evaluation), never the
# LEQ update's math; README Status has the measurements behind each value. cpu-check also sets the critic's EMA
# rate to 0.05 (paper: 0.005, --ema-rate 0.005): on seed 5, 8000 steps at 0.005 stay at 0% while 0.05 reaches 95%
# by step 3000; our reading is that the paper's EMA, sized for 1M-step runs, paces how fast the critic carries the
# goal's value back to the start (README Status).
PRESETS = {
    "cpu-check": dict(
        env_id="pointmaze-medium-diverse", total_steps=8000, ema_rate=0.05, batch_size=64, model_batch_size=64,
        expansion_interval=500, expansion_size=5000, world_model_max_epochs=3,
        bc_steps=3000, bc_batch_size=512, fqe_steps=50_000,
        eval_interval=1000, eval_episodes=20, final_eval_episodes=100, log_interval=500, checkpoint_interval=1000,
    ),
}


# ---------------------------------------------------------------------------------------------------------
# LEQ: return targets, imagined rollouts, the critic loss (Eq. 7) and the actor gradient (Eq. 11), leq-spec §5
# ---------------------------------------------------------------------------------------------------------
def recursive_returns(q, rewards, alive, gamma: float, alpha, beta):
    """V_H = q_H and V_t = alpha_t q_t + beta_t (m_t r_t + gamma m_{t+1} V_{t+1}) for t < H.

    The λ-return (alpha = 1/Z_t, beta = λ c_t/Z_t), the H-step return (alpha = 0, beta = 1) and Q itself
    (alpha = 1, beta = 0) are all of this form; the actor's reverse sweep needs exactly these coefficients."""
    values = [q[-1]]
    for t in range(rewards.shape[0] - 1, -1, -1):
        values.append(alpha[t] * q[t] + beta[t] * (alive[t] * rewards[t] + gamma * alive[t + 1] * values[-1]))
    return torch.stack(values[::-1])


def return_coefficients(kind: str, horizon: int, lam: float) -> tuple[list[float], list[float]]:
    """(alpha_t, beta_t), t < H, of recursive_returns for the actor objectives of leq-spec §8."""
    if kind == "lambda":  # Z_t = 1 + λ c_t, c_t = 1 + λ c_{t+1}, c_{H-1} = 1 (leq-spec §5)
        weights = [0.0] * horizon
        weight = 0.0
        for t in range(horizon - 1, -1, -1):
            weight = 1 + lam * weight
            weights[t] = weight
        return [1 / (1 + lam * c) for c in weights], [lam * c / (1 + lam * c) for c in weights]
    if kind == "multi-step":
        return [0.0] * horizon, [1.0] * horizon
    if kind == "q":
        return [1.0] * horizon, [0.0] * horizon
    raise ValueError(f"unknown return kind {kind!r}: use 'lambda', 'multi-step' or 'q'")


def critic_targets(kind: str, q, rewards, alive, gamma: float, lam: float):
    """Targets V_0..V_{H-1} of the imagined critic term: λ-return (Eq. 8 as coded), H-step or one-step return."""
    if kind == "lambda":
        values = lambda_returns(q, rewards, alive, gamma, lam)
    elif kind == "multi-step":
        alpha, beta = return_coefficients("multi-step", rewards.shape[0], lam)
        values = recursive_returns(q, rewards, alive, gamma, alpha, beta)
    elif kind == "one-step":
        values = alive[:-1] * rewards + gamma * alive[1:] * q[1:]
    else:
        raise ValueError(f"unknown critic target {kind!r}: use 'lambda', 'multi-step' or 'one-step'")
    return values[: rewards.shape[0]]


@dataclass
class Rollout:
    """An imagined rollout of fixed shape: terminations are masks, the batch never shrinks."""

    states: torch.Tensor  # [H+1, B, obs] s_0..s_H
    actions: torch.Tensor  # [H+1, B, act] a_t = pi(s_t)
    rewards: torch.Tensor  # [H, B] model rewards on the training scale
    alive: torch.Tensor  # [H+1, B] m_0 = 1, m_{t+1} = m_t (1 - term_t)


@torch.no_grad()
def imagine(actor, transition, terminated, start, horizon: int) -> Rollout:
    """H steps of a_t = pi(s_t), (s_{t+1}, r_t) ~ model, term_t = true termination (no gradient)."""
    states, actions, rewards, alive = [start], [], [], [torch.ones_like(start[:, 0])]
    for _ in range(horizon):
        action = actor(states[-1]).clamp(-1.0, 1.0)
        next_state, reward = transition(states[-1], action)
        alive.append(alive[-1] * (1.0 - terminated(states[-1], action, next_state).float()))
        states.append(next_state)
        actions.append(action)
        rewards.append(reward)
    actions.append(actor(states[-1]).clamp(-1.0, 1.0))
    return Rollout(torch.stack(states), torch.stack(actions), torch.stack(rewards), torch.stack(alive))


def expectile_loss(target: torch.Tensor, prediction: torch.Tensor, tau: float) -> torch.Tensor:
    """Elementwise L2_tau (Eq. 1): the squared error weighted by expectile_weight."""
    return expectile_weight(target, prediction, tau) * (target - prediction).square()


def critic_loss_terms(critic, critic_ema, batch: dict, rollout: Rollout, next_q, targets, gamma: float, tau: float):
    """The four terms of the critic loss (Eq. 7 as coded, leq-spec §5), each a scalar, before beta weighting.

    batch: dataset transitions (observations, actions, rewards on the training scale, masks = 1 - terminal);
    next_q: sg Q(s', pi(s')); targets: sg V_0..V_{H-1}. Imagined terms are weighted by w_t = gamma^t m_t."""
    q_data = critic(batch["observations"], batch["actions"])
    td_target = batch["rewards"] + gamma * batch["masks"] * next_q
    horizon = rollout.rewards.shape[0]
    states, actions = rollout.states[:horizon], rollout.actions[:horizon]
    q_model = critic(states.flatten(0, 1), actions.flatten(0, 1)).view(horizon, -1)
    discounts = gamma ** torch.arange(horizon, dtype=q_model.dtype, device=q_model.device)
    weights = discounts[:, None] * rollout.alive[:horizon]
    with torch.no_grad():
        ema_data = critic_ema(batch["observations"], batch["actions"])
        ema_model = critic_ema(states.flatten(0, 1), actions.flatten(0, 1)).view(horizon, -1)
    return {
        "td_data": expectile_loss(td_target, q_data, 0.5).mean(),  # 0.5 (y - Q)^2: no expectile on real data
        "expectile_model": (weights * expectile_loss(targets, q_model, tau)).mean(),
        "ema_data": (ema_data - q_data).square().mean(),
        "ema_model": (weights * (ema_model - q_model).square()).mean(),
    }


def actor_loss_one_sweep(actor, critic, transition, terminated, start, horizon, gamma, alpha, beta, tau):
    """Actor loss of Eq. 11 as coded: -sum_t mean_B sg(e_t g_t) . pi_theta(sg(s_t)), with g_t = dV_t/da_t.

    g_t is the total derivative through critic, model reward and next state and the later actions' dependence
    on later states (policy parameters fixed). It comes from ONE reverse sweep of H+1 small vector-Jacobian
    products (leq-spec §5, cost note): with u_t = dV_t/ds_t, step t's local map (s_t, a_t) -> (q_t, s_{t+1},
    r_t) gets the cotangents (alpha_t, beta_t gamma m_{t+1} u_{t+1}, beta_t m_t); its VJP gives (ds, da),
    g_t = da and u_t = ds + da . dpi/ds. torch.func.vjp keeps each step's pullback from the forward pass, so
    the model noise and elite draws are the forward pass's, and torch.compile traces the sweep as one graph.
    Returns (loss, V [H+1, B], q [H+1, B], g [H+1, B, act])."""
    with torch.no_grad():  # torch.func.vjp still differentiates inside; no outer graph is built
        states, qs, rewards, step_pullbacks, policy_pullbacks = [], [], [], [], []
        alive = [torch.ones_like(start[:, 0])]
        state = start.detach()
        for t in range(horizon + 1):
            action, policy_pullback = torch.func.vjp(actor, state)
            states.append(state)
            policy_pullbacks.append(policy_pullback)
            if t < horizon:
                (q, next_state, reward), step_pullback = torch.func.vjp(
                    lambda s, a: (critic(s, a), *transition(s, a)), state, action
                )
                alive.append(alive[t] * (1.0 - terminated(state, action, next_state).float()))
                rewards.append(reward)
                state = next_state
            else:
                q, step_pullback = torch.func.vjp(critic, state, action)
            qs.append(q)
            step_pullbacks.append(step_pullback)
        q, alive = torch.stack(qs).detach(), torch.stack(alive)
        values = recursive_returns(q, torch.stack(rewards).detach(), alive, gamma, alpha, beta)

        gradients = [None] * (horizon + 1)
        state_gradient = None  # u_{t+1}
        for t in range(horizon, -1, -1):
            if t == horizon:
                d_state, d_action = step_pullbacks[t](torch.ones_like(qs[t]))
            else:
                d_state, d_action = step_pullbacks[t](
                    (torch.full_like(qs[t], alpha[t]), (beta[t] * gamma) * alive[t + 1][:, None] * state_gradient,
                     beta[t] * alive[t])
                )
            gradients[t] = d_action.detach()
            if t > 0:
                (through_policy,) = policy_pullbacks[t](d_action)
                state_gradient = d_state + through_policy
        gradients = torch.stack(gradients)

    weights = expectile_weight(values, q, tau)
    weights[horizon] = 0.5  # e_H = 0.5 (leq-spec §5)
    policy_actions = actor(torch.stack(states).detach())  # pi_theta(sg(s_t)) for all t in one batched call
    loss = -((weights[..., None] * gradients) * policy_actions).sum(-1).mean(-1).sum()
    return loss, values, q, gradients


# ---------------------------------------------------------------------------------------------------------
# The training loop: dataset expansion, the update step, evaluation, checkpoints
# ---------------------------------------------------------------------------------------------------------
class ExpansionBuffer:
    """D_model on the device (Algorithm 1 lines 6-11): a FIFO of the last `keep` expansions, each `size`
    dataset start states rolled `length` steps in the model with the noisy policy; all R states are kept."""

    def __init__(self, obs_dim: int, size: int, length: int, keep: int, device):
        self.size, self.length, self.keep = size, length, keep
        self.states = torch.zeros(keep * length * size, obs_dim, device=device)
        self.filled = torch.zeros((), device=device)  # number of valid states, a tensor: sampling never syncs
        self.expansions = 0

    @torch.no_grad()
    def expand(self, explore, transition, dataset_observations, chunk: int = 12500) -> None:
        slot = (self.expansions % self.keep) * self.length * self.size
        starts = torch.randint(0, dataset_observations.shape[0], (self.size,), device=self.states.device)
        for begin in range(0, self.size, chunk):  # chunks bound the memory of the 7 x 200 ensemble activations
            state = dataset_observations[starts[begin : begin + chunk]]
            for t in range(self.length):
                offset = slot + t * self.size + begin
                self.states[offset : offset + state.shape[0]] = state
                state, _ = transition(state, explore(state))
        self.expansions += 1
        self.filled.fill_(min(self.expansions, self.keep) * self.length * self.size)

    def sample(self, batch_size: int) -> torch.Tensor:
        index = (torch.rand(batch_size, device=self.states.device) * self.filled).long()
        return self.states[index]

    def state_dict(self) -> dict:
        return {"states": self.states, "filled": self.filled, "expansions": self.expansions}

    def load_state_dict(self, state: dict) -> None:
        self.states.copy_(state["states"])
        self.filled.copy_(state["filled"])
        self.expansions = state["expansions"]


def make_model_transition(world_model, routing: str, reward_scale: float, reward_shift: float, goal_reward=None):
    """(obs, act) -> (next_obs, reward on the training scale): one reparameterised draw of the world model.
    goal_reward: None (the model's reward) or fn(obs, act, next_obs) -> bool [B], the raw reward's 1s."""

    def step(obs, act):
        next_obs, reward = sample_step(world_model, obs, act, routing)
        if goal_reward is not None:
            reward = goal_reward(obs, act, next_obs).to(reward.dtype)
        return next_obs, reward * reward_scale + reward_shift

    return step


def cosine_lr(base_lr: float, step: torch.Tensor, total_steps: int) -> torch.Tensor:
    """Cosine decay from base_lr to 0 over the run (leq-spec §2), computed on the device from a step tensor."""
    progress = step.clamp(max=total_steps) / total_steps
    return base_lr * 0.5 * (1.0 + torch.cos(math.pi * progress))


def make_leq_update(actor, critic, critic_ema, actor_optimizer, critic_optimizer, data, sample_starts,
                    transition, terminated, args, tau: float):
    """One LEQ gradient step (Algorithm 1 lines 12-20). Both updates use the pre-step parameters: every loss
    and gradient is computed before either optimiser steps. Returns detached metric tensors (no host sync)."""
    alpha, beta = return_coefficients(args.actor_objective, args.horizon, args.lam)
    actor_lr = actor_optimizer.param_groups[0]["lr"]
    step_count = torch.zeros((), device=data["obs"].device)

    def update() -> dict:
        index = torch.randint(0, data["obs"].shape[0], (args.batch_size,), device=data["obs"].device)
        batch = {"observations": data["obs"][index], "actions": data["act"][index], "rewards": data["reward"][index],
                 "masks": data["mask"][index]}
        start = sample_starts(args.model_batch_size)

        actor_loss, values, q_actor, _ = actor_loss_one_sweep(
            actor, critic, transition, terminated, start, args.horizon, args.gamma, alpha, beta, tau
        )
        rollout = imagine(actor, transition, terminated, start, args.horizon)  # a separate draw for the critic
        with torch.no_grad():
            q_rollout = critic(rollout.states.flatten(0, 1), rollout.actions.flatten(0, 1)).view(args.horizon + 1, -1)
            targets = critic_targets(args.critic_target, q_rollout, rollout.rewards, rollout.alive, args.gamma, args.lam)
            next_obs = data["next_obs"][index]
            next_q = critic(next_obs, actor(next_obs))
        terms = critic_loss_terms(critic, critic_ema, batch, rollout, next_q, targets, args.gamma, tau)
        critic_loss = (1 - args.beta) * (terms["td_data"] + args.ema_weight * terms["ema_data"]) + args.beta * (
            terms["expectile_model"] + args.ema_weight * terms["ema_model"]
        )  # Eq. 7 with the EMA regulariser (leq-spec §5)

        actor_optimizer.zero_grad(set_to_none=True)
        critic_optimizer.zero_grad(set_to_none=True)
        (actor_loss + critic_loss).backward()  # disjoint parameters: one backward gives both gradients
        actor_lr.copy_(cosine_lr(args.actor_lr, step_count, args.total_steps))
        actor_optimizer.step()
        critic_optimizer.step()
        ema_update_(critic_ema, critic, args.ema_rate)
        step_count.add_(1)
        return {
            "critic_loss": critic_loss.detach(),
            "actor_loss": actor_loss.detach(),
            **{k: v.detach() for k, v in terms.items()},
            "q_data": next_q.mean(),
            "q_model": q_actor.mean(),
            "v_model": values.mean(),
            "alive_at_h": rollout.alive[-1].mean(),
            "actor_lr": actor_lr.detach().clone(),
        }

    return update, step_count


def numpy_policy(actor, device):
    """The deterministic policy tanh(mu(s)) as numpy -> numpy, for evaluate() of the task block."""

    @torch.no_grad()
    def act(obs):
        return actor(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()

    return act


def save_leq_checkpoint(path, step: int, run_name: str, fingerprint: str, args, modules: dict, buffer, history) -> None:
    """Everything a resumed run needs to continue bit-exactly on the CPU: parameters, optimiser states, the
    expansion buffer, the step, the RNG states and the evaluation history (written atomically)."""
    atomic_save(
        {
            "kind": "leq",
            "fingerprint": fingerprint,
            "step": step,
            "run_name": run_name,
            "args": dict(vars(args)),
            **{name: module.state_dict() for name, module in modules.items()},
            "buffer": buffer.state_dict() if buffer is not None else None,
            "rng": rng_states(),
            "threads": torch.get_num_threads(),
            "history": history,
            "software": software_versions(),
        },
        path,
    )


def divergence_message(step: int, bad: list[str], last_good: tuple | None) -> str:
    where = (f"the last good checkpoint, {last_good[0]} (step {last_good[1]}), is intact" if last_good
             else "no checkpoint was written yet")
    return (f"diverged at step {step}: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} not finite. Stopped; "
            f"{where}. Try a lower --actor-lr / --critic-lr or another --tau.")


def warn_if_not_bit_exact(checkpoint: dict, args) -> None:
    """Say so when the resumed run cannot continue bit-exactly: compiled or eager step, device and CPU thread
    count all change the floating-point results."""
    was = {"compile": checkpoint["args"]["compile"], "cudagraphs": checkpoint["args"]["cudagraphs"],
           "device": checkpoint["args"]["device"], "threads": checkpoint.get("threads")}
    now = {"compile": args.compile, "cudagraphs": args.cudagraphs, "device": args.device,
           "threads": torch.get_num_threads()}
    changed = [f"{k} {was[k]} -> {now[k]}" for k in was if was[k] is not None and was[k] != now[k]]
    if changed:
        print(f"note: resuming with {', '.join(changed)}; the continuation will not be bit-identical to an "
              f"uninterrupted run (keep the run's settings for that).")


def resume_path(resume: str) -> Path:
    path = Path(resume)
    path = path / "checkpoint.pt" if path.is_dir() else path
    if not path.is_file():
        raise SystemExit(f"--resume {resume}: no checkpoint found at {path}. Pass a run directory or a checkpoint file.")
    return path


def world_model_cache(args, fingerprint: str) -> Path:
    """--world-model-path, else train_world_model.py's default path (one per epoch cap)."""
    if args.world_model_path:
        return Path(args.world_model_path)
    path = world_model_path(args.env_id, args.seed, fingerprint)
    if args.world_model_max_epochs is not None:
        path = path.with_name(f"{path.stem}__max{args.world_model_max_epochs}ep.pt")
    return path


def pretrain_cache(args, fingerprint: str) -> Path:
    """--pretrain-path, else fqe_pretrain.py's default path (one per set of non-paper pretraining settings)."""
    if args.pretrain_path:
        return Path(args.pretrain_path)
    path = pretrain_checkpoint_path(args.env_id, args.seed, fingerprint)
    return path.with_name(path.stem + pretrain_variant(args) + ".pt")


PRETRAIN_SETTINGS = ("bc_steps", "bc_batch_size", "bc_lr", "fqe_steps", "fqe_batch_size", "fqe_lr", "actor_scaler",
                     "fqe_ema_rate", "gamma")  # FQE values the policy with LEQ's gamma


def pretrain_variant(args) -> str:
    """The pretraining settings that differ from the paper's (Args' defaults) as a cache-name suffix, '' if none,
    so a cached BC+FQE checkpoint is reused only by runs that would have pretrained it the same way."""
    paper = Args()
    return "".join(f"__{name}={getattr(args, name)}" for name in PRETRAIN_SETTINGS
                   if getattr(args, name) != getattr(paper, name))


def lock_file(path) -> Path:
    return Path(path).with_name(f".{Path(path).name}.lock")


@contextlib.contextmanager
def cache_lock(path, what: str):
    """Hold the lock file `.<name>.lock` beside `path` (fcntl.flock, freed by the OS even if this process is
    killed) while a cache is trained and written, so that runs started together train it once: the others wait
    here, then load the file."""
    lock_path = lock_file(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{what}: another run is writing {path}; waiting for it to finish", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def make_cache_once(path: Path, what: str, make) -> None:
    """make(path) unless the cache exists, under its lock: of the runs that start together, one makes it and the
    others wait, then find the file (never a half-written one: make writes with atomic_save)."""
    if not path.is_file():
        with cache_lock(path, what):
            if not path.is_file():  # else another run wrote it while this one waited
                make(path)


def load_or_train_world_model(args, task, data, device):
    """The world model from train_world_model.py's default checkpoint (or --world-model-path), else trained
    here with the same code and cached under a lock, so a tau sweep started at once trains it once per dataset
    and seed while the other runs wait for the file."""
    path = world_model_cache(args, data.fingerprint)
    if args.world_model_path and not path.is_file():
        raise SystemExit(f"--world-model-path {path} does not exist; train one with train_world_model.py.")
    make_cache_once(path, "world model", lambda path: train_and_cache_world_model(args, task, data, device, path))
    model, _ = load_world_model(path, data.fingerprint, device)
    print(f"world model: loaded {path}")
    return model.requires_grad_(False)


def train_and_cache_world_model(args, task, data, device, path) -> None:
    print(f"world model: none at {path}; training one now (OfflineRL-Kit recipe, leq-spec §3)", flush=True)
    model = EnsembleDynamics(task.obs_dim, task.act_dim, device=device)
    result = train_dynamics(
        model, data.observations, data.actions, data.rewards, data.next_observations,
        max_epochs=args.world_model_max_epochs,
        log_epoch=lambda s: print(f"  epoch {s['epoch']}: holdout mse of elites {s['elites_holdout_mse']:.5f}"),
    )
    save_world_model(path, model, data.fingerprint, holdout_losses=result["holdout_losses"], args=dict(vars(args)))
    print(f"world model: saved {path} ({result['epochs']} epochs)")


def load_pretrain_checkpoint(path, fingerprint: str | None, device):
    """Rebuild actor, critic and EMA critic on `device` from a pretrain checkpoint of this dataset."""
    checkpoint = load_checkpoint(path, "pretrain", fingerprint, device)
    sizes, stats = checkpoint["network"], checkpoint["normalization"]
    hidden = {"hidden_dim": sizes["hidden_dim"], "num_layers": sizes["num_layers"]}
    actor = Actor(stats["obs_mean"], stats["obs_std"], sizes["act_dim"], **hidden,
                  trainable_scaler=sizes.get("trainable_scaler", False)).to(device)
    critic = Critic(stats["obs_act_mean"], stats["obs_act_std"], **hidden).to(device)
    ema_critic = ema_copy(critic)
    actor.load_state_dict(checkpoint["actor"])
    critic.load_state_dict(checkpoint["critic"])
    ema_critic.load_state_dict(checkpoint["ema_critic"])
    return actor, critic, ema_critic, checkpoint


def load_or_pretrain_agent(args, data, tensors, device):
    """BC actor and FQE critic (Algorithm 1 line 3) from fqe_pretrain.py's default checkpoint (or
    --pretrain-path), else pretrained here with the same code and cached under a lock; fresh networks with
    --no-pretrain."""
    trainable_scaler = args.actor_scaler == "trainable"
    if not args.pretrain:
        stats = normalization_stats(data.observations, data.actions)
        actor = Actor(stats["obs_mean"], stats["obs_std"], data.actions.shape[1], trainable_scaler=trainable_scaler)
        critic = Critic(stats["obs_act_mean"], stats["obs_act_std"]).to(device)
        return actor.to(device), critic, ema_copy(critic)
    path = pretrain_cache(args, data.fingerprint)
    if args.pretrain_path and not path.is_file():
        raise SystemExit(f"--pretrain-path {path} does not exist; train one with fqe_pretrain.py.")
    make_cache_once(path, "pretraining",
                    lambda path: pretrain_and_cache_agent(args, data, tensors, device, path, trainable_scaler))
    actor, critic, critic_ema, checkpoint = load_pretrain_checkpoint(path, data.fingerprint, device)
    pretrained_gamma = checkpoint["args"].get("gamma", args.gamma)
    if pretrained_gamma != args.gamma:  # the FQE critic estimates returns discounted with its own gamma
        raise SystemExit(f"{path} holds an FQE critic for gamma {pretrained_gamma}, but this run uses --gamma "
                         f"{args.gamma}; pass --gamma {pretrained_gamma}, or pretrain for {args.gamma} (drop "
                         f"--pretrain-path, or run fqe_pretrain.py --gamma {args.gamma}).")
    if isinstance(actor.normalizer.mean, nn.Parameter) != trainable_scaler:
        raise SystemExit(f"{path} was pretrained with the other --actor-scaler; pass --actor-scaler "
                         f"{'fixed' if trainable_scaler else 'trainable'} or pretrain again.")
    critic_ema.load_state_dict(critic.state_dict())  # critic and EMA both start from FQE (leq-spec §4)
    print(f"pretraining: loaded {path}")
    return actor, critic, critic_ema


def pretrain_and_cache_agent(args, data, tensors, device, path, trainable_scaler: bool) -> None:
    print(f"pretraining: none at {path}; running BC ({args.bc_steps} steps) then FQE ({args.fqe_steps} steps)",
          flush=True)
    stats = normalization_stats(data.observations, data.actions)
    actor = Actor(stats["obs_mean"], stats["obs_std"], data.actions.shape[1], trainable_scaler=trainable_scaler)
    actor = actor.to(device)
    critic = Critic(stats["obs_act_mean"], stats["obs_act_std"]).to(device)
    critic_ema = ema_copy(critic)
    bc = make_bc_update(actor, torch.optim.Adam(actor.parameters(), lr=args.bc_lr), tensors, args.bc_batch_size)
    run_updates(bc, args.bc_steps, "BC", max(1, args.bc_steps // 20))
    fqe = make_fqe_update(critic, critic_ema, actor, torch.optim.Adam(critic.parameters(), lr=args.fqe_lr), tensors,
                          args.fqe_batch_size, args.gamma, args.fqe_ema_rate)
    run_updates(fqe, args.fqe_steps, "FQE", max(1, args.fqe_steps // 20))
    critic_ema.load_state_dict(critic.state_dict())  # LEQ's critic and its EMA both start from FQE (leq-spec §4)
    save_pretrain_checkpoint(path, actor, critic, critic_ema, data.fingerprint, args)
    print(f"pretraining: saved {path}")


def parse_args(argv: list[str] | None = None) -> Args:
    """Args from the command line; --preset NAME swaps in that preset's defaults, and explicit flags still win."""
    preset = tyro.cli(Args, args=argv).preset
    if preset == "none":
        return tyro.cli(Args, args=argv)
    return tyro.cli(Args, args=argv, default=Args(preset=preset, **PRESETS[preset]))


# Seconds per unit of work on the development CPU, one thread (README, Speed); the plan scales them to the run.
CPU_SECONDS = {
    "generate": 83 / 1e6,  # per generated transition (collect_dataset.py, pointmaze)
    "world_model": 104 / 1e6,  # per transition and epoch (bench_world_model.py, eager)
    "bc": 50e-3 / 4096,  # per sample of a BC step (bench_fqe_pretrain.py, 50 ms at batch 4096)
    "fqe": 10.6e-3 / 256,  # per sample of an FQE step (10.6 ms at batch 256)
    "leq": {"exact": 364e-3 / 512, "balanced": 286e-3 / 512},  # per sample of an eager LEQ step (bench_leq.py)
    "expansion": {"exact": 10.8 / 250_000, "balanced": 2.7 / 250_000},  # per imagined expansion transition
    "env_step": {"pointmaze": 91e-6, "antmaze": 826e-6, "locomotion": 259e-6, "neorl": 259e-6},  # evaluation
}
WORLD_MODEL_EPOCHS = 10  # a guess at early stopping: 9 epochs on generated 1M-transition pointmaze data (README)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "no figure for this device"
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"~{seconds / size:.1f} {unit}"
    return f"~{seconds:.0f} s"


def plan_stages(args: Args, task: "Task", data: "OfflineData | None", start_step: int) -> list[tuple[str, str, float]]:
    """(stage, what it does, CPU seconds) for every stage of this run; `data` is None while it is not generated."""
    cost, routing = CPU_SECONDS, args.routing
    transitions = len(data) if data is not None else GENERATED_STEPS
    stages = [("data", f"generate {transitions:,} transitions", transitions * cost["generate"]) if data is None
              else ("data", f"loaded {data.source} ({transitions:,} transitions)", 0.0)]
    fingerprint = data.fingerprint if data is not None else ""
    if data is not None and world_model_cache(args, fingerprint).is_file():
        stages.append(("world model", f"load {world_model_cache(args, fingerprint)}", 0.0))
    else:
        epochs = args.world_model_max_epochs or WORLD_MODEL_EPOCHS
        how = f"{epochs} epochs" if args.world_model_max_epochs else f"until early stop (~{epochs} epochs)"
        stages.append(("world model", f"train {how} and cache", epochs * transitions * cost["world_model"]))
    if not args.pretrain:
        stages.append(("BC + FQE", "skipped (--no-pretrain)", 0.0))
    elif data is not None and pretrain_cache(args, fingerprint).is_file():
        stages.append(("BC + FQE", f"load {pretrain_cache(args, fingerprint)}", 0.0))
    else:
        stages.append(("BC", f"{args.bc_steps:,} steps at batch {args.bc_batch_size}",
                       args.bc_steps * args.bc_batch_size * cost["bc"]))
        stages.append(("FQE", f"{args.fqe_steps:,} steps at batch {args.fqe_batch_size}",
                       args.fqe_steps * args.fqe_batch_size * cost["fqe"]))
    steps = args.total_steps - start_step
    expansions = len(range(start_step, args.total_steps, args.expansion_interval)) if args.expansion else 0
    stages.append(("LEQ loop", f"{steps:,} steps at batch {args.batch_size} + {args.model_batch_size}, "
                   f"{expansions} expansions",
                   steps * (args.batch_size + args.model_batch_size) * cost["leq"][routing]
                   + expansions * args.expansion_size * args.rollout_length * cost["expansion"][routing]))
    evaluations = len(range(start_step + args.eval_interval, args.total_steps, args.eval_interval))
    episodes = evaluations * args.eval_episodes + args.final_eval_episodes * (2 if args.pretrain else 1)
    stages.append(("evaluations", f"{episodes} episodes of at most {task.max_episode_steps} steps",
                   episodes * task.max_episode_steps * cost["env_step"][task.family]))
    return stages


def print_plan(args: Args, task: "Task", data: "OfflineData | None", device: torch.device, start_step: int) -> None:
    """The stages this run will go through, each with its estimated time, before the first one starts."""
    stages = plan_stages(args, task, data, start_step)
    on_cpu = device.type == "cpu"
    total = sum(seconds for _, _, seconds in stages)
    print(f"plan on {device} (times from one-thread figures measured on a 2-core CPU, README 'Speed'"
          + ("; compile time not included" if args.compile else "") + "):")
    width = max(len(what) for _, what, _ in stages)
    for stage, what, seconds in stages + [("total", "", total)]:
        print(f"  {stage:<12} {what:<{width}}  {duration(seconds if on_cpu else None) if seconds else ''}")
    if on_cpu and total > 86400:
        print(f"This is a multi-day job on this CPU ({duration(total)}). For a run sized for a CPU, try "
              f"`python leq_state.py --preset cpu-check`.")


def check_args(args: Args) -> torch.device:
    """Every argument and the environment checked in seconds, before any stage: the device, the CUDA-only flags,
    value ranges, the env id, where the data and the given checkpoints are. Returns the device."""
    device = check_device(args)
    problems = out_of_range(
        args,
        positive=("total_steps", "batch_size", "model_batch_size", "horizon", "expansion_interval", "expansion_size",
                  "rollout_length", "expansion_keep", "bc_batch_size", "fqe_batch_size", "log_interval",
                  "eval_interval", "eval_episodes", "final_eval_episodes", "checkpoint_interval", "actor_lr",
                  "critic_lr", "bc_lr", "fqe_lr", "goal_radius", "relabel_radius", "world_model_max_epochs"),
        non_negative=("bc_steps", "fqe_steps", "ema_weight"),
        fractions=("beta", "lam"),
        rates=("gamma", "ema_rate", "fqe_ema_rate"),
        open_fractions=("tau",),
    )
    for flag, path in (("--world-model-path", args.world_model_path), ("--pretrain-path", args.pretrain_path)):
        if path is not None and not Path(path).is_file():
            problems.append(f"{flag} {path} does not exist")
    refuse(problems)
    task = get_task(args.env_id)
    kind = locate_dataset(task, args.dataset_path)[0]
    if args.relabel_radius is not None and (task.maze is None or kind not in ("minari", "generate")):
        refuse([f"--relabel-radius relabels Minari or generated maze data; {args.env_id} with "
                f"{args.dataset_path or 'its default data'} keeps the rewards it has. Drop the flag (use "
                f"--goal-radius for the termination alone)."])
    if args.goal_cell is not None:
        refuse(goal_cell_problems(task, kind, tuple(args.goal_cell)))
    if args.imagined_reward == "goal" and task.maze is None:
        refuse([f"--imagined-reward goal computes a maze's goal reward; {args.env_id} is not a maze task. Drop the "
                f"flag (its rewards come from the world model)."])
    return device


def goal_cell_problems(task: "Task", data_kind: str, cell: tuple) -> list[str]:
    """Why --goal-cell cannot apply: not a pointmaze task on relabelled data, or not a free cell other than the start."""
    if task.family != "pointmaze" or data_kind not in ("minari", "generate"):
        return [f"--goal-cell moves the goal of a pointmaze task on generated or Minari data; {task.env_id} with "
                f"that data keeps its goal. Drop the flag."]
    layout = MAZE_LAYOUTS[task.maze]
    row, col = cell
    free = [(r, c) for r, cells in enumerate(layout) for c, wall in enumerate(cells) if not wall]
    start = MAZE_START_GOAL_CELLS[task.maze][0]
    if (row, col) not in free or (row, col) == start:
        return [f"--goal-cell {row} {col} is {'the start cell' if (row, col) == start else 'not a free cell'} of the "
                f"{task.maze} maze; free cells (row column): {' '.join(f'{r},{c}' for r, c in free if (r, c) != start)}"]
    return []


def task_of(args: Args) -> "Task":
    """The task, with its goal radius (data relabelling and termination) set by --relabel-radius and its goal cell
    by --goal-cell if given."""
    task = get_task(args.env_id)
    if args.relabel_radius is not None:
        task = replace(task, goal_radius=args.relabel_radius)
    return task if args.goal_cell is None else replace(task, goal_cell=tuple(args.goal_cell))


# ---- termination functions (leq-spec §6) ------------------------------------------------------------------------

def make_termination_fn(task: "Task", data: "OfflineData", goal_radius: float | None = None):
    """fn(obs, act, next_obs) -> bool tensor [B]: True where the true environment would terminate."""
    if task.family in ("antmaze", "pointmaze"):
        centre_x, centre_y = map(float, maze_goal_centre(task, data.maze_frame, data.source.removeprefix("minari:")))
        radius_sq = float(goal_radius if goal_radius is not None else task.goal_radius) ** 2

        def maze_done(obs, act, next_obs):  # Python-float constants: no tensor to move, CUDA-graph friendly
            return (next_obs[:, 0] - centre_x) ** 2 + (next_obs[:, 1] - centre_y) ** 2 <= radius_sq

        return maze_done
    offset = 1 if task.family == "neorl" else 0  # NeoRL observations start with x: z, angle shift by one

    def hopper_done(obs, act, next_obs):
        height, angle = next_obs[:, offset], next_obs[:, offset + 1]
        state = next_obs[:, 3:] if offset else next_obs[:, 1:]
        alive = (torch.isfinite(next_obs).all(-1) & (state.abs() < 100).all(-1) & (height > 0.7)
                 & (angle.abs() < 0.2))
        return ~alive

    def walker2d_done(obs, act, next_obs):
        height, angle = next_obs[:, offset], next_obs[:, offset + 1]
        state = next_obs[:, offset + 2:] if offset else next_obs
        alive = (((state > -100) & (state < 100)).all(-1) & (height > 0.8) & (height < 2.0)
                 & (angle > -1.0) & (angle < 1.0))
        return ~alive

    def halfcheetah_done(obs, act, next_obs):
        if offset:  # NeoRL's own rule: HalfCheetah never terminates (x grows without bound)
            return torch.zeros(next_obs.shape[0], dtype=torch.bool, device=next_obs.device)
        return ~((next_obs > -100) & (next_obs < 100)).all(-1)

    return {"hopper": hopper_done, "walker2d": walker2d_done, "halfcheetah": halfcheetah_done}[task.robot]


def main(args: Args) -> dict:
    """The whole pipeline: data, world model, BC+FQE, the LEQ loop, evaluation. Returns the final scores."""
    checkpoint = None
    if args.resume:
        checkpoint = load_checkpoint(resume_path(args.resume), "leq", None, "cpu")  # its data is known only below
        given = {k: getattr(args, k) for k in ("resume", "device", "compile", "cudagraphs", "track")}
        keep = {k: v for k, v in given.items() if v is not None}  # unset (None): the run's own setting
        args = Args(**{**checkpoint["args"], **keep})  # the run continues with its own hyperparameters
        print(f"resuming {checkpoint['run_name']} at step {checkpoint['step']}")
    device = check_args(args)
    args.compile = resolve_compile(args.compile, device)
    seed_everything(args.seed)

    task = task_of(args)
    tau = task.tau if args.tau is None else args.tau
    generated_here = locate_dataset(task, args.dataset_path)[0] == "generate"
    data = None if generated_here else load_dataset(task, args.dataset_path, args.download)
    print_plan(args, task, data, device, checkpoint["step"] if checkpoint else 0)
    if generated_here:
        data = load_dataset(task, args.dataset_path, args.download)
    if checkpoint:
        refuse_other_dataset(checkpoint, data.fingerprint, f"--resume {args.resume}")
    run_name = checkpoint["run_name"] if checkpoint else new_run_name(args.env_id, args.exp_name, args.seed)
    run_dir = Path("runs") / run_name
    write_run_config(run_dir, args, env_id=args.env_id, seed=args.seed, tau=tau, run_name=run_name,
                     dataset=data.source, dataset_fingerprint=data.fingerprint)
    tensors = transition_tensors(data, device)
    world_model = load_or_train_world_model(args, task, data, device)
    actor, critic, critic_ema = load_or_pretrain_agent(args, data, tensors, device)
    bc_actor = copy.deepcopy(actor)

    seed_everything(args.seed)  # the LEQ loop draws the same numbers whether the models were cached or not
    tracker = init_tracking(args, run_name)
    goal_reward = make_termination_fn(task, data) if args.imagined_reward == "goal" else None  # the data's disc
    transition = make_model_transition(world_model, args.routing, data.reward_scale, data.reward_shift, goal_reward)
    terminated = make_termination_fn(task, data, args.goal_radius)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=torch.tensor(args.actor_lr, device=device))
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.critic_lr)
    buffer = None
    if args.expansion:
        buffer = ExpansionBuffer(task.obs_dim, args.expansion_size, args.rollout_length, args.expansion_keep, device)
        sample_starts = buffer.sample
    else:  # ablation: imagined rollouts start from dataset states
        sample_starts = lambda n: tensors["obs"][torch.randint(0, tensors["obs"].shape[0], (n,), device=device)]
    modules = {"actor": actor, "critic": critic, "critic_ema": critic_ema, "actor_optimizer": actor_optimizer,
               "critic_optimizer": critic_optimizer}
    history = {"eval": [], "bc_score": None}
    start_step = 0
    if checkpoint:
        for name, module in modules.items():
            module.load_state_dict(checkpoint[name])
        if buffer is not None:
            buffer.load_state_dict(checkpoint["buffer"])
        history, start_step = checkpoint["history"], checkpoint["step"]
        set_rng_states(checkpoint["rng"])
    append_eval_row = eval_csv_writer(run_dir, history["eval"])
    # built after loading: the optimiser's state_dict brings its own learning-rate tensor
    update, step_count = make_leq_update(actor, critic, critic_ema, actor_optimizer, critic_optimizer, tensors,
                                         sample_starts, transition, terminated, args, tau)
    step_count.fill_(start_step)
    step_fn = compile_step(update, args.compile, args.cudagraphs, device)
    print(f"LEQ on {args.env_id}: tau {tau}, {args.total_steps} steps, device {device}, compile {args.compile}, "
          f"cudagraphs {args.cudagraphs}, routing {args.routing}, run dir {run_dir}")
    if checkpoint:
        warn_if_not_bit_exact(checkpoint, args)
    last_good = (run_dir / "checkpoint.pt", start_step) if checkpoint else None

    def stop_if_diverged(step: int, losses: dict) -> None:
        bad = non_finite({"losses": losses, **{name: module.state_dict() for name, module in modules.items()}})
        if bad:
            raise SystemExit(divergence_message(step, bad, last_good))

    def evaluate_policy(policy_actor, policy: str, episodes: int, step: int) -> dict:
        """One evaluation as an eval.csv row: {step, policy, episodes, mean, std} (scores x100)."""
        result = evaluate(task, data, numpy_policy(policy_actor, device), episodes,
                          seed=evaluation_seed(args.seed, step))
        return {"step": step, "policy": policy, "episodes": episodes, "mean": float(result["mean"]),
                "std": float(result["std"])}

    last_score = history["eval"][-1]["mean"] if history["eval"] else float("nan")
    sums, count, last_time = None, 0, time.perf_counter()
    bar = tqdm(range(start_step + 1, args.total_steps + 1), initial=start_step, total=args.total_steps,
               desc="LEQ", dynamic_ncols=True)
    for step in bar:
        if buffer is not None and (step - 1) % args.expansion_interval == 0:  # the first one before step 1
            buffer.expand(actor.explore, transition, tensors["obs"])
        if args.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        metrics = step_fn()
        sums = {k: v.clone() for k, v in metrics.items()} if sums is None else {k: sums[k] + v for k, v in metrics.items()}
        count += 1
        if step % args.eval_interval == 0 and step < args.total_steps:
            stop_if_diverged(step, {})
            row = evaluate_policy(actor, "leq", args.eval_episodes, step)
            history["eval"].append(row)
            append_eval_row(row)
            last_score = row["mean"]
            if tracker is not None:
                tracker.log({"eval/score": last_score}, step=step)
        if step % args.log_interval == 0 or step == args.total_steps:
            now = time.perf_counter()
            averages = {k: v.item() / count for k, v in sums.items()}  # with the guard, the only device reads
            stop_if_diverged(step, averages)
            steps_per_second = count / (now - last_time)
            sums, count, last_time = None, 0, now
            bar.write(
                f"step {step:>8} | {steps_per_second:6.1f} steps/s | critic {averages['critic_loss']:.4f} "
                f"actor {averages['actor_loss']:.4f} | Q data {averages['q_data']:.3f} model {averages['q_model']:.3f} "
                f"V {averages['v_model']:.3f} | alive@H {averages['alive_at_h']:.2f} | eval {last_score:.1f}"
            )
            bar.set_postfix(critic=f"{averages['critic_loss']:.3g}", score=f"{last_score:.1f}")
            if tracker is not None:
                tracker.log({**{f"losses/{k}": v for k, v in averages.items()}, "charts/SPS": steps_per_second}, step=step)
        if step % args.checkpoint_interval == 0 or step == args.total_steps:
            stop_if_diverged(step, {})
            save_leq_checkpoint(run_dir / "checkpoint.pt", step, run_name, data.fingerprint, args, modules, buffer, history)
            last_good = (run_dir / "checkpoint.pt", step)
    bar.close()

    final = evaluate_policy(actor, "leq_final", args.final_eval_episodes, args.total_steps)
    history["final"] = final
    append_eval_row(final)
    if history.get("bc_score") is None and args.pretrain:
        history["bc_score"] = evaluate_policy(bc_actor, "bc", args.final_eval_episodes, args.total_steps)
    if history.get("bc_score"):
        append_eval_row(history["bc_score"])
    print(f"final score over {args.final_eval_episodes} episodes: {final['mean']:.1f} +- {final['std']:.1f}"
          + (f" (BC policy: {history['bc_score']['mean']:.1f})" if history.get("bc_score") else ""))
    save_leq_checkpoint(run_dir / "checkpoint.pt", args.total_steps, run_name, data.fingerprint, args, modules, buffer,
                        history)
    if tracker is not None:
        tracker.log({"eval/final_score": final["mean"]}, step=args.total_steps)
        tracker.finish()
    return history


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


# ==== mirror: generated_data (identical in collect_dataset.py, leq_state.py) ====
# The size of a generated default dataset: collect_dataset.py makes it, leq_state.py's plan prices it.


GENERATED_STEPS = 1_000_000  # transitions of a generated default dataset
# ==== end mirror: generated_data ====


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


# ==== mirror: world_model_sampling (identical in leq_state.py) ====
# Sampling the trained world model: elite routing and reparameterised transitions (leq-spec §3).
import torch


ROUTINGS = ("exact", "balanced")


def draw_route(model, batch_size: int, routing: str) -> torch.Tensor:
    """The elite slot (index into model.elites) of each of batch_size samples: long [B].

    exact: iid uniform per sample, as OfflineRL-Kit. balanced: sample i takes position p_i of a random
    permutation and slot (p_i + offset) % num_elites with a random offset, so every elite gets an equal share
    (differing by at most one when B is not a multiple of num_elites) and every sample a uniform elite."""
    device, k = model.elites.device, model.num_elites
    if routing == "exact":
        return torch.randint(k, (batch_size,), device=device)
    if routing == "balanced":
        return (torch.randperm(batch_size, device=device) + torch.randint(k, (), device=device)) % k
    raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")


def _balanced_layout(route: torch.Tensor, num_elites: int):
    """Fixed-shape grouping of samples by elite slot: (order [k * R] sample per group position, place [B]
    position of each sample), R = ceil(B / k). Unused positions repeat sample 0 and are discarded."""
    batch = route.shape[0]
    per_group = -(-batch // num_elites)
    one_hot = route[:, None] == torch.arange(num_elites, device=route.device)  # (F.one_hot syncs on CUDA)
    rank = (one_hot.long().cumsum(0) - 1).gather(1, route[:, None]).squeeze(1)  # earlier samples of its group
    place = route * per_group + rank
    order = torch.zeros(num_elites * per_group, dtype=torch.long, device=route.device)
    order = order.scatter(0, place, torch.arange(batch, device=route.device))
    return order, place, per_group


def transition(model, obs, act, route, noise, routing: str = "exact"):
    """One imagined step (leq-spec section 3): next_obs = obs + delta, reward RAW, drawn from the routed elite
    as mean + exp(logvar / 2) * noise, so gradients flow to obs and act. route: long [B] from draw_route (a
    balanced route must come from draw_route(..., "balanced")); noise: [B, obs_dim + 1] standard normal."""
    x = model.normalize(obs, act)
    if routing == "exact":
        mean, logvar = model(x, members=model.elites)  # every elite on every sample: [k, B, D]
        pick = route.view(1, -1, 1).expand(1, -1, mean.shape[-1])
        mean, logvar = mean.gather(0, pick).squeeze(0), logvar.gather(0, pick).squeeze(0)
    elif routing == "balanced":
        order, place, per_group = _balanced_layout(route, model.num_elites)
        grouped = x[order].view(model.num_elites, per_group, -1)  # elite k runs on its share only
        mean, logvar = model(grouped, members=model.elites)
        mean, logvar = mean.reshape(-1, mean.shape[-1])[place], logvar.reshape(-1, logvar.shape[-1])[place]
    else:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    sample = mean + torch.exp(0.5 * logvar) * noise
    return obs + sample[:, : model.obs_dim], sample[:, model.obs_dim]


def sample_step(model, obs, act, routing: str = "exact"):
    """transition() with a fresh route and fresh noise: (next_obs [B, obs_dim], reward [B] RAW)."""
    route = draw_route(model, obs.shape[0], routing)
    noise = torch.randn(obs.shape[0], model.obs_dim + 1, device=obs.device, dtype=obs.dtype)
    return transition(model, obs, act, route, noise, routing)


def load_world_model(path, fingerprint: str | None, device):
    """(model, checkpoint) from a world_model checkpoint; refuses one trained on another dataset."""
    checkpoint = load_checkpoint(path, "world_model", fingerprint, device)
    model = EnsembleDynamics(**checkpoint["config"], device=device)
    model.load_state_dict(checkpoint["state_dict"])
    return model, checkpoint
# ==== end mirror: world_model_sampling ====


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
    main(parse_args())
