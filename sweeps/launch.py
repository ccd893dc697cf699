"""Expand a wandb grid sweep file into one shell command per run, or run those commands here.

The sweep files in this folder run unchanged under `wandb sweep` / `wandb agent`. On a cluster without internet
this script writes the very commands a wandb agent would run, one per line, for a SLURM job array
(sweeps/slurm_array.sbatch) or GNU parallel, or runs them itself with N workers spread over the visible GPUs.
It is a runner, not a scheduler: no queue, no retries; a failed run is reported and the others go on.

    python sweeps/launch.py sweeps/table1_antmaze.yaml > commands.txt     # one command per line
    python sweeps/launch.py sweeps/table1_antmaze.yaml --workers 4        # run them, 4 at a time
"""

import argparse
import itertools
import os
import queue
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml  # PyYAML, installed as a dependency of wandb

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]  # wandb's default


def load_sweep(path) -> dict:
    """The sweep file as a dict, refusing what a grid expansion cannot run (with a one-line reason)."""
    try:
        sweep = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise SystemExit(f"{path}: cannot read the sweep file ({error})") from None
    if not isinstance(sweep, dict) or sweep.get("method") != "grid" or "program" not in sweep:
        raise SystemExit(f"{path}: expected a wandb sweep with 'method: grid' and a 'program'")
    parameters = sweep.get("parameters") or {}
    for name, spec in parameters.items():
        if not isinstance(spec, dict) or not ("value" in spec or isinstance(spec.get("values"), list)):
            raise SystemExit(f"{path}: parameter '{name}' needs 'value' or a list of 'values' (grid only)")
    return sweep


def grid(sweep: dict) -> list[dict]:
    """Every combination of the parameters' values, in file order (the last parameter varies fastest)."""
    names = list(sweep.get("parameters") or {})
    choices = [spec["values"] if "values" in spec else [spec["value"]] for spec in sweep["parameters"].values()]
    return [dict(zip(names, combination)) for combination in itertools.product(*choices)] if names else [{}]


def macro_values(program: str, params: dict) -> dict:
    """What wandb's agent substitutes for each macro of the command (wandb/sdk/launch/sweeps/utils.py)."""
    no_booleans = [f"--{k}" if v is True else f"--{k}={v}" for k, v in params.items() if v is not False]
    return {"${env}": [], "${interpreter}": ["python"], "${program}": [program],
            "${args}": [f"--{k}={v}" for k, v in params.items()], "${args_no_boolean_flags}": no_booleans,
            "${args_no_equals}": [item for k, v in params.items() for item in (f"--{k}", str(v))]}


def expand(sweep: dict) -> list[list[str]]:
    """One argv per grid point: the sweep's command with its macros filled in (${env} left out)."""
    commands = []
    for params in grid(sweep):
        macros = macro_values(sweep["program"], params)
        argv = []
        for item in sweep.get("command") or DEFAULT_COMMAND:
            item = str(item)
            if item.startswith("${") and item not in macros:
                raise SystemExit(f"macro {item} is not supported offline; use ${{args}} or ${{args_no_boolean_flags}}")
            argv += macros.get(item, [item])
        commands.append(argv)
    return commands


def visible_gpus() -> list[str]:
    """CUDA_VISIBLE_DEVICES when set, else the GPUs nvidia-smi lists, else none (CPU)."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [gpu for gpu in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if gpu.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    listing = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True).stdout
    return [str(index) for index, line in enumerate(listing.splitlines()) if line.startswith("GPU")]


def run_all(commands: list[list[str]], workers: int, log_dir: Path) -> int:
    """Run the commands, `workers` at a time; worker slot k uses GPU k mod (visible GPUs). Each run's output goes
    to log_dir/<index>.log. Returns the number of runs that failed."""
    gpus = visible_gpus()
    log_dir.mkdir(parents=True, exist_ok=True)
    slots = queue.Queue()
    for slot in range(workers):
        slots.put(slot)

    def run(index: int, argv: list[str]) -> int:
        slot = slots.get()
        env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]} if gpus else {}))
        try:
            with open(log_dir / f"{index}.log", "w") as log:
                code = subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        finally:
            slots.put(slot)
        where = f"GPU {env['CUDA_VISIBLE_DEVICES']}" if gpus else "CPU"
        print(f"[{index + 1}/{len(commands)}] exit {code} on {where}: {shlex.join(argv)}", flush=True)
        return code

    with ThreadPoolExecutor(max_workers=workers) as pool:
        codes = list(pool.map(run, range(len(commands)), commands))
    return sum(code != 0 for code in codes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="a wandb sweep file (method: grid)")
    parser.add_argument("--workers", type=int, default=0,
                        help="run the commands here, this many at a time (0: only print them, one per line)")
    parser.add_argument("--log-dir", default=None, help="where each run's output goes (default sweep_logs/<sweep>)")
    args = parser.parse_args(argv)
    commands = expand(load_sweep(args.sweep))
    if args.workers < 1:
        print("\n".join(shlex.join(command) for command in commands))
        return 0
    log_dir = Path(args.log_dir or Path("sweep_logs") / Path(args.sweep).stem)
    failed = run_all(commands, args.workers, log_dir)
    print(f"{len(commands) - failed} of {len(commands)} runs succeeded; logs in {log_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
