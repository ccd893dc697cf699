"""Every termination function (leq-spec §6) against the real environment's own termination, on real transitions:
random actions for locomotion (D4RL and NeoRL layouts), and transitions that enter the goal region for the mazes."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import collect_dataset as cd
import leq_state


def fake_data(maze_frame=None, source="generated"):
    """make_termination_fn reads only the data's frame and source; the arrays do not matter here."""
    empty = np.zeros((1, 1), np.float32)
    return cd.OfflineData(empty, empty, empty[0], empty, empty[0], empty[0], 1.0, 0.0, "x", source, maze_frame)


def agree(fn, obs, actions, next_obs, env_done):
    as_tensor = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
    predicted = fn(as_tensor(obs), as_tensor(actions), as_tensor(next_obs)).numpy()
    assert predicted.dtype == np.bool_ and predicted.shape == (len(obs),)
    mismatches = np.nonzero(predicted != np.asarray(env_done))[0]
    assert len(mismatches) == 0, f"{len(mismatches)} of {len(obs)} transitions disagree, first at {mismatches[0]}"


@pytest.mark.parametrize("env_id", ["hopper-random", "walker2d-random", "halfcheetah-random", "Hopper-v3-low",
                                    "Walker2d-v3-medium", "HalfCheetah-v3-high"])
def test_locomotion_termination_matches_env(env_id):
    task = cd.get_task(env_id)
    kwargs = {"exclude_current_positions_from_observation": False} if task.family == "neorl" else {}
    env = gym.make(cd._default_eval_gym_id(task), **kwargs)
    env.action_space.seed(0)
    rows = {"obs": [], "act": [], "next": [], "done": []}
    obs, _ = env.reset(seed=0)
    for _ in range(1500):
        action = env.action_space.sample()
        next_obs, _, terminated, truncated, _ = env.step(action)
        for key, value in zip(rows, (obs, action, next_obs, terminated)):
            rows[key].append(value)
        obs = env.reset()[0] if terminated or truncated else next_obs
    assert rows["obs"][0].shape == (task.obs_dim,)
    terminal_count = sum(rows["done"])
    if task.robot == "halfcheetah":
        assert terminal_count == 0
    else:  # random actions topple hopper and walker quickly: both outcomes are well represented
        assert terminal_count >= 20
    agree(leq_state.make_termination_fn(task, fake_data()), rows["obs"], rows["act"], rows["next"], rows["done"])


def run_into_goal(env, to_obs, start, steer, episodes, max_steps):
    """Transitions of episodes that `start(env, episode)` places near the pinned goal and `steer` drives into it;
    an episode runs until the env terminates (the goal region is entered) or max_steps."""
    rng = np.random.default_rng(0)
    rows = {"obs": [], "act": [], "next": [], "done": []}
    for episode in range(episodes):
        raw = start(env, episode, rng)
        for _ in range(max_steps):
            action = steer(raw, rng)
            next_raw, _, terminated, _, _ = env.step(action)
            for key, value in zip(rows, (to_obs(raw), action, to_obs(next_raw), terminated)):
                rows[key].append(value)
            raw = next_raw
            if terminated:
                break
    return rows


def test_pointmaze_termination_matches_env():
    task = cd.get_task("pointmaze-medium-diverse")
    start_cell, goal_cell = cd.MAZE_START_GOAL_CELLS["medium"]
    centre = cd.cell_centre(task, goal_cell)
    env = cd.make_maze_env(task, cd._maze_map(task, start_cell, goal_cell), False, 10_000)
    planner = cd.MazePlanner(task)

    def start(env, episode, rng):  # one cell from the goal, the goal pinned at the centre of its cell
        raw, _ = env.reset(seed=episode, options={"goal_cell": goal_cell, "reset_cell": (5, 6)})
        env.unwrapped.goal = centre.copy()
        return raw

    def steer(raw, rng):
        point = raw["observation"]
        action = 10 * (planner.waypoint(point[:2], centre) - point[:2]) - point[2:] + rng.normal(0, 0.5, 2)
        return np.clip(action, -1, 1).astype(np.float32)

    rows = run_into_goal(env, lambda raw: raw["observation"], start, steer, episodes=10, max_steps=200)
    assert sum(rows["done"]) == 10, "every episode should end by entering the goal region"
    assert len(rows["done"]) > 50
    fn = leq_state.make_termination_fn(task, fake_data("gymnasium_robotics"), goal_radius=0.45)  # the env's own radius
    agree(fn, rows["obs"], rows["act"], rows["next"], rows["done"])


def ant_start_near(goal_gymnasium):
    """Put the ant 0.7-0.9 m from the goal, moving toward it at 2 m/s: random actions then carry it in."""
    def start(maze_env, episode, rng):
        maze_env.reset(seed=episode)
        maze = maze_env.unwrapped
        maze.goal = goal_gymnasium.copy()
        direction = rng.normal(size=2)
        direction /= np.linalg.norm(direction)
        qpos, qvel = maze.ant_env.init_qpos.copy(), np.zeros(maze.ant_env.model.nv)
        qpos[:2] = goal_gymnasium + rng.uniform(0.7, 0.9) * direction
        qvel[:2] = -2.0 * direction
        maze.ant_env.set_state(qpos, qvel)
        return maze._get_obs(maze.ant_env._get_obs())
    return start


def random_ant_action(raw, rng):
    return rng.uniform(-1, 1, 8).astype(np.float32)


def test_antmaze_termination_matches_env_gymnasium_frame():
    task = cd.get_task("antmaze-medium-diverse")
    data = fake_data("gymnasium_robotics", source="minari:D4RL/antmaze/medium-diverse-v1")
    eval_env = leq_state.make_eval_env(task, data)
    centre = cd.maze_goal_centre(task, "gymnasium_robotics", "D4RL/antmaze/medium-diverse-v1")
    np.testing.assert_allclose(centre, [10.0, -10.0])  # leq-spec §6, gymnasium-robotics frame
    rows = run_into_goal(eval_env.env, eval_env.to_obs, ant_start_near(centre), random_ant_action, 6, 40)
    assert sum(rows["done"]) >= 4 and len(rows["done"]) > sum(rows["done"])
    agree(leq_state.make_termination_fn(task, data, goal_radius=0.45), rows["obs"], rows["act"], rows["next"], rows["done"])


@pytest.mark.parametrize("maze", ["umaze", "ultra"])
def test_antmaze_termination_matches_env_d4rl_frame(maze):
    """D4RL-format data is evaluated in the D4RL AntMaze env (d4rl_antmaze block): its observations are in D4RL's
    frame, and with the goal at D4RL's mean goal its own success rule (radius 0.5) is the termination fn's."""
    task = cd.get_task(f"antmaze-{maze}-diverse")
    data = fake_data("d4rl", source="hdf5:file.hdf5")
    eval_env = leq_state.make_eval_env(task, data)
    assert isinstance(eval_env.env.unwrapped, leq_state.D4RLAntMazeEnv)
    centre = np.array(cd.D4RL_ANTMAZE_GOAL_CENTRES[maze])

    def start(env, episode, rng):  # 0.7-0.9 m from the goal, moving toward it at 2 m/s
        env.reset(seed=episode, options={"goal": centre})
        ant = env.unwrapped
        direction = rng.normal(size=2)
        direction /= np.linalg.norm(direction)
        qpos, qvel = ant.init_qpos.copy(), np.zeros(ant.model.nv)
        qpos[:2] = centre + rng.uniform(0.7, 0.9) * direction
        qvel[:2] = -2.0 * direction
        ant.set_state(qpos, qvel)
        return ant._get_obs()

    rows = run_into_goal(eval_env.env, eval_env.to_obs, start, random_ant_action, 4, 40)
    assert sum(rows["done"]) >= 3 and len(rows["done"]) > sum(rows["done"])
    entered = np.asarray(rows["next"])[np.asarray(rows["done"])]
    assert (np.linalg.norm(entered[:, :2] - centre, axis=-1) <= 0.5).all()  # the obs really are in D4RL's frame
    agree(leq_state.make_termination_fn(task, data), rows["obs"], rows["act"], rows["next"], rows["done"])


def test_termination_fn_compiles_and_uses_the_default_radius():
    task = cd.get_task("antmaze-umaze")
    fn = leq_state.make_termination_fn(task, fake_data("d4rl"))
    next_obs = torch.zeros(3, 29)
    next_obs[:, :2] = torch.tensor([[0.75, 8.75], [0.75 + 0.49, 8.75], [0.75, 8.75 + 0.51]])
    expected = torch.tensor([True, True, False])  # radius 0.5 by default (leq-spec §6)
    assert torch.equal(fn(next_obs, torch.zeros(3, 8), next_obs), expected)
    compiled = torch.compile(fn, fullgraph=True, backend="eager")  # dynamo tracing: no graph break, no codegen cost
    assert torch.equal(compiled(next_obs, torch.zeros(3, 8), next_obs), expected)
