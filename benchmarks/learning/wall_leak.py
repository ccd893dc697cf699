"""How far does the cached world model let a pointmaze point through the maze's walls?

    python benchmarks/learning/wall_leak.py --preset cpu-check --seed 9     # any leq_state.py flags

Loads the world model that `leq_state.py` with the same flags trains and caches (run that first). At every place
where the point (radius 0.1) touches a wall at rest, on each wall face of every free cell and in every corner where
two wall faces meet, it pushes straight into the wall with a saturated action for 10 imagined steps through each
elite's mean prediction, and prints how far each elite carries the point into the wall, for faces, corners and
pinches (corners where two wall cells touch at one point, with free space diagonally beyond). The real point does
not move (it recoils 0.004 at each of the medium maze's 65 contacts); in open space the same 10 steps from rest
carry it 0.13, or 0.18 diagonally, so a model that ignores the walls leaks that much. A policy that finds a leak
presses into it, because the critic, trained on the leaked imagined states, values them like the open cell beyond
(README, Status).
"""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import leq_state as L  # noqa: E402
from cached_models import cached_world_model  # noqa: E402

IMAGINED_STEPS = 10
POINT_RADIUS = 0.1  # the pointmaze ball: at rest against a wall its centre is 0.4 from its cell's centre
DIRECTIONS = {"north": (-1, 0, 0.0, 1.0), "south": (1, 0, 0.0, -1.0), "west": (0, -1, -1.0, 0.0),
              "east": (0, 1, 1.0, 0.0)}  # (row step, column step, x, y)
CORNERS = (("north", "west"), ("north", "east"), ("south", "west"), ("south", "east"))


def contact_points(layout) -> list[tuple[str, tuple[int, int], np.ndarray]]:
    """[(where, free cell, push (x, y))]: one per wall face of each free cell ("face north", ...), one per corner of
    two faces ("corner north-west", ...; "pinch north-west" where the cell diagonally beyond is free, so that the
    free space of two cells comes within 0.28 of itself across the point where their two wall cells touch). The
    first word of `where` is the kind."""
    def wall(row, col, name):
        d_row, d_col = DIRECTIONS[name][:2]
        return layout[row + d_row][col + d_col] == 1

    points = []
    for row, cells in enumerate(layout):
        for col, cell in enumerate(cells):
            if cell == 1:
                continue
            faces = [name for name in DIRECTIONS if wall(row, col, name)]
            points += [(f"face {name}", (row, col), np.array(DIRECTIONS[name][2:])) for name in faces]
            for a, b in CORNERS:
                if a in faces and b in faces:
                    d_row, d_col = DIRECTIONS[a][0] + DIRECTIONS[b][0], DIRECTIONS[a][1] + DIRECTIONS[b][1]
                    beyond_is_free = layout[row + d_row][col + d_col] == 0  # then the two wall cells touch at a point
                    kind = "pinch" if beyond_is_free else "corner"
                    points.append((f"{kind} {a}-{b}", (row, col), np.add(DIRECTIONS[a][2:], DIRECTIONS[b][2:])))
    return points


def leak_into_walls(world_model, task, contacts) -> np.ndarray:
    """[contacts, elites]: how far the point moves along its push (into the wall) in IMAGINED_STEPS steps."""
    offset = 0.5 * L.MAZE_SCALING[task.family] - POINT_RADIUS
    pushes = np.stack([push for _, _, push in contacts])
    starts = np.stack([L.cell_centre(task, cell) + offset * push for _, cell, push in contacts])
    elites, obs_dim = world_model.num_elites, world_model.obs_dim
    start = torch.zeros(len(contacts), elites, obs_dim)
    start[..., :2] = torch.as_tensor(starts, dtype=torch.float32)[:, None]
    start = start.reshape(-1, obs_dim)  # row (contact, elite) goes through that elite, at its mean
    action = torch.as_tensor(pushes, dtype=torch.float32).repeat_interleave(elites, 0)
    route = torch.arange(elites).repeat(len(contacts))
    no_noise = torch.zeros(len(route), obs_dim + 1)
    state = start
    with torch.no_grad():
        for _ in range(IMAGINED_STEPS):
            state, _ = L.transition(world_model, state, action, route, no_noise)
    moved = (state[:, :2] - start[:, :2]).view(len(contacts), elites, 2).double().numpy()
    unit = pushes / np.linalg.norm(pushes, axis=1, keepdims=True)
    return np.einsum("cek,ck->ce", moved, unit)


def wall_leak(args: L.Args) -> tuple[Path, list, np.ndarray]:
    """(the world model's path, contact_points of the maze, leak_into_walls [contacts, elites])."""
    task = L.task_of(args)
    if task.family != "pointmaze":
        raise SystemExit(f"{args.env_id}: the wall-leak probe places a pointmaze ball; use a pointmaze-* task.")
    data = L.load_dataset(task, args.dataset_path)
    path, world_model = cached_world_model(args, data)
    contacts = contact_points(L.MAZE_LAYOUTS[task.maze])
    return path, contacts, leak_into_walls(world_model, task, contacts)


def main(argv: list[str] | None = None) -> None:
    torch.set_num_threads(1)
    args = L.parse_args(argv)
    path, contacts, leak = wall_leak(args)
    worst = leak.max(axis=1)  # the elite that leaks most: LEQ's rollouts draw each step from a random elite
    kinds = np.array([where.split()[0] for where, _, _ in contacts])
    print(f"{args.env_id} seed {args.seed}, {path.name}: {IMAGINED_STEPS} imagined steps from rest, pushing into the "
          f"wall (the real point does not move); the most-leaking elite's distance into the wall")
    for name, kind in (("wall faces", "face"), ("corners", "corner"), ("pinches", "pinch")):
        chosen = kinds == kind
        if not chosen.any():
            continue
        values = worst[chosen]
        print(f"  {name:>10} ({chosen.sum():>3}): mean {values.mean():.3f}, median {np.median(values):.3f}, "
              f"max {values.max():.3f}, over 0.05: {(values > 0.05).sum()}")
    order = np.argsort(-worst)[:5]
    print("  worst: " + ", ".join(f"cell {contacts[i][1]} {contacts[i][0]} {worst[i]:.3f}" for i in order))


if __name__ == "__main__":
    main()
