"""What a run does before its first stage: every bad flag refused in seconds with a one-line error, the plan of
stages with time estimates printed first, and gymnasium-robotics' Adroit notice kept out of the output."""

import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import leq_state
import train_world_model

ROOT = Path(__file__).resolve().parent.parent
CUDA = torch.cuda.is_available()

# (script, flags, what the error must say); no data exists where these run, so any stage would fail or take long
BAD_FLAGS = [
    ("leq_state.py", ["--cudagraphs"], "--cudagraphs needs a CUDA device"),
    ("leq_state.py", ["--device", "cuda"], "--device cuda was asked for"),
    ("leq_state.py", ["--tau", "1.5", "--actor-lr", "0"], "--actor-lr must be > 0, got 0.0; --tau must be in (0, 1)"),
    ("leq_state.py", ["--total-steps", "0"], "--total-steps must be > 0"),
    ("leq_state.py", ["--dataset-path", "missing.hdf5"], "--dataset-path missing.hdf5 does not exist"),
    ("leq_state.py", ["--dataset-path", "notes.txt"], "expected a D4RL-format .hdf5 file"),
    ("leq_state.py", ["--resume", "runs/gone"], "--resume runs/gone: no checkpoint found"),
    ("leq_state.py", ["--resume", "notes.txt"], "cannot be read"),
    ("leq_state.py", ["--env-id", "pointmaze-mediun-diverse"], "Did you mean: pointmaze-medium-diverse"),
    ("leq_state.py", ["--pretrain-path", "none.pt"], "--pretrain-path none.pt does not exist"),
    ("fqe_pretrain.py", ["--cudagraphs"], "--cudagraphs needs a CUDA device"),
    ("fqe_pretrain.py", ["--gamma", "0"], "--gamma must be in (0, 1]"),
    ("train_world_model.py", ["--cudagraphs"], "--cudagraphs needs a CUDA device"),
    ("train_world_model.py", ["--holdout-ratio", "1"], "--holdout-ratio must be in (0, 1)"),
    ("train_world_model.py", ["--env-id", "hopper-medium"], "needs a dataset: pass --dataset-path"),
    ("collect_dataset.py", ["pointmaze-umaze-diverse", "--steps", "0"], "--steps must be > 0"),
    ("collect_dataset.py", ["hopper-medium"], "this project generates only"),
    ("leq_pixel.py", ["--bf16"], "--bf16 needs a CUDA device"),
    ("leq_pixel.py", ["--resume", "gone.pt"], "--resume gone.pt is not a file"),
]


def child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.parametrize("script, flags, message", BAD_FLAGS, ids=[" ".join([s, *f]) for s, f, _ in BAD_FLAGS])
def test_a_bad_flag_stops_the_script_in_seconds_with_one_line(script, flags, message, tmp_path):
    if CUDA and ("cuda" in message.lower() or "CUDA" in message):
        pytest.skip("the flag is valid where CUDA exists")
    (tmp_path / "notes.txt").write_text("not a dataset")
    env = dict(os.environ, MINARI_DATASETS_PATH=str(tmp_path / "minari"), OMP_NUM_THREADS="1")
    start, cpu_start = time.perf_counter(), child_cpu_seconds()
    result = subprocess.run([sys.executable, str(ROOT / script), *flags], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    wall, cpu = time.perf_counter() - start, child_cpu_seconds() - cpu_start
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-3000:]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-3000:]
    # CPU time, which other processes cannot stretch: 2.5-3.3 s each here, which is also the wall time on a quiet
    # machine; on the shared 2-core development machine under a load of 12, the wall time reached 100-130 s
    assert cpu < 20, f"took {cpu:.1f} s of CPU ({wall:.1f} s of wall time)"
    assert not (tmp_path / "minari").exists() and not (tmp_path / "checkpoints").exists()


def test_check_args_names_every_bad_value_of_leq_state():
    args = leq_state.Args(device="cpu", horizon=0, beta=1.5, lam=-0.1, gamma=0.0, ema_rate=2.0, critic_lr=-1.0,
                          bc_steps=-1, eval_episodes=0, world_model_max_epochs=0, goal_radius=0.0)
    with pytest.raises(SystemExit) as stop:
        leq_state.check_args(args)
    for flag in ("--horizon", "--beta", "--lam", "--gamma", "--ema-rate", "--critic-lr", "--bc-steps",
                 "--eval-episodes", "--world-model-max-epochs", "--goal-radius"):
        assert flag in str(stop.value)
    assert leq_state.check_args(leq_state.Args(device="cpu", tau=0.9, beta=0.0)) == torch.device("cpu")


def test_check_args_of_train_world_model_refuses_layer_mismatches():
    args = train_world_model.Args(device="cpu", hidden_dims=(8, 0), weight_decays=(0.1,), num_elites=9)
    with pytest.raises(SystemExit, match="--weight-decays needs one value per layer.*--num-elites.*--hidden-dims"):
        train_world_model.check_args(args)


def test_compile_defaults_to_eager_on_the_cpu_and_compiled_on_cuda():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert leq_state.resolve_compile(None, cpu) is False and leq_state.resolve_compile(None, cuda) is True
    assert leq_state.resolve_compile(None, cpu, on_cpu=True) is True
    assert leq_state.resolve_compile(True, cpu) is True and leq_state.resolve_compile(False, cuda) is False
    assert leq_state.Args().compile is None


class StageStarted(Exception):
    pass


def forbid(*_args, **_kwargs):
    raise StageStarted


def test_the_default_run_prints_its_plan_before_any_stage(tmp_path, monkeypatch, capsys):
    """With no data, the first stage is generating it: the plan must be out before, and on the CPU say that the
    default run takes days and name the CPU preset."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setattr(leq_state, "run_collect_dataset", forbid)
    with pytest.raises(StageStarted):
        leq_state.main(leq_state.Args(device="cpu"))
    out = capsys.readouterr().out
    plan = out[out.index("plan on cpu"):]
    for stage in ("data", "world model", "BC", "FQE", "LEQ loop", "evaluations", "total"):
        (line,) = [line for line in plan.splitlines() if line.strip().startswith(stage + " ")]
        assert re.search(r" ~[0-9.]+ (s|min|h|days)$", line), line
    assert re.search(r"total +~[0-9.]+ days$", plan, re.MULTILINE)
    assert "multi-day job" in plan and "python leq_state.py --preset cpu-check" in plan


def test_the_plan_loads_what_is_cached_and_counts_only_the_remaining_steps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = leq_state.Args(device="cpu", total_steps=10_000, eval_interval=2_000, eval_episodes=5,
                          final_eval_episodes=20, expansion_interval=1_000, bc_steps=10, fqe_steps=10)
    data = leq_state.OfflineData(range(500), *[None] * 7, fingerprint="f" * 12, source="minari:x")  # length only
    leq_state.pretrain_cache(args, data.fingerprint).parent.mkdir(parents=True)
    leq_state.pretrain_cache(args, data.fingerprint).write_bytes(b"")
    stages = dict((name, (what, seconds)) for name, what, seconds in
                  leq_state.plan_stages(args, leq_state.get_task("pointmaze-umaze-diverse"), data, start_step=5_000))
    assert stages["data"] == ("loaded minari:x (500 transitions)", 0.0)
    assert stages["world model"][0].startswith("train until early stop") and stages["world model"][1] > 0
    assert stages["BC + FQE"][0].startswith("load checkpoints/pretrain/") and "BC" not in stages
    assert stages["LEQ loop"][0] == "5,000 steps at batch 256 + 256, 5 expansions"
    assert stages["evaluations"][0] == "50 episodes of at most 300 steps"  # at 6k and 8k, then 20 LEQ + 20 BC


def test_only_the_adroit_notice_of_gymnasium_robotics_is_filtered(monkeypatch, capsys):
    """The notice is printed by gymnasium_robotics' __init__ through farama_notifications: re-import the package
    with a second line added to that notice, and only the notice goes."""
    import farama_notifications

    gymnasium_robotics = leq_state.import_gymnasium_robotics()
    assert leq_state.ADROIT_NOTICE not in capsys.readouterr().err
    notices = farama_notifications.notifications["gymnasium_robotics"]
    assert leq_state.ADROIT_NOTICE in notices[gymnasium_robotics.__version__]
    monkeypatch.setitem(notices, gymnasium_robotics.__version__,
                        notices[gymnasium_robotics.__version__] + "\nanother notice")
    for name in [name for name in sys.modules if name.split(".")[0] == "gymnasium_robotics"]:
        monkeypatch.delitem(sys.modules, name)
    leq_state.import_gymnasium_robotics()
    err = capsys.readouterr().err
    assert "another notice" in err and leq_state.ADROIT_NOTICE not in err
