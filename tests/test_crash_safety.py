"""Crash safety of real training processes on tiny generated PointMaze data: SIGKILL at several points (one during
a checkpoint write) then --resume ends bit-identical to an uninterrupted run; a kill while a cache is written never
leaves a file a later run would load; runs started together train each cache once; a diverging run stops with a
diagnostic and keeps its last good checkpoint."""

import fcntl
import glob
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import tyro

import collect_dataset
import leq_state

ROOT = Path(__file__).resolve().parent.parent
ENV_ID = "pointmaze-umaze-diverse"
EAGER = ["--no-compile"]  # leq_state.py's eager flag
TINY = ["--env-id", ENV_ID, "--device", "cpu", *EAGER, "--batch-size", "16", "--model-batch-size", "16",
        "--horizon", "3", "--expansion-interval", "20", "--expansion-size", "64", "--rollout-length", "2",
        "--expansion-keep", "2", "--eval-interval", "30", "--eval-episodes", "1", "--final-eval-episodes", "1",
        "--checkpoint-interval", "10", "--log-interval", "3", "--world-model-max-epochs", "1", "--bc-steps", "5",
        "--bc-batch-size", "32", "--fqe-steps", "5", "--fqe-batch-size", "32"]


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """A working folder with a tiny generated dataset; subprocesses inherit its Minari root and one thread."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    monkeypatch.chdir(tmp_path)
    collect_dataset.generate_dataset(collect_dataset.get_task(ENV_ID), steps=2000, seed=0)
    return tmp_path


def start(script: str, *args: str, log: str) -> subprocess.Popen:
    with open(log, "w") as out:  # output to a file: nothing blocks on a full pipe while the test polls
        return subprocess.Popen([sys.executable, str(ROOT / script), *args], stdout=out, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, log: str) -> str:
    assert process.wait(timeout=300) == 0, Path(log).read_text()[-3000:]
    return Path(log).read_text()


def logged_step(log: str) -> int:
    steps = re.findall(r"step\s+(\d+) \|", Path(log).read_text())
    return int(steps[-1]) if steps else 0


def kill_when(process: subprocess.Popen, condition, what: str) -> None:
    """SIGKILL the process as soon as condition() holds (polled every half millisecond)."""
    while not condition():
        assert process.poll() is None, f"the run ended before {what}"
        time.sleep(0.0005)
    process.send_signal(signal.SIGKILL)
    process.wait()


def run_checkpoint(exp_name: str) -> dict:
    (path,) = glob.glob(f"runs/*__{exp_name}__*/checkpoint.pt")
    return torch.load(path, weights_only=False)


def test_sigkilled_run_resumes_to_the_parameters_of_an_uninterrupted_run(workdir):
    steps = ["--total-steps", "80"]
    finish(start("leq_state.py", *TINY, *steps, "--exp-name", "whole", log="whole.log"), "whole.log")
    expected = run_checkpoint("whole")

    run = start("leq_state.py", *TINY, *steps, "--exp-name", "killed", log="leg1.log")
    kill_when(run, lambda: logged_step("leg1.log") >= 45, "step 45")  # after 3 expansions, between checkpoints
    (run_dir,) = glob.glob("runs/*__killed__*")
    first_resume = run_checkpoint("killed")["step"]
    assert 40 <= first_resume < 80

    resume = ["--resume", run_dir]  # no compile flag: the run's own (eager) choice is kept
    killed_in_write = None
    while killed_in_write is None:  # kill inside a checkpoint write: its temporary file exists, not yet renamed
        run = start("leq_state.py", *resume, log="leg2.log")
        writing = Path(run_dir) / f".checkpoint.pt.tmp{run.pid}"
        kill_when(run, lambda: writing.exists() and logged_step("leg2.log") >= 55, "a checkpoint write after step 55")
        if writing.exists():
            killed_in_write = logged_step("leg2.log")
    kept = run_checkpoint("killed")  # the previous checkpoint, whole and loadable
    assert first_resume < kept["step"] < 80 and kept["buffer"]["expansions"] >= 3

    output = finish(start("leq_state.py", *resume, log="leg3.log"), "leg3.log")
    assert f"resuming {Path(run_dir).name} at step {kept['step']}" in output
    resumed = run_checkpoint("killed")
    assert resumed["step"] == 80 and resumed["buffer"]["expansions"] == 4
    for key in ("actor", "critic", "critic_ema"):
        for name, value in expected[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}.{name} differs after the kills and resumes"
    for key in ("actor_optimizer", "critic_optimizer"):
        for index, state in expected[key]["state"].items():
            for name, value in state.items():
                assert torch.equal(value, resumed[key]["state"][index][name]), f"{key} {index} {name} differs"
    assert torch.equal(expected["buffer"]["states"], resumed["buffer"]["states"])
    assert resumed["history"]["eval"] == expected["history"]["eval"] and len(expected["history"]["eval"]) == 2
    print(f"killed after step {logged_step('leg1.log')} (resumed at {first_resume}), during the checkpoint write "
          f"after step {killed_in_write} (resumed at {kept['step']}); final parameters identical")


@pytest.mark.parametrize("script, folder, args", [
    ("train_world_model.py", "world_model", ["--no-compile", "--max-epochs", "1"]),
    ("fqe_pretrain.py", "pretrain", ["--no-compile", "--bc-steps", "5", "--fqe-steps", "5", "--eval-episodes", "1"]),
], ids=["world_model", "pretrain"])
def test_a_kill_while_a_cache_is_written_leaves_no_file_to_load(workdir, script, folder, args):
    cache = workdir / "checkpoints" / folder
    for attempt in range(5):  # the write takes milliseconds: retry if the poll missed it
        run = start(script, "--env-id", ENV_ID, "--device", "cpu", *args, log="cache.log")
        kill_when(run, lambda: bool(list(cache.glob(".*.tmp*"))), "the cache write")
        if not list(cache.glob("*.pt")):
            break
        for path in cache.iterdir():
            path.unlink()
    else:
        pytest.fail("the kill never landed inside the cache write")
    assert list(cache.glob(".*.tmp*")) and not list(cache.glob("*.pt")), "only the temporary file may remain"
    print(f"{script} killed inside its cache write at attempt {attempt + 1}")


def test_runs_started_together_train_each_cache_once(workdir):
    data = leq_state.load_dataset(leq_state.get_task(ENV_ID))
    cache = leq_state.world_model_path(ENV_ID, 1, data.fingerprint)
    cache = cache.with_name(f"{cache.stem}__max1ep.pt")
    cache.parent.mkdir(parents=True)
    with open(leq_state.lock_file(cache), "a") as lock:  # hold the cache: both runs must reach the lock and wait
        fcntl.flock(lock, fcntl.LOCK_EX)
        runs = [start("leq_state.py", *TINY, "--total-steps", "5", "--tau", tau, "--exp-name", f"tau{tau}",
                      log=f"tau{tau}.log") for tau in ("0.1", "0.3")]
        while not all("world model: another run is writing" in Path(f"tau{t}.log").read_text() for t in ("0.1", "0.3")):
            assert all(run.poll() is None for run in runs), "a run ended without waiting for the lock"
            time.sleep(0.05)
    outputs = [finish(run, f"tau{tau}.log") for run, tau in zip(runs, ("0.1", "0.3"))]
    for stage in ("world model: none at", "pretraining: none at"):
        assert sum(stage in output for output in outputs) == 1, f"'{stage}' must appear in exactly one run"
    for output in outputs:
        assert f"world model: loaded {cache}" in output
        assert len(set(re.findall(r"pretraining: loaded (\S+)", output))) == 1
    assert re.findall(r"pretraining: loaded (\S+)", outputs[0]) == re.findall(r"pretraining: loaded (\S+)", outputs[1])


def test_divergence_stops_with_a_diagnostic_and_keeps_the_last_good_checkpoint(workdir, monkeypatch):
    leq_state.main(tyro.cli(leq_state.Args, args=[*TINY, "--total-steps", "5"]))  # caches: the run below only trains LEQ
    make_update = leq_state.make_leq_update

    def poisoned_at_step_25(actor, *args, **kwargs):
        update, step_count = make_update(actor, *args, **kwargs)

        def update_then_poison():
            metrics = update()
            if int(step_count) == 25:  # a test hook: the 25th step leaves a NaN in the actor
                with torch.no_grad():
                    next(actor.parameters()).view(-1)[0] = float("nan")
            return metrics

        return update_then_poison, step_count

    monkeypatch.setattr(leq_state, "make_leq_update", poisoned_at_step_25)
    args = tyro.cli(leq_state.Args, args=[*TINY, "--total-steps", "60", "--exp-name", "diverges"])
    with pytest.raises(SystemExit, match=r"diverged at step 27: .*actor.* not finite.*runs/.*checkpoint.pt \(step 20\)"):
        leq_state.main(args)
    kept = run_checkpoint("diverges")
    assert kept["step"] == 20 and not leq_state.non_finite({k: kept[k] for k in ("actor", "critic", "critic_ema")})


def test_resume_says_when_it_cannot_be_bit_exact(capsys):
    checkpoint = {"args": {"compile": False, "cudagraphs": False, "device": "cpu"}, "threads": torch.get_num_threads()}
    leq_state.warn_if_not_bit_exact(checkpoint, leq_state.Args(device="cpu", compile=False))
    assert capsys.readouterr().out == ""
    leq_state.warn_if_not_bit_exact({**checkpoint, "threads": torch.get_num_threads() + 1},
                                    leq_state.Args(device="cpu", compile=True))
    note = capsys.readouterr().out
    assert "compile False -> True" in note and f"threads {torch.get_num_threads() + 1} ->" in note
    assert "will not be bit-identical" in note
