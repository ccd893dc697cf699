"""Every dataset loader on small fixtures written here in the exact file formats: D4RL-format hdf5 (with and
without timeouts / next_observations / infos/goal), NeoRL npz, Minari datasets made with minari's own API.
Episode splitting, reward processing (leq-spec §1) and the errors for bad or missing files."""

import h5py
import minari
import numpy as np
import pytest
from minari.data_collector import EpisodeBuffer

import collect_dataset as cd


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


def episodes_obs(lengths, obs_dim, start_xy=None):
    """Observations whose column 0 is the episode number and column 1 the step: a pair (obs, next_obs) from two
    episodes, or two steps apart, is then visible at once. Returns the stacked rows and each row's episode."""
    rows, episode_of = [], []
    for number, length in enumerate(lengths):
        obs = np.zeros((length, obs_dim), np.float32)
        obs[:, 0], obs[:, 1] = number, np.arange(length)
        if start_xy is not None:  # mazes: columns 0-1 are xy; episode number goes to column 2 instead
            obs[:, 0], obs[:, 1], obs[:, 2] = start_xy[0] + 0.01 * np.arange(length), start_xy[1], number
        rows.append(obs)
        episode_of += [number] * length
    return np.concatenate(rows), np.array(episode_of)


def write_hdf5(path, **arrays):
    with h5py.File(path, "w") as file:
        for key, value in arrays.items():
            file.create_dataset(key.replace("__", "/"), data=value)
    return path


def assert_pairs_within_episodes(data):
    """Locomotion fixtures: next_obs is the same episode's next step, for every kept row."""
    np.testing.assert_array_equal(data.next_observations[:, 0], data.observations[:, 0])
    np.testing.assert_array_equal(data.next_observations[:, 1], data.observations[:, 1] + 1)


def test_d4rl_hdf5_with_timeouts_splits_and_drops_cross_episode_rows(tmp_path):
    task = cd.get_task("hopper-medium")
    obs, episode = episodes_obs([5, 4, 6], task.obs_dim)
    n = len(obs)
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    timeouts[4] = True  # episode 0 times out
    terminals[8] = True  # episode 1 ends in a terminal (no next obs in the file: dropped)
    rewards = np.arange(n, dtype=np.float32)
    path = write_hdf5(tmp_path / "hopper_medium-v2.hdf5", observations=obs, actions=np.full((n, 3), 0.5, np.float32),
                      rewards=rewards, terminals=terminals, timeouts=timeouts)
    data = cd.load_d4rl_hdf5(task, path)
    assert_pairs_within_episodes(data)
    assert len(data) == n - 3  # the timeout row, the terminal row (no next obs) and the file's last row
    np.testing.assert_array_equal(data.rewards, np.delete(rewards, [4, 8, 14]))
    assert data.terminals.sum() == 0
    np.testing.assert_array_equal(np.nonzero(data.episode_ends)[0], [3, 6, 11])  # ends of the three episodes
    assert data.observations.dtype == np.float32 and data.source.endswith("hopper_medium-v2.hdf5")
    # IQL scaling over trajectories (leq-spec §1): returns 0+1+2+3, 5+6+7, 9+..+13 = 6, 18, 55
    assert data.reward_scale == pytest.approx(1000.0 / (55 - 6)) and data.reward_shift == 0.0


def test_d4rl_hdf5_with_next_observations_keeps_terminals(tmp_path):
    task = cd.get_task("walker2d-medium-replay")
    obs, _ = episodes_obs([5, 4], task.obs_dim)
    next_obs = obs.copy()
    next_obs[:, 1] += 1
    n = len(obs)
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    terminals[4], timeouts[8] = True, True
    path = write_hdf5(tmp_path / "walker.hdf5", observations=obs, next_observations=next_obs,
                      actions=np.zeros((n, 6), np.float32), rewards=np.ones(n, np.float32) * np.r_[[1] * 5, [2] * 4],
                      terminals=terminals, timeouts=timeouts)
    data = cd.load_d4rl_hdf5(task, path)
    assert len(data) == n
    assert_pairs_within_episodes(data)
    np.testing.assert_array_equal(data.terminals, terminals.astype(np.float32))
    np.testing.assert_array_equal(np.nonzero(data.episode_ends)[0], [4, 8])


def test_d4rl_hdf5_without_timeouts_ends_episodes_every_max_episode_steps(tmp_path):
    task = cd.get_task("halfcheetah-medium-expert")  # 1000-step episodes, no terminals
    obs, _ = episodes_obs([1000, 300], task.obs_dim)
    n = len(obs)
    path = write_hdf5(tmp_path / "old_v0.hdf5", observations=obs, actions=np.zeros((n, 6), np.float32),
                      rewards=np.r_[np.ones(1000), 2 * np.ones(300)].astype(np.float32), terminals=np.zeros(n, bool))
    data = cd.load_d4rl_hdf5(task, path)
    assert_pairs_within_episodes(data)
    assert len(data) == n - 2 and data.episode_ends.sum() == 2


def test_tap_style_antmaze_hdf5_splits_on_goal_changes(tmp_path):
    """TAP's antmaze-ultra files: no timeouts, a new infos/goal at each new episode, D4RL frame."""
    task = cd.get_task("antmaze-ultra-diverse")
    obs, episode = episodes_obs([6, 5, 7], task.obs_dim, start_xy=(0.0, 0.0))
    n = len(obs)
    goals = np.array([[52.0, 36.0], [10.0, 4.0], [30.0, 20.0]], np.float32)[episode]
    rewards = np.zeros(n, np.float32)
    rewards[3] = 1.0
    terminals = rewards.astype(bool)  # relabelled sparse data: a terminal does not end the (continuing) episode
    path = write_hdf5(tmp_path / "Ant_maze_ultra_noisy_multistart_True_multigoal_True_sparse.hdf5", observations=obs,
                      actions=np.zeros((n, 8), np.float32), rewards=rewards, terminals=terminals, infos__goal=goals)
    data = cd.load_d4rl_hdf5(task, path)
    np.testing.assert_array_equal(data.next_observations[:, 2], data.observations[:, 2])  # same episode
    assert len(data) == n - 3  # the last row of each episode
    assert data.terminals.sum() == 1 and data.rewards.sum() == 1
    assert (data.reward_scale, data.reward_shift) == (1.0, -1.0)  # antmaze: r - 1
    assert data.maze_frame == "d4rl"
    np.testing.assert_array_equal(np.nonzero(data.episode_ends)[0], [3, 4, 8, 14])  # terminal + three episode ends


def test_neorl_npz(tmp_path):
    task = cd.get_task("Hopper-v3-medium")
    obs, _ = episodes_obs([4, 6], task.obs_dim)
    next_obs = obs.copy()
    next_obs[:, 1] += 1
    n = len(obs)
    done = np.zeros((n, 1), np.float32)
    done[3] = 1.0
    reward = np.r_[np.ones(4), 3 * np.ones(6)].astype(np.float32)[:, None]
    path = tmp_path / "Hopper-v3-medium-1000-train-noise.npz"
    np.savez(path, obs=obs, next_obs=next_obs, action=np.zeros((n, 3), np.float32), reward=reward, done=done,
             index=np.array([0, 4]))
    data = cd.load_dataset(task, str(path))
    assert len(data) == n and data.terminals.sum() == 1
    np.testing.assert_array_equal(np.nonzero(data.episode_ends)[0], [3, 9])
    assert data.reward_scale == pytest.approx(1000.0 / (18 - 4))  # NeoRL: IQL scaling too (leq-spec §1)
    assert data.eval_gym_id == "Hopper-v4"


def ant_episode_buffer(index, xy_path):
    """A Minari AntMaze episode (dict observations, as D4RL/antmaze/*-v1) whose torso follows `xy_path`."""
    steps = len(xy_path) - 1
    observation = np.zeros((steps + 1, 27))
    observation[:, 0] = 0.55
    return EpisodeBuffer(id=index, observations={"achieved_goal": np.asarray(xy_path, float),
                                                 "desired_goal": np.zeros((steps + 1, 2)),
                                                 "observation": observation},
                         actions=np.zeros((steps, 8), np.float32), rewards=np.zeros(steps),
                         terminations=np.zeros(steps, bool), truncations=np.r_[np.zeros(steps - 1), 1].astype(bool))


def write_minari_antmaze_umaze(buffers):
    """The buffers as Minari's D4RL/antmaze/umaze-v1 (the default dataset of antmaze-umaze) in $MINARI_DATASETS_PATH."""
    minari.create_dataset_from_buffers("D4RL/antmaze/umaze-v1", buffers, env="AntMaze_UMaze-v4",
                                       eval_env="AntMaze_UMaze-v4", algorithm_name="fixture", author="test",
                                       author_email="n/a", code_permalink="tests", description="fixture")


def test_minari_antmaze_is_relabelled_against_the_eval_goal(minari_root):
    import gymnasium as gym
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    # Minari's umaze data map has its goal at cell (1,1) = (-4, 4) in gymnasium-robotics' frame (datasets §2.8).
    path_a = [(-4.0 + 2.0 - 0.25 * t, 4.0) for t in range(12)]  # walks into the goal region from the right
    path_b = [(4.0, -4.0 + 0.1 * t) for t in range(6)]
    write_minari_antmaze_umaze([ant_episode_buffer(0, path_a), ant_episode_buffer(1, path_b)])
    task = cd.get_task("antmaze-umaze")
    data = cd.load_dataset(task)  # the task's default: the Minari id above
    assert data.observations.shape == (16, 29) and data.maze_frame == "gymnasium_robotics"
    np.testing.assert_allclose(data.observations[:11, :2], np.asarray(path_a[:-1]))
    distance = np.linalg.norm(data.next_observations[:, :2] - [-4.0, 4.0], axis=-1)
    np.testing.assert_array_equal(data.rewards, (distance <= 0.5).astype(np.float32))  # radius 0.5 (leq-spec §1)
    assert data.rewards.sum() == 5 and np.array_equal(data.terminals, data.rewards)
    assert (data.reward_scale, data.reward_shift) == (1.0, -1.0)
    assert data.episode_ends[10] == 1 and data.episode_ends[-1] == 1


def test_relabel_radius_sets_the_rewards_and_the_termination_default(minari_root):
    import gymnasium as gym
    import gymnasium_robotics
    import torch

    import leq_state

    gym.register_envs(gymnasium_robotics)
    path = [(-4.0 + 2.0 - 0.25 * t, 4.0) for t in range(12)]  # into the goal region at (-4, 4) from the right
    write_minari_antmaze_umaze([ant_episode_buffer(0, path)])
    task_default = leq_state.task_of(leq_state.Args(env_id="antmaze-umaze"))
    task = leq_state.task_of(leq_state.Args(env_id="antmaze-umaze", relabel_radius=0.2))
    assert (task_default.goal_radius, task.goal_radius, task.tau) == (0.5, 0.2, task_default.tau)
    data, data_default = leq_state.load_dataset(task), leq_state.load_dataset(task_default)
    distance = np.linalg.norm(data.next_observations[:, :2] - [-4.0, 4.0], axis=-1)
    np.testing.assert_array_equal(data.rewards, (distance <= 0.2).astype(np.float32))
    assert data.rewards.sum() == 1 and data_default.rewards.sum() == 5  # distance 0 (and 0.25, 0.25, 0.5, 0.5)
    assert data.fingerprint != data_default.fingerprint  # so cached models of one radius never serve the other
    next_obs = torch.zeros(3, 29)
    next_obs[:, 0], next_obs[:, 1] = torch.tensor([-4.1, -3.6, -3.75]), 4.0
    done = leq_state.make_termination_fn(task, data)(None, None, next_obs)
    assert done.tolist() == [True, False, False]  # 0.25 from the goal: outside 0.2, inside the default 0.5


def test_maze_reward_flags_are_refused_off_the_mazes():
    import leq_state

    with pytest.raises(SystemExit, match="--relabel-radius relabels Minari or generated maze data; hopper-random"):
        leq_state.check_args(leq_state.Args(env_id="hopper-random", device="cpu", relabel_radius=0.25))
    with pytest.raises(SystemExit, match="--imagined-reward goal computes a maze's goal reward; hopper-random"):
        leq_state.check_args(leq_state.Args(env_id="hopper-random", device="cpu", imagined_reward="goal"))


def test_minari_mujoco_dataset_keeps_its_v5_eval_env(minari_root):
    import gymnasium as gym

    env = gym.make("Hopper-v5")
    env.action_space.seed(0)
    buffers = []
    for index in range(3):
        obs, _ = env.reset(seed=index)
        rows = {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}
        for step in range(30):
            action = env.action_space.sample()
            obs, reward, terminated, truncated, _ = env.step(action)
            for key, value in zip(rows, (obs, action, reward, terminated, truncated or step == 29)):
                rows[key].append(value)
            if terminated:
                break
        buffers.append(EpisodeBuffer(id=index, **{k: np.asarray(v) for k, v in rows.items()}))
    minari.create_dataset_from_buffers("mujoco/hopper/medium-v0", buffers, env=env, eval_env=env,
                                       algorithm_name="fixture",
                                       author="test", author_email="n/a", code_permalink="tests", description="fixture")
    data = cd.load_dataset(cd.get_task("hopper-medium"), "mujoco/hopper/medium-v0")
    assert data.eval_gym_id == "Hopper-v5" and data.observations.shape[1] == 11
    lengths = [len(b.actions) for b in buffers]
    np.testing.assert_array_equal(np.nonzero(data.episode_ends)[0], np.cumsum(lengths) - 1)
    returns = [b.rewards.sum() for b in buffers]
    assert data.reward_scale == pytest.approx(1000.0 / (max(returns) - min(returns)), rel=1e-5)


def test_missing_minari_dataset_says_how_to_get_it(minari_root):
    with pytest.raises(SystemExit, match=r"D4RL/antmaze/large-play-v1 is not in .*--download.*main_data.hdf5"):
        cd.load_dataset(cd.get_task("antmaze-large-play"))


@pytest.mark.parametrize("env_id, expected", [
    ("hopper-medium", r"--dataset-path /path/to/hopper_medium-v2.hdf5"),
    ("antmaze-ultra-play", r"multigoal_False_sparse.hdf5"),
    ("Walker2d-v3-low", r"Walker2d-v3-low-1000-train-noise.npz.*NOT the unrelated `neorl` package"),
])
def test_tasks_without_a_default_dataset_say_how_to_get_one(env_id, expected, tmp_path, monkeypatch):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    monkeypatch.setenv("NEORL_DATASET_DIR", str(tmp_path))
    with pytest.raises(SystemExit, match=expected):
        cd.load_dataset(cd.get_task(env_id))


def test_files_in_the_default_folders_are_read_without_a_path(tmp_path, monkeypatch):
    """D4RL's own download folder ($D4RL_DATASET_DIR) and $NEORL_DATASET_DIR: a sweep needs no per-task path."""
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "d4rl"))
    monkeypatch.setenv("NEORL_DATASET_DIR", str(tmp_path / "neorl"))
    (tmp_path / "d4rl").mkdir()
    write_hdf5(tmp_path / "d4rl" / "hopper_medium_replay-v2.hdf5", **good_hopper_arrays())
    assert cd.load_dataset(cd.get_task("hopper-medium-replay")).source.endswith("d4rl/hopper_medium_replay-v2.hdf5")
    write_hdf5(tmp_path / "d4rl" / "hopper_random-v2.hdf5", **good_hopper_arrays())  # the paper's, not generated
    assert cd.load_dataset(cd.get_task("hopper-random")).source.endswith("d4rl/hopper_random-v2.hdf5")
    expected = {"antmaze-ultra-diverse": "d4rl/Ant_maze_ultra_noisy_multistart_True_multigoal_True_sparse.hdf5",
                "antmaze-umaze": "d4rl/Ant_maze_u-maze_noisy_multistart_False_multigoal_False_sparse_fixed.hdf5",
                "antmaze-umaze-diverse": "d4rl/Ant_maze_u-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5",
                "antmaze-medium-play": "d4rl/Ant_maze_big-maze_noisy_multistart_True_multigoal_False_sparse_fixed.hdf5",
                "antmaze-large-diverse": "d4rl/Ant_maze_hardest-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5",
                "HalfCheetah-v3-high": "neorl/HalfCheetah-v3-high-1000-train-noise.npz"}
    for env_id, path in expected.items():
        assert cd.default_data_file(cd.get_task(env_id)) == tmp_path / path


def test_d4rl_antmaze_file_in_the_default_folder_is_read_before_minari(tmp_path, monkeypatch, minari_root):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    task = cd.get_task("antmaze-umaze")
    assert not cd.paper_data_present(task)
    obs, _ = episodes_obs([6, 5], task.obs_dim, start_xy=(0.0, 0.0))
    n = len(obs)
    write_hdf5(cd.default_data_file(task), observations=obs, actions=np.zeros((n, 8), np.float32),
               rewards=np.zeros(n, np.float32), terminals=np.zeros(n, bool), timeouts=np.arange(n) == 5)
    assert cd.paper_data_present(task)
    assert cd.load_dataset(task).source.endswith("Ant_maze_u-maze_noisy_multistart_False_multigoal_False_sparse_fixed.hdf5")


def good_hopper_arrays(n=20):
    return {"observations": np.zeros((n, 11), np.float32), "actions": np.zeros((n, 3), np.float32),
            "rewards": np.arange(n, dtype=np.float32), "terminals": np.zeros(n, bool),
            "timeouts": np.arange(n) % 10 == 9}  # two 10-step episodes


@pytest.mark.parametrize("change, problem", [
    (lambda a: a.pop("rewards"), r"missing the key\(s\) \['rewards'\]"),
    (lambda a: a.update(actions=a["actions"][:-2]), r"'actions' has 18 rows but 'observations' has 20"),
    (lambda a: a["observations"].__setitem__((3, 2), np.nan), r"'observations' has 1 rows with NaN or inf"),
    (lambda a: a.update(observations=np.zeros((20, 17), np.float32)), r"shape \(18, 17\).*needs \[N, 11\]"),
    (lambda a: a.update(rewards=np.zeros((20, 2), np.float32)), r"'rewards' has shape \(20, 2\); expected one value"),
])
def test_bad_hdf5_files_get_errors_naming_file_and_problem(tmp_path, change, problem):
    arrays = good_hopper_arrays()
    change(arrays)
    path = write_hdf5(tmp_path / "broken.hdf5", **arrays)
    with pytest.raises(SystemExit, match=f"broken.hdf5.*{problem}"):
        cd.load_dataset(cd.get_task("hopper-medium"), str(path))


def test_bad_npz_and_unreadable_files(tmp_path):
    np.savez(tmp_path / "neorl.npz", obs=np.zeros((5, 12)), action=np.zeros((5, 3)))
    with pytest.raises(SystemExit, match=r"neorl.npz is missing the key\(s\) \['next_obs', 'reward', 'done'\]"):
        cd.load_dataset(cd.get_task("Hopper-v3-low"), str(tmp_path / "neorl.npz"))
    (tmp_path / "fake.hdf5").write_text("not hdf5")
    with pytest.raises(SystemExit, match="fake.hdf5 is not a readable hdf5 file"):
        cd.load_dataset(cd.get_task("hopper-medium"), str(tmp_path / "fake.hdf5"))
    with pytest.raises(SystemExit, match="nowhere.hdf5 does not exist"):
        cd.load_dataset(cd.get_task("hopper-medium"), str(tmp_path / "nowhere.hdf5"))


def test_fingerprint_is_stable_and_data_sensitive(tmp_path):
    arrays = good_hopper_arrays()
    first = cd.load_d4rl_hdf5(cd.get_task("hopper-medium"), write_hdf5(tmp_path / "a.hdf5", **arrays))
    again = cd.load_d4rl_hdf5(cd.get_task("hopper-medium"), write_hdf5(tmp_path / "b.hdf5", **arrays))
    arrays["rewards"][0] = 2.0
    other = cd.load_d4rl_hdf5(cd.get_task("hopper-medium"), write_hdf5(tmp_path / "c.hdf5", **arrays))
    assert first.fingerprint == again.fingerprint != other.fingerprint


def test_download_is_only_tried_when_asked_and_fails_clearly(minari_root):
    pytest.importorskip("minari")
    try:
        import huggingface_hub  # noqa: F401
        pytest.skip("huggingface_hub is installed: a download would go to the network")
    except ImportError:
        pass
    with pytest.raises(SystemExit, match=r"downloading D4RL/antmaze/umaze-v1 failed: .*minari\[hf\]"):
        cd.load_dataset(cd.get_task("antmaze-umaze"), download=True)


def test_a_dropped_timeout_row_leaves_its_predecessor_as_the_episode_end(tmp_path):
    data = cd.load_d4rl_hdf5(cd.get_task("hopper-medium"), write_hdf5(tmp_path / "flat.hdf5", **good_hopper_arrays()))
    assert len(data) == 18  # constant observations: no discontinuity betrays the boundary, the timeouts must
    np.testing.assert_array_equal(np.nonzero(data.episode_ends)[0], [8, 17])
    assert data.reward_scale == pytest.approx(1000.0 / ((10 + 11 + 12 + 13 + 14 + 15 + 16 + 17 + 18) - 36))
