"""leq_state.py end to end on tiny generated PointMaze data: expansions, evaluation and checkpoints, eager and
compiled, and resume after an interruption ending with exactly the parameters of an uninterrupted run."""

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import collect_dataset
import leq_state

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "learning"))
import compass_baseline  # noqa: E402
import oracle_walls  # noqa: E402
import probe_trap  # noqa: E402
import reward_fit  # noqa: E402
import start_gradient  # noqa: E402
import wall_leak  # noqa: E402


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working folder (runs/, checkpoints/) with a tiny generated pointmaze-umaze-diverse dataset."""
    root = tmp_path_factory.mktemp("leq")
    old_cwd, old_minari = os.getcwd(), os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root / "minari")
    os.chdir(root)
    collect_dataset.generate_dataset(collect_dataset.get_task("pointmaze-umaze-diverse"), steps=2000, seed=0)
    yield root
    os.chdir(old_cwd)
    if old_minari is None:
        os.environ.pop("MINARI_DATASETS_PATH")
    else:
        os.environ["MINARI_DATASETS_PATH"] = old_minari


def tiny_args(**overrides) -> leq_state.Args:
    sizes = dict(
        env_id="pointmaze-umaze-diverse", device="cpu", compile=False, total_steps=60, batch_size=16,
        model_batch_size=16, horizon=3, expansion_interval=25, expansion_size=64, rollout_length=2,
        expansion_keep=2, eval_interval=50, eval_episodes=2, final_eval_episodes=2, checkpoint_interval=20,
        log_interval=20, world_model_max_epochs=1, bc_steps=5, bc_batch_size=32, fqe_steps=5, fqe_batch_size=32,
    )
    return leq_state.Args(**{**sizes, **overrides})


def run_checkpoint(exp_name: str) -> dict:
    (run_dir,) = [p for p in os.listdir("runs") if f"__{exp_name}__" in p]
    return torch.load(os.path.join("runs", run_dir, "checkpoint.pt"), weights_only=False)


# compiled: about 5-8 minutes of torch.compile on a busy 2-core CPU, hence slow (run with `pytest -m slow`)
@pytest.mark.parametrize("use_compile", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "compiled"])
def test_end_to_end_crosses_expansion_evaluation_and_checkpoint(workdir, use_compile):
    name = f"e2e_{'compiled' if use_compile else 'eager'}"
    history = leq_state.main(tiny_args(exp_name=name, compile=use_compile))
    assert [e["step"] for e in history["eval"]] == [50]
    assert 0.0 <= history["final"]["mean"] <= 100.0 and 0.0 <= history["bc_score"]["mean"] <= 100.0
    checkpoint = run_checkpoint(name)
    assert checkpoint["kind"] == "leq" and checkpoint["step"] == 60
    assert checkpoint["buffer"]["expansions"] == 3  # before steps 1, 26 and 51
    assert checkpoint["buffer"]["filled"].item() == 2 * 2 * 64  # FIFO keeps the last 2 expansions
    pretrained = torch.load(next((workdir / "checkpoints" / "pretrain").glob("*.pt")), weights_only=False)
    moved = any(not torch.equal(v, pretrained["actor"][k]) for k, v in checkpoint["actor"].items())
    assert moved, "LEQ must change the pretrained actor"
    for key in ("actor", "critic", "critic_ema"):
        assert all(torch.isfinite(v).all() for v in checkpoint[key].values() if v.is_floating_point())


def test_resume_after_interruption_gives_identical_parameters(workdir, monkeypatch):
    leq_state.main(tiny_args(exp_name="uninterrupted"))
    expected = run_checkpoint("uninterrupted")

    save = leq_state.save_leq_checkpoint

    def save_then_crash(path, step, *args, **kwargs):
        save(path, step, *args, **kwargs)
        if step == 40:
            raise KeyboardInterrupt("simulated interruption right after the checkpoint of step 40")

    monkeypatch.setattr(leq_state, "save_leq_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        leq_state.main(tiny_args(exp_name="interrupted"))
    monkeypatch.setattr(leq_state, "save_leq_checkpoint", save)
    assert run_checkpoint("interrupted")["step"] == 40
    (run_dir,) = [p for p in os.listdir("runs") if "__interrupted__" in p]
    leq_state.main(tiny_args(resume=os.path.join("runs", run_dir)))
    resumed = run_checkpoint("interrupted")
    assert resumed["step"] == 60
    for key in ("actor", "critic", "critic_ema"):
        for name, value in expected[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}.{name} differs after resume"
    for key in ("actor_optimizer", "critic_optimizer"):
        for index, state in expected[key]["state"].items():
            for name, value in state.items():
                assert torch.equal(value, resumed[key]["state"][index][name]), f"{key} {index} {name} differs"
    assert torch.equal(expected["buffer"]["states"], resumed["buffer"]["states"])


def test_resume_refuses_a_missing_checkpoint(workdir):
    with pytest.raises(SystemExit, match="no checkpoint found"):
        leq_state.main(tiny_args(resume="runs/does-not-exist"))


def test_cudagraphs_without_cuda_fails_loudly(workdir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit, match="--cudagraphs needs a CUDA device"):
        leq_state.main(tiny_args(exp_name="cg", cudagraphs=True))


def test_cudagraphs_compile_asks_inductor_to_raise_instead_of_skipping_capture(monkeypatch):
    """With plain mode="reduce-overhead", inductor logs a warning and runs uncaptured when an op cannot be
    captured; compile_step's options turn that silent fallback into an error."""
    seen = {}
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: seen.update(kwargs) or fn)
    leq_state.compile_step(lambda: None, True, True, torch.device("cuda"))
    assert seen == {"options": {"triton.cudagraphs": True, "triton.cudagraph_or_error": True}}
    from torch._inductor import config
    from torch._inductor.cudagraph_utils import log_cudagraph_skip_and_bump_counter

    with config.patch({"triton.cudagraph_or_error": True}):  # the skip path every capture refusal goes through
        with pytest.raises(RuntimeError, match="skipping cudagraphs due to a test"):
            log_cudagraph_skip_and_bump_counter("skipping cudagraphs due to a test")


def test_resume_refuses_a_run_trained_on_other_data(workdir):
    leq_state.main(tiny_args(exp_name="other_data", total_steps=20))
    checkpoint = run_checkpoint("other_data")
    checkpoint["fingerprint"] = "another-dataset"
    os.makedirs("runs/other-data", exist_ok=True)
    torch.save(checkpoint, "runs/other-data/checkpoint.pt")
    with pytest.raises(SystemExit, match="trained on another dataset"):
        leq_state.main(tiny_args(resume="runs/other-data"))


def test_preset_supplies_defaults_and_explicit_flags_win():
    preset = leq_state.PRESETS["cpu-check"]
    args = leq_state.parse_args(["--preset", "cpu-check"])
    assert args.preset == "cpu-check"
    assert {name: getattr(args, name) for name in preset} == preset
    overridden = leq_state.parse_args(["--preset", "cpu-check", "--total-steps", "7", "--seed", "9"])
    assert (overridden.total_steps, overridden.seed, overridden.bc_steps) == (7, 9, preset["bc_steps"])
    plain = leq_state.parse_args([])
    assert plain == leq_state.Args() and plain.total_steps == 1_000_000


def test_actor_scaler_trainable_is_pretrained_and_cached_apart(workdir):
    args = tiny_args(exp_name="scaler", total_steps=4, actor_scaler="trainable")
    assert leq_state.pretrain_variant(args).endswith("__actor_scaler=trainable")
    task = leq_state.get_task(args.env_id)
    data = leq_state.load_dataset(task)
    tensors = leq_state.transition_tensors(data, "cpu")
    actor, _, _ = leq_state.load_or_pretrain_agent(args, data, tensors, "cpu")
    names = dict(actor.named_parameters())
    assert "normalizer.mean" in names and "normalizer.std" in names
    initial = leq_state.normalization_stats(data.observations, data.actions)["obs_mean"]
    assert not torch.equal(actor.normalizer.mean.detach(), initial)  # BC's Adam moved it
    fixed, _, _ = leq_state.load_or_pretrain_agent(tiny_args(), data, tensors, "cpu")
    assert "normalizer.mean" not in dict(fixed.named_parameters())
    reloaded, _, _ = leq_state.load_or_pretrain_agent(args, data, tensors, "cpu")  # from its own cache file
    torch.testing.assert_close(reloaded.normalizer.mean, actor.normalizer.mean, rtol=0, atol=0)


def test_pretraining_is_cached_per_gamma_and_a_critic_for_another_gamma_is_refused(workdir):
    args = tiny_args()
    assert leq_state.pretrain_variant(args) == leq_state.pretrain_variant(tiny_args(total_steps=7, ema_rate=0.05))
    assert leq_state.pretrain_variant(tiny_args(gamma=0.99)).endswith("__gamma=0.99")
    assert leq_state.pretrain_variant(tiny_args(fqe_ema_rate=0.01)).endswith("__fqe_ema_rate=0.01")
    task = leq_state.get_task(args.env_id)
    data = leq_state.load_dataset(task)
    tensors = leq_state.transition_tensors(data, "cpu")
    leq_state.load_or_pretrain_agent(args, data, tensors, "cpu")
    path = str(leq_state.pretrain_cache(args, data.fingerprint))
    with pytest.raises(SystemExit, match="FQE critic for gamma 0.997, but this run uses --gamma 0.99"):
        leq_state.load_or_pretrain_agent(tiny_args(gamma=0.99, pretrain_path=path), data, tensors, "cpu")


def run_dir_of(exp_name: str) -> str:
    (run_dir,) = [p for p in os.listdir("runs") if f"__{exp_name}__" in p]
    return os.path.join("runs", run_dir)


def test_evaluations_of_neighbouring_seeds_and_steps_play_disjoint_episodes():
    """Episode i of an evaluation resets with evaluation_seed(run seed, step) + i: runs of seeds 1-20, evaluated
    every 1000 steps up to 20k with 100 episodes, never share an episode (seed + step + i shared 99 of 100)."""
    ranges = sorted((leq_state.evaluation_seed(seed, step), seed, step)
                    for seed in range(1, 21) for step in range(1000, 20_001, 1000))
    assert len({first for first, _, _ in ranges}) == len(ranges)
    assert all(b[0] - a[0] >= 100 for a, b in zip(ranges, ranges[1:]))
    assert leq_state.evaluation_seed(3, 8000) == 2191540684  # fixed: reruns, and one step's LEQ and BC, replay them


def test_run_records_config_and_every_evaluation(workdir):
    leq_state.main(tiny_args(exp_name="records", eval_interval=20))
    run_dir = run_dir_of("records")
    config = json.loads(open(os.path.join(run_dir, "config.json")).read())
    assert config["env_id"] == "pointmaze-umaze-diverse" and config["seed"] == 1
    assert config["tau"] == leq_state.get_task("pointmaze-umaze-diverse").tau and config["args"]["tau"] is None
    assert config["software"]["torch"] == torch.__version__ and config["args"]["total_steps"] == 60
    with open(os.path.join(run_dir, "eval.csv")) as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["step", "policy", "episodes", "mean", "std"]
    assert [(r["step"], r["policy"], r["episodes"]) for r in rows] == [
        ("20", "leq", "2"), ("40", "leq", "2"), ("60", "leq_final", "2"), ("60", "bc", "2")]
    assert all(0.0 <= float(r["mean"]) <= 100.0 and float(r["std"]) >= 0.0 for r in rows)


def test_resume_rewrites_eval_csv_without_duplicate_rows(workdir, monkeypatch):
    """Crash just before the checkpoint of step 40: eval.csv then holds evaluations 10-40 but the checkpoint of
    step 20 only 10 and 20; the resumed run must end with exactly the rows of an uninterrupted run."""
    leq_state.main(tiny_args(exp_name="csv_uninterrupted", eval_interval=10))
    save = leq_state.save_leq_checkpoint

    def crash_before_saving(path, step, *args, **kwargs):
        if step == 40:
            raise KeyboardInterrupt("simulated interruption before the checkpoint of step 40")
        save(path, step, *args, **kwargs)

    monkeypatch.setattr(leq_state, "save_leq_checkpoint", crash_before_saving)
    with pytest.raises(KeyboardInterrupt):
        leq_state.main(tiny_args(exp_name="csv_interrupted", eval_interval=10))
    monkeypatch.setattr(leq_state, "save_leq_checkpoint", save)
    run_dir = run_dir_of("csv_interrupted")
    assert open(os.path.join(run_dir, "eval.csv")).read().count("\n") == 1 + 4  # header, steps 10 to 40
    leq_state.main(tiny_args(resume=run_dir))
    expected = open(os.path.join(run_dir_of("csv_uninterrupted"), "eval.csv")).read()
    assert open(os.path.join(run_dir, "eval.csv")).read() == expected


def test_probe_trap_reports_where_failed_episodes_end_and_the_model_leak(workdir, capsys):
    """benchmarks/learning/probe_trap.py (the README's wall-trap probe) on a tiny run: success count, the end
    points of failed episodes, their goals and closest approach to the goal cell's centre, and one imagined
    displacement per elite from the most common end point."""
    import re

    leq_state.main(tiny_args(exp_name="probe"))
    (run_dir,) = [p for p in os.listdir("runs") if "__probe__" in p]
    capsys.readouterr()
    probe_trap.main(os.path.join("runs", run_dir))
    saturation, *lines = capsys.readouterr().out.strip().splitlines()
    share, states = re.match(
        r"actor mu: \[-?[\d.]+, -?[\d.]+\] at the starts \(mean\); every \|mu\| > 3 at (\d+)% of (\d+) dataset states$",
        saturation).groups()
    assert 0 <= int(share) <= 100 and int(states) == 2000
    successes = int(re.match(r"step 60: (\d+)/10 successes; failed episodes ended at ", lines[0]).group(1))
    if successes < 10:
        goals = re.findall(r"\((-?[\d.]+), (-?[\d.]+)\) \(([\d.]+)\)", lines[1])
        assert lines[1].startswith("their goals (distance from the end): ") and len(goals) == 10 - successes
        task = leq_state.get_task("pointmaze-umaze-diverse")
        centre = leq_state.cell_centre(task, leq_state.maze_start_goal_cells(task, task.default_dataset)[1])
        for x, y, distance in goals:  # the environment draws each goal within 0.25 per axis of its cell's centre
            assert abs(float(x) - centre[0]) <= 0.26 and abs(float(y) - centre[1]) <= 0.26 and float(distance) >= 0
        closest = re.match(r"their closest approach to the goal cell's centre: \[(.*)\] \(the data's rewards and the "
                           r"termination count a success within 0.45 of it\)$", lines[2]).group(1)
        assert len(closest.split(",")) == 10 - successes and all(float(v) >= 0 for v in closest.split(","))
        ends = re.findall(r"\(\((-?[\d.]+), (-?[\d.]+)\), \d+\)", lines[0])
        nearest_end = min(((float(x) - centre[0]) ** 2 + (float(y) - centre[1]) ** 2) ** 0.5 for x, y in ends)
        assert min(float(v) for v in closest.split(",")) <= nearest_end + 0.08  # an end lies on its path (0.1 rounding)
        moved = re.search(r"imagined steps move the point by \[(.*)\] \(one per elite\)", lines[3]).group(1)
        assert len(moved.split(",")) == 5 and all(float(v) >= 0 for v in moved.split(","))


def test_compass_baseline_scores_the_eight_constant_pushes(workdir):
    """benchmarks/learning/compass_baseline.py: one score per direction, best first. In the U-maze the goal lies
    behind the wall below the start, so no constant push reaches it (on the medium maze, 315° scores 68%)."""
    scores = compass_baseline.compass_scores("pointmaze-umaze-diverse", episodes=3, seed=7)
    assert sorted(angle for angle, _ in scores) == list(range(0, 360, 45))
    assert [score for _, score in scores] == sorted((score for _, score in scores), reverse=True)
    assert all(score == 0.0 for _, score in scores)
    with pytest.raises(SystemExit, match="2-D action maze"):
        compass_baseline.compass_scores("hopper-random", episodes=1, seed=0)


def test_goal_cell_moves_the_relabelled_rewards_the_termination_and_the_evaluation(workdir):
    """--goal-cell 1 2 on the U-maze: rewards, termination and the environment's goal all sit in cell (1, 2); wall
    cells, the start cell and other tasks are refused with the free cells named."""
    args = tiny_args(goal_cell=(1, 2))
    leq_state.check_args(args)
    task = leq_state.task_of(args)
    centre = leq_state.cell_centre(task, (1, 2))
    data = leq_state.load_dataset(task)
    distance = np.linalg.norm(data.next_observations[:, :2] - centre, axis=-1)
    np.testing.assert_array_equal(data.rewards, (distance <= task.goal_radius).astype(np.float32))
    assert data.rewards.sum() > 0 and data.fingerprint != leq_state.load_dataset(leq_state.get_task(args.env_id)).fingerprint
    next_obs = torch.zeros(2, 4)
    next_obs[0, :2] = torch.as_tensor(centre)
    assert leq_state.make_termination_fn(task, data)(None, None, next_obs).tolist() == [True, False]
    env = leq_state.make_eval_env(task, data, None)
    env.reset(seed=3)
    assert np.abs(env.env.unwrapped.goal - centre).max() <= 0.25 + 1e-9  # drawn within 0.25 per axis of the centre
    with pytest.raises(SystemExit, match=r"--goal-cell 0 0 is not a free cell of the umaze maze; free cells.*1,2"):
        leq_state.check_args(tiny_args(goal_cell=(0, 0)))
    with pytest.raises(SystemExit, match="is the start cell"):
        leq_state.check_args(tiny_args(goal_cell=(1, 1)))
    with pytest.raises(SystemExit, match="--goal-cell moves the goal of a pointmaze task"):
        leq_state.check_args(leq_state.Args(env_id="hopper-random", device="cpu", goal_cell=(1, 2)))
    scores = compass_baseline.compass_scores("pointmaze-umaze-diverse", episodes=2, seed=7, goal_cell=(1, 2))
    assert dict(scores)[0] == 100.0  # the goal cell next to the start, east of it: the constant push east reaches it


def test_compass_baseline_plays_the_episodes_of_a_runs_evaluation(workdir, monkeypatch, capsys):
    """--run-seed S --step T plays the episodes leq_state.py's evaluation of seed S at step T played; one of the
    two alone is refused."""
    seeds = []
    monkeypatch.setattr(compass_baseline, "compass_scores",
                        lambda env_id, episodes, seed, path, goal_cell: seeds.append(seed) or [])
    compass_baseline.main(["pointmaze-umaze-diverse", "--run-seed", "3", "--step", "8000"])
    assert seeds == [leq_state.evaluation_seed(3, 8000)]
    with pytest.raises(SystemExit):
        compass_baseline.main(["pointmaze-umaze-diverse", "--run-seed", "3"])
    assert "go together" in capsys.readouterr().err


def test_start_gradient_reads_the_cached_models_of_the_same_flags(workdir):
    """benchmarks/learning/start_gradient.py: at the U-maze's evaluation start, a unit g_0 direction, the BC action
    and one FQE value per compass direction, from the caches leq_state.py wrote for the same arguments."""
    args = tiny_args(exp_name="start", total_steps=2)
    leq_state.main(args)
    probe = start_gradient.start_gradient(args)
    task = leq_state.get_task(args.env_id)
    start_cell = leq_state.maze_start_goal_cells(task, task.default_dataset)[0]
    assert abs(probe["start"] - leq_state.cell_centre(task, start_cell)).max() <= 0.26
    assert abs(float((probe["direction"] ** 2).sum()) - 1.0) < 1e-5 and probe["bc_action"].shape == (2,)
    assert [angle for angle, _ in probe["q_by_angle"]] == list(range(0, 360, 45))
    with pytest.raises(SystemExit, match="run leq_state.py with the same flags first"):
        start_gradient.start_gradient(tiny_args(seed=99))
    with pytest.raises(SystemExit, match="2-D action maze"):
        start_gradient.start_gradient(leq_state.Args(env_id="hopper-random"))


def test_reward_fit_bands_the_dataset_by_distance_and_averages_the_elites(workdir):
    """benchmarks/learning/reward_fit.py: the bands cover every transition once, the data's reward is 1 inside
    the relabelling disc and 0 outside, and the model's prediction is the elites' mean reward (checked one elite
    at a time through transition() with zero noise)."""
    args = tiny_args(exp_name="rewardfit", total_steps=2)
    leq_state.main(args)
    rows = reward_fit.reward_fit(args)
    data = leq_state.load_dataset(leq_state.task_of(args), args.dataset_path)
    assert len(rows) == 4 and sum(count for _, count, _, _ in rows) == len(data)
    inside, *outside = rows
    assert inside[1] == 0 or inside[2] == 1.0
    assert all(data_reward == 0.0 for _, count, data_reward, _ in outside if count)
    world_model, _ = leq_state.load_world_model(leq_state.world_model_cache(args, data.fingerprint),
                                                data.fingerprint, "cpu")
    obs, act = torch.as_tensor(data.observations[:7]), torch.as_tensor(data.actions[:7])
    no_noise = torch.zeros(7, obs.shape[1] + 1)
    with torch.no_grad():
        per_elite = [leq_state.transition(world_model, obs, act, torch.full((7,), k), no_noise)[1]
                     for k in range(world_model.num_elites)]
    expected = torch.stack(per_elite).mean(0).double().numpy()
    predicted = reward_fit.predicted_reward(world_model, data.observations[:7], data.actions[:7])
    assert abs(predicted - expected).max() < 1e-6
    with pytest.raises(SystemExit, match="run leq_state.py with the same flags first"):
        reward_fit.reward_fit(tiny_args(seed=99))
    with pytest.raises(SystemExit, match="needs a maze task"):
        reward_fit.reward_fit(leq_state.Args(env_id="hopper-random"))


def test_wall_leak_finds_every_face_and_corner_and_projects_each_elites_motion(workdir):
    """benchmarks/learning/wall_leak.py: one contact per wall face and per corner of two faces (checked on a
    corridor by hand; a corner with free space diagonally beyond is a pinch), and with a model whose every elite
    predicts a constant step d_e, the leak after IMAGINED_STEPS steps is IMAGINED_STEPS * d_e projected on the
    unit push into the wall."""
    corridor = [[1, 1, 1, 1], [1, 0, 0, 1], [1, 1, 1, 1]]
    contacts = wall_leak.contact_points(corridor)
    assert sorted((cell, where) for where, cell, _ in contacts) == sorted(
        [((1, 1), w) for w in ("face north", "face south", "face west", "corner north-west", "corner south-west")]
        + [((1, 2), w) for w in ("face north", "face south", "face east", "corner north-east", "corner south-east")])
    pinch = [[1, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 1], [1, 1, 1, 1]]  # (1, 1) and (2, 2) touch diagonally
    kinds = sorted(where for where, _, _ in wall_leak.contact_points(pinch) if not where.startswith("face"))
    assert kinds == sorted(["corner north-west", "corner north-east", "corner south-west", "pinch south-east",
                            "corner north-east", "corner south-west", "corner south-east", "pinch north-west"])
    task = leq_state.task_of(tiny_args())
    model = leq_state.EnsembleDynamics(task.obs_dim, task.act_dim, num_members=3, num_elites=2)
    steps = torch.tensor([[0.01, -0.02], [-0.03, 0.005], [9.0, 9.0]])  # member 2 is not an elite
    with torch.no_grad():
        for weight in model.weights:
            weight.zero_()
        model.biases[-1][:, 0, :2] = steps
    leak = wall_leak.leak_into_walls(model, task, contacts)
    pushes = torch.tensor(np.stack([push for _, _, push in contacts]), dtype=torch.float32)
    unit = pushes / pushes.norm(dim=1, keepdim=True)
    expected = wall_leak.IMAGINED_STEPS * unit @ steps[:2].T
    assert leak.shape == (len(contacts), 2) and abs(leak - expected.double().numpy()).max() < 1e-5
    with pytest.raises(SystemExit, match="run leq_state.py with the same flags first"):
        wall_leak.wall_leak(tiny_args(seed=98))
    with pytest.raises(SystemExit, match="use a pointmaze-\\* task"):
        wall_leak.wall_leak(leq_state.Args(env_id="antmaze-umaze-diverse"))


def test_oracle_walls_stops_the_ball_at_faces_and_convex_corners_and_only_there(workdir):
    """benchmarks/learning/oracle_walls.py on the U-maze: a step into a wall face ends on the face with that
    velocity zeroed and no gradient through it; a step that cuts a convex corner is pushed out along the
    shallower axis; steps in free space or into a free neighbour are untouched; the real environment's own
    transitions move by less than 0.05; and a tiny run goes through leq_state.main and leaves the patch off."""
    task = leq_state.task_of(tiny_args())
    project = oracle_walls.wall_projector(task)
    inner = 0.5 - wall_leak.POINT_RADIUS
    (x11, y11), (x13, y13) = leq_state.cell_centre(task, (1, 1)), leq_state.cell_centre(task, (1, 3))
    obs = torch.tensor([[x11, y11, 0.0, 0.0], [x11, y11, 0.0, 0.0], [x11, y11, 0.0, 0.0], [x13, y13, 0.0, 0.0],
                        [x13, y13, 0.0, 0.0]])
    moves = torch.tensor([[0.1, 0.7, 0.3, 2.0],      # north into the wall cell (0, 1): y stops at the face
                          [0.2, -0.1, 1.0, -1.0],    # inside cell (1, 1): free
                          [0.8, 0.0, 3.0, 0.0],      # east into the free cell (1, 2)
                          [-0.45, -0.5, -1.0, -2.0],  # south-west across the convex corner of wall cell (2, 2)
                          [-0.5, -0.45, -2.0, -1.0]])
    next_obs = (obs + moves).requires_grad_()
    stopped = project(obs, next_obs)
    expected = (obs + moves).detach().clone()
    expected[0, 1], expected[0, 3] = y11 + inner, 0.0
    expected[3, 0], expected[3, 2] = x13 - inner, 0.0  # deeper in y (0.1) than in x (0.05): x is pushed out
    expected[4, 1], expected[4, 3] = y13 - inner, 0.0
    assert torch.allclose(stopped, expected, atol=1e-6)
    stopped[0, :2].sum().backward()
    assert next_obs.grad[0].tolist() == [1.0, 0.0, 0.0, 0.0]  # pushing harder into the face moves nothing
    data = leq_state.load_dataset(task, None)
    real = torch.as_tensor(data.observations), torch.as_tensor(data.next_observations)
    assert (project(*real) - real[1])[:, :2].abs().max() < 0.05
    oracle_walls.main(["--env-id", "pointmaze-umaze-diverse", "--device", "cpu", "--no-compile", "--total-steps",
                       "30", "--batch-size", "16", "--model-batch-size", "16", "--horizon", "3",
                       "--expansion-interval", "25", "--expansion-size", "64", "--rollout-length", "2",
                       "--eval-interval", "50", "--eval-episodes", "1", "--final-eval-episodes", "1",
                       "--world-model-max-epochs", "1", "--bc-steps", "5", "--bc-batch-size", "32", "--fqe-steps",
                       "5", "--fqe-batch-size", "32", "--exp-name", "walled"])
    assert [p for p in os.listdir("runs") if "__oracle-walls-walled__" in p]
    assert leq_state.make_model_transition.__module__ == "leq_state"
    with pytest.raises(SystemExit, match="pointmaze layouts only"):
        oracle_walls.main(["--env-id", "hopper-random"])
