"""The task registry, reward processing, normalised scores and batched evaluation."""

import gymnasium as gym
import numpy as np
import pytest

import collect_dataset as cd
import leq_state

# Paper Table 10 (tau per task), typed in again here from the paper so a slip in the registry is caught.
PAPER_TABLE_10 = {
    "antmaze-umaze": 0.1, "antmaze-umaze-diverse": 0.1, "antmaze-medium-play": 0.3, "antmaze-medium-diverse": 0.1,
    "antmaze-large-play": 0.3, "antmaze-large-diverse": 0.3, "antmaze-ultra-play": 0.1, "antmaze-ultra-diverse": 0.1,
    "hopper-random": 0.1, "hopper-medium": 0.1, "hopper-medium-replay": 0.3, "hopper-medium-expert": 0.1,
    "walker2d-random": 0.1, "walker2d-medium": 0.3, "walker2d-medium-replay": 0.5, "walker2d-medium-expert": 0.1,
    "halfcheetah-random": 0.3, "halfcheetah-medium": 0.3, "halfcheetah-medium-replay": 0.4,
    "halfcheetah-medium-expert": 0.1, "Hopper-v3-low": 0.1, "Hopper-v3-medium": 0.1, "Hopper-v3-high": 0.1,
    "Walker2d-v3-low": 0.3, "Walker2d-v3-medium": 0.1, "Walker2d-v3-high": 0.1, "HalfCheetah-v3-low": 0.1,
    "HalfCheetah-v3-medium": 0.3, "HalfCheetah-v3-high": 0.3,
}


def test_registry_has_every_env_id_of_the_issue_with_the_paper_tau():
    expected = set(PAPER_TABLE_10)
    expected |= {f"{robot}-expert" for robot in ("hopper", "walker2d", "halfcheetah")}
    expected |= {f"pointmaze-{maze}-{level}" for maze in ("umaze", "medium", "large", "ultra")
                 for level in ("diverse", "play")}
    assert set(cd.TASKS) == expected
    for env_id in expected:
        assert cd.get_task(env_id).tau == PAPER_TABLE_10.get(env_id, 0.1), env_id


@pytest.mark.parametrize("env_id, family, obs_dim, act_dim, steps", [
    ("antmaze-ultra-diverse", "antmaze", 29, 8, 2000), ("antmaze-umaze", "antmaze", 29, 8, 700),
    ("pointmaze-large-play", "pointmaze", 4, 2, 800), ("hopper-medium-replay", "locomotion", 11, 3, 1000),
    ("walker2d-expert", "locomotion", 17, 6, 1000), ("HalfCheetah-v3-low", "neorl", 18, 6, 1000),
    ("Hopper-v3-high", "neorl", 12, 3, 1000),
])
def test_task_fields(env_id, family, obs_dim, act_dim, steps):
    task = cd.get_task(env_id)
    assert (task.family, task.obs_dim, task.act_dim, task.max_episode_steps) == (family, obs_dim, act_dim, steps)


def test_unknown_env_id_lists_the_known_ones():
    with pytest.raises(SystemExit, match=r"unknown env id 'hopper-medium-v2'\. Did you mean: hopper-medium.*"
                                         r"Known env ids: antmaze-umaze, .*HalfCheetah-v3-high"):
        cd.get_task("hopper-medium-v2")


def test_reward_scale_matches_a_brute_force_trajectory_split():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=50).astype(np.float32)
    ends = np.zeros(50, np.float32)
    ends[[9, 20, 21, 49]] = 1
    returns = [rewards[0:10].sum(), rewards[10:21].sum(), rewards[21:22].sum(), rewards[22:50].sum()]
    scale, shift = cd.reward_scale_and_shift(cd.get_task("walker2d-medium"), rewards, ends)
    assert scale == pytest.approx(1000 / (max(returns) - min(returns)), rel=1e-5) and shift == 0.0
    assert cd.reward_scale_and_shift(cd.get_task("HalfCheetah-v3-low"), rewards, ends)[0] == pytest.approx(scale)
    assert cd.reward_scale_and_shift(cd.get_task("hopper-random"), rewards, ends) == (1.0, 0.0)
    assert cd.reward_scale_and_shift(cd.get_task("antmaze-large-play"), rewards, ends) == (1.0, -1.0)
    assert cd.reward_scale_and_shift(cd.get_task("pointmaze-umaze-play"), rewards, ends) == (1.0, -1.0)


def test_normalized_scores():
    assert leq_state.normalized_score(cd.get_task("hopper-medium"), 3234.3, False) == pytest.approx(100.0)
    assert leq_state.normalized_score(cd.get_task("hopper-medium"), -20.272305, False) == pytest.approx(0.0)
    assert leq_state.normalized_score(cd.get_task("HalfCheetah-v3-high"), (12284 - 298) / 2, False) == pytest.approx(50.0)
    assert leq_state.normalized_score(cd.get_task("Walker2d-v3-low"), 5143.0, False) == pytest.approx(100.0)
    assert leq_state.normalized_score(cd.get_task("antmaze-ultra-play"), 0.0, True) == 100.0


def data_for(task, maze_frame=None, source="generated", eval_gym_id=None, scale=1.0, shift=0.0):
    empty = np.zeros((1, 1), np.float32)
    return cd.OfflineData(empty, empty, empty[0], empty, empty[0], empty[0], scale, shift, "x", source, maze_frame,
                          eval_gym_id)


def planner_policy(task):
    """Deterministic PD control through the maze toward the eval goal: a policy that should always succeed."""
    planner = cd.MazePlanner(task)
    goal = cd.cell_centre(task, cd.MAZE_START_GOAL_CELLS[task.maze][1])

    def policy(obs):
        actions = [10 * (planner.waypoint(o[:2], goal) - o[:2]) - o[2:] for o in obs]
        return np.clip(actions, -1, 1)
    return policy


def test_evaluate_pointmaze_batched_with_success_scores_and_discounted_returns(tmp_path):
    task = cd.get_task("pointmaze-medium-diverse")
    data = data_for(task, "gymnasium_robotics", scale=1.0, shift=-1.0)
    gamma = 0.99
    result = leq_state.evaluate(task, data, planner_policy(task), num_episodes=4, seed=0, gamma=gamma)
    assert set(result) == {"mean", "std", "scores", "returns", "final_observations", "discounted_returns"}
    assert result["final_observations"].shape == (4, 4)  # (x, y, vx, vy) at each episode's last step
    np.testing.assert_array_equal(result["scores"], [100.0] * 4)
    np.testing.assert_array_equal(result["returns"], [1.0] * 4)  # sparse reward 1 at the success step, then the end
    assert result["mean"] == 100.0 and result["std"] == 0.0
    # training reward r - 1: -1 per step before the goal, 0 at it; so sum_t<T-1 -gamma^t for an episode of T steps
    lengths = np.log1p(result["discounted_returns"] * (1 - gamma)) / np.log(gamma) + 1
    np.testing.assert_allclose(lengths, np.round(lengths), atol=1e-6)
    assert (lengths > 10).all() and (lengths < task.max_episode_steps).all()
    failing = leq_state.evaluate(task, data, lambda obs: np.zeros((len(obs), 2)), num_episodes=2, seed=0)
    assert failing["mean"] == 0.0


def test_evaluate_locomotion_matches_a_plain_gymnasium_loop():
    task = cd.get_task("hopper-medium")
    data = data_for(task, eval_gym_id="Hopper-v4")
    calls = []

    def policy(obs):
        calls.append(obs.shape)
        return np.tile([0.3, -0.2, 0.1], (len(obs), 1))
    result = leq_state.evaluate(task, data, policy, num_episodes=3, seed=7)
    assert all(shape == (3, 11) for shape in calls)  # one batched call per step for all episodes
    for episode in range(3):
        env = gym.make("Hopper-v4")
        env.reset(seed=7 + episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(np.array([0.3, -0.2, 0.1], np.float32))
            total, done = total + reward, terminated or truncated
        assert result["returns"][episode] == pytest.approx(total)
        assert result["scores"][episode] == pytest.approx(100 * (total + 20.272305) / (3234.3 + 20.272305))


def test_evaluate_neorl_uses_observations_with_x():
    task = cd.get_task("Walker2d-v3-medium")
    shapes = []
    result = leq_state.evaluate(task, data_for(task, eval_gym_id=None), lambda obs: shapes.append(obs.shape) or
                         np.zeros((len(obs), 6)), num_episodes=2, seed=0)
    assert shapes[0] == (2, 18) and len(result["scores"]) == 2


def test_evaluate_antmaze_runs_the_full_episode_without_success():
    task = cd.get_task("antmaze-umaze-diverse")
    data = data_for(task, "gymnasium_robotics", source="minari:D4RL/antmaze/umaze-diverse-v1")
    steps = []
    result = leq_state.evaluate(task, data, lambda obs: steps.append(obs.shape) or np.zeros((len(obs), 8)), 1, seed=0)
    assert len(steps) == 700 and steps[0] == (1, 29) and result["mean"] == 0.0


def test_evaluate_writes_a_video(tmp_path):
    task = cd.get_task("pointmaze-umaze-play")
    path = tmp_path / "episode.gif"
    leq_state.evaluate(task, data_for(task, "gymnasium_robotics"), planner_policy(task), 2, seed=0, video_path=str(path))
    import imageio

    frames = imageio.mimread(path)
    assert len(frames) > 5 and frames[0].shape[:2] == (cd.VIDEO_SIZE, cd.VIDEO_SIZE)
