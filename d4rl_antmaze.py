"""d4rl_antmaze: D4RL's AntMaze (umaze, medium, large, and the LEQ/TAP ultra maze) on current MuJoCo.

The original D4RL antmaze data (and the TAP antmaze-ultra data) was recorded in D4RL's own ant maze,
which needs mujoco-py and no longer installs. gymnasium-robotics' AntMaze is a different task for such
data: 20 Hz instead of 10 Hz, motor gear 150 instead of a +-30 control range, softer-or-harder contacts,
a maze centred at the origin with y running against the row index, and another reset noise. This
script rebuilds D4RL's environment on gymnasium's MujocoEnv, starting from the ant model gymnasium
installs and changing only what differs (the table D4RL_ANT_XML_CHANGES says what and why).

Run it to see the geometry and roll out a few episodes with random or zero actions:
    python d4rl_antmaze.py --maze ultra --num-episodes 2 --policy random
    python d4rl_antmaze.py --maze umaze --num-episodes 1 --video-path umaze.gif
"""

import time
from dataclasses import dataclass

import numpy as np
import tyro


@dataclass
class Args:
    maze: str = "umaze"
    """which maze: umaze, medium, large or ultra (a D4RL env id such as antmaze-large-play-v2 works too)"""
    num_episodes: int = 2
    """how many episodes to roll out"""
    policy: str = "random"
    """'random' (uniform actions in [-1, 1]) or 'zero' (all-zero actions)"""
    seed: int = 0
    """seed of the environment (goals and reset noise) and of the random actions"""
    eval_goal_variant: str | None = None
    """'d4rl' (D4RL's goal noise) or 'leq' (the LEQ d4rl_ext noise); None: the paper's choice for the maze"""
    max_episode_steps: int | None = None
    """cut episodes shorter than D4RL's length (700 umaze, 1000 medium/large, 2000 ultra); None keeps it"""
    video_path: str | None = None
    """write the first episode as a video here (.gif needs imageio; .mp4 needs imageio-ffmpeg)"""
    video_size: int = 256
    """width and height of the video frames in pixels"""


def d4rl_antmaze_goal_box(maze: str, variant: str) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) corners of the square the eval goal is drawn from (the maze's one goal cell)."""
    (goal_cell,) = _d4rl_antmaze_cells(maze, "g")
    corner = d4rl_antmaze_cell_xy(maze, *goal_cell) + D4RL_ANTMAZE_GOAL_OFFSETS[_d4rl_antmaze_variant(variant)]
    return np.maximum(corner, 0.0), np.maximum(corner + 0.375 * D4RL_ANTMAZE_SCALING, 0.0)


def describe_geometry(env) -> str:
    maze, variant = env.unwrapped.maze, env.unwrapped.eval_goal_variant
    (start,) = _d4rl_antmaze_cells(maze, "r")
    (goal_cell,) = _d4rl_antmaze_cells(maze, "g")
    layout = D4RL_ANTMAZE_MAPS[maze]
    walls = sum(row.count(1) for row in layout)
    goal_cell_xy = tuple(d4rl_antmaze_cell_xy(maze, *goal_cell).tolist())
    low, high = d4rl_antmaze_goal_box(maze, variant)
    return "\n".join([
        f"maze {maze}: {len(layout)} x {len(layout[0])} cells of {D4RL_ANTMAZE_SCALING:g} m, {walls} wall blocks, "
        f"dt {env.unwrapped.dt:g} s, {env._max_episode_steps} steps per episode",
        f"start cell {start} at (0, 0); goal cell {goal_cell} centred at {goal_cell_xy}",
        f"eval goals ({variant}) drawn from [{low[0]:g}, {high[0]:g}] x [{low[1]:g}, {high[1]:g}], "
        f"termination centre (leq-spec 6) {D4RL_ANTMAZE_GOAL_CENTRES[maze]}",
    ])  # fmt: skip


def write_video(frames: list, path: str, fps: int) -> None:
    try:
        import imageio.v2 as imageio
    except ImportError:
        raise SystemExit("--video-path needs imageio: pip install imageio (and imageio-ffmpeg for .mp4).") from None
    try:
        imageio.mimsave(path, frames, fps=fps) if not path.endswith(".gif") else imageio.mimsave(
            path, frames, duration=1000 / fps
        )  # fmt: skip
    except Exception as error:  # e.g. .mp4 without the ffmpeg plugin
        raise SystemExit(f"could not write {path} ({error}); try a .gif path or pip install imageio-ffmpeg.") from None


def main(args: Args) -> list[dict]:
    if args.policy not in ("random", "zero"):
        raise SystemExit(f"--policy must be 'random' or 'zero', got {args.policy!r}")
    if args.num_episodes < 1:
        raise SystemExit(f"--num-episodes must be at least 1, got {args.num_episodes}")
    if args.video_path:
        os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        env = make_d4rl_antmaze_env(
            args.maze, seed=args.seed, eval_goal_variant=args.eval_goal_variant,
            render_mode="rgb_array" if args.video_path else None, width=args.video_size, height=args.video_size,
            max_episode_steps=args.max_episode_steps,
        )  # fmt: skip
    except ValueError as error:
        raise SystemExit(str(error)) from None
    print(describe_geometry(env))
    action_rng = np.random.default_rng(args.seed)
    episodes, frames = [], []
    for episode in range(args.num_episodes):
        observation, _ = env.reset()
        start, length, done, success = time.perf_counter(), 0, False, False
        while not done:
            if args.policy == "random":
                action = action_rng.uniform(-1.0, 1.0, size=8).astype(np.float32)
            else:
                action = np.zeros(8, np.float32)
            observation, reward, terminated, truncated, info = env.step(action)
            length, success, done = length + 1, info["success"], terminated or truncated
            if args.video_path and episode == 0:
                frames.append(env.render())
        seconds = time.perf_counter() - start
        episodes.append(dict(length=length, success=success, goal=info["goal"], final_xy=observation[:2]))
        print(f"episode {episode}: length {length}, success {success}, goal ({info['goal'][0]:.2f}, "
              f"{info['goal'][1]:.2f}), final xy ({observation[0]:.2f}, {observation[1]:.2f}), "
              f"{length / seconds:.0f} steps/s")  # fmt: skip
    env.close()
    if args.video_path:
        write_video(frames, args.video_path, fps=env.metadata["render_fps"])
        print(f"video of episode 0 written to {args.video_path}")
    return episodes


# =================================================================================================================
# Support code. Everything below is mirrored: each block is identical in the scripts its header names
# (edit one copy, then `python tools/sync_mirrors.py <script> -b NAME`; tests/test_mirrors.py checks).
# =================================================================================================================


# ==== mirror: d4rl_antmaze_maps (identical in d4rl_antmaze.py, collect_dataset.py, train_world_model.py, fqe_pretrain.py, leq_state.py) ====
# D4RL's AntMaze layouts and goal centres (the d4rl_antmaze block builds its environment from them).

# The evaluation layouts: D4RL maze_env.py U_MAZE_TEST, BIG_MAZE_TEST, HARDEST_MAZE_TEST (registered
# for antmaze-{umaze,medium,large}-*-v2) and LEQ d4rl_ext maze_env.py ULTRA_MAZE_TEST (antmaze-ultra-*-v0).
D4RL_ANTMAZE_MAPS = {
    "umaze": [
        [1, 1, 1, 1, 1],
        [1, "r", 0, 0, 1],
        [1, 1, 1, 0, 1],
        [1, "g", 0, 0, 1],
        [1, 1, 1, 1, 1],
    ],
    "medium": [
        [1, 1, 1, 1, 1, 1, 1, 1],
        [1, "r", 0, 1, 1, 0, 0, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 1, 0, 0, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 0, 0, 1, 0, 1],
        [1, 0, 0, 0, 1, 0, "g", 1],
        [1, 1, 1, 1, 1, 1, 1, 1],
    ],
    "large": [
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, "r", 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1],
        [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1],
        [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1, 0, "g", 0, 1],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    ],
    "ultra": [
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, "r", 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1],
        [1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 0, 1, 0, 1],
        [1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0, 1, 0, 1, 0, 1],
        [1, 0, 0, 0, 1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 0, 1],
        [1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 1, 1, 0, 1, 1],
        [1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 1, 0, 1, 1],
        [1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 1],
        [1, 1, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1, 1, 0, 1],
        [1, 1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, "g", 1],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    ],
}
# leq-spec section 6 / LEQ dynamics/termination_fns.py: the termination centres, = goal cell + 0.75, the
# mean of D4RL's one-sided goal noise. (LEQ's ultra eval goals have mean goal cell - 0.25, see below.)
D4RL_ANTMAZE_GOAL_CENTRES = {
    "umaze": (0.75, 8.75),
    "medium": (20.75, 20.75),
    "large": (32.75, 24.75),
    "ultra": (52.75, 36.75),
}
# ==== end mirror: d4rl_antmaze_maps ====


# ==== mirror: d4rl_antmaze (identical in d4rl_antmaze.py, fqe_pretrain.py, leq_state.py) ====
import os
import tempfile
import xml.etree.ElementTree as ET

import gymnasium
import mujoco
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

# D4RL's AntMaze on gymnasium's MujocoEnv. API:
#   make_d4rl_antmaze_env(maze, seed=None, eval_goal_variant=None, render_mode=None, width=480, height=480,
#                         max_episode_steps=None) -> gymnasium.Env (TimeLimit-wrapped D4RLAntMazeEnv)
#       maze: "umaze" | "medium" | "large" | "ultra", or a D4RL env id ("antmaze-medium-play-v2", ...).
#       seed seeds the first reset() called without a seed (goal sampling and reset noise).
#       Observation: float64 [29] = qpos[:15] ++ qvel[:14] = x, y, z, quaternion (w, x, y, z), 8 joint
#       angles, vx, vy, vz, 3 angular velocities, 8 joint velocities; xy in the D4RL frame.
#       Action: float [8] in [-1, 1]; motor torque = 30 * action (D4RL's NormalizedBoxEnv over ctrlrange +-30).
#       Reward 1.0 and terminated=True when the torso xy is within 0.5 of the episode's goal, else 0.0;
#       truncated after 700 (umaze), 1000 (medium, large) or 2000 (ultra) steps. info: success, goal.
#   d4rl_antmaze_name(env_id) -> maze name;  d4rl_antmaze_cell_xy(maze, row, col) -> cell centre (x, y)
#   sample_d4rl_antmaze_goal(maze, variant, rng) -> goal xy  (d4rl_antmaze_goal_box: in d4rl_antmaze.py only)
#   d4rl_antmaze_xml(maze) -> the MJCF text of the ant in the maze
#   Constants: D4RL_ANTMAZE_MAPS, D4RL_ANTMAZE_GOAL_CENTRES (the d4rl_antmaze_maps block; leq-spec section 6
#   termination centres, D4RL frame), D4RL_ANTMAZE_MAX_EPISODE_STEPS, D4RL_ANTMAZE_DEFAULT_GOAL_VARIANT, D4RL_ANT_XML_CHANGES, ...
# The D4RL frame puts (0, 0) at the centre of the start cell "r", x grows with the column and y with the
# row: cell (row, col) has its centre at (col * 4 - col_r * 4, row * 4 - row_r * 4).
# Sources: D4RL d4rl/locomotion/{ant.py, maze_env.py, goal_reaching_env.py, wrappers.py, __init__.py,
# assets/ant.xml}; kwanyoungpark/LEQ d4rl_ext/locomotion/{maze_env.py, ant.py, assets/ant.xml, __init__.py}.


# D4RL __init__.py (v2 ids) and LEQ d4rl_ext __init__.py (ultra v0 ids): max_episode_steps.
D4RL_ANTMAZE_MAX_EPISODE_STEPS = {"umaze": 700, "medium": 1000, "large": 1000, "ultra": 2000}
D4RL_ANTMAZE_SCALING = 4.0  # metres per cell (registrations: maze_size_scaling=4.0)
D4RL_ANTMAZE_WALL_HEIGHT = 0.5  # wall height in cells (MazeEnv default): walls are 2 m high boxes
D4RL_ANTMAZE_SUCCESS_RADIUS = 0.5  # goal_reaching_env.py: sparse reward and eval termination iff ||xy - goal|| <= 0.5
D4RL_ANT_FRAME_SKIP = 5  # ant.py: MujocoEnv.__init__(self, file_path, 5); with timestep 0.02 -> dt 0.1 s (10 Hz)
D4RL_ANT_RESET_QPOS_NOISE = 0.1  # ant.py reset_model: qpos = init_qpos + U(-0.1, 0.1)
D4RL_ANT_RESET_QVEL_NOISE = 0.1  # ant.py reset_model: qvel = init_qvel + 0.1 * N(0, 1)
# Eval goal = goal cell + offset + U(0, s/4) + U(0, 1/2) * s/4 per axis, then max(., 0) (s = 4 m).
#   "d4rl": maze_env.py _rowcol_to_xy / goal_sampler: offset 0, goal in cell + [0, 1.5], mean +0.75.
#   "leq":  d4rl_ext maze_env.py subtracts s/8 in _rowcol_to_xy and s/8 from its noise: offset -s/4 = -1,
#           goal in cell + [-1, 0.5], mean -0.25 (LEQ evaluated ultra with d4rl_ext, the others with d4rl).
D4RL_ANTMAZE_GOAL_OFFSETS = {"d4rl": 0.0, "leq": -0.25 * D4RL_ANTMAZE_SCALING}
D4RL_ANTMAZE_DEFAULT_GOAL_VARIANT = {"umaze": "d4rl", "medium": "d4rl", "large": "d4rl", "ultra": "leq"}

# How D4RL's ant.xml (d4rl/locomotion/assets/ant.xml; LEQ's d4rl_ext copy is the same but for the floor)
# differs from the ant.xml gymnasium 1.4.0 installs. Each row: (element path, attribute, value in
# gymnasium's file, D4RL's value (None: attribute absent), effect / source). The builder checks the
# gymnasium value first, so a changed gymnasium file fails loudly instead of silently giving other physics.
D4RL_ANT_XML_CHANGES = (
    ("option", "timestep", "0.01", "0.02", "physics: 0.02 s x frame skip 5 = dt 0.1 s (D4RL 10 Hz, gymnasium 20 Hz)"),
    ("default/geom", "solimp", None, ".8 .8 .01", "contact impedance (MuJoCo's default is 0.9 0.95 0.001)"),
    ("actuator/motor", "gear", "150", None, "motor gear 1 (attribute absent) instead of 150"),
    ("actuator/motor", "ctrlrange", "-1.0 1.0", "-30.0 30.0", "torque range +-30; actions map to 30 * a"),
    ("asset/texture[@name='texplane']", "rgb1", "0 0 0", "0.2 0.3 0.4", "visual only: floor colour"),
    ("asset/texture[@name='texplane']", "rgb2", "0.8 0.8 0.8", "0.1 0.2 0.3", "visual only: floor colour"),
    ("asset/material[@name='MatPlane']", "reflectance", "0.5", "0.0", "visual only: floor reflection"),
    ("worldbody/body/geom[@name='torso_geom']", "rgba", None, "0.3 0.9 0.5 1", "visual only: green torso"),
)
# Same in both files (kept): RK4 integrator, joint armature 1 / damping 1 and limits, geom friction
# 1 0.5 0.5, margin 0.01, density 5, condim 3, solref .02 1 (explicit in D4RL, MuJoCo's default in
# gymnasium), the body tree and geom sizes. Ignored: the free joint's axis (meaningless for a free joint)
# and gymnasium's "track" camera (no physics). The floor plane is infinite for collisions; only its drawn
# size differs: 40 in D4RL's file, 200 in d4rl_ext's (used for ultra, whose walls reach x = 58).
D4RL_ANTMAZE_FLOOR_SIZE = {"umaze": "40 40 40", "medium": "40 40 40", "large": "40 40 40", "ultra": "200 200 200"}
# Remaining, unavoidable difference: D4RL ran on MuJoCo 2.x through mujoco-py, this runs on MuJoCo 3.x,
# and D4RL drew its noise from numpy's global RandomState where this env uses its own seeded Generator.


def d4rl_antmaze_name(env_id: str) -> str:
    """'umaze' | 'medium' | 'large' | 'ultra' from a maze name or an id like antmaze-large-play-v2."""
    parts = env_id.lower().split("-")
    name = parts[1] if len(parts) > 1 and parts[0] == "antmaze" else parts[0]
    if name not in D4RL_ANTMAZE_MAPS:
        raise ValueError(
            f"unknown D4RL antmaze {env_id!r}: give one of {sorted(D4RL_ANTMAZE_MAPS)} "
            "or an id such as antmaze-umaze-v2, antmaze-medium-play-v2, antmaze-ultra-diverse-v0"
        )
    return name


def _d4rl_antmaze_cells(maze: str, kind) -> list[tuple[int, int]]:
    layout = D4RL_ANTMAZE_MAPS[maze]
    return [(i, j) for i, row in enumerate(layout) for j, cell in enumerate(row) if cell == kind]


def d4rl_antmaze_cell_xy(maze: str, row: int, col: int) -> np.ndarray:
    """Centre of cell (row, col) in the D4RL frame: (0, 0) at the start cell, y grows with the row."""
    ((start_row, start_col),) = _d4rl_antmaze_cells(maze, "r")
    return np.array([(col - start_col) * D4RL_ANTMAZE_SCALING, (row - start_row) * D4RL_ANTMAZE_SCALING])


def _d4rl_antmaze_variant(variant: str) -> str:
    if variant not in D4RL_ANTMAZE_GOAL_OFFSETS:
        raise ValueError(f"unknown eval goal variant {variant!r}: use one of {sorted(D4RL_ANTMAZE_GOAL_OFFSETS)}")
    return variant


def sample_d4rl_antmaze_goal(maze: str, variant: str, rng: np.random.Generator) -> np.ndarray:
    """One eval goal as D4RL's goal_sampler draws it (see D4RL_ANTMAZE_GOAL_OFFSETS)."""
    goal_cells = _d4rl_antmaze_cells(maze, "g")
    cell = goal_cells[rng.integers(len(goal_cells))]
    corner = d4rl_antmaze_cell_xy(maze, *cell) + D4RL_ANTMAZE_GOAL_OFFSETS[_d4rl_antmaze_variant(variant)]
    cell_noise = rng.uniform(0.0, 0.25 * D4RL_ANTMAZE_SCALING, size=2)  # _rowcol_to_xy(add_random_noise=True)
    extra_noise = rng.uniform(0.0, 0.5, size=2) * 0.25 * D4RL_ANTMAZE_SCALING  # goal_sampler's random_x/y
    return np.maximum(corner + cell_noise + extra_noise, 0.0)


def _gymnasium_ant_xml_path() -> str:
    return os.path.join(os.path.dirname(gymnasium.envs.mujoco.__file__), "assets", "ant.xml")


def d4rl_antmaze_xml(maze: str) -> str:
    """D4RL's ant model (gymnasium's ant.xml with D4RL_ANT_XML_CHANGES) with the maze's walls added."""
    tree = ET.parse(_gymnasium_ant_xml_path())
    root = tree.getroot()
    for path, attribute, gymnasium_value, d4rl_value, _ in D4RL_ANT_XML_CHANGES:
        elements = root.findall(path)
        found = {element.get(attribute) for element in elements}
        if not elements or found != {gymnasium_value}:
            raise RuntimeError(
                f"gymnasium's ant.xml ({_gymnasium_ant_xml_path()}) has {path} {attribute}={sorted(map(str, found))}, "
                f"expected {gymnasium_value!r}; this env was written for gymnasium 1.4.0 (see requirements.txt)."
            )
        for element in elements:
            if d4rl_value is None:
                del element.attrib[attribute]
            else:
                element.set(attribute, d4rl_value)
    root.find("worldbody/geom[@name='floor']").set("size", D4RL_ANTMAZE_FLOOR_SIZE[maze])
    worldbody = root.find("worldbody")
    half_height = D4RL_ANTMAZE_WALL_HEIGHT / 2 * D4RL_ANTMAZE_SCALING
    for i, row in enumerate(D4RL_ANTMAZE_MAPS[maze]):  # maze_env.py: one box per 1, centred on its cell
        for j, cell in enumerate(row):
            if cell == 1:
                x, y = d4rl_antmaze_cell_xy(maze, i, j)
                ET.SubElement(
                    worldbody, "geom", name=f"block_{i}_{j}", type="box", material="",
                    pos=f"{x} {y} {half_height}",
                    size=f"{0.5 * D4RL_ANTMAZE_SCALING} {0.5 * D4RL_ANTMAZE_SCALING} {half_height}",
                    contype="1", conaffinity="1", rgba="0.7 0.5 0.3 1.0",
                )  # fmt: skip
    # A goal marker for videos, as big as the success radius: a site has no mass and no contacts.
    ET.SubElement(worldbody, "site", name="goal", type="sphere", size=f"{D4RL_ANTMAZE_SUCCESS_RADIUS}",
                  pos="0 0 0.5", rgba="1 0.2 0.2 0.5")  # fmt: skip
    return ET.tostring(root, encoding="unicode")


def _d4rl_antmaze_camera(maze: str) -> dict:
    layout = D4RL_ANTMAZE_MAPS[maze]
    rows, cols = len(layout), len(layout[0])
    centre = (d4rl_antmaze_cell_xy(maze, 0, 0) + d4rl_antmaze_cell_xy(maze, rows - 1, cols - 1)) / 2
    # Straight down, x to the right and y up: the picture shows the layout upside down (row 0 at the bottom).
    return dict(lookat=np.array([*centre, 0.0]), distance=1.25 * D4RL_ANTMAZE_SCALING * max(rows, cols),
                elevation=-90.0, azimuth=90.0)  # fmt: skip


class D4RLAntMazeEnv(MujocoEnv):
    """D4RL's eval AntMaze (eval=True, v2_resets=True, non_zero_reset=False, sparse reward) on gymnasium."""

    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 10}

    def __init__(self, maze: str, eval_goal_variant: str | None = None, seed: int | None = None,
                 render_mode: str | None = None, width: int = 480, height: int = 480):  # fmt: skip
        self.maze = d4rl_antmaze_name(maze)
        variant = eval_goal_variant or D4RL_ANTMAZE_DEFAULT_GOAL_VARIANT[self.maze]
        self.eval_goal_variant = _d4rl_antmaze_variant(variant)
        with tempfile.TemporaryDirectory() as folder:  # MujocoEnv loads its model from a file
            xml_path = os.path.join(folder, f"d4rl_antmaze_{self.maze}.xml")
            with open(xml_path, "w") as file:
                file.write(d4rl_antmaze_xml(self.maze))
            observation_space = gymnasium.spaces.Box(-np.inf, np.inf, shape=(29,), dtype=np.float64)
            super().__init__(xml_path, D4RL_ANT_FRAME_SKIP, observation_space, render_mode=render_mode, width=width,
                             height=height, default_camera_config=_d4rl_antmaze_camera(self.maze))  # fmt: skip
        # The policy acts in [-1, 1]; D4RL's NormalizedBoxEnv rescales to the +-30 control range.
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, shape=(self.model.nu,), dtype=np.float32)
        self.goal, self._pinned_goal = np.zeros(2), None
        self._goal_site = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, "goal")
        self._first_reset_seed = seed

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """A new eval goal (or options["goal"], an xy in the D4RL frame) and a noisy start at (0, 0)."""
        if seed is None:
            seed, self._first_reset_seed = self._first_reset_seed, None
        self._pinned_goal = None if options is None or "goal" not in options else np.asarray(options["goal"], float)
        return super().reset(seed=seed)

    def reset_model(self) -> np.ndarray:
        # v2_resets: a fresh goal every episode, drawn before the ant's reset noise (ant.py AntMazeEnv.reset).
        self.goal = self._pinned_goal if self._pinned_goal is not None else sample_d4rl_antmaze_goal(
            self.maze, self.eval_goal_variant, self.np_random
        )  # fmt: skip
        self.model.site_pos[self._goal_site, :2] = self.goal
        noise = D4RL_ANT_RESET_QPOS_NOISE
        qpos = self.init_qpos + self.np_random.uniform(-noise, noise, size=self.model.nq)
        qvel = self.init_qvel + self.np_random.standard_normal(self.model.nv) * D4RL_ANT_RESET_QVEL_NOISE
        self.set_state(qpos, qvel)
        return self._get_obs()

    def _get_reset_info(self) -> dict:
        return {"success": False, "goal": self.goal.copy()}

    def _get_obs(self) -> np.ndarray:
        return np.concatenate([self.data.qpos[:15], self.data.qvel[:14]])  # ant.py expose_all_qpos=True

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape or not np.all(np.isfinite(action)):
            raise ValueError(f"expected a finite action of shape {self.action_space.shape}, got {action!r}")
        low, high = self.model.actuator_ctrlrange.T
        ctrl = np.clip(low + (action + 1.0) * 0.5 * (high - low), low, high)  # wrappers.py NormalizedBoxEnv
        self.do_simulation(ctrl, self.frame_skip)
        observation = self._get_obs()
        # goal_reaching_env.py: sparse reward, and with eval=True the episode ends on success. The ant's
        # own "unhealthy" done (z outside [0.2, 1]) is dropped there, so it is not a termination here.
        success = bool(np.linalg.norm(observation[:2] - self.goal) <= D4RL_ANTMAZE_SUCCESS_RADIUS)
        if self.render_mode == "human":
            self.render()
        return observation, float(success), success, False, {"success": success, "goal": self.goal.copy()}


def make_d4rl_antmaze_env(maze: str, seed: int | None = None, eval_goal_variant: str | None = None,
                          render_mode: str | None = None, width: int = 480, height: int = 480,
                          max_episode_steps: int | None = None) -> gymnasium.Env:  # fmt: skip
    """The D4RL AntMaze eval env, ended after D4RL's episode length (or max_episode_steps)."""
    if max_episode_steps is not None and max_episode_steps < 1:
        raise ValueError(f"max_episode_steps must be at least 1 (or None for D4RL's length), got {max_episode_steps}")
    env = D4RLAntMazeEnv(maze, eval_goal_variant, seed, render_mode, width, height)
    steps = max_episode_steps or D4RL_ANTMAZE_MAX_EPISODE_STEPS[env.maze]
    return gymnasium.wrappers.TimeLimit(env, max_episode_steps=steps)
# ==== end mirror: d4rl_antmaze ====


if __name__ == "__main__":
    main(tyro.cli(Args))
