"""Time one BC step (batch 4096) and one FQE step (batch 256) of fqe_pretrain.py, eager against torch.compile
(and compile + CUDA graphs on a GPU), with the paper's 3 x 256 networks on AntMaze-sized synthetic data
(obs 29, action 8). Prints milliseconds per step (median of repeats after a warm-up) and the compile time.

    python benchmarks/bench_fqe_pretrain.py [--device cpu|cuda] [--steps 200] [--threads 1] [--modes eager,compile]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import fqe_pretrain as F  # noqa: E402


def synthetic_data(n: int, obs_dim: int, act_dim: int, seed: int = 0) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    return SimpleNamespace(observations=obs, actions=rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
                           rewards=-np.ones(n, np.float32), terminals=(rng.random(n) < 0.001).astype(np.float32),
                           next_observations=obs + 0.01, reward_scale=1.0, reward_shift=0.0)


def time_update(update, steps: int, warmup: int, device: torch.device, cudagraphs: bool) -> tuple[float, float]:
    """(seconds of the first `warmup` calls, compile included; median ms per step over `steps` calls in 5 chunks)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def call():
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        return update()

    start = time.perf_counter()
    for _ in range(warmup):
        call()
    sync()
    warmup_seconds = time.perf_counter() - start
    chunk_ms = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(steps // 5):
            out = call()
        out["loss"].item() if "loss" in out else next(iter(out.values())).item()
        sync()
        chunk_ms.append((time.perf_counter() - start) / (steps // 5) * 1e3)
    return warmup_seconds, statistics.median(chunk_ms)


def build(kind: str, data: dict, stats: dict, act_dim: int, device: torch.device):
    torch.manual_seed(0)
    actor = F.Actor(stats["obs_mean"], stats["obs_std"], act_dim).to(device)
    if kind == "bc":
        return F.make_bc_update(actor, torch.optim.Adam(actor.parameters(), lr=3e-5), data, 4096)
    critic = F.Critic(stats["obs_act_mean"], stats["obs_act_std"]).to(device)
    return F.make_fqe_update(critic, F.ema_copy(critic), actor, torch.optim.Adam(critic.parameters(), lr=1e-4),
                             data, 256, 0.997, 0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--transitions", type=int, default=100_000)
    parser.add_argument("--modes", default=None, help="comma list of eager,compile,cudagraphs (default: all that apply)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = F.resolve_device(args.device)
    modes = args.modes.split(",") if args.modes else ["eager", "compile"] + (["cudagraphs"] if device.type == "cuda" else [])
    raw = synthetic_data(args.transitions, 29, 8)
    data = F.transition_tensors(raw, device)
    stats = {k: v.to(device) for k, v in F.normalization_stats(raw.observations, raw.actions).items()}
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; 3x256 actor/critic, obs 29, act 8")
    print(f"{'step':<22}{'mode':<12}{'warm-up s (compile)':>20}{'ms/step':>10}{'steps/s':>10}")
    for kind, label in (("bc", "BC (batch 4096)"), ("fqe", "FQE (batch 256)")):
        for mode in modes:
            update = F.compile_step(build(kind, data, stats, 8, device), mode != "eager", mode == "cudagraphs", device)
            warm, ms = time_update(update, args.steps, warmup=5, device=device, cudagraphs=mode == "cudagraphs")
            print(f"{label:<22}{mode:<12}{warm:>20.1f}{ms:>10.2f}{1e3 / ms:>10.0f}")


if __name__ == "__main__":
    main()
