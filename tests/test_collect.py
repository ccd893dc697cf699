"""collect_dataset.py: datasets generated from the real environments, written as Minari datasets and read back."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import collect_dataset as cd
import leq_state

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


def run_cli(*args, root):
    env = dict(os.environ, MINARI_DATASETS_PATH=str(root))
    return subprocess.run([sys.executable, "collect_dataset.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_pointmaze_writes_a_dataset_the_loader_reads_back(minari_root):
    result = run_cli("pointmaze-umaze-diverse", "--steps", "2000", "--seed", "3", root=minari_root)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "the controller reached its goal in" in result.stdout
    assert "read back: 2000 transitions" in result.stdout
    assert cd.ADROIT_NOTICE not in result.stderr  # gymnasium-robotics' import-time notice about other envs
    data = cd.load_dataset(cd.get_task("pointmaze-umaze-diverse"))
    assert len(data) == 2000 and data.observations.shape == (2000, 4) and data.actions.shape == (2000, 2)
    assert data.maze_frame == "gymnasium_robotics" and (data.reward_scale, data.reward_shift) == (1.0, -1.0)
    assert np.abs(data.actions).max() < 1.0
    # consecutive steps inside an episode are continuous: next_obs[i] == obs[i+1] except at episode ends
    inside = data.episode_ends[:-1] == 0
    np.testing.assert_array_equal(data.next_observations[:-1][inside], data.observations[1:][inside])
    again = run_cli("pointmaze-umaze-diverse", "--steps", "2000", root=minari_root)
    assert again.returncode != 0 and "already exists; pass --force" in again.stderr


def test_cli_hopper_random_terminals_agree_with_the_termination_fn(minari_root):
    result = run_cli("hopper-random", "--steps", "1500", root=minari_root)
    assert result.returncode == 0, result.stderr[-2000:]
    task = cd.get_task("hopper-random")
    data = cd.load_dataset(task)
    assert len(data) == 1500 and data.observations.shape[1] == 11
    assert (data.reward_scale, data.reward_shift) == (1.0, 0.0) and data.eval_gym_id == "Hopper-v4"
    assert data.terminals.sum() >= 10
    next_obs = torch.as_tensor(data.next_observations)
    done = leq_state.make_termination_fn(task, data)(torch.as_tensor(data.observations), torch.as_tensor(data.actions),
                                              next_obs)
    np.testing.assert_array_equal(done.numpy(), data.terminals.astype(bool))


def test_generation_is_seeded_and_reproducible(minari_root):
    task = cd.get_task("pointmaze-medium-play")
    fingerprints = []
    for index, seed in enumerate([5, 5, 6]):
        dataset_id = cd.generate_dataset(task, steps=600, seed=seed, dataset_id=f"test/pointmaze/repro{index}-v0")
        fingerprints.append(cd.load_dataset(task, dataset_id).fingerprint)
    assert fingerprints[0] == fingerprints[1] != fingerprints[2]


@pytest.mark.parametrize("env_id", ["pointmaze-medium-diverse", "pointmaze-large-play"])
def test_pointmaze_controller_reaches_its_goals(env_id):
    task = cd.get_task(env_id)
    episodes, env, summary = cd.collect_pointmaze(task, 12_000, seed=0)
    env.close()
    finished = episodes[:-1]
    reached = [episode.rewards[-1] == 1.0 for episode in finished]  # the env's sparse reward at the success step
    assert len(finished) >= 30
    assert np.mean(reached) >= 0.95, summary
    if task.level == "play":  # goals only from the play cells
        planner = cd.MazePlanner(task)
        goal_cells = {planner.cell_of(episode.observations["desired_goal"][-1]) for episode in finished}
        assert goal_cells <= set(cd.PLAY_GOAL_CELLS[task.maze]) and len(goal_cells) >= 3
    # Minari's waypoint following overshoots at turns, so the point touches walls; the world model learns from
    # these transitions that walls stop the point (the old cell-change planner gave 4 in 200k, and LEQ drove
    # into a wall the model let it pass through).
    xy = np.concatenate([episode.observations["observation"][1:, :2] for episode in episodes])
    assert np.mean(near_wall(task, xy, 0.15)) > 0.003


def near_wall(task, xy, distance):
    """Whether a wall cell lies within `distance` of each point along x or y (pointmaze: cells of 1 x 1)."""
    layout = np.asarray(cd.MAZE_LAYOUTS[task.maze])
    col, row = xy[:, 0] + layout.shape[1] / 2, layout.shape[0] / 2 - xy[:, 1]
    hits = np.zeros(len(xy), bool)
    for dx, dy in ((distance, 0), (-distance, 0), (0, distance), (0, -distance)):
        hits |= layout[np.floor(row - dy).astype(int), np.floor(col + dx).astype(int)] == 1
    return hits


def test_load_dataset_runs_collect_dataset_for_a_missing_default_dataset(minari_root, monkeypatch, capsys):
    commands = []

    def collect_in_process(command):  # what collect_dataset.py's main does, with 500 steps instead of 1M
        commands.append(command)
        cd.generate_dataset(cd.get_task(command[-1]), steps=500)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(cd.subprocess, "run", collect_in_process)
    data = cd.load_dataset(cd.get_task("pointmaze-ultra-diverse"))
    assert commands == [[sys.executable, str(ROOT / "collect_dataset.py"), "pointmaze-ultra-diverse"]]
    assert len(data) == 500 and "generating it now" in capsys.readouterr().out
    assert (minari_root / "leq/pointmaze/ultra-diverse-v2/data").is_dir()


def test_pointmaze_random_action_share_adds_wall_contacts(minari_root):
    task = cd.get_task("pointmaze-medium-diverse")
    planner_only, env, _ = cd.collect_pointmaze(task, 6000, seed=1)
    env.close()
    mixed, env, summary = cd.collect_pointmaze(task, 6000, seed=1, random_action_share=0.25)
    env.close()
    random_part = mixed[-3:]  # 1500 random-action steps: episodes of 500 from fresh resets
    assert [len(episode.actions) for episode in random_part] == [500, 500, 500], summary
    assert all(episode.truncations[-1] and not episode.truncations[:-1].any() for episode in random_part)
    assert sum(len(episode.actions) for episode in mixed) == 6000
    xy = lambda episodes: np.concatenate([episode.observations["observation"][1:, :2] for episode in episodes])
    assert np.mean(near_wall(task, xy(random_part), 0.15)) > 3 * np.mean(near_wall(task, xy(planner_only), 0.15))


def test_pointmaze_random_action_hold_keeps_each_random_action_for_hold_steps_on_average(minari_root):
    """--random-action-hold H: a new random action with probability 1/H per step (about 1/H of the steps change
    it); H = 1 (the default) draws a new one at every step; a held default dataset is refused without an id."""
    task = cd.get_task("pointmaze-medium-diverse")
    held, env, summary = cd.collect_pointmaze(task, 4000, seed=2, random_action_share=0.5, random_action_hold=20)
    env.close()
    actions = np.concatenate([episode.actions for episode in held[-4:]])
    change_rate = np.mean(np.any(actions[1:] != actions[:-1], axis=1))
    assert 0.02 < change_rate < 0.08 and "held 20 steps" in summary  # 1/20, allowing for 2000 draws
    default, env, _ = cd.collect_pointmaze(task, 1000, seed=2, random_action_share=0.5)
    env.close()
    actions = default[-1].actions
    assert np.all(np.any(actions[1:] != actions[:-1], axis=1))  # hold 1: a new action at every step
    with pytest.raises(SystemExit, match="--dataset-id"):
        cd.generate_dataset(task, steps=300, random_action_hold=20)


def test_pointmaze_share_zero_writes_the_minari_style_v1_id(minari_root):
    task = cd.get_task("pointmaze-umaze-diverse")
    assert cd.generate_dataset(task, steps=300, random_action_share=0.0) == "leq/pointmaze/umaze-diverse-v1"
    with pytest.raises(SystemExit, match="--dataset-id"):
        cd.generate_dataset(task, steps=300, random_action_share=0.5)


def test_random_antmaze_data_for_tests(minari_root):
    task = cd.get_task("antmaze-medium-play")
    dataset_id = cd.generate_dataset(task, steps=300, seed=0)
    assert dataset_id == "leq/antmaze/medium-random-v0"
    data = cd.load_dataset(task, dataset_id)
    assert data.observations.shape == (300, 29) and data.actions.shape == (300, 8)
    assert data.maze_frame == "gymnasium_robotics" and data.rewards.sum() == 0  # far from the goal
    start = cd.cell_centre(task, cd.MAZE_START_GOAL_CELLS["medium"][0])
    assert np.linalg.norm(data.observations[0, :2] - start) <= np.sqrt(2) * 1.0 + 1e-6  # reset noise +-1 m


def test_only_generated_families_can_be_collected(minari_root):
    with pytest.raises(SystemExit, match="generates only"):
        cd.generate_dataset(cd.get_task("hopper-medium"), steps=10)
