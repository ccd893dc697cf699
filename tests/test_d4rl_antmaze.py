"""D4RL AntMaze on current MuJoCo (d4rl_antmaze.py): every documented parameter, the maze geometry, the
observation, episode lengths, the success rule, and a step-by-step comparison with gymnasium-robotics."""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import gymnasium
import mujoco
import numpy as np
import pytest

import d4rl_antmaze as am

ROOT = Path(__file__).resolve().parent.parent
MAZES = ["umaze", "medium", "large", "ultra"]
# (rows, columns) and the goal cell of each evaluation layout (D4RL maze_env.py *_TEST maps; LEQ ultra).
SHAPES = {"umaze": (5, 5), "medium": (8, 8), "large": (9, 12), "ultra": (12, 16)}
GOAL_CELLS = {"umaze": (3, 1), "medium": (6, 6), "large": (7, 9), "ultra": (10, 14)}
# The layouts as published: D4RL d4rl/locomotion/maze_env.py U_MAZE_TEST, BIG_MAZE_TEST, HARDEST_MAZE_TEST,
# and kwanyoungpark/LEQ d4rl_ext/locomotion/maze_env.py ULTRA_MAZE_TEST (datasets-and-envs.md section 2.7).
LAYOUTS = {
    "umaze": ["11111", "1r001", "11101", "1g001", "11111"],
    "medium": ["11111111", "1r011001", "10010001", "11000111", "10010001", "10100101", "100010g1", "11111111"],
    "large": [
        "111111111111", "1r0001000001", "101101010101", "100000010001", "101111011101", "100101000001",
        "110101010111", "100100010g01", "111111111111",
    ],
    "ultra": [
        "1111111111111111", "1r00000010000001", "1011101010110101", "1011101000010101", "1000101101110101",
        "1010001000000001", "1000100010111011", "1010111010001011", "1000000010100001", "1101101000111101",
        "11010010100000g1", "1111111111111111",
    ],
}


def make(maze="umaze", seed=0, **kwargs):
    return am.make_d4rl_antmaze_env(maze, seed=seed, **kwargs)


# ---------------------------------------------------------------- documented parameters


def test_documented_constants():
    assert am.D4RL_ANTMAZE_SCALING == 4.0 and am.D4RL_ANTMAZE_WALL_HEIGHT == 0.5
    assert am.D4RL_ANTMAZE_SUCCESS_RADIUS == 0.5
    assert am.D4RL_ANT_FRAME_SKIP == 5 and am.D4RL_ANT_RESET_QPOS_NOISE == 0.1 and am.D4RL_ANT_RESET_QVEL_NOISE == 0.1
    assert am.D4RL_ANTMAZE_MAX_EPISODE_STEPS == {"umaze": 700, "medium": 1000, "large": 1000, "ultra": 2000}
    assert am.D4RL_ANTMAZE_GOAL_CENTRES == {
        "umaze": (0.75, 8.75), "medium": (20.75, 20.75), "large": (32.75, 24.75), "ultra": (52.75, 36.75)
    }  # fmt: skip
    assert am.D4RL_ANTMAZE_GOAL_OFFSETS == {"d4rl": 0.0, "leq": -1.0}
    assert am.D4RL_ANTMAZE_DEFAULT_GOAL_VARIANT == {"umaze": "d4rl", "medium": "d4rl", "large": "d4rl", "ultra": "leq"}


def test_ant_model_parameters_are_d4rls():
    env = make("umaze").unwrapped
    model = env.model
    assert model.opt.timestep == 0.02 and model.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4
    assert env.frame_skip == 5 and env.dt == pytest.approx(0.1)  # 10 Hz
    assert env.metadata["render_fps"] == 10
    np.testing.assert_array_equal(model.actuator_gear, np.tile([1.0, 0, 0, 0, 0, 0], (8, 1)))
    np.testing.assert_array_equal(model.actuator_ctrlrange, np.tile([-30.0, 30.0], (8, 1)))
    motor_joints = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j) for j in model.actuator_trnid[:, 0]]
    assert motor_joints == ["hip_4", "ankle_4", "hip_1", "ankle_1", "hip_2", "ankle_2", "hip_3", "ankle_3"]
    # Every geom (ant, floor, walls) takes D4RL's default contact parameters.
    np.testing.assert_allclose(model.geom_solimp[:, :3], np.tile([0.8, 0.8, 0.01], (model.ngeom, 1)))
    np.testing.assert_allclose(model.geom_solref, np.tile([0.02, 1.0], (model.ngeom, 1)))
    np.testing.assert_allclose(model.geom_friction, np.tile([1.0, 0.5, 0.5], (model.ngeom, 1)))
    np.testing.assert_allclose(model.geom_margin, 0.01)
    hinges = model.jnt_type == mujoco.mjtJoint.mjJNT_HINGE
    np.testing.assert_allclose(model.dof_armature[6:], 1.0)
    np.testing.assert_allclose(model.dof_damping[6:], 1.0)
    np.testing.assert_allclose(model.dof_armature[:6], 0.0)
    ranges = np.degrees(model.jnt_range[hinges])
    hip, ankle_up, ankle_down = [-30, 30], [30, 70], [-70, -30]  # joints 1..4 as in D4RL's ant.xml
    np.testing.assert_allclose(ranges, [hip, ankle_up, hip, ankle_down, hip, ankle_down, hip, ankle_up], atol=1e-9)
    np.testing.assert_allclose(env.init_qpos, [0, 0, 0.75, 1, 0, 0, 0] + [0] * 8)
    assert model.nq == 15 and model.nv == 14 and model.nu == 8


def test_xml_changes_table_is_applied_and_nothing_else_differs():
    with open(am._gymnasium_ant_xml_path()) as file:
        gymnasium_root = ET.fromstring(file.read())
    root = ET.fromstring(am.d4rl_antmaze_xml("umaze"))
    changed = {}  # id of a gymnasium element -> the attributes the table (or the floor size) changes
    for path, attribute, gymnasium_value, d4rl_value, _ in am.D4RL_ANT_XML_CHANGES:
        assert {e.get(attribute) for e in gymnasium_root.findall(path)} == {gymnasium_value}, path
        assert {e.get(attribute) for e in root.findall(path)} == {d4rl_value}, path
        for element in gymnasium_root.findall(path):
            changed.setdefault(id(element), set()).add(attribute)
    changed.setdefault(id(gymnasium_root.find("worldbody/geom[@name='floor']")), set()).add("size")
    # Apart from those, our file is gymnasium's plus the walls and the goal marker.
    worldbody = root.find("worldbody")
    for added in [e for e in worldbody if e.get("name", "").startswith("block_") or e.get("name") == "goal"]:
        worldbody.remove(added)
    for theirs, mine in zip(gymnasium_root.iter(), root.iter(), strict=True):
        skip = changed.get(id(theirs), set())
        assert mine.tag == theirs.tag
        assert {k: v for k, v in mine.attrib.items() if k not in skip} == {
            k: v for k, v in theirs.attrib.items() if k not in skip
        }, theirs.tag


def test_floor_size_and_visuals():
    umaze, ultra = make("umaze").unwrapped.model, make("ultra").unwrapped.model
    np.testing.assert_allclose(umaze.geom_size[0], [40, 40, 40])  # D4RL ant.xml
    np.testing.assert_allclose(ultra.geom_size[0], [200, 200, 200])  # LEQ d4rl_ext ant.xml
    np.testing.assert_allclose(umaze.mat_reflectance, 0.0)


def test_builder_refuses_an_unexpected_gymnasium_ant_xml(tmp_path, monkeypatch):
    with open(am._gymnasium_ant_xml_path()) as file:
        text = file.read()
    changed = tmp_path / "ant.xml"
    changed.write_text(text.replace('timestep="0.01"', 'timestep="0.005"'))
    monkeypatch.setattr(am, "_gymnasium_ant_xml_path", lambda: str(changed))
    with pytest.raises(RuntimeError, match="timestep"):
        am.d4rl_antmaze_xml("umaze")


def test_actions_map_to_thirty_times_the_action():
    env = make("umaze")
    env.reset()
    model, data = env.unwrapped.model, env.unwrapped.data
    action = np.array([-1.0, -0.5, -0.1, 0.0, 0.1, 0.5, 0.9, 1.0], np.float32)
    env.step(action)
    np.testing.assert_allclose(data.ctrl, 30.0 * action, rtol=1e-6)
    np.testing.assert_allclose(data.actuator_force, data.ctrl)  # gear 1: torque = control
    env.step(np.array([2.0, -3.0, 0, 0, 0, 0, 0, 0]))  # out of range: clipped like NormalizedBoxEnv
    assert data.ctrl[0] == 30.0 and data.ctrl[1] == -30.0
    assert env.action_space == gymnasium.spaces.Box(-1.0, 1.0, (8,), np.float32)
    assert model.nu == 8


# ---------------------------------------------------------------- maze geometry


@pytest.mark.parametrize("maze", MAZES)
def test_walls_exactly_where_the_layout_has_ones(maze):
    layout = am.D4RL_ANTMAZE_MAPS[maze]
    assert (len(layout), len(layout[0])) == SHAPES[maze]
    model = make(maze).unwrapped.model
    blocks = {}
    for g in range(model.ngeom):
        name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_GEOM, g) or ""
        if name.startswith("block_"):
            blocks[tuple(int(k) for k in name.split("_")[1:])] = g
    ones = {(i, j) for i, row in enumerate(layout) for j, cell in enumerate(row) if cell == 1}
    assert set(blocks) == ones
    (start_row, start_col) = next((i, j) for i, row in enumerate(layout) for j, c in enumerate(row) if c == "r")
    assert (start_row, start_col) == (1, 1)
    for (i, j), g in blocks.items():  # D4RL frame: (0, 0) at the start cell, y grows with the row
        np.testing.assert_allclose(model.geom_pos[g], [(j - start_col) * 4.0, (i - start_row) * 4.0, 1.0])
        np.testing.assert_allclose(model.geom_size[g], [2.0, 2.0, 1.0])
        assert model.geom_type[g] == mujoco.mjtGeom.mjGEOM_BOX
        assert model.geom_contype[g] == 1 and model.geom_conaffinity[g] == 1 and model.geom_bodyid[g] == 0


@pytest.mark.parametrize("maze", MAZES)
def test_layouts_are_the_published_ones(maze):
    assert ["".join(str(c) for c in row) for row in am.D4RL_ANTMAZE_MAPS[maze]] == LAYOUTS[maze]


@pytest.mark.parametrize("maze", MAZES)
def test_start_and_goal_cells(maze):
    env = make(maze)
    observation, _ = env.reset()
    assert np.all(np.abs(observation[:2]) <= 0.1)  # the ant starts at the start cell, (0, 0) +- reset noise
    np.testing.assert_array_equal(am.d4rl_antmaze_cell_xy(maze, 1, 1), [0.0, 0.0])
    row, col = GOAL_CELLS[maze]
    assert am.D4RL_ANTMAZE_MAPS[maze][row][col] == "g"
    goal_xy = am.d4rl_antmaze_cell_xy(maze, row, col)
    np.testing.assert_array_equal(goal_xy, [(col - 1) * 4.0, (row - 1) * 4.0])
    # leq-spec section 6: the termination centres are the goal cell + 0.75, the mean D4RL eval goal.
    np.testing.assert_allclose(am.D4RL_ANTMAZE_GOAL_CENTRES[maze], goal_xy + 0.75)
    low, high = am.d4rl_antmaze_goal_box(maze, "d4rl")
    np.testing.assert_allclose((low + high) / 2, am.D4RL_ANTMAZE_GOAL_CENTRES[maze])


def test_walls_stop_the_ant():
    env = make("umaze")
    env.reset()
    base = env.unwrapped
    qvel = base.data.qvel.copy()
    qvel[1] = -8.0  # throw the ant at the wall row 0 (y in [-6, -2])
    base.set_state(base.data.qpos.copy(), qvel)
    lowest_y = min(env.step(np.zeros(8))[0][1] for _ in range(20))
    assert lowest_y > -2.0, lowest_y  # the torso (radius 0.25) never enters the wall
    assert lowest_y < -1.0  # ... but it did get there


@pytest.mark.parametrize("maze", MAZES)
@pytest.mark.parametrize("variant", ["d4rl", "leq"])
def test_eval_goal_sampling(maze, variant):
    rng = np.random.default_rng(0)
    goals = np.stack([am.sample_d4rl_antmaze_goal(maze, variant, rng) for _ in range(4000)])
    cell = am.d4rl_antmaze_cell_xy(maze, *GOAL_CELLS[maze])
    offset = {"d4rl": 0.0, "leq": -1.0}[variant]  # D4RL: cell + [0, 1.5]; LEQ d4rl_ext: cell + [-1, 0.5]
    low, high = np.maximum(cell + offset, 0.0), np.maximum(cell + offset + 1.5, 0.0)
    np.testing.assert_allclose(am.d4rl_antmaze_goal_box(maze, variant), (low, high))
    assert np.all(goals >= low) and np.all(goals <= high)
    # noise = U(0, 1) + U(0, 0.5) per axis: a trapezoid density on [0, 1.5], mean 0.75
    for axis in range(2):
        noise = goals[:, axis] - (cell[axis] + offset)
        if cell[axis] + offset >= 0:
            assert noise.mean() == pytest.approx(0.75, abs=0.03)
            assert np.mean(noise < 0.5) == pytest.approx(1 / 4, abs=0.03)
            assert np.mean((noise > 0.5) & (noise < 1.0)) == pytest.approx(1 / 2, abs=0.03)
        else:  # umaze's goal column sits at x = 0; the LEQ offset pushes it below, and max(., 0) clips
            assert np.mean(goals[:, axis] == 0.0) == pytest.approx(3 / 4, abs=0.03)


def test_eval_goal_is_resampled_each_episode_with_the_papers_variant():
    for maze in MAZES:
        env = make(maze, seed=3)
        low, high = am.d4rl_antmaze_goal_box(maze, am.D4RL_ANTMAZE_DEFAULT_GOAL_VARIANT[maze])
        goals = []
        for _ in range(5):
            _, info = env.reset()
            np.testing.assert_array_equal(info["goal"], env.unwrapped.goal)
            goals.append(info["goal"])
        assert all(np.all(g >= low) and np.all(g <= high) for g in goals)
        assert len({tuple(g) for g in goals}) == 5
    assert make("ultra").unwrapped.eval_goal_variant == "leq"
    assert make("ultra", eval_goal_variant="d4rl").unwrapped.eval_goal_variant == "d4rl"


# ---------------------------------------------------------------- observation, reset, episodes, success


def test_observation_layout():
    env = make("medium")
    observation, _ = env.reset()
    assert env.observation_space.shape == (29,) and observation.shape == (29,) and observation.dtype == np.float64
    for _ in range(3):
        observation, *_ = env.step(env.action_space.sample())
        model, data = env.unwrapped.model, env.unwrapped.data
        mujoco.mj_kinematics(model, data)  # body poses of the current qpos (mj_step leaves them one step behind)
        np.testing.assert_array_equal(observation, np.concatenate([data.qpos[:15], data.qvel[:14]]))
        np.testing.assert_allclose(observation[:3], data.body("torso").xpos)  # x, y, z of the torso
        np.testing.assert_allclose(observation[3:7], data.body("torso").xquat, atol=1e-9)  # w, x, y, z
        joints = ["hip_1", "ankle_1", "hip_2", "ankle_2", "hip_3", "ankle_3", "hip_4", "ankle_4"]
        np.testing.assert_array_equal(observation[7:15], [data.joint(j).qpos[0] for j in joints])
        np.testing.assert_array_equal(observation[21:29], [data.joint(j).qvel[0] for j in joints])


def test_reset_noise_is_d4rls():
    env = make("umaze", seed=0)
    init_qpos, init_qvel = env.unwrapped.init_qpos.copy(), env.unwrapped.init_qvel.copy()
    qpos_noise, qvel_noise = [], []
    for _ in range(300):
        observation, _ = env.reset()
        qpos_noise.append(observation[:15] - init_qpos)
        qvel_noise.append(observation[15:] - init_qvel)
    qpos_noise, qvel_noise = np.array(qpos_noise), np.array(qvel_noise)
    assert np.all(np.abs(qpos_noise) <= 0.1)  # U(-0.1, 0.1) on all 15 qpos, quaternion included
    assert np.all(qpos_noise.max(0) > 0.09) and np.all(qpos_noise.min(0) < -0.09)
    np.testing.assert_allclose(qpos_noise.std(0), 0.2 / np.sqrt(12), rtol=0.2)
    np.testing.assert_allclose(qvel_noise.std(0), 0.1, rtol=0.25)  # 0.1 * N(0, 1)
    np.testing.assert_allclose(qvel_noise.mean(0), 0.0, atol=0.03)


def test_seeding_is_deterministic():
    def trajectory(seed):
        env = make("large", seed=seed)
        first, _ = env.reset()
        steps = [env.step(np.full(8, 0.3))[0] for _ in range(5)]
        return np.stack([first, *steps]), env.unwrapped.goal.copy()

    (a, goal_a), (b, goal_b), (c, goal_c) = trajectory(1), trajectory(1), trajectory(2)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(goal_a, goal_b)
    assert not np.array_equal(a, c) and not np.array_equal(goal_a, goal_c)
    env = make("large", seed=None)
    first = env.reset(seed=1)[0]
    np.testing.assert_array_equal(first, a[0])  # reset(seed=...) and make(seed=...) agree


@pytest.mark.parametrize("maze", MAZES)
def test_episode_lengths(maze):
    env = make(maze)
    env.reset()
    length, terminated, truncated = 0, False, False
    while not (terminated or truncated):
        _, reward, terminated, truncated, _ = env.step(np.zeros(8))  # standing still never reaches the goal
        length += 1
    assert (length, terminated, truncated) == (am.D4RL_ANTMAZE_MAX_EPISODE_STEPS[maze], False, True)


def test_success_rule():
    def first_step(goal):
        env = make("umaze", seed=5)
        env.reset(options={"goal": goal})
        return env.step(np.zeros(8))

    observation, reward, terminated, _, info = first_step((100.0, 100.0))
    assert (reward, terminated, info["success"]) == (0.0, False, False)
    xy = observation[:2]
    # the same step, with the goal just inside and just outside 0.5 of where the ant arrives
    for distance, expected in [(0.5 - 1e-9, True), (0.5 + 1e-9, False), (0.3, True), (0.7, False)]:
        observation, reward, terminated, truncated, info = first_step(xy + np.array([0.0, distance]))
        np.testing.assert_array_equal(observation[:2], xy)
        assert (reward, terminated, info["success"], truncated) == (float(expected), expected, expected, False)
        np.testing.assert_allclose(info["goal"], xy + np.array([0.0, distance]))


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="umaze"):
        make("hugemaze")
    with pytest.raises(ValueError, match="d4rl"):
        make("umaze", eval_goal_variant="minari")
    with pytest.raises(ValueError, match="max_episode_steps"):
        make("umaze", max_episode_steps=0)
    env = make("umaze")
    env.reset()
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(7))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.full(8, np.nan))
    assert [am.d4rl_antmaze_name(i) for i in ["antmaze-umaze-v2", "antmaze-medium-play-v2", "antmaze-large-diverse-v2",
            "antmaze-ultra-diverse-v0", "antmaze-umaze-diverse", "ultra"]] == [
        "umaze", "medium", "large", "ultra", "umaze", "ultra"]  # fmt: skip


def test_cli_rolls_out_episodes(capsys):
    episodes = am.main(am.Args(maze="medium", num_episodes=2, policy="random", max_episode_steps=15))
    assert [e["length"] for e in episodes] == [15, 15]
    printed = capsys.readouterr().out
    assert "goal cell (6, 6)" in printed and "start cell (1, 1) at (0, 0)" in printed and "38 wall blocks" in printed
    with pytest.raises(SystemExit, match="unknown D4RL antmaze"):
        am.main(am.Args(maze="nomaze"))


def test_cli_writes_a_video(tmp_path):
    pytest.importorskip("imageio")
    path = tmp_path / "umaze.gif"
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    result = subprocess.run(
        [sys.executable, "d4rl_antmaze.py", "--num-episodes", "1", "--max-episode-steps", "3", "--video-size", "48",
         "--video-path", str(path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if result.returncode != 0 and "gl" in result.stderr.lower() and not path.exists():
        pytest.skip(f"no OpenGL rendering here: {result.stderr[-300:]}")
    assert result.returncode == 0, result.stderr[-2000:]
    import imageio.v2 as imageio

    frames = imageio.mimread(path)
    assert len(frames) == 3 and frames[0].shape[:2] == (48, 48)


# ---------------------------------------------------------------- against gymnasium-robotics AntMaze
# The documented differences between D4RL's AntMaze (this env) and gymnasium-robotics' AntMaze-v5:
#   timestep:   0.02 s here, 0.01 s there (both frame skip 5): control at 10 Hz against 20 Hz.
#   actuators:  gear 1 and ctrlrange +-30 with torque = 30 a here; gear 150 and ctrlrange +-1 there:
#               torque = 150 a, so our action a is their action a / 5.
#   contacts:   solimp .8 .8 .01 on every geom here, MuJoCo's default 0.9 0.95 0.001 there.
#   frame:      here (0, 0) is the start cell and y grows with the row; there the maze is centred and y
#               falls with the row. With the layout's rows reversed their maze is ours shifted by
#               (s (1.5 - W/2), s (1.5 - L/2)).
#   reset:      here U(+-0.1) on all qpos and 0.1 N(0, 1) on qvel at (0, 0); there no joint noise and
#               U(+-1) on the cell centre's xy.
#   success:    ||xy - goal|| <= 0.5 here, <= 0.45 there.
# Everything else (body tree, masses, joints, friction, RK4, walls) is the same, so once each physical
# difference is compensated the same actions from the same state give the same trajectory.
PHYSICAL_DIFFERENCES = ("timestep", "actuators", "contacts", "frame")


def gymnasium_robotics_twin(maze):
    import gymnasium_robotics

    gymnasium.register_envs(gymnasium_robotics)
    reversed_layout = [list(row) for row in reversed(am.D4RL_ANTMAZE_MAPS[maze])]
    env = gymnasium.make(
        "AntMaze_UMaze-v5", maze_map=reversed_layout, continuing_task=True, include_cfrc_ext_in_observation=False
    )
    return env.unwrapped


def frame_shift(maze):
    rows, cols = SHAPES[maze]
    return np.array([4.0 * (1.5 - cols / 2), 4.0 * (1.5 - rows / 2)])


def paired_rollout(maze, compensate, steps=40, seed=0):
    """Max |difference| per step between our observation and gymnasium-robotics' (mapped to our frame)."""
    ours = make(maze, seed=seed).unwrapped
    ours.reset()
    theirs = gymnasium_robotics_twin(maze)
    theirs.reset(seed=seed)
    shift = frame_shift(maze) if "frame" in compensate else np.zeros(2)
    if "timestep" in compensate:
        theirs.model.opt.timestep = ours.model.opt.timestep
    if "contacts" in compensate:
        theirs.model.geom_solimp[:] = ours.model.geom_solimp[0]
    qpos = ours.data.qpos.copy()
    qpos[:2] += shift
    theirs.ant_env.set_state(qpos, ours.data.qvel.copy())
    rng = np.random.default_rng(seed)
    errors = []
    for _ in range(steps):
        action = rng.uniform(-1, 1, 8).astype(np.float32)
        our_observation, *_ = ours.step(action)
        their_action = action.astype(np.float64) / (5.0 if "actuators" in compensate else 1.0)
        their, *_ = theirs.step(their_action)
        their_observation = np.concatenate([their["achieved_goal"] - shift, their["observation"]])
        errors.append(np.abs(their_observation - our_observation).max())
    return np.array(errors)


def test_frame_shift_matches_the_documented_formula():
    for maze in MAZES:
        theirs = gymnasium_robotics_twin(maze)
        rows, cols = SHAPES[maze]
        start_their_rowcol = np.array([rows - 1 - 1, 1])  # the start cell after reversing the rows
        np.testing.assert_allclose(theirs.maze.cell_rowcol_to_xy(start_their_rowcol), frame_shift(maze))
        row, col = GOAL_CELLS[maze]  # and every other cell moves by the same shift
        np.testing.assert_allclose(
            theirs.maze.cell_rowcol_to_xy(np.array([rows - 1 - row, col])),
            am.d4rl_antmaze_cell_xy(maze, row, col) + frame_shift(maze),
        )


@pytest.mark.parametrize("maze", ["umaze", "ultra"])
def test_same_trajectory_once_every_documented_difference_is_compensated(maze):
    errors = paired_rollout(maze, set(PHYSICAL_DIFFERENCES), steps=60)
    assert errors.max() < 1e-9, errors  # floating-point agreement over 6 s of random actions


@pytest.mark.parametrize("left_out", PHYSICAL_DIFFERENCES)
def test_each_documented_difference_matters(left_out):
    # (Without the frame shift the ant even starts inside their maze's central wall block.)
    errors = paired_rollout("umaze", set(PHYSICAL_DIFFERENCES) - {left_out})
    assert errors.max() > 0.05, (left_out, errors.max())


def test_reset_and_success_rule_differ_as_documented():
    theirs = gymnasium_robotics_twin("umaze")
    their_starts = []
    for seed in range(100):
        their, _ = theirs.reset(seed=seed)
        np.testing.assert_array_equal(theirs.data.qpos[2:], theirs.ant_env.init_qpos[2:])  # no joint noise
        np.testing.assert_array_equal(theirs.data.qvel, 0.0)
        their_starts.append(their["achieved_goal"] - frame_shift("umaze"))
    their_starts = np.array(their_starts)
    assert np.all(np.abs(their_starts) <= 1.0) and np.abs(their_starts).max() > 0.5  # U(+-1) around the cell
    ours = make("umaze", seed=0)
    our_starts = np.array([ours.reset()[0][:2] for _ in range(100)])
    assert np.all(np.abs(our_starts) <= 0.1)  # U(+-0.1) around (0, 0)
    at_047 = np.array([0.47, 0.0])
    assert theirs.compute_reward(at_047, np.zeros(2), {}) == 0.0  # 0.45 radius there
    env = make("umaze", seed=0)
    env.reset(options={"goal": (100.0, 100.0)})
    observation, *_ = env.step(np.zeros(8))
    env.reset(seed=0, options={"goal": observation[:2] + at_047})
    _, env_reward, *_ = env.step(np.zeros(8))  # make(seed=0)'s first reset and reset(seed=0) are the same
    assert env_reward == 1.0  # 0.5 radius here
    assert theirs.ant_env.dt == pytest.approx(0.05) and make("umaze").unwrapped.dt == pytest.approx(0.1)
