"""Updates per second of leq_pixel.py: world-model pretraining updates and behaviour (actor/critic/value)
updates, by default at the paper's DreamerV3 12M size with batch 16 x 65 on random 64x64 frames.

    python benchmarks/bench_pixel.py                      # 12M, the device torch picks, default compile
    python benchmarks/bench_pixel.py --size 3m --compile  # other sizes, compiled
    python benchmarks/bench_pixel.py --device cuda --bf16 --cudagraphs
"""

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import leq_pixel as lp  # noqa: E402


@dataclass
class BenchArgs:
    size: Literal["12m", "3m", "tiny"] = "12m"
    """model size"""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'"""
    compile: bool | None = None
    """torch.compile the update steps; None = leq_pixel's default for the device"""
    cudagraphs: bool = False
    """CUDA graphs (CUDA only)"""
    bf16: bool = False
    """bf16 autocast (CUDA only)"""
    batch_size: int = 16
    """sequences per batch"""
    batch_length: int = 65
    """steps per sequence"""
    warmup: int = 2
    """untimed updates first (compilation happens here)"""
    updates: int = 5
    """timed updates per phase"""
    threads: int | None = None
    """torch CPU threads (None = torch's default)"""


def synthetic_data(episodes: int = 2, length: int = 501, act_dim: int = 6) -> lp.PixelData:
    rng = np.random.default_rng(0)
    n = episodes * length
    is_first, is_last = np.zeros(n, bool), np.zeros(n, bool)
    is_first[::length], is_last[length - 1 :: length] = True, True
    return lp.PixelData(
        images=rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8),
        actions=rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
        rewards=rng.uniform(0, 2, n).astype(np.float32),
        is_first=is_first, is_last=is_last, is_terminal=np.zeros(n, bool), fingerprint="bench", source="random",
    )


def time_updates(updater, replay, bench: BenchArgs, device, after_step=None) -> float:
    def run(count):
        metrics = None
        for _ in range(count):
            metrics = updater.update(replay.sample())
            if after_step is not None:
                after_step()
        next(iter(metrics.values())).item()  # wait for the device to finish

    run(bench.warmup)
    start = time.perf_counter()
    run(bench.updates)
    return bench.updates / (time.perf_counter() - start)


def main(bench: BenchArgs) -> None:
    if bench.threads is not None:
        torch.set_num_threads(bench.threads)
    device = lp.resolve_device(bench.device)
    args = replace(lp.Args(), size=bench.size, compile=bench.compile, cudagraphs=bench.cudagraphs, bf16=bench.bf16,
                   batch_size=bench.batch_size, batch_length=bench.batch_length)
    lp.seed_everything(0)
    data = synthetic_data()
    replay = lp.Replay(data, args.batch_size, args.batch_length, device)
    wm = lp.WorldModel(args.size, data.actions.shape[1], args.ensemble).to(device)
    agent = lp.Agent(wm.feat_dim, data.actions.shape[1], lp.SIZES[args.size]["units"]).to(device)
    wm_updater = lp.Updater(lambda b: lp.world_model_loss(wm, b, args), wm.parameters(), args, 10**6, device)
    use_compile = args.compile if args.compile is not None else device.type == "cuda"
    print(f"leq_pixel benchmark: size {args.size} (world model {sum(p.numel() for p in wm.parameters()) / 1e6:.1f}M, "
          f"agent {sum(p.numel() for p in agent.parameters()) / 1e6:.1f}M parameters), batch {args.batch_size} x "
          f"{args.batch_length}, H {args.horizon}, ensemble {args.ensemble}; device {device}"
          f"{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, compile {use_compile}, cudagraphs {args.cudagraphs}, bf16 {args.bf16}")
    wm_rate = time_updates(wm_updater, replay, bench, device)
    print(f"world-model updates/s: {wm_rate:.3f} ({1000 / wm_rate:.0f} ms/update)")

    wm.requires_grad_(False)
    tau = lp.task_tau(args.env_id, None)
    params = [*agent.actor.parameters(), *agent.critic.parameters(), *agent.value.parameters()]
    agent_updater = lp.Updater(lambda b: lp.behaviour_loss(wm, agent, b, args, tau), params, args, 10**6, device)
    rate = time_updates(agent_updater, replay, bench, device,
                        after_step=lambda: lp.soft_update_(agent.slow_critic, agent.critic, args.slow_critic_fraction))
    imagined = args.batch_size * args.batch_length * (args.horizon + 1)
    print(f"behaviour updates/s: {rate:.3f} ({1000 / rate:.0f} ms/update, {imagined} imagined states per update)")


if __name__ == "__main__":
    main(tyro.cli(BenchArgs))
