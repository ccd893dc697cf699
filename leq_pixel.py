"""leq_pixel: placeholder skeleton (being written)."""

import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro


@dataclass
class Args:
    seed: int = 1
    """random seed"""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'"""


# ==== mirror: common (identical in collect_dataset.py, train_world_model.py, fqe_pretrain.py, leq_state.py, leq_pixel.py) ====
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def compile_step(fn, use_compile: bool, use_cudagraphs: bool, device: torch.device):
    """The same step function eager, compiled, or compiled and captured as CUDA graphs.

    CUDA-graph capture is asked for explicitly and fails loudly where it cannot work. Outputs of a
    captured step are overwritten by the next call: clone what must outlive it."""
    if use_cudagraphs and device.type != "cuda":
        raise SystemExit(f"--cudagraphs needs a CUDA device, but the device is {device}. Drop --cudagraphs.")
    if use_cudagraphs:
        return torch.compile(fn, mode="reduce-overhead")
    return torch.compile(fn) if use_compile else fn


def atomic_save(obj, path) -> None:
    """torch.save to a temporary file beside `path`, then rename: a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def software_versions() -> dict:
    return {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__}


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
    if fingerprint is not None and checkpoint.get("fingerprint") != fingerprint:
        raise SystemExit(
            f"{path} was trained on another dataset (fingerprint {checkpoint.get('fingerprint')}, this dataset "
            f"is {fingerprint}). Pass the checkpoint trained on this data, or retrain on it."
        )
    return checkpoint


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
# ==== end mirror: common ====


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
    """|tau - 1(prediction > target)| (Eq. 1): tau where the target is above the prediction, else 1 - tau."""
    return torch.where(target > prediction, tau, 1.0 - tau)


def expectile_loss(target: torch.Tensor, prediction: torch.Tensor, tau: float) -> torch.Tensor:
    """Elementwise L2_tau (Eq. 1): the squared error weighted by expectile_weight."""
    return expectile_weight(target, prediction, tau) * (target - prediction).square()
# ==== end mirror: returns ====


def main(args: Args) -> None:
    seed_everything(args.seed)
    raise SystemExit("not implemented yet")


if __name__ == "__main__":
    main(tyro.cli(Args))
