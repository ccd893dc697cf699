"""The world model (train_world_model.py, world_model block): numerics against brute force, OfflineRL-Kit parity,
early-stopping rules on scripted holdout losses, routing statistics, checkpoints."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import collect_dataset
import leq_state
import train_world_model as wm


def small_model(obs_dim=3, act_dim=2, members=4, elites=3, hidden=(16, 16), seed=0):
    torch.manual_seed(seed)
    model = wm.EnsembleDynamics(obs_dim, act_dim, members, elites, hidden, (1e-4,) * (len(hidden) + 1))
    with torch.no_grad():  # non-trivial biases and bounds, so the brute force checks every term
        for bias in model.biases:
            bias.normal_(0, 0.1)
        model.max_logvar.add_(torch.randn_like(model.max_logvar) * 0.1)
        model.input_mean.normal_()
        model.input_std.uniform_(0.5, 2.0)
    return model


def member_forward(model, member, x):
    """Brute force: one member, plain matmuls, OfflineRL-Kit's soft clamp."""
    for i, (weight, bias) in enumerate(zip(model.weights, model.biases)):
        x = x @ weight[member] + bias[member, 0]
        if i < len(model.weights) - 1:
            x = x * torch.sigmoid(x)
    mean, logvar = x.chunk(2, dim=-1)
    logvar = model.max_logvar - F.softplus(model.max_logvar - logvar)
    logvar = model.min_logvar + F.softplus(logvar - model.min_logvar)
    return mean, logvar


def linear_gaussian_data(n, obs_dim=3, act_dim=2, seed=0):
    """x' = x + M [x; a] + noise, reward = w . [x; a] + noise, with known per-dimension noise scales."""
    system = np.random.default_rng(1234)  # the same system for every seed
    delta_map = system.normal(scale=0.5, size=(obs_dim + act_dim, obs_dim)).astype(np.float32)
    reward_map = system.normal(size=obs_dim + act_dim).astype(np.float32)
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32)
    noise_std = np.array([0.05, 0.1, 0.2, 0.1], dtype=np.float32)[: obs_dim + 1]
    inputs = np.concatenate([obs, act], axis=1)
    noise = rng.normal(size=(n, obs_dim + 1)).astype(np.float32) * noise_std
    next_obs = obs + inputs @ delta_map + noise[:, :obs_dim]
    reward = inputs @ reward_map + noise[:, obs_dim]
    return dict(obs=obs, act=act, reward=reward, next_obs=next_obs, delta_map=delta_map, reward_map=reward_map,
                noise_std=noise_std)


def test_batched_forward_equals_per_member_loop():
    model = small_model()
    x2 = torch.randn(9, 5)
    x3 = torch.randn(4, 9, 5)
    mean2, logvar2 = model(x2)
    mean3, logvar3 = model(x3)
    for member in range(4):
        ref_mean, ref_logvar = member_forward(model, member, x2)
        torch.testing.assert_close(mean2[member], ref_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logvar2[member], ref_logvar, rtol=1e-5, atol=1e-6)
        ref_mean, ref_logvar = member_forward(model, member, x3[member])
        torch.testing.assert_close(mean3[member], ref_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logvar3[member], ref_logvar, rtol=1e-5, atol=1e-6)
    subset = torch.tensor([3, 1])
    mean_s, logvar_s = model(x2, members=subset)
    torch.testing.assert_close(mean_s, mean2[subset])
    torch.testing.assert_close(logvar_s, logvar2[subset])
    assert mean2.shape == (4, 9, 4) and mean2.dtype == torch.float32


def test_init_matches_offlinerlkit():
    torch.manual_seed(0)
    model = wm.EnsembleDynamics(11, 3)  # paper sizes: 7 x (14 -> 200 x 4 -> 24)
    assert [tuple(w.shape) for w in model.weights] == [(7, 14, 200)] + [(7, 200, 200)] * 3 + [(7, 200, 24)]
    for weight, bias in zip(model.weights, model.biases):
        assert torch.count_nonzero(bias) == 0
        expected_std = 1 / (2 * weight.shape[1] ** 0.5)
        assert abs(weight.std().item() - expected_std) < 0.05 * expected_std
    assert torch.all(model.max_logvar == 0.5) and torch.all(model.min_logvar == -10)


def test_masked_loss_equals_offlinerlkit_loss_on_the_partial_batch():
    """A padded, masked batch gives the loss and gradients OfflineRL-Kit computes on the short batch."""
    model = small_model()
    inputs, targets = torch.randn(4, 10, 5), torch.randn(4, 10, 4)
    real = 7
    padded_inputs = torch.cat([inputs[:, :real], inputs[:, :3]], dim=1)
    padded_targets = torch.cat([targets[:, :real], targets[:, :3]], dim=1)
    mask = (torch.arange(10) < real).float()
    loss = wm.ensemble_loss(model, padded_inputs, padded_targets, mask, 0.01)
    grads = torch.autograd.grad(loss, list(model.parameters()))

    mean, logvar = model(inputs[:, :real])  # OfflineRL-Kit's formula (anchors 4.3 item 5), written out
    reference = ((mean - targets[:, :real]) ** 2 * torch.exp(-logvar)).mean(dim=(1, 2)).sum()
    reference = reference + logvar.mean(dim=(1, 2)).sum()
    reference = reference + sum(wd * 0.5 * (w**2).sum() for wd, w in zip(model.weight_decays, model.weights))
    reference = reference + 0.01 * model.max_logvar.sum() - 0.01 * model.min_logvar.sum()
    reference_grads = torch.autograd.grad(reference, list(model.parameters()))
    torch.testing.assert_close(loss, reference)
    for grad, reference_grad in zip(grads, reference_grads):
        torch.testing.assert_close(grad, reference_grad, rtol=1e-4, atol=1e-6)


def reference_training(model, data, epochs, batch_size=64):
    """OfflineRL-Kit's loop written plainly (short last batch, per-minibatch tensors), drawing the same random
    numbers in the same order as train_dynamics."""
    obs, act = torch.as_tensor(data["obs"]), torch.as_tensor(data["act"])
    inputs = torch.cat([obs, act], 1)
    targets = torch.cat([torch.as_tensor(data["next_obs"]) - obs, torch.as_tensor(data["reward"])[:, None]], 1)
    n = len(inputs)
    holdout = min(int(n * 0.2), 1000)
    train_size = n - holdout
    split = torch.randperm(n)
    train_inputs, train_targets = inputs[split[:train_size]], targets[split[:train_size]]
    mean, std = train_inputs.mean(0), train_inputs.std(0, unbiased=False)
    train_inputs = (train_inputs - mean) / std
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    bootstrap = torch.randint(train_size, (model.num_members, train_size))
    losses = []
    for _ in range(epochs):
        epoch_losses = []
        for start in range(0, train_size, batch_size):
            idx = bootstrap[:, start : start + batch_size]
            x, y = train_inputs[idx], train_targets[idx]
            mu, logvar = model(x)
            loss = ((mu - y) ** 2 * torch.exp(-logvar)).mean(dim=(1, 2)).sum() + logvar.mean(dim=(1, 2)).sum()
            loss = loss + model.decay_loss() + 0.01 * model.max_logvar.sum() - 0.01 * model.min_logvar.sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_losses.append(loss.item())
        losses.append(np.mean(epoch_losses))
        bootstrap = bootstrap.gather(1, torch.rand(bootstrap.shape).argsort(dim=1))
    return losses


def test_training_matches_plain_offlinerlkit_loop():
    data = linear_gaussian_data(700)  # 560 train transitions: the last of 9 minibatches has 48
    model = small_model()
    reference_model = copy.deepcopy(model)
    torch.manual_seed(5)
    # a threshold of -inf snapshots every epoch, so the restored weights are the last epoch's
    result = wm.train_dynamics(model, data["obs"], data["act"], data["reward"], data["next_obs"], batch_size=64,
                               max_epochs=2, improvement_threshold=float("-inf"), progress=False)
    torch.manual_seed(5)
    reference_losses = reference_training(reference_model, data, epochs=2)
    assert [h["train_loss"] for h in result["history"]] == pytest.approx(reference_losses, rel=1e-4)
    for param, reference_param in zip([*model.weights, *model.biases], [*reference_model.weights, *reference_model.biases]):
        torch.testing.assert_close(param, reference_param, rtol=1e-4, atol=1e-5)


def test_recovers_linear_gaussian_mean_and_noise():
    """Tolerances, per dimension and elite, on fresh inputs: squared error of the mean below 15% of the noise
    variance (RMS error < 0.39 noise std), predicted variance within [0.8, 1.35] x the true one. Trained 80
    epochs (early stopping watches the mean's MSE and stops before the variance has settled)."""
    torch.manual_seed(0)
    data = linear_gaussian_data(6000)
    model = wm.EnsembleDynamics(3, 2, 2, 2, (64, 64), (2.5e-5, 5e-5, 1e-4))
    wm.train_dynamics(model, data["obs"], data["act"], data["reward"], data["next_obs"], max_epochs=80,
                      max_epochs_since_update=80, progress=False)
    fresh = linear_gaussian_data(2000, seed=1)
    obs, act = torch.as_tensor(fresh["obs"]), torch.as_tensor(fresh["act"])
    inputs = np.concatenate([fresh["obs"], fresh["act"]], 1)
    true_mean = np.concatenate([inputs @ fresh["delta_map"], (inputs @ fresh["reward_map"])[:, None]], 1)
    with torch.no_grad():
        mean, logvar = model(model.normalize(obs, act), members=model.elites)
    noise_var = torch.as_tensor(fresh["noise_std"] ** 2)
    mean_error = (mean - torch.as_tensor(true_mean)).square().mean(dim=1)  # [elites, dims]
    assert torch.all(mean_error < 0.15 * noise_var), mean_error / noise_var
    variance_ratio = logvar.exp().mean(dim=1) / noise_var
    assert torch.all((variance_ratio > 0.8) & (variance_ratio < 1.35)), variance_ratio


SCRIPT = [  # holdout MSE per member (3 members) per epoch; threshold 1%, patience 3
    [1.0, 1.0, 1.0],  # 1: all improve on 1e10
    [0.995, 0.9, 1.2],  # 2: member 1 improves (10%); member 0 only 0.5%: not an improvement
    [0.985, 0.95, 0.9905],  # 3: member 0 1.5% -> 0.985; member 2 0.95%: no
    [0.98, 0.92, 1.5],  # 4: nothing (member 0 0.5% from 0.985) -> 1 epoch since update
    [0.979, 0.899, 1.0],  # 5: member 1 0.11%: no -> 2
    [0.97, 0.95, 0.98],  # 6: member 0 1.5% and member 2 2% improve -> 0
    [0.965, 0.96, 0.975],  # 7: nothing -> 1
    [0.97, 0.9, 0.971],  # 8: nothing -> 2
    [0.99, 0.8915, 0.99],  # 9: nothing (member 1 0.94% from 0.9) -> 3: stop
    [0.1, 0.1, 0.1],  # never reached
]


def scripted_training(monkeypatch, max_epochs=None):
    losses = iter(SCRIPT)
    monkeypatch.setattr(wm, "holdout_mse", lambda model, x, y: torch.tensor(next(losses)))
    model = small_model(members=3, elites=2)
    data = linear_gaussian_data(300)
    weights_after_epoch = []
    result = wm.train_dynamics(
        model, data["obs"], data["act"], data["reward"], data["next_obs"], batch_size=64, max_epochs_since_update=3,
        max_epochs=max_epochs, progress=False,
        log_epoch=lambda stats: weights_after_epoch.append([p.detach().clone() for p in [*model.weights, *model.biases]]),
    )
    return model, result, weights_after_epoch


def test_early_stopping_and_snapshot_restore_follow_the_rules(monkeypatch):
    model, result, weights_after_epoch = scripted_training(monkeypatch)
    assert result["epochs"] == 9
    assert [h["epochs_since_update"] for h in result["history"]] == [0, 0, 0, 1, 2, 0, 1, 2, 3]
    assert result["holdout_losses"] == pytest.approx([0.97, 0.9, 0.98])
    snapshot_epoch = {0: 6, 1: 2, 2: 6}  # last epoch with a >1% improvement, per member
    for member, epoch in snapshot_epoch.items():
        for param, saved in zip([*model.weights, *model.biases], weights_after_epoch[epoch - 1]):
            torch.testing.assert_close(param[member], saved[member], rtol=0, atol=0)
        assert not torch.equal(model.weights[0][member], weights_after_epoch[-1][0][member])
    assert result["elites"] == [1, 0] and model.elites.tolist() == [1, 0]  # the two lowest best losses


def test_max_epochs_caps_the_run(monkeypatch):
    _, result, _ = scripted_training(monkeypatch, max_epochs=4)
    assert result["epochs"] == 4
    assert result["holdout_losses"] == pytest.approx([0.985, 0.9, 1.0])


def test_elites_are_the_lowest_holdout_members():
    torch.manual_seed(3)
    data = linear_gaussian_data(1500)
    model = wm.EnsembleDynamics(3, 2, 5, 3, (16,), (1e-4, 1e-4))
    result = wm.train_dynamics(model, data["obs"], data["act"], data["reward"], data["next_obs"], max_epochs=3,
                               progress=False)
    assert result["elites"] == list(np.argsort(result["holdout_losses"])[:3])
    assert model.elites.tolist() == result["elites"]


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path):
    model = small_model()
    model.elites.copy_(torch.tensor([2, 0, 3]))
    path = wm.world_model_path("pointmaze-umaze-diverse", 1, "abcdef0123456789")
    assert path.as_posix() == "checkpoints/world_model/pointmaze-umaze-diverse__seed1__abcdef0123.pt"
    path = tmp_path / path
    wm.save_world_model(path, model, "abcdef0123456789", holdout_losses=[0.1] * 4)
    loaded, checkpoint = leq_state.load_world_model(path, "abcdef0123456789", "cpu")
    assert checkpoint["kind"] == "world_model" and checkpoint["holdout_losses"] == [0.1] * 4
    obs, act, noise = torch.randn(12, 3), torch.randn(12, 2), torch.randn(12, 4)
    for routing in leq_state.ROUTINGS:
        route = leq_state.draw_route(model, 12, routing)
        for got, expected in zip(leq_state.transition(loaded, obs, act, route, noise, routing),
                                 leq_state.transition(model, obs, act, route, noise, routing)):
            assert torch.equal(got, expected)
    with pytest.raises(SystemExit, match="another dataset"):
        leq_state.load_world_model(path, "fedcba9876543210", "cpu")


@pytest.mark.parametrize("batch", [12, 10, 7])
def test_balanced_routing_shares_and_uniformity(batch):
    model = small_model()  # 3 elites
    torch.manual_seed(0)
    draws = torch.stack([leq_state.draw_route(model, batch, "balanced") for _ in range(3000)])
    counts = F.one_hot(draws, 3).sum(dim=1)  # [draws, elites]
    assert counts.max() - counts.min() <= (0 if batch % 3 == 0 else 1)
    frequency = F.one_hot(draws, 3).float().mean(dim=0)  # per sample and elite, should be 1/3
    assert torch.all((frequency - 1 / 3).abs() < 0.04), frequency  # ~4.7 standard errors at 3000 draws


def test_exact_routing_is_uniform_per_sample():
    model = small_model()
    torch.manual_seed(0)
    draws = torch.stack([leq_state.draw_route(model, 8, "exact") for _ in range(3000)])
    frequency = F.one_hot(draws, 3).float().mean(dim=0)
    assert torch.all((frequency - 1 / 3).abs() < 0.04)


@pytest.mark.parametrize("batch", [9, 10])
def test_balanced_and_exact_transitions_agree_on_the_same_draws(batch):
    """Same route and noise: the grouped (balanced) computation equals per-sample selection, values and grads,
    and equals the routed member's brute-force forward."""
    model = small_model()
    model.elites.copy_(torch.tensor([3, 0, 2]))
    route = leq_state.draw_route(model, batch, "balanced")
    noise = torch.randn(batch, 4)
    results = {}
    for routing in leq_state.ROUTINGS:
        obs, act = torch.randn(batch, 3, generator=torch.Generator().manual_seed(1)).requires_grad_(), \
            torch.randn(batch, 2, generator=torch.Generator().manual_seed(2)).requires_grad_()
        next_obs, reward = leq_state.transition(model, obs, act, route, noise, routing)
        (next_obs.square().sum() + reward.sum()).backward()
        results[routing] = (next_obs, reward, obs.grad, act.grad)
    for exact, balanced in zip(results["exact"], results["balanced"]):
        torch.testing.assert_close(balanced, exact, rtol=1e-5, atol=1e-6)
    obs = torch.randn(batch, 3, generator=torch.Generator().manual_seed(1))
    act = torch.randn(batch, 2, generator=torch.Generator().manual_seed(2))
    x = model.normalize(obs, act)
    for i in range(batch):
        mean, logvar = member_forward(model, model.elites[route[i]].item(), x[i])
        sample = mean + torch.exp(0.5 * logvar) * noise[i]
        torch.testing.assert_close(results["exact"][0][i], obs[i] + sample[:3], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(results["exact"][1][i], sample[3], rtol=1e-5, atol=1e-6)
    assert results["exact"][2].abs().sum() > 0 and results["exact"][3].abs().sum() > 0


def test_sample_step_shapes_and_unknown_routing():
    model = small_model()
    next_obs, reward = leq_state.sample_step(model, torch.randn(6, 3), torch.randn(6, 2), "balanced")
    assert next_obs.shape == (6, 3) and reward.shape == (6,)
    with pytest.raises(ValueError, match="routing"):
        leq_state.draw_route(model, 6, "random")


def test_bad_data_gets_a_clear_error():
    model = small_model()
    data = linear_gaussian_data(100)
    with pytest.raises(ValueError, match="inconsistent data"):
        wm.train_dynamics(model, data["obs"], data["act"][:50], data["reward"], data["next_obs"], progress=False)


def test_cudagraphs_without_cuda_fails_loudly():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    data = linear_gaussian_data(100)
    with pytest.raises(SystemExit, match="cudagraphs needs a CUDA device"):
        wm.train_dynamics(small_model(), data["obs"], data["act"], data["reward"], data["next_obs"],
                          use_cudagraphs=True, progress=False)


@pytest.fixture(scope="module")
def pointmaze_data(tmp_path_factory):
    """A small real pointmaze dataset generated by the task block into a private Minari folder."""
    root = tmp_path_factory.mktemp("minari")
    patch = pytest.MonkeyPatch()
    patch.setenv("MINARI_DATASETS_PATH", str(root))
    task = wm.get_task("pointmaze-umaze-diverse")
    collect_dataset.generate_dataset(task, steps=3000, seed=0)
    yield task, wm.load_dataset(task)
    patch.undo()


def test_script_trains_saves_and_reloads(pointmaze_data, tmp_path, monkeypatch, capsys):
    task, data = pointmaze_data
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(wm.minari_root()))
    monkeypatch.chdir(tmp_path)  # the default checkpoint path is relative
    args = wm.Args(env_id=task.env_id, hidden_dims=(16, 16), weight_decays=(2.5e-5, 5e-5, 1e-4), max_epochs=3,
                   compile=False)
    path = wm.main(args)
    assert path == wm.world_model_path(task.env_id, 1, data.fingerprint)
    out = capsys.readouterr().out
    assert "epoch 3: train loss" in out and "holdout MSE per elite" in out and "ETA" in out
    model, checkpoint = leq_state.load_world_model(path, data.fingerprint, "cpu")
    assert checkpoint["epochs"] == 3 and checkpoint["env_id"] == task.env_id
    assert sorted(checkpoint["elites"]) == sorted(model.elites.tolist()) and len(checkpoint["holdout_losses"]) == 7
    assert checkpoint["args"]["hidden_dims"] == (16, 16) and "torch" in checkpoint["versions"]
    with torch.no_grad():
        obs = torch.as_tensor(data.observations[:64])
        next_obs, reward = leq_state.sample_step(model, obs, torch.as_tensor(data.actions[:64]), "balanced")
    assert torch.isfinite(next_obs).all() and torch.isfinite(reward).all()
    with pytest.raises(SystemExit, match="another dataset"):
        leq_state.load_world_model(path, "0" * 40, "cpu")


def test_compiled_training_gives_the_eager_numbers():
    data = linear_gaussian_data(700)
    losses = {}
    for use_compile in (False, True):
        torch.manual_seed(0)
        model = wm.EnsembleDynamics(3, 2, 2, 2, (8,), (1e-4, 1e-4))
        result = wm.train_dynamics(model, data["obs"], data["act"], data["reward"], data["next_obs"], max_epochs=2,
                                   use_compile=use_compile, progress=False)
        losses[use_compile] = [h["train_loss"] for h in result["history"]] + result["holdout_losses"]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_script_refuses_bad_arguments_before_loading_data():
    with pytest.raises(SystemExit, match="one value per layer"):
        wm.main(wm.Args(hidden_dims=(200, 200)))
    with pytest.raises(SystemExit, match="num-elites"):
        wm.main(wm.Args(num_elites=8))
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="cudagraphs needs a CUDA device"):
            wm.main(wm.Args(cudagraphs=True))


def test_track_logs_every_epoch(pointmaze_data, tmp_path, monkeypatch):
    task, _ = pointmaze_data
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(wm.minari_root()))

    class FakeRun:
        def __init__(self):
            self.logged, self.summary, self.finished = [], {}, False

        def log(self, metrics, step):
            self.logged.append((step, metrics))

        def finish(self):
            self.finished = True

    run = FakeRun()
    monkeypatch.setattr(wm, "init_tracking", lambda args, run_name: run if args.track else None)
    args = wm.Args(env_id=task.env_id, hidden_dims=(8,), weight_decays=(1e-4, 1e-4), max_epochs=2, track=True,
                   compile=False, checkpoint_path=str(tmp_path / "model.pt"))
    wm.main(args)
    assert [step for step, _ in run.logged] == [1, 2] and run.finished
    assert {"world_model/train_loss", "world_model/elites_holdout_mse", "world_model/holdout_mse_6"} <= set(run.logged[0][1])
    assert "world_model/elites_holdout_mse" in run.summary


def test_offlinerlkit_export_predicts_like_the_model(tmp_path):
    """The exported dynamics.pth + mu/std, run the way OfflineRL-Kit runs them (einsum layers, Swish, soft clamp,
    scaler (x - mu) / std), give our model's predictions."""
    model = small_model()
    model.elites.copy_(torch.tensor([2, 0, 1]))
    wm.export_offlinerlkit(model, tmp_path)
    state = torch.load(tmp_path / "dynamics.pth")
    mu, std = np.load(tmp_path / "mu.npy"), np.load(tmp_path / "std.npy")
    assert set(state) == {f"{layer}.{name}" for layer in ["backbones.0", "backbones.1", "output_layer"]
                          for name in ["weight", "bias", "saved_weight", "saved_bias"]} | {"max_logvar", "min_logvar", "elites"}
    assert mu.shape == (1, 5) and state["elites"].tolist() == [2, 0, 1] and state["elites"].dtype == torch.int64
    obs, act = torch.randn(6, 3), torch.randn(6, 2)
    x = torch.as_tensor((np.concatenate([obs.numpy(), act.numpy()], 1) - mu) / std, dtype=torch.float32)
    for name in ["backbones.0", "backbones.1"]:
        x = torch.einsum("ij,bjk->bik" if x.dim() == 2 else "bij,bjk->bik", x, state[f"{name}.weight"])
        x = x + state[f"{name}.bias"]
        x = x * torch.sigmoid(x)
    mean, logvar = (torch.einsum("bij,bjk->bik", x, state["output_layer.weight"]) + state["output_layer.bias"]).chunk(2, -1)
    logvar = state["max_logvar"] - F.softplus(state["max_logvar"] - logvar)
    logvar = state["min_logvar"] + F.softplus(logvar - state["min_logvar"])
    ours_mean, ours_logvar = model(model.normalize(obs, act))
    torch.testing.assert_close(mean, ours_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logvar, ours_logvar, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_cudagraph_training_gives_the_eager_numbers_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    data = linear_gaussian_data(1500)
    losses = {}
    for use_cudagraphs in (False, True):
        torch.manual_seed(0)
        model = wm.EnsembleDynamics(3, 2, 3, 2, (32, 32), (1e-4,) * 3, device="cuda")
        result = wm.train_dynamics(model, data["obs"], data["act"], data["reward"], data["next_obs"], max_epochs=3,
                                   use_compile=use_cudagraphs, use_cudagraphs=use_cudagraphs, progress=False)
        losses[use_cudagraphs] = [h["train_loss"] for h in result["history"]] + result["holdout_losses"]
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)
