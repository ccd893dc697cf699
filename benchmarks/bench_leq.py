"""LEQ update steps per second of leq_state.py at the paper's sizes: B = 256 dataset + 256 imagined, H = 10,
a 7-member 4 x 200 world model (5 elites), 3 x 256 actor and critic, AntMaze-sized synthetic data (obs 29,
action 8), random-init networks. Eager against torch.compile (plus CUDA graphs on a GPU), exact per-sample
elite routing against balanced routing. Also times one dataset expansion (50000 states x 5 steps).
Prints steps/s (median of 5 chunks after a warm-up) and the warm-up time (compilation included).

    python benchmarks/bench_leq.py [--device cpu|cuda] [--steps 20] [--modes eager compile] [--threads 1]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import leq_state as L  # noqa: E402

OBS_DIM, ACT_DIM, TRANSITIONS = 29, 8, 100_000


def build(routing: str, mode: str, device: torch.device):
    """The update step of leq_state.py on synthetic data, with a filled expansion buffer."""
    torch.manual_seed(0)
    obs = torch.randn(TRANSITIONS, OBS_DIM, device=device)
    data = {"obs": obs, "act": torch.rand(TRANSITIONS, ACT_DIM, device=device) * 2 - 1,
            "reward": -torch.ones(TRANSITIONS, device=device), "mask": torch.ones(TRANSITIONS, device=device),
            "next_obs": obs + 0.01}
    stats = L.normalization_stats(obs.cpu().numpy(), data["act"].cpu().numpy())
    actor = L.Actor(stats["obs_mean"], stats["obs_std"], ACT_DIM).to(device)
    critic = L.Critic(stats["obs_act_mean"], stats["obs_act_std"]).to(device)
    world_model = L.EnsembleDynamics(OBS_DIM, ACT_DIM, device=device).requires_grad_(False)
    args = L.Args(total_steps=1_000_000)  # paper defaults: B 256 + 256, H 10, gamma, lambda, beta
    transition = L.make_model_transition(world_model, routing, 1.0, -1.0)
    centre = torch.zeros(2, device=device)

    def terminated(s, a, s_next):  # an AntMaze-like goal region on the first two coordinates
        return ((s_next[:, :2] - centre) ** 2).sum(-1) <= 0.25

    buffer = L.ExpansionBuffer(OBS_DIM, args.expansion_size, args.rollout_length, args.expansion_keep, device)
    start = time.perf_counter()
    buffer.expand(actor.explore, transition, obs)
    expansion_seconds = time.perf_counter() - start
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=torch.tensor(args.actor_lr, device=device))
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.critic_lr)
    update, _ = L.make_leq_update(actor, critic, L.ema_copy(critic), actor_optimizer, critic_optimizer, data,
                                  buffer.sample, transition, terminated, args, tau=0.1)
    step = L.compile_step(update, mode != "eager", mode == "compile+cudagraphs", device)
    return step, expansion_seconds


def time_steps(step, steps: int, warmup: int, device: torch.device, cudagraphs: bool):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def call():
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        return step()

    start = time.perf_counter()
    for _ in range(warmup):
        call()
    sync()
    warmup_seconds = time.perf_counter() - start
    rates = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(max(1, steps // 5)):
            out = call()
        out["critic_loss"].item()
        sync()
        rates.append(max(1, steps // 5) / (time.perf_counter() - start))
    return warmup_seconds, statistics.median(rates)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration (5 chunks)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first calls (compilation happens here)")
    parser.add_argument("--modes", nargs="+", default=None,
                        help="eager, compile, compile+cudagraphs (default: eager compile, and cudagraphs on CUDA)")
    parser.add_argument("--routings", nargs="+", default=["exact", "balanced"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    cli = parser.parse_args()
    device = L.resolve_device(cli.device)
    if cli.threads:
        torch.set_num_threads(cli.threads)
    modes = cli.modes or (["eager", "compile"] + (["compile+cudagraphs"] if device.type == "cuda" else []))
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"LEQ update, B = 256 + 256, H = 10, 7 x (4 x 200) world model, 3 x 256 actor/critic; {name}; "
          f"torch {torch.__version__}")
    print(f"{'mode':<20} {'routing':<9} {'steps/s':>8} {'ms/step':>8} {'warm-up s':>10} {'expansion s':>12}")
    for mode in modes:
        for routing in cli.routings:
            step, expansion_seconds = build(routing, mode, device)
            warmup_seconds, rate = time_steps(step, cli.steps, cli.warmup, device, mode == "compile+cudagraphs")
            print(f"{mode:<20} {routing:<9} {rate:8.2f} {1e3 / rate:8.1f} {warmup_seconds:10.1f} "
                  f"{expansion_seconds:12.1f}", flush=True)
            torch._dynamo.reset()


if __name__ == "__main__":
    main()
