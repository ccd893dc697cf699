"""The sweep files: every command each one expands to parses, with tyro, against the script it names, and names
a task that script knows; the launcher expands macros as wandb's agent does and refuses what it cannot run."""

import importlib.util
import sys
from pathlib import Path

import pytest
import tyro

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "sweeps"))
import launch  # noqa: E402

SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))
SEEDS = {"leq_state.py": 5, "leq_pixel.py": 3}  # the paper: 5 seeds for state runs, 3 for V-D4RL


def script_module(program: str):
    """The top-level script as a module, imported from its path (registered so tyro can read its docstrings)."""
    name = f"sweep_target_{Path(program).stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / program)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def known_task(module, env_id: str) -> bool:
    return env_id in (module.TASKS if hasattr(module, "TASKS") else module.TABLE13_TAU)


def test_there_is_a_sweep_per_main_table():
    names = {path.stem for path in SWEEP_FILES}
    assert {"table1_antmaze", "table2_neorl", "table3_mujoco", "table4_vd4rl"} <= names


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[path.stem for path in SWEEP_FILES])
def test_every_command_parses_against_its_script(path):
    sweep = launch.load_sweep(path)
    commands = launch.expand(sweep)
    module = script_module(sweep["program"])
    env_ids = sweep["parameters"]["env_id"]["values"]
    assert len(sweep["parameters"]["seed"]["values"]) == SEEDS[sweep["program"]]
    assert len(commands) == len(launch.grid(sweep)) and len(set(map(tuple, commands))) == len(commands)
    for argv in commands:
        assert argv[:2] == ["python", sweep["program"]]
        args = tyro.cli(module.Args, args=argv[2:])
        assert args.env_id in env_ids and known_task(module, args.env_id)
        assert args.track and args.exp_name == path.stem
        if "tau" not in sweep["parameters"]:
            assert args.tau is None, "tau comes from the paper's table for the env id unless the table varies it"


def test_table1_expands_to_eight_tasks_times_five_seeds():
    commands = launch.expand(launch.load_sweep(ROOT / "sweeps" / "table1_antmaze.yaml"))
    assert len(commands) == 40
    assert commands[0] == ["python", "leq_state.py", "--track", "--env_id=antmaze-umaze", "--exp_name=table1_antmaze",
                           "--seed=1"]


def test_macros_are_filled_in_as_wandb_does(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("program: p.py\nmethod: grid\ncommand: ['${env}', '${interpreter}', '${program}', --x, "
                    "'${args_no_boolean_flags}']\nparameters:\n  a: {values: [1, 2]}\n  yes_flag: {value: true}\n"
                    "  no_flag: {value: false}\n")
    assert launch.expand(launch.load_sweep(path)) == [["python", "p.py", "--x", "--a=1", "--yes_flag"],
                                                      ["python", "p.py", "--x", "--a=2", "--yes_flag"]]
    path.write_text("program: p.py\nmethod: grid\nparameters:\n  a: {value: null}\n")
    assert launch.expand(launch.load_sweep(path)) == [["python", "p.py", "--a=None"]]  # wandb's default command


@pytest.mark.parametrize("text, message", [
    ("program: p.py\nmethod: bayes\nparameters: {}\n", "method: grid"),
    ("program: p.py\nmethod: grid\nparameters:\n  a: {min: 0, max: 1}\n", "parameter 'a' needs"),
    ("program: p.py\nmethod: grid\ncommand: ['${args_json}']\nparameters:\n  a: {value: 1}\n", "not supported"),
    ("program: [p.py\n", "cannot read"),
])
def test_bad_sweep_files_get_one_line_errors(tmp_path, text, message):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit, match=message):
        launch.expand(launch.load_sweep(path))
