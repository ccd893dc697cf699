"""The models that `leq_state.py` trained and cached for a set of flags, for the learning probes in this folder
(reward_fit.py, start_gradient.py, wall_leak.py): they load what a run used, or say which run to start first."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import leq_state as L  # noqa: E402


def require_cached(*paths: Path) -> None:
    for path in paths:
        if not path.is_file():
            raise SystemExit(f"{path} does not exist: run leq_state.py with the same flags first (it trains and caches "
                             f"the world model and the BC + FQE checkpoint).")


def cached_world_model(args: L.Args, data) -> tuple[Path, L.EnsembleDynamics]:
    """(path, world model) that leq_state.py with these flags loads, on the CPU."""
    path = L.world_model_cache(args, data.fingerprint)
    require_cached(path)
    return path, L.load_world_model(path, data.fingerprint, "cpu")[0]
