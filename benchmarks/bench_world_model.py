"""World-model speed: seconds per training epoch and imagined-transition throughput. Prints its figures.

    python benchmarks/bench_world_model.py                            # 1M hopper-size transitions
    python benchmarks/bench_world_model.py --num-transitions 100000 --timed-batches 100 --threads 1

Training (7 members, 4 x 200, batch 256, LEQ's OfflineRL-Kit settings) on synthetic data of hopper size
(11 obs, 3 actions), three ways:
  eager     train_world_model.py's training step (device-side data, bootstrap and shuffles, fixed-shape masked
            minibatches, loss summed on the device), no compilation;
  compiled  the same step through torch.compile (compile time printed separately, not in the epoch figure);
  reference a plain loop doing per minibatch what OfflineRL-Kit's EnsembleDynamics.learn does: numpy batch
            assembly on the host (after an [E, N, D] fancy-index gather per epoch), torch.as_tensor(...).to(device)
            of inputs and targets, einsum EnsembleLinear layers with saved_weight/saved_bias parameters in Adam,
            loss.item() per step.
Each variant times --timed-batches minibatches after --warmup-batches, and adds the measured per-epoch work
(minibatch index building / numpy gather, reshuffle, holdout evaluation); seconds per epoch = per-batch time x
minibatches per epoch + per-epoch work. With --timed-batches >= minibatches per epoch the whole epoch is run.

Sampling: next state and reward for a batch of (obs, act) with exact per-sample elite routing and balanced
routing, without gradients (dataset expansion) and with a backward pass to obs and act (LEQ's rollouts).
"""

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: train_world_model.py
import leq_state  # noqa: E402
import train_world_model as wm  # noqa: E402


@dataclass
class Args:
    num_transitions: int = 1_000_000
    """synthetic transitions (hopper size: 11 obs, 3 actions)"""
    timed_batches: int = 300
    """minibatches timed per variant (extrapolated to a full epoch)"""
    warmup_batches: int = 10
    """minibatches run before timing (the first compiled call, i.e. compilation, is timed separately)"""
    threads: int | None = None
    """torch CPU threads (None: torch's default)"""
    device: str = "cpu"
    """'cpu' or 'cuda'"""
    skip_compile: bool = False
    """skip the compiled variant"""
    skip_reference: bool = False
    """skip the OfflineRL-Kit-style reference loop"""
    sampling_batches: tuple[int, ...] = (256, 50_000)
    """batch sizes for the sampling throughput"""
    sampling_repeats: int = 20
    """timed calls per sampling configuration"""
    seed: int = 0
    """seed of the synthetic data and the models"""


def synthetic_hopper(n: int, seed: int):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, 11)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(n, 3)).astype(np.float32)
    mixing = rng.normal(scale=0.3, size=(14, 11)).astype(np.float32)
    next_obs = obs + np.tanh(np.concatenate([obs, act], 1) @ mixing) + 0.05 * rng.normal(size=(n, 11)).astype(np.float32)
    reward = (obs[:, 5] - 0.1 * np.square(act).sum(1)).astype(np.float32)
    return obs, act, reward, next_obs


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ours(args, data, device, use_compile: bool) -> dict:
    torch.manual_seed(args.seed)
    model = wm.EnsembleDynamics(11, 3, device=device)
    train_inputs, train_targets, holdout_inputs, holdout_targets = wm.split_and_scale(model, *data)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = wm.make_train_step(model, optimizer, train_inputs, train_targets, 0.01, use_compile, False)
    train_size = train_inputs.shape[0]
    bootstrap = torch.randint(train_size, (7, train_size), device=device)

    start = time.perf_counter()
    batches, masks = wm.epoch_minibatches(bootstrap, 256)
    sync(device)
    per_epoch = time.perf_counter() - start
    num_batches = batches.shape[0]
    first = time.perf_counter()
    step(batches[0], masks[0]).item()
    wm.holdout_mse(model, holdout_inputs, holdout_targets).tolist()
    first = time.perf_counter() - first
    wm.run_epoch(step, batches[1 : 1 + args.warmup_batches], masks[1 : 1 + args.warmup_batches]).item()

    timed = min(args.timed_batches, num_batches)
    chosen = slice(num_batches - timed, num_batches)  # includes the masked last batch
    start = time.perf_counter()
    wm.run_epoch(step, batches[chosen], masks[chosen]).item()
    per_batch = (time.perf_counter() - start) / timed
    start = time.perf_counter()
    wm.holdout_mse(model, holdout_inputs, holdout_targets).tolist()
    bootstrap = bootstrap.gather(1, torch.rand(7, train_size, device=device).argsort(dim=1))
    sync(device)
    per_epoch += time.perf_counter() - start
    return dict(per_batch=per_batch, per_epoch_work=per_epoch, num_batches=num_batches, timed=timed,
                first_call=first)


class ReferenceEnsembleLinear(nn.Module):
    """OfflineRL-Kit's EnsembleLinear as it runs: einsum forward, saved copies registered as parameters."""

    def __init__(self, fan_in, fan_out, members, weight_decay, device):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, fan_in, fan_out, device=device))
        nn.init.trunc_normal_(self.weight, std=1 / (2 * fan_in**0.5))
        self.bias = nn.Parameter(torch.zeros(members, 1, fan_out, device=device))
        self.saved_weight = nn.Parameter(self.weight.detach().clone())
        self.saved_bias = nn.Parameter(self.bias.detach().clone())
        self.weight_decay = weight_decay

    def forward(self, x):
        equation = "ij,bjk->bik" if x.dim() == 2 else "bij,bjk->bik"
        return torch.einsum(equation, x, self.weight) + self.bias


class ReferenceModel(nn.Module):
    def __init__(self, device):
        super().__init__()
        sizes, decays = [14, 200, 200, 200, 200, 24], [2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4]
        self.layers = nn.ModuleList(
            ReferenceEnsembleLinear(i, o, 7, d, device) for i, o, d in zip(sizes[:-1], sizes[1:], decays)
        )
        self.max_logvar = nn.Parameter(torch.full((12,), 0.5, device=device))
        self.min_logvar = nn.Parameter(torch.full((12,), -10.0, device=device))
        self.device = device

    def forward(self, x):
        x = torch.as_tensor(x, dtype=torch.float32).to(self.device)  # per call, as OfflineRL-Kit
        for layer in self.layers[:-1]:
            x = layer(x)
            x = x * torch.sigmoid(x)  # OfflineRL-Kit's Swish
        mean, logvar = self.layers[-1](x).chunk(2, dim=-1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        return mean, self.min_logvar + F.softplus(logvar - self.min_logvar)

    def decay_loss(self):
        return sum(layer.weight_decay * 0.5 * (layer.weight**2).sum() for layer in self.layers)


def time_reference(args, data, device) -> dict:
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    obs, act, reward, next_obs = data
    inputs = np.concatenate([obs, act], 1)
    targets = np.concatenate([next_obs - obs, reward[:, None]], 1)
    holdout = min(int(len(inputs) * 0.2), 1000)
    train_inputs, train_targets = inputs[holdout:], targets[holdout:]
    holdout_inputs, holdout_targets = inputs[:holdout], targets[:holdout]
    mu, std = train_inputs.mean(0, keepdims=True), train_inputs.std(0, keepdims=True)
    train_inputs, holdout_inputs = (train_inputs - mu) / std, (holdout_inputs - mu) / std
    model = ReferenceModel(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_size = len(train_inputs)
    data_idxes = np.random.randint(train_size, size=[7, train_size])

    def minibatch(epoch_inputs, epoch_targets, b):
        x = epoch_inputs[:, b * 256 : (b + 1) * 256]
        y = torch.as_tensor(epoch_targets[:, b * 256 : (b + 1) * 256]).to(device)
        mean, logvar = model(x)
        loss = ((mean - y) ** 2 * torch.exp(-logvar)).mean(dim=(1, 2)).sum() + logvar.mean(dim=(1, 2)).sum()
        loss = loss + model.decay_loss() + 0.01 * model.max_logvar.sum() - 0.01 * model.min_logvar.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    start = time.perf_counter()
    epoch_inputs, epoch_targets = train_inputs[data_idxes], train_targets[data_idxes]  # [E, N, D] per epoch
    per_epoch = time.perf_counter() - start
    num_batches = -(-train_size // 256)
    for b in range(args.warmup_batches):
        minibatch(epoch_inputs, epoch_targets, b)
    timed = min(args.timed_batches, num_batches)
    start = time.perf_counter()
    for b in range(num_batches - timed, num_batches):
        minibatch(epoch_inputs, epoch_targets, b)
    per_batch = (time.perf_counter() - start) / timed
    start = time.perf_counter()
    with torch.no_grad():
        mean, _ = model(holdout_inputs)
        ((mean - torch.as_tensor(holdout_targets).to(device)) ** 2).mean(dim=(1, 2)).cpu().numpy()
    idx = np.argsort(np.random.uniform(size=data_idxes.shape), axis=-1)  # OfflineRL-Kit's shuffle_rows
    data_idxes = data_idxes[np.arange(7)[:, None], idx]
    per_epoch += time.perf_counter() - start
    return dict(per_batch=per_batch, per_epoch_work=per_epoch, num_batches=num_batches, timed=timed, first_call=0.0)


def report(name: str, result: dict) -> float:
    epoch = result["per_batch"] * result["num_batches"] + result["per_epoch_work"]
    how = "whole epoch" if result["timed"] >= result["num_batches"] else (
        f"{result['timed']} of {result['num_batches']} minibatches timed, extrapolated")
    extra = f"; first call (compile) {result['first_call']:.1f} s" if result["first_call"] > 1 else ""
    print(f"  {name:<10} {epoch:8.1f} s/epoch  ({result['per_batch'] * 1e3:.2f} ms/minibatch + "
          f"{result['per_epoch_work']:.2f} s per-epoch work; {how}{extra})", flush=True)
    return epoch


def time_sampling(args, device):
    torch.manual_seed(args.seed)
    model = wm.EnsembleDynamics(11, 3, device=device)
    model.requires_grad_(False)
    print("imagined transitions (5 elites of 7; samples per second, higher is better):")
    for batch in args.sampling_batches:
        obs, act = torch.randn(batch, 11, device=device), torch.rand(batch, 3, device=device) * 2 - 1
        for with_grad in (False, True):
            figures = []
            for routing in leq_state.ROUTINGS:
                def call():
                    if not with_grad:
                        with torch.no_grad():
                            return leq_state.sample_step(model, obs, act, routing)
                    o, a = obs.clone().requires_grad_(), act.clone().requires_grad_()
                    next_obs, reward = leq_state.sample_step(model, o, a, routing)
                    (next_obs.sum() + reward.sum()).backward()
                    return o.grad

                for _ in range(3):
                    call()
                sync(device)
                start = time.perf_counter()
                for _ in range(args.sampling_repeats):
                    call()
                sync(device)
                seconds = (time.perf_counter() - start) / args.sampling_repeats
                figures.append((routing, seconds))
            mode = "forward+backward" if with_grad else "no grad"
            line = ", ".join(f"{r} {s * 1e3:.2f} ms ({batch / s:,.0f}/s)" for r, s in figures)
            print(f"  batch {batch:>6} {mode:<16} {line}; balanced/exact speed-up "
                  f"{figures[0][1] / figures[1][1]:.2f}x", flush=True)


def main(args: Args):
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads, "
          f"{args.num_transitions:,} synthetic hopper-size transitions (11 obs, 3 actions), 7 x 4 x 200, batch 256")
    data = synthetic_hopper(args.num_transitions, args.seed)
    print("training, seconds per epoch (lower is better):", flush=True)
    eager = report("eager", time_ours(args, data, device, use_compile=False))
    compiled = None if args.skip_compile else report("compiled", time_ours(args, data, device, use_compile=True))
    if compiled:
        print(f"  compiled / eager speed-up: {eager / compiled:.2f}x")
    if not args.skip_reference:
        reference = report("reference", time_reference(args, data, device))
        print(f"  speed-up over the OfflineRL-Kit-style loop: eager {reference / eager:.2f}x"
              + (f", compiled {reference / compiled:.2f}x" if compiled else ""))
    time_sampling(args, device)


if __name__ == "__main__":
    main(tyro.cli(Args))
