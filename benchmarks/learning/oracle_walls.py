"""LEQ on a pointmaze whose imagined steps stop at the walls: an oracle ablation of the world model's wall leak.

    python benchmarks/learning/oracle_walls.py --preset cpu-check --seed 9 --bc-lr 1e-3    # any leq_state.py flags

Runs `leq_state.py` unchanged except for one thing: after every imagined step (the LEQ rollouts and the dataset
expansion), the ball's centre is put back inside the free part of the cell it started the step in, as a real wall
would stop it. A coordinate that hits a wall face keeps the wall's value and loses its velocity, and a step that
cuts the convex corner of a wall cell lying diagonally beyond is pushed out along the shallower axis. Where a
coordinate is stopped its gradient is zero, as at a real wall, so the actor's pathwise gradient cannot press
through. Everything else (the learned world model, its reward and noise, the losses) is LEQ's. This is not LEQ: the
maze's layout is given to the model. It answers whether a world model that knew the walls would learn reliably
(README, Status). The run's experiment name gets the prefix `oracle-walls-`; the cached models are shared with
plain `leq_state.py` runs of the same flags.
"""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import leq_state as L  # noqa: E402
from wall_leak import POINT_RADIUS  # noqa: E402

OPEN = 1e3  # a box side with no wall
CORNERS = ((1, 1), (-1, 1), (1, -1), (-1, -1))  # (x sign, y sign): north-east, north-west, south-east, south-west


def free_boxes(task) -> tuple[np.ndarray, np.ndarray]:
    """(boxes [rows, cols, 4]: x min, x max, y min, y max of the ball's centre in each free cell, OPEN where no
    wall borders it; diagonal_walls [rows, cols, 4]: whether the cell diagonally beyond each of CORNERS is a wall)."""
    layout = L.MAZE_LAYOUTS[task.maze]
    rows, cols, half = len(layout), len(layout[0]), 0.5 * L.MAZE_SCALING[task.family]
    inner = half - POINT_RADIUS

    def wall(row, col):
        return 0 <= row < rows and 0 <= col < cols and layout[row][col] == 1

    boxes = np.tile(np.array([-OPEN, OPEN, -OPEN, OPEN]), (rows, cols, 1))
    diagonal_walls = np.zeros((rows, cols, len(CORNERS)), dtype=bool)
    for row in range(rows):
        for col in range(cols):
            if wall(row, col):
                continue
            x, y = L.cell_centre(task, (row, col))
            for side, (d_row, d_col), limit in ((0, (0, -1), x - inner), (1, (0, 1), x + inner),
                                                (2, (1, 0), y - inner), (3, (-1, 0), y + inner)):
                if wall(row + d_row, col + d_col):
                    boxes[row, col, side] = limit
            diagonal_walls[row, col] = [wall(row - sy, col + sx) for sx, sy in CORNERS]
    return boxes, diagonal_walls


def wall_projector(task):
    """fn(obs [B, 4+], next_obs [B, 4+]) -> next_obs with the ball kept out of the walls (module docstring)."""
    boxes, diagonal_walls = (torch.as_tensor(a) for a in free_boxes(task))
    boxes = boxes.float()
    rows, cols = boxes.shape[:2]
    scale = L.MAZE_SCALING[task.family]
    inner = 0.5 * scale - POINT_RADIUS
    x0, y0 = L.cell_centre(task, (0, 0))

    def project(obs, next_obs):
        nonlocal boxes, diagonal_walls
        if boxes.device != obs.device:  # moved once, not on every step
            boxes, diagonal_walls = boxes.to(obs.device), diagonal_walls.to(obs.device)
        col = torch.floor((obs[:, 0].detach() - x0) / scale + 0.5).long().clamp(0, cols - 1)
        row = torch.floor((y0 - obs[:, 1].detach()) / scale + 0.5).long().clamp(0, rows - 1)
        box, diagonal = boxes[row, col], diagonal_walls[row, col]
        centre_x, centre_y = x0 + col * scale, y0 - row * scale
        x = torch.minimum(torch.maximum(next_obs[:, 0], box[:, 0]), box[:, 1])
        y = torch.minimum(torch.maximum(next_obs[:, 1], box[:, 2]), box[:, 3])
        for k, (sx, sy) in enumerate(CORNERS):
            edge_x, edge_y = centre_x + sx * inner, centre_y + sy * inner
            depth_x, depth_y = sx * (x - edge_x), sy * (y - edge_y)
            inside = diagonal[:, k] & (depth_x > 0) & (depth_y > 0)
            x = torch.where(inside & (depth_x <= depth_y), edge_x.to(x.dtype), x)
            y = torch.where(inside & (depth_x > depth_y), edge_y.to(y.dtype), y)
        zero = torch.zeros_like(x)
        velocity_x = torch.where(x != next_obs[:, 0], zero, next_obs[:, 2])
        velocity_y = torch.where(y != next_obs[:, 1], zero, next_obs[:, 3])
        return torch.cat([torch.stack([x, y, velocity_x, velocity_y], 1), next_obs[:, 4:]], 1)

    return project


def walled_model_transition(task):
    """A drop-in for leq_state.make_model_transition whose steps go through wall_projector(task)."""
    make_plain = L.make_model_transition
    project = wall_projector(task)

    def make(world_model, routing, reward_scale, reward_shift, goal_reward=None):
        plain = make_plain(world_model, routing, reward_scale, reward_shift)

        def step(obs, act):
            next_obs, reward = plain(obs, act)
            next_obs = project(obs, next_obs)
            if goal_reward is not None:  # the exact reward, on the stopped next state
                reward = goal_reward(obs, act, next_obs).to(reward.dtype) * reward_scale + reward_shift
            return next_obs, reward

        return step

    return make


def main(argv: list[str] | None = None) -> None:
    args = L.parse_args(argv)
    task = L.task_of(args)
    if task.family != "pointmaze":
        raise SystemExit(f"{args.env_id}: the wall oracle knows pointmaze layouts only; use a pointmaze-* task.")
    if args.resume is None:
        args.exp_name = f"oracle-walls-{args.exp_name}"
    plain, L.make_model_transition = L.make_model_transition, walled_model_transition(task)
    try:
        L.main(args)
    finally:
        L.make_model_transition = plain


if __name__ == "__main__":
    main()
