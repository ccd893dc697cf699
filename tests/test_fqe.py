"""fqe_pretrain.py and its `agent` block: networks, BC, FQE against closed-form values, checkpoints."""

import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import collect_dataset
import fqe_pretrain as F
import leq_state


def small_stats(obs_dim=3, act_dim=2):
    return F.normalization_stats(np.random.default_rng(0).normal(size=(64, obs_dim)) * 3 + 1,
                                 np.random.default_rng(1).uniform(-1, 1, size=(64, act_dim)))


def test_normalization_is_standardise_then_symlog():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(500, 3)) * [2.0, 0.5, 30.0] + [5.0, -3.0, 100.0]
    obs[:, 1] = 7.0  # a constant input keeps std 1 instead of dividing by zero
    act = rng.uniform(-1, 1, size=(500, 2))
    stats = F.normalization_stats(obs, act)
    np.testing.assert_allclose(stats["obs_mean"].numpy(), obs.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["obs_std"].numpy(), [obs[:, 0].std(), 1.0, obs[:, 2].std()], rtol=1e-6)
    obs_act = np.concatenate([obs, act], 1)
    np.testing.assert_allclose(stats["obs_act_std"].numpy()[3:], act.std(0), rtol=1e-6)
    x = torch.tensor(obs[:10], dtype=torch.float32)
    z = (obs[:10] - obs.mean(0)) / stats["obs_std"].numpy()
    expected = np.sign(z) * np.log(1 + np.abs(z))
    got = F.InputNormalizer(stats["obs_mean"], stats["obs_std"])(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert obs_act.shape[1] == stats["obs_act_mean"].numel()


def test_networks_architecture_and_batched_shapes():
    torch.manual_seed(0)
    stats = small_stats()
    actor = F.Actor(stats["obs_mean"], stats["obs_std"], 2)
    critic = F.Critic(stats["obs_act_mean"], stats["obs_act_std"])
    linears = [m for m in actor.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 256), (256, 256), (256, 256), (256, 2)]
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in actor.net)
    kinds = [type(m).__name__ for m in critic.net]
    assert kinds == ["Linear", "LayerNorm", "ReLU"] * 3 + ["Linear"]
    for m in linears:  # orthogonal with gain sqrt(2): W W^T = 2 I on the smaller side, zero bias
        w = m.weight.detach()
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        torch.testing.assert_close(gram, 2.0 * torch.eye(gram.shape[0]), atol=1e-4, rtol=0)
        assert torch.all(m.bias == 0)
    assert torch.all(actor.log_std == 0) and actor.log_std.shape == (2,)

    obs, act = torch.randn(4, 5, 3) * 10, torch.rand(4, 5, 2) * 2 - 1
    a = actor(obs)
    assert a.shape == (4, 5, 2) and a.abs().max() < 1
    q = critic(obs, act)
    assert q.shape == (4, 5) and q.dtype == torch.float32
    torch.testing.assert_close(q[2, 3], critic(obs[2, 3], act[2, 3]))
    torch.testing.assert_close(actor.mu(obs).tanh(), a)


def test_explore_noise_is_tanh_of_unit_gaussian_around_mu():
    torch.manual_seed(0)
    stats = small_stats()
    actor = F.Actor(stats["obs_mean"], stats["obs_std"], 2)
    obs = torch.zeros(1, 3).expand(20000, 3)
    pre_tanh = torch.atanh(actor.explore(obs).clamp(-1 + 1e-6, 1 - 1e-6))
    mu = actor.mu(obs[:1])
    torch.testing.assert_close(pre_tanh.mean(0), mu[0], atol=0.03, rtol=0)
    torch.testing.assert_close(pre_tanh.std(0), torch.ones(2), atol=0.03, rtol=0)


def test_ema_update_is_lerp():
    torch.manual_seed(0)
    stats = small_stats()
    critic = F.Critic(stats["obs_act_mean"], stats["obs_act_std"], hidden_dim=8)
    ema = F.ema_copy(critic)
    assert all(not p.requires_grad for p in ema.parameters())
    with torch.no_grad():
        for p in critic.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in ema.parameters()]
    F.ema_update_(ema, critic, 0.005)
    for old, new, p in zip(before, ema.parameters(), critic.parameters()):
        torch.testing.assert_close(new, 0.995 * old + 0.005 * p)


def test_fqe_loss_matches_its_formula():
    torch.manual_seed(0)
    stats = small_stats()
    critic = F.Critic(stats["obs_act_mean"], stats["obs_act_std"], hidden_dim=16)
    ema = F.ema_copy(critic)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.1 * torch.randn_like(p))
    policy = F.Actor(stats["obs_mean"], stats["obs_std"], 2, hidden_dim=16)
    batch = {"obs": torch.randn(7, 3), "act": torch.rand(7, 2), "reward": torch.randn(7),
             "mask": torch.tensor([1.0, 0, 1, 1, 0, 1, 1]), "next_obs": torch.randn(7, 3)}
    gamma = 0.9
    loss, td, ema_loss, q = F.fqe_loss(critic, ema, policy, batch, gamma)
    with torch.no_grad():
        next_a = policy(batch["next_obs"])
        y = batch["reward"] + gamma * batch["mask"] * critic(batch["next_obs"], next_a)
        q_ref = torch.stack([critic(batch["obs"][i], batch["act"][i]) for i in range(7)])
        bar = ema(batch["obs"], batch["act"])  # Q_bar(s, a), as the authors' update_q_fqe
    torch.testing.assert_close(td, ((q_ref - y) ** 2).mean())
    torch.testing.assert_close(ema_loss, ((q_ref - bar) ** 2).mean())
    torch.testing.assert_close(loss, td + ema_loss)
    loss.backward()  # the target is under stop-gradient: only Q(s, a) carries gradient
    assert all(p.grad is None for p in ema.parameters()) and all(p.grad is None for p in policy.parameters())


def chain_mdp(num_states=6, actions_per_state=400, gamma=0.99, seed=0):
    """A chain 0 -> 1 -> ... -> K-1 (terminal), one-hot observations, reward b_k + w_k a, policy a = p_k.
    Closed form: V(K) = 0, Q(k, a) = b_k + w_k a + gamma * V(k+1), V(k) = Q(k, p_k)."""
    rng = np.random.default_rng(seed)
    b, w, p = rng.uniform(-1, 1, num_states), rng.uniform(-1, 1, num_states), rng.uniform(-0.8, 0.8, num_states)
    values = np.zeros(num_states + 1)
    for k in reversed(range(num_states)):
        values[k] = b[k] + w[k] * p[k] + gamma * values[k + 1]

    def true_q(k, a):
        return b[k] + w[k] * a + gamma * values[k + 1]

    eye = np.eye(num_states, dtype=np.float32)
    k = np.repeat(np.arange(num_states), actions_per_state)
    a = rng.uniform(-1, 1, size=k.size).astype(np.float32)
    data = SimpleNamespace(
        observations=eye[k], actions=a[:, None], rewards=(b[k] + w[k] * a).astype(np.float32),
        terminals=(k == num_states - 1).astype(np.float32), next_observations=eye[np.minimum(k + 1, num_states - 1)],
        reward_scale=1.0, reward_shift=0.0,
    )
    policy_actions = torch.tensor(p, dtype=torch.float32)[:, None]

    def policy(obs):
        return policy_actions[obs.argmax(-1)]

    return data, policy, true_q, values


def test_fqe_converges_to_closed_form_q_on_a_chain():
    """FQE with the EMA regulariser recovers Q^pi of a 5-state chain within 0.05 (values span about 2) on a
    grid of states and actions inside the data's support, including actions the policy never takes.
    The regulariser vanishes when Q_bar = Q, so Q^pi is the fixed point for any EMA rate: the test uses
    0.02 instead of 0.005 (a 4x faster lag) and anneals the learning rate to keep the run short."""
    torch.manual_seed(0)
    gamma, num_states = 0.99, 5
    data, policy, true_q, values = chain_mdp(num_states=num_states, actions_per_state=100, gamma=gamma)
    tensors = F.transition_tensors(data, "cpu")
    stats = F.normalization_stats(data.observations, data.actions)
    critic = F.Critic(stats["obs_act_mean"], stats["obs_act_std"], hidden_dim=64, num_layers=2)
    ema = F.ema_copy(critic)
    optimizer = torch.optim.Adam(critic.parameters(), lr=3e-3)
    update = F.make_fqe_update(critic, ema, policy, optimizer, tensors, batch_size=256, gamma=gamma, ema_rate=0.02)
    F.run_updates(update, 1500, "FQE chain", 500)
    optimizer.param_groups[0]["lr"] = 3e-4
    final = F.run_updates(update, 500, "FQE chain, annealed", 500)
    grid_a = np.linspace(-0.9, 0.9, 9, dtype=np.float32)
    obs = torch.eye(num_states).repeat_interleave(len(grid_a), 0)
    act = torch.tensor(np.tile(grid_a, num_states))[:, None]
    with torch.no_grad():
        q = critic(obs, act).numpy()
    expected = np.array([true_q(k, a) for k in range(num_states) for a in grid_a])
    error = np.abs(q - expected).max()
    assert error < 0.05, f"max |Q - Q^pi| = {error:.4f} (values {values.round(3)}), final losses {final}"
    start_value = F.policy_value(critic, policy, torch.eye(num_states)[:1]).item()
    assert abs(start_value - values[0]) < 0.05


def test_bc_recovers_a_known_policy():
    """Behaviour cloning from exact expert actions a = tanh(W z + c) on badly scaled observations."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    scale, shift = np.array([2.0, 0.5, 30.0]), np.array([5.0, -3.0, 100.0])
    w, c = rng.normal(size=(3, 2)), rng.normal(size=2) * 0.3

    def expert(obs):
        return np.tanh(((obs - shift) / scale) @ w + c).astype(np.float32)

    obs = (rng.normal(size=(4000, 3)) * scale + shift).astype(np.float32)
    data = SimpleNamespace(observations=obs, actions=expert(obs), rewards=np.zeros(4000), terminals=np.zeros(4000),
                           next_observations=obs, reward_scale=1.0, reward_shift=0.0)
    stats = F.normalization_stats(data.observations, data.actions)
    actor = F.Actor(stats["obs_mean"], stats["obs_std"], 2, hidden_dim=64, num_layers=2)
    update = F.make_bc_update(actor, torch.optim.Adam(actor.parameters(), lr=3e-3), F.transition_tensors(data, "cpu"),
                              batch_size=256)
    F.run_updates(update, 1500, "BC", 500)
    test_obs = (rng.normal(size=(1000, 3)) * scale + shift).astype(np.float32)
    with torch.no_grad():
        mse = ((actor(torch.tensor(test_obs)).numpy() - expert(test_obs)) ** 2).mean()
    assert mse < 2e-3, f"held-out action MSE {mse:.5f} (action variance {expert(test_obs).var():.3f})"
    assert torch.all(actor.log_std == 0), "the loss never touches log_std: it stays at its initial 0"


def test_updates_are_deterministic_under_a_seed():
    def run():
        torch.manual_seed(3)
        data, policy, _, _ = chain_mdp(num_states=4, actions_per_state=50)
        stats = F.normalization_stats(data.observations, data.actions)
        critic = F.Critic(stats["obs_act_mean"], stats["obs_act_std"], hidden_dim=16)
        ema = F.ema_copy(critic)
        update = F.make_fqe_update(critic, ema, policy, torch.optim.Adam(critic.parameters(), lr=1e-3),
                                   F.transition_tensors(data, "cpu"), batch_size=32, gamma=0.99, ema_rate=0.005)
        for _ in range(20):
            update()
        return torch.cat([p.flatten() for p in critic.parameters()] + [p.flatten() for p in ema.parameters()])

    torch.testing.assert_close(run(), run(), rtol=0, atol=0)


def make_networks(seed=0):
    torch.manual_seed(seed)
    stats = small_stats()
    actor = F.Actor(stats["obs_mean"], stats["obs_std"], 2, hidden_dim=32, num_layers=2)
    critic = F.Critic(stats["obs_act_mean"], stats["obs_act_std"], hidden_dim=32, num_layers=2)
    ema = F.ema_copy(critic)
    with torch.no_grad():
        for p in list(critic.parameters()) + [actor.log_std]:
            p.add_(0.1 * torch.randn_like(p))
    return actor, critic, ema


def test_checkpoint_round_trip(tmp_path):
    actor, critic, ema = make_networks()
    path = tmp_path / "sub" / "pretrain.pt"
    args = F.Args(env_id="pointmaze-umaze-diverse", hidden_dim=32, num_layers=2)
    F.save_pretrain_checkpoint(path, actor, critic, ema, "abc123", args, metrics={"bc_loss": 0.5})
    assert not list(path.parent.glob(".*tmp*")), "atomic_save leaves no temporary file"
    actor2, critic2, ema2, checkpoint = leq_state.load_pretrain_checkpoint(path, "abc123", "cpu")
    obs, act = torch.randn(10, 3) * 5, torch.rand(10, 2) * 2 - 1
    torch.testing.assert_close(actor2(obs), actor(obs), rtol=0, atol=0)
    torch.testing.assert_close(critic2(obs, act), critic(obs, act), rtol=0, atol=0)
    torch.testing.assert_close(ema2(obs, act), ema(obs, act), rtol=0, atol=0)
    torch.testing.assert_close(actor2.log_std, actor.log_std, rtol=0, atol=0)
    assert not torch.equal(critic2(obs, act), ema2(obs, act))
    assert all(not p.requires_grad for p in ema2.parameters())
    assert checkpoint["args"]["env_id"] == "pointmaze-umaze-diverse" and checkpoint["metrics"]["bc_loss"] == 0.5
    torch.testing.assert_close(checkpoint["normalization"]["obs_std"], actor.normalizer.std)
    assert checkpoint["fingerprint"] == "abc123"


def test_checkpoint_from_another_dataset_or_kind_is_refused(tmp_path):
    actor, critic, ema = make_networks()
    path = tmp_path / "pretrain.pt"
    F.save_pretrain_checkpoint(path, actor, critic, ema, "fingerprint-of-dataset-A", {"env_id": "x"})
    with pytest.raises(SystemExit, match="another dataset"):
        leq_state.load_pretrain_checkpoint(path, "fingerprint-of-dataset-B", "cpu")
    F.atomic_save({"kind": "world_model", "fingerprint": "fingerprint-of-dataset-A"}, tmp_path / "wm.pt")
    with pytest.raises(SystemExit, match="not a pretrain checkpoint"):
        leq_state.load_pretrain_checkpoint(tmp_path / "wm.pt", "fingerprint-of-dataset-A", "cpu")
    with pytest.raises(SystemExit, match="does not exist"):
        leq_state.load_pretrain_checkpoint(tmp_path / "missing.pt", "fingerprint-of-dataset-A", "cpu")


def test_default_checkpoint_path():
    path = F.pretrain_checkpoint_path("antmaze-umaze-diverse", 3, "0123456789abcdef")
    assert path.as_posix() == "checkpoints/pretrain/antmaze-umaze-diverse__seed3__0123456789.pt"


def test_episode_start_indices():
    ends = np.array([0, 0, 1, 0, 1, 1, 0, 1], dtype=np.float32)
    np.testing.assert_array_equal(F.episode_start_indices(ends), [0, 3, 5, 6])


@pytest.mark.parametrize("field,value", [("bc_steps", -1), ("fqe_batch_size", 0), ("gamma", 1.5), ("fqe_lr", 0.0)])
def test_bad_arguments_are_refused_with_the_flag_name(field, value):
    args = F.Args(**{field: value})
    with pytest.raises(SystemExit, match=field.split("_")[0]):
        F.main(args)


def test_bc_evaluation_plays_the_run_seeds_own_episodes(monkeypatch):
    """The sanity check's evaluation resets its episodes from evaluation_seed(seed, 0), so runs of neighbouring
    seeds play independent episodes (seed + i shared all but one)."""
    seeds = []

    def fake_evaluate(task, data, policy, num_episodes, seed, gamma=None):
        seeds.append(seed)
        policy(np.zeros((num_episodes, 4), np.float32))
        return {"discounted_returns": np.zeros(num_episodes), "mean": 0.0, "std": 0.0}

    monkeypatch.setattr(F, "evaluate", fake_evaluate)
    task = F.get_task("pointmaze-umaze-diverse")
    data = SimpleNamespace(observations=np.zeros((6, 4), np.float32), episode_ends=np.array([0, 0, 1, 0, 0, 1]),
                           rewards=np.zeros(6), reward_scale=1.0, reward_shift=0.0)
    actor = F.Actor(torch.zeros(4), torch.ones(4), 2, hidden_dim=8, num_layers=2)
    critic = F.Critic(torch.zeros(6), torch.ones(6), hidden_dim=8, num_layers=2)
    for seed in (4, 5):
        F.sanity_check(task, data, actor, critic, F.Args(seed=seed, eval_episodes=3), "cpu")
    assert seeds == [F.evaluation_seed(4, 0), F.evaluation_seed(5, 0)]
    assert abs(seeds[0] - seeds[1]) >= 3


@pytest.fixture(scope="module")
def tiny_pointmaze(tmp_path_factory):
    """3000 transitions of generated pointmaze-umaze-diverse data in a private Minari root."""
    root = tmp_path_factory.mktemp("minari")
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        dataset_id = collect_dataset.generate_dataset(collect_dataset.get_task("pointmaze-umaze-diverse"), steps=3000, seed=0,
                                        dataset_id="test/pointmaze/umaze-tiny-v0")
        yield root, dataset_id
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH")
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def test_script_runs_end_to_end_and_leq_can_load_its_checkpoint(tiny_pointmaze, tmp_path):
    root, dataset_id = tiny_pointmaze
    checkpoint = tmp_path / "pretrain.pt"
    command = [sys.executable, str(Path(F.__file__)), "--env-id", "pointmaze-umaze-diverse", "--dataset-path",
               dataset_id, "--device", "cpu", "--bc-steps", "30", "--bc-batch-size", "64", "--fqe-steps", "30",
               "--hidden-dim", "32", "--num-layers", "2", "--eval-episodes", "2", "--log-interval", "10",
               "--checkpoint-path", str(checkpoint), "--no-compile"]
    env = {**os.environ, "MINARI_DATASETS_PATH": str(root)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FQE estimate at the environment's start states" in result.stdout, result.stdout
    assert "BC policy score" in result.stdout
    data = F.load_dataset(F.get_task("pointmaze-umaze-diverse"), dataset_id)
    actor, critic, ema, saved = leq_state.load_pretrain_checkpoint(checkpoint, data.fingerprint, "cpu")
    assert saved["args"]["bc_steps"] == 30 and saved["network"] == {"act_dim": 2, "hidden_dim": 32, "num_layers": 2,
                                                                "trainable_scaler": False}
    for key in ("bc_loss", "fqe_loss", "td_loss", "ema_loss"):
        assert math.isfinite(saved["metrics"][key])
    torch.testing.assert_close(actor.normalizer.mean, torch.tensor(data.observations.mean(0)), rtol=1e-4, atol=1e-5)
    with pytest.raises(SystemExit, match="another dataset"):
        leq_state.load_pretrain_checkpoint(checkpoint, "the fingerprint of some other dataset", "cpu")


@pytest.mark.slow
def test_compiled_steps_match_eager():
    """torch.compile changes speed, not numbers: three BC and FQE steps, eager against compiled."""
    import torch._inductor.config as inductor_config

    def run(use_compile):
        torch.manual_seed(0)
        data, _, _, _ = chain_mdp(num_states=4, actions_per_state=64)
        tensors = F.transition_tensors(data, "cpu")
        stats = F.normalization_stats(data.observations, data.actions)
        actor = F.Actor(stats["obs_mean"], stats["obs_std"], 1, hidden_dim=32)
        critic = F.Critic(stats["obs_act_mean"], stats["obs_act_std"], hidden_dim=32)
        ema = F.ema_copy(critic)
        bc = F.make_bc_update(actor, torch.optim.Adam(actor.parameters(), lr=1e-3), tensors, 64)
        fqe = F.make_fqe_update(critic, ema, actor, torch.optim.Adam(critic.parameters(), lr=1e-3), tensors, 64,
                                0.99, 0.005)
        bc, fqe = (F.compile_step(fn, use_compile, False, torch.device("cpu")) for fn in (bc, fqe))
        torch.manual_seed(1)
        losses = [bc()["bc_loss"] for _ in range(3)] + [fqe()["fqe_loss"] for _ in range(3)]
        return torch.stack(losses), torch.cat([p.flatten() for m in (actor, critic, ema) for p in m.parameters()])

    previous = inductor_config.fallback_random
    inductor_config.fallback_random = True  # the compiled graph draws the same minibatches as eager
    try:
        eager, compiled = run(False), run(True)
    finally:
        inductor_config.fallback_random = previous
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-4, atol=1e-5)


def test_cudagraphs_without_cuda_fails_before_loading_data():
    with pytest.raises(SystemExit, match="--cudagraphs needs a CUDA device"):
        F.main(F.Args(env_id="no-such-task", device="cpu", cudagraphs=True))
