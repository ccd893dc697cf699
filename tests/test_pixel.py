"""leq_pixel.py: V-D4RL loaders on fixture files, the RSSM and its prior ensemble, symexp two-hot, the shared
λ-return/expectile math, and a smoke run of the whole pipeline on data generated from dm_control."""

import json
from dataclasses import replace
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

import leq_pixel as lp
import leq_state


def write_npz_episode(path, length, act_dim=6, seed=0, **overrides):
    rng = np.random.default_rng(seed)
    episode = dict(
        image=rng.integers(0, 256, (length, 64, 64, 3), dtype=np.uint8),
        action=np.concatenate([np.zeros((1, act_dim)), rng.uniform(-1, 1, (length - 1, act_dim))]).astype(np.float32),
        reward=np.concatenate([[0.0], rng.uniform(0, 2, length - 1)]).astype(np.float32),
        discount=np.ones(length, np.float32),
    )
    episode.update(overrides)
    np.savez(path, **{k: v for k, v in episode.items() if v is not None})
    return episode


# ---------------------------------------------------------------- loaders
def test_npz_loader_shifts_actions_and_marks_episodes(tmp_path):
    first = write_npz_episode(tmp_path / "a-5.npz", 5, seed=1)
    second = write_npz_episode(tmp_path / "b-4.npz", 4, seed=2)
    data = lp.load_vd4rl(str(tmp_path))
    assert data.images.shape == (9, 64, 64, 3) and data.images.dtype == np.uint8
    # ARS -> RSA: the action taken at obs t is the one stored on row t + 1; an episode's last row gets zeros.
    np.testing.assert_array_equal(data.actions[:4], first["action"][1:])
    np.testing.assert_array_equal(data.actions[4], np.zeros(6))
    np.testing.assert_array_equal(data.actions[5:8], second["action"][1:])
    np.testing.assert_array_equal(data.rewards, np.concatenate([first["reward"], second["reward"]]))
    np.testing.assert_array_equal(data.images[5:], second["image"])
    assert data.is_first.tolist() == [1, 0, 0, 0, 0, 1, 0, 0, 0]
    assert data.is_last.tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 1]
    assert not data.is_terminal.any()
    assert data.fingerprint == lp.load_vd4rl(str(tmp_path)).fingerprint


def test_npz_loader_reads_terminals_from_discount(tmp_path):
    write_npz_episode(tmp_path / "a.npz", 4, discount=np.array([1, 1, 1, 0], np.float32))
    assert lp.load_vd4rl(str(tmp_path)).is_terminal.tolist() == [0, 0, 0, 1]


def test_hdf5_loader_resizes_splits_and_shifts(tmp_path):
    n = 7  # two episodes: 3 and 4 rows
    frames = np.empty((n, 3, 84, 84), np.uint8)
    for i in range(n):  # constant frames stay constant through bicubic resizing
        frames[i] = np.array([10 * i, 20 + i, 200 - i], np.uint8)[:, None, None]
    actions = np.arange(n * 6, dtype=np.float32).reshape(n, 6)
    with h5py.File(tmp_path / "shard.hdf5", "w") as shard:
        shard["observation"] = frames
        shard["action"] = actions
        shard["reward"] = np.arange(n, dtype=np.float32)
        shard["discount"] = np.ones(n, np.float32)
        shard["step_type"] = np.array([0, 1, 2, 0, 1, 1, 2])
    data = lp.load_vd4rl(str(tmp_path))
    assert data.images.shape == (n, 64, 64, 3)
    np.testing.assert_array_equal(data.images[:, 17, 40], frames[:, :, 0, 0])
    np.testing.assert_array_equal(data.actions[:2], actions[1:3])
    np.testing.assert_array_equal(data.actions[2], 0)
    np.testing.assert_array_equal(data.actions[3:6], actions[4:7])
    np.testing.assert_array_equal(data.actions[6], 0)
    assert data.is_first.tolist() == [1, 0, 0, 1, 0, 0, 0] and data.is_last.tolist() == [0, 0, 1, 0, 0, 0, 1]


def test_resize_matches_smooth_image():
    """A smooth gradient resampled 84 -> 64 stays close to the same gradient sampled at 64."""
    grid84 = np.linspace(0, 1, 84)
    frame = (np.add.outer(grid84, grid84) * 100).astype(np.uint8)
    resized = lp.resize_frames(np.broadcast_to(frame, (1, 3, 84, 84)).copy())[0, :, :, 0].astype(float)
    centres = (np.arange(64) + 0.5) * 84 / 64 - 0.5
    expected = np.add.outer(centres, centres) / 83 * 100
    assert np.abs(resized - expected)[4:-4, 4:-4].max() < 2.0


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: write_npz_episode(d / "a.npz", 4, reward=None), "lacks the V-D4RL key"),
        (lambda d: write_npz_episode(d / "a.npz", 4, image=np.zeros((4, 84, 84, 3), np.uint8)), "expected uint8"),
        (lambda d: (d / "a.npz").write_bytes(b"not a zip"), "cannot be read"),
        (lambda d: (write_npz_episode(d / "a.npz", 4), (d / "b.hdf5").write_bytes(b"")), "both"),
        (lambda d: (d / "readme.txt").write_text("x"), "holds no"),
        (lambda d: (d / "s.hdf5").write_bytes(b"garbage"), "cannot be read as an hdf5"),
    ],
)
def test_loader_errors_are_clear(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(SystemExit, match=message):
        lp.load_vd4rl(str(tmp_path))


def test_loader_errors_missing_path(tmp_path):
    with pytest.raises(SystemExit, match="--dataset-path is required"):
        lp.load_vd4rl(None)
    with pytest.raises(SystemExit, match="is not a folder"):
        lp.load_vd4rl(str(tmp_path / "nope"))


def test_hdf5_missing_key(tmp_path):
    with h5py.File(tmp_path / "shard.hdf5", "w") as shard:
        shard["observation"] = np.zeros((2, 3, 84, 84), np.uint8)
    with pytest.raises(SystemExit, match="step_type"):
        lp.load_vd4rl(str(tmp_path))


def test_replay_windows_stay_inside_episodes(tmp_path):
    write_npz_episode(tmp_path / "a.npz", 6)
    write_npz_episode(tmp_path / "b.npz", 9)
    data = lp.load_vd4rl(str(tmp_path))
    replay = lp.Replay(data, batch_size=64, batch_length=5, device=torch.device("cpu"))
    batch = replay.sample()
    assert batch["images"].shape == (64, 5, 64, 64, 3) and batch["actions"].shape == (64, 5, 6)
    assert not batch["is_last"][:, :-1].any()  # never crosses an episode end
    assert batch["is_first"][:, 0].all() and not batch["is_first"][:, 1:].any()
    with pytest.raises(SystemExit, match="no episode is as long"):
        lp.Replay(data, 2, 10, torch.device("cpu"))


# ---------------------------------------------------------------- model
def test_rssm_shapes_and_latents():
    torch.manual_seed(0)
    wm = lp.WorldModel("tiny", act_dim=6, members=7)
    cfg = lp.SIZES["tiny"]
    batch = dict(images=torch.randint(0, 256, (3, 5, 64, 64, 3), dtype=torch.uint8), actions=torch.rand(3, 5, 6) * 2 - 1,
                 is_first=torch.zeros(3, 5, dtype=torch.bool))
    batch["is_first"][:, 0] = True
    deter, stoch, post = wm.posterior_states(batch)
    assert deter.shape == (3, 5, cfg["deter"]) and stoch.shape == (3, 5, cfg["stoch"] * cfg["classes"])
    assert post.shape == (3, 5, cfg["stoch"], cfg["classes"])
    torch.testing.assert_close(post.exp().sum(-1), torch.ones(3, 5, cfg["stoch"]))
    assert post.exp().min() >= 0.01 / cfg["classes"] - 1e-7  # unimix: every class keeps >= 1% / classes
    onehots = stoch.reshape(3, 5, cfg["stoch"], cfg["classes"]).detach()
    # straight-through one-hot samples: the forward value is one-hot up to float rounding of probs - sg(probs)
    torch.testing.assert_close(onehots, onehots.round(), rtol=0, atol=1e-6)
    assert (onehots.round().sum(-1) == 1).all()
    prior = wm.rssm.prior(deter.flatten(0, 1))
    assert prior.shape == (7, 15, cfg["stoch"], cfg["classes"])
    assert wm.decoder(torch.cat([deter, stoch], -1)).shape == (3, 5, 3, 64, 64)
    assert wm.encoder(batch["images"]).shape == (3, 5, wm.encoder.out_dim)


def test_12m_size_has_about_12m_parameters():
    wm = lp.WorldModel("12m", act_dim=6, members=1)
    count = sum(p.numel() for p in wm.parameters()) / 1e6
    assert 9 < count < 13, count  # one prior member; the ensemble adds ~0.7M per extra member


def test_prior_member_selection_matches_full_ensemble():
    torch.manual_seed(0)
    wm = lp.WorldModel("tiny", act_dim=6, members=7)
    deter = torch.randn(10, lp.SIZES["tiny"]["deter"])
    every = wm.rssm.prior(deter)
    for member in range(7):
        torch.testing.assert_close(wm.rssm.prior(deter, torch.tensor([member])), every[member])
    assert not torch.allclose(every[0], every[1])  # members are independent networks


def test_imagination_draws_one_uniform_member_per_step(monkeypatch):
    torch.manual_seed(0)
    wm = lp.WorldModel("tiny", act_dim=6, members=7)
    agent = lp.Agent(wm.feat_dim, 6, 16)
    drawn = []
    original = wm.rssm.imagine_step

    def spy(deter, stoch, action, member):
        drawn.append(member.clone())
        return original(deter, stoch, action, member)

    monkeypatch.setattr(wm.rssm, "imagine_step", spy)
    cfg = lp.SIZES["tiny"]
    deter, stoch = torch.zeros(8, cfg["deter"]), torch.zeros(8, cfg["stoch"] * cfg["classes"])
    with torch.no_grad():
        for _ in range(140):
            feats, pre_tanh, _ = lp.imagine(wm, agent, deter, stoch, horizon=5)
    assert feats.shape == (6, 8, wm.feat_dim) and pre_tanh.shape == (6, 8, 6)
    assert len(drawn) == 140 * 5 and all(m.shape == (1,) for m in drawn)  # one member for the whole batch
    counts = np.bincount(torch.cat(drawn).numpy(), minlength=7)
    assert counts.sum() == 700 and counts.min() > 60 and counts.max() < 140, counts  # ~100 each (uniform)


# ---------------------------------------------------------------- distributions and shared math
def test_twohot_round_trip():
    bins = lp.twohot_bins(255, torch.float64)
    assert bins.shape == (255,) and bins[127] == 0 and torch.equal(bins, -bins.flip(0))
    values = torch.cat([torch.tensor([0.0, 1e-6, -1e-6, 0.5, -3.0, 1234.5]), torch.randn(500, dtype=torch.float64) * 100])
    weights = lp.twohot_encode(values.double(), bins)
    assert (weights >= 0).all() and ((weights > 0).sum(-1) <= 2).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(len(values), dtype=torch.float64))
    torch.testing.assert_close((weights * bins).sum(-1), values.double(), rtol=1e-12, atol=1e-12)
    # decoding through logits: log of the two-hot weights is a softmax input whose mean is the value
    logits = torch.log(weights.clamp(min=1e-300))
    torch.testing.assert_close(lp.twohot_mean(logits, bins.float()), values.float(), rtol=1e-5, atol=1e-5)
    assert lp.twohot_mean(torch.zeros(3, 255), lp.twohot_bins()).abs().max() == 0  # symmetric sum: exact zero
    clipped = lp.twohot_encode(torch.tensor([1e12, -1e12], dtype=torch.float64), bins)
    assert clipped[0, -1] == 1 and clipped[1, 0] == 1


def test_lambda_returns_and_expectile_weights_match_leq_state():
    gen = torch.Generator().manual_seed(3)
    horizon, batch = 5, 64
    q = torch.randn(horizon + 1, batch, generator=gen, dtype=torch.float64)
    rewards = torch.rand(horizon, batch, generator=gen, dtype=torch.float64) * 2
    cont = 0.997 * (torch.rand(horizon, batch, generator=gen, dtype=torch.float64) > 0.1)
    alive = torch.cat([torch.ones(1, batch, dtype=torch.float64), torch.cumprod(cont, 0)])
    for gamma in (1.0, 0.997):
        ours = lp.lambda_returns(q, rewards, alive, gamma, 0.95)
        theirs = leq_state.lambda_returns(q, rewards, alive, gamma, 0.95)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    for tau in (0.1, 0.5, 0.9):
        torch.testing.assert_close(lp.expectile_weight(ours, q, tau), leq_state.expectile_weight(ours, q, tau))


def test_tanh_normal_log_prob_matches_torch_distributions():
    mean, std, x = torch.randn(7, 6), torch.rand(7, 6) + 0.1, torch.randn(7, 6)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, std), [torch.distributions.TanhTransform()]
    )
    torch.testing.assert_close(lp.tanh_normal_log_prob(mean, std, x), dist.log_prob(torch.tanh(x)).sum(-1), rtol=1e-3, atol=1e-3)


def test_default_dataset_path_is_vd4rl_layout():
    assert lp.default_dataset_path("cheetah_run-medium_expert") == "vd4rl_data/main/cheetah_run/medium_expert/64px"


def test_task_tau_table13_and_errors():
    assert lp.task_tau("walker_walk-random", None) == 0.5
    assert lp.task_tau("cheetah_run-medium_expert", None) == 0.5
    assert lp.task_tau("cheetah_run-medium", None) == 0.1
    assert lp.task_tau("humanoid_walk-random", 0.3) == 0.3
    with pytest.raises(SystemExit, match="pass --tau"):
        lp.task_tau("humanoid_walk-random", None)
    with pytest.raises(SystemExit, match="not '"):
        lp.parse_env_id("walker")


# ---------------------------------------------------------------- training
def tiny_args(tmp_path, **overrides):
    return replace(lp.Args(), size="tiny", batch_size=2, batch_length=6, device="cpu", compile=False,
                   world_model_path=str(tmp_path / "wm.pt"), **overrides)


def test_world_model_loss_falls_and_is_deterministic(tmp_path):
    scene = np.zeros((12, 64, 64, 3), np.uint8)  # a learnable picture, unlike uniform noise (MSE floor 1024)
    scene[:, :32] = (200, 40, 90)
    scene[:, 32:] = (30, 160, 220)
    for i in range(3):
        write_npz_episode(tmp_path / f"{i}.npz", 12, seed=i, image=scene)
    data = lp.load_vd4rl(str(tmp_path))
    args = tiny_args(tmp_path, lr=1e-2, warmup=1)

    def train(seed):
        torch.manual_seed(seed)
        wm = lp.WorldModel("tiny", 6, 7)
        replay = lp.Replay(data, 4, 6, torch.device("cpu"))
        updater = lp.Updater(lambda b: lp.world_model_loss(wm, b, args), wm.parameters(), args, 40, torch.device("cpu"))
        return [updater.update(replay.sample())["wm_loss"].item() for _ in range(40)]

    losses = train(0)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    assert train(0) == losses  # same seed, same numbers


def test_bf16_and_cudagraphs_need_cuda(tmp_path):
    for flag in ("bf16", "cudagraphs"):
        with pytest.raises(SystemExit, match=f"--{flag} needs a CUDA device"):
            lp.check_args(tiny_args(tmp_path, **{flag: True}))


def test_evaluations_of_neighbouring_seeds_play_disjoint_episodes():
    """Episode i of an evaluation is seeded with evaluation_seed(run seed, step) + i: seeds 1-20 at steps 0-20k
    never share one of 100 episodes (seed + 10_000 + i shared 9 of 10), and every seed fits dm_control's 32 bits."""
    firsts = sorted(lp.evaluation_seed(seed, step) for seed in range(1, 21) for step in range(0, 20_001, 1000))
    assert all(b - a >= 100 for a, b in zip(firsts, firsts[1:]))
    assert 0 <= firsts[0] and firsts[-1] + 100 < 2**32


def test_smoke_pipeline_collect_pretrain_behaviour_eval_resume(tmp_path, monkeypatch):
    """Collect a dm_control dataset, pretrain the world model, learn behaviour, evaluate one full
    500-step episode; then resume the run and continue the behaviour phase."""
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "walker_random"
    lp.main(tiny_args(tmp_path, collect=True, dataset_path=str(data_dir), collect_episodes=1, collect_episode_steps=12))
    assert len(list(data_dir.glob("*.npz"))) == 1
    args = tiny_args(tmp_path, dataset_path=str(data_dir), wm_steps=3, steps=3, eval_episodes=1, log_every=1)
    lp.main(args)
    (run_dir,) = (tmp_path / "runs").iterdir()
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if line["phase"] == "world_model"] == [1, 2, 3]
    assert [line["step"] for line in lines if line["phase"] == "behaviour"] == [1, 2, 3]
    assert all(np.isfinite(v) for line in lines for k, v in line.items() if k not in ("phase", "step"))
    final = json.loads((run_dir / "final_eval.json").read_text())
    assert len(final["scores"]) == 1 and 0 <= final["scores"][0] <= 100
    assert (tmp_path / "wm.pt").is_file() and (run_dir / "checkpoint.pt").is_file()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["tau"] == lp.TABLE13_TAU["walker_walk-random"] and config["args"]["steps"] == 3
    assert eval_rows(run_dir) == [["step", "policy", "episodes", "mean", "std"], ["3", "leq_final", "1", *final_pair(final)]]

    resumed = replace(args, steps=5, resume=str(run_dir / "checkpoint.pt"), eval_episode_steps=3)
    lp.main(resumed)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if line["phase"] == "world_model"] == [1, 2, 3]  # not retrained
    assert [line["step"] for line in lines if line["phase"] == "behaviour"] == [1, 2, 3, 4, 5]
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert checkpoint["agent_step"] == 5 and checkpoint["phase"] == "behaviour"
    final = json.loads((run_dir / "final_eval.json").read_text())
    assert eval_rows(run_dir)[1:] == [["5", "leq_final", "1", *final_pair(final)]]  # the step-3 final is superseded


def eval_rows(run_dir) -> list:
    return [line.split(",") for line in (run_dir / "eval.csv").read_text().splitlines()]


def final_pair(final: dict) -> list:
    return [str(final["mean"]), str(final["std"])]


def test_run_refuses_checkpoint_of_other_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, seed in (("a", 0), ("b", 1)):
        (tmp_path / name).mkdir()
        write_npz_episode(tmp_path / name / "e.npz", 8, seed=seed)
    lp.main(tiny_args(tmp_path, dataset_path=str(tmp_path / "a"), wm_steps=1, steps=0, eval_episodes=1,
                      eval_episode_steps=1))
    with pytest.raises(SystemExit, match="another dataset"):
        lp.main(tiny_args(tmp_path, dataset_path=str(tmp_path / "b"), wm_steps=1, steps=0, eval_episodes=1))


def test_collected_84px_shard_loads_as_64px(tmp_path):
    """--collect --collect-format 84px writes a DrQ-style shard that the 84px loader reads back (resized)."""
    lp.main(tiny_args(tmp_path, collect=True, dataset_path=str(tmp_path), collect_episodes=2, collect_episode_steps=3,
                      collect_format="84px"))
    with h5py.File(next(tmp_path.glob("*.hdf5"))) as shard:
        assert shard["observation"].shape == (8, 3, 84, 84) and shard["step_type"][()].tolist() == [0, 1, 1, 2] * 2
        stored_actions = shard["action"][()]
    data = lp.load_vd4rl(str(tmp_path))
    assert data.images.shape == (8, 64, 64, 3) and data.is_first.tolist() == [1, 0, 0, 0] * 2
    np.testing.assert_array_equal(data.actions[:3], stored_actions[1:4])
    assert np.all(np.abs(stored_actions[1:4]) <= 1) and np.all(stored_actions[0] == 0)


def test_training_stops_at_a_non_finite_loss_before_its_checkpoint(tmp_path):
    class PoisonedUpdater:  # step 3 leaves a NaN in its parameter and its loss
        def __init__(self):
            self.params, self.step = [torch.zeros(2)], 0

        def update(self, _batch):
            self.step += 1
            if self.step == 3:
                self.params[0][0] = float("nan")
            return {"loss": self.params[0].sum()}

    saved = []
    args = SimpleNamespace(log_every=2, save_every=2, eval_every=100)
    log = lp.MetricLog(tmp_path, None)
    replay = SimpleNamespace(sample=lambda: None)
    with pytest.raises(SystemExit, match=r"behaviour diverged at step 4: losses.loss, parameters\[0\] not finite.*"
                                         r"checkpoint.pt \(behaviour step 2\)"):
        lp.train_phase("behaviour", PoisonedUpdater(), replay, 10, log, args, save=lambda: saved.append(1),
                      checkpoint_path=tmp_path / "checkpoint.pt")
    assert saved == [1], "the checkpoint of step 2 only: the NaN state is never saved"
