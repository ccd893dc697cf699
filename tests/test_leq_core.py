"""LEQ core math on small stand-in networks: the actor's one-sweep gradient against the brute-force Jacobian
diagonal, the return targets, and each critic-loss term on a hand-made batch (leq-spec §5)."""

import copy

import pytest
import torch

from leq_state import (
    Actor,
    Args,
    Critic,
    EnsembleDynamics,
    ExpansionBuffer,
    Rollout,
    actor_loss_one_sweep,
    critic_loss_terms,
    critic_targets,
    imagine,
    lambda_returns,
    recursive_returns,
    cosine_lr,
    ema_copy,
    make_leq_update,
    make_model_transition,
    normalization_stats,
    return_coefficients,
)

OBS, ACT, BATCH = 3, 2, 64


class ToyModel:
    """A small random differentiable 'world model' with fixed noise and per-sample member choice per step,
    replayed identically in every rollout after reset() (like one draw of the real model)."""

    def __init__(self, horizon, generator):
        kw = dict(dtype=torch.float64, generator=generator)
        self.weights = torch.randn(3, OBS + ACT, OBS + 1, **kw) * 0.7
        self.noise = torch.randn(horizon, BATCH, OBS + 1, **kw) * 0.1
        self.member = torch.randint(0, 3, (horizon, BATCH), generator=generator)
        self.t = 0

    def reset(self):
        self.t = 0

    def __call__(self, obs, act):
        x = torch.cat([obs, act], -1)
        out = torch.tanh(torch.einsum("bi,bio->bo", x, self.weights[self.member[self.t]])) + self.noise[self.t]
        self.t += 1
        return obs + out[:, :OBS], out[:, OBS]


def make_toy(horizon, seed=0):
    gen = torch.Generator().manual_seed(seed)
    kw = dict(dtype=torch.float64, generator=gen)
    actor_w = torch.randn(OBS, ACT, **kw)
    critic_w = torch.randn(OBS + ACT, 8, **kw)
    critic_v = torch.randn(8, **kw)

    def actor(s):
        return torch.tanh(s @ actor_w)

    def critic(s, a):
        return torch.tanh(torch.cat([s, a], -1) @ critic_w) @ critic_v

    def terminated(s, a, s_next):
        return s_next[:, 0] > 0.6

    start = torch.randn(BATCH, OBS, **kw) * 0.5
    return actor, critic, ToyModel(horizon, gen), terminated, start


def perturbed_returns(actor, critic, model, terminated, start, horizon, gamma, alpha, beta):
    """Returns V_0..V_H of a rollout where a_t = pi(s_t) + delta_t, with the H+1 zero perturbations delta_t."""
    model.reset()
    deltas = torch.zeros(horizon + 1, BATCH, ACT, dtype=start.dtype, requires_grad=True)
    state, qs, rewards, alive = start, [], [], [torch.ones(BATCH, dtype=start.dtype)]
    for t in range(horizon + 1):
        action = actor(state) + deltas[t]
        qs.append(critic(state, action))
        if t < horizon:
            next_state, reward = model(state, action)
            alive.append(alive[-1] * (1 - terminated(state, action, next_state).double()))
            rewards.append(reward)
            state = next_state
    values = recursive_returns(torch.stack(qs), torch.stack(rewards), torch.stack(alive), gamma, alpha, beta)
    return values, deltas, torch.stack(alive)


def brute_force_action_gradients(actor, critic, model, terminated, start, horizon, gamma, alpha, beta):
    """g_t = dV_t/da_t by H+1 separate autograd calls, each taking row t of d V_t / d delta."""
    values, deltas, alive = perturbed_returns(actor, critic, model, terminated, start, horizon, gamma, alpha, beta)
    grads = [torch.autograd.grad(values[t].sum(), deltas, retain_graph=True)[0][t] for t in range(horizon + 1)]
    return torch.stack(grads), values.detach(), alive


@pytest.mark.parametrize("kind", ["lambda", "multi-step", "q"])
@pytest.mark.parametrize("horizon", [1, 5])
def test_one_sweep_gradient_equals_brute_force_jacobian_diagonal(kind, horizon):
    actor, critic, model, terminated, start = make_toy(horizon)
    gamma, lam = 0.97, 0.95
    alpha, beta = return_coefficients(kind, horizon, lam)
    expected, expected_values, alive = brute_force_action_gradients(
        actor, critic, model, terminated, start, horizon, gamma, alpha, beta
    )
    assert (alive[-1] == 0).any() and (alive[-1] == 1).any(), "the toy draw must terminate some rollouts mid-way"
    model.reset()
    _, values, _, gradients = actor_loss_one_sweep(
        actor, critic, model, terminated, start, horizon, gamma, alpha, beta, tau=0.3
    )
    torch.testing.assert_close(values, expected_values, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gradients, expected, rtol=1e-9, atol=1e-12)


def test_a_single_backward_of_summed_returns_is_not_the_per_step_gradient():
    """The reason for the sweep: d(sum_t V_t)/da_t mixes in dV_s/da_t for s < t (leq-spec §5)."""
    horizon = 5
    actor, critic, model, terminated, start = make_toy(horizon)
    alpha, beta = return_coefficients("lambda", horizon, 0.95)
    per_step, values, _ = brute_force_action_gradients(actor, critic, model, terminated, start, horizon, 0.97, alpha, beta)
    values, deltas, _ = perturbed_returns(actor, critic, model, terminated, start, horizon, 0.97, alpha, beta)
    (single,) = torch.autograd.grad(values.sum(), deltas)
    assert not torch.allclose(single, per_step)


def test_actor_loss_gradient_is_expectile_weighted_action_gradient():
    """d loss/d theta = -sum_t mean_B e_t g_t . dpi/dtheta, with e_t = tau if V_t > q_t else 1 - tau, e_H = 0.5."""
    horizon, tau = 3, 0.1
    _, critic, model, terminated, start = make_toy(horizon)
    weight = torch.randn(OBS, ACT, dtype=torch.float64, requires_grad=True)

    def actor(s):
        return torch.tanh(s @ weight)

    alpha, beta = return_coefficients("lambda", horizon, 0.95)
    model.reset()
    loss, values, q, g = actor_loss_one_sweep(actor, critic, model, terminated, start, horizon, 0.97, alpha, beta, tau)
    (got,) = torch.autograd.grad(loss, weight)
    e = torch.where(values > q, tau, 1 - tau)
    e[horizon] = 0.5
    model.reset()
    rollout_states = []
    state = start
    for t in range(horizon + 1):
        rollout_states.append(state)
        if t < horizon:
            state, _ = model(state, actor(state).detach())
    surrogate = sum(-((e[t, :, None] * g[t]) * actor(rollout_states[t].detach())).sum(-1).mean() for t in range(horizon + 1))
    (expected,) = torch.autograd.grad(surrogate, weight)
    torch.testing.assert_close(got, expected)


def test_lambda_coefficients_reproduce_lambda_returns():
    gen = torch.Generator().manual_seed(3)
    horizon = 10
    q = torch.randn(horizon + 1, 16, generator=gen, dtype=torch.float64)
    rewards = torch.randn(horizon, 16, generator=gen, dtype=torch.float64)
    alive = torch.cumprod(torch.rand(horizon + 1, 16, generator=gen, dtype=torch.float64) > 0.1, 0).double()
    alpha, beta = return_coefficients("lambda", horizon, 0.95)
    torch.testing.assert_close(
        recursive_returns(q, rewards, alive, 0.997, alpha, beta), lambda_returns(q, rewards, alive, 0.997, 0.95)
    )


def test_critic_target_kinds_by_hand():
    q = torch.tensor([[1.0], [2.0], [3.0]])  # H = 2
    rewards = torch.tensor([[10.0], [20.0]])
    alive = torch.tensor([[1.0], [1.0], [0.0]])  # terminated at step 1
    gamma = 0.5
    torch.testing.assert_close(critic_targets("one-step", q, rewards, alive, gamma, 0.9), torch.tensor([[11.0], [20.0]]))
    torch.testing.assert_close(critic_targets("multi-step", q, rewards, alive, gamma, 0.9), torch.tensor([[20.0], [20.0]]))
    lam = 0.9  # V_1 = (q_1 + λ (r_1 + 0)) / (1 + λ); V_0 = (q_0 + λ G^1 + λ^2 G^2) / (1 + λ + λ^2)
    v1 = (2.0 + lam * 20.0) / (1 + lam)
    v0 = (1.0 + lam * (10 + gamma * 2.0) + lam**2 * (10 + gamma * 20.0)) / (1 + lam + lam**2)
    torch.testing.assert_close(critic_targets("lambda", q, rewards, alive, gamma, lam), torch.tensor([[v0], [v1]]))
    with pytest.raises(ValueError, match="unknown critic target"):
        critic_targets("two-step", q, rewards, alive, gamma, lam)


def hand_made_case():
    """Q(s, a) = s_0 + a_0 and Q_bar(s, a) = s_0 (so every term has a value one can compute by hand)."""

    def critic(s, a):
        return s[:, 0] + a[:, 0]

    def critic_ema(s, a):
        return s[:, 0]

    batch = {
        "observations": torch.tensor([[1.0], [2.0]]),
        "actions": torch.tensor([[0.5], [-0.5]]),  # Q = 1.5, 1.5; Q_bar = 1, 2
        "rewards": torch.tensor([1.0, 0.0]),
        "masks": torch.tensor([1.0, 0.0]),
    }
    next_q = torch.tensor([2.0, 100.0])  # y = 1 + 0.5 * 2 = 2, and 0 (terminal)
    rollout = Rollout(
        states=torch.tensor([[[0.0], [1.0]], [[2.0], [3.0]], [[9.0], [9.0]]]),  # H = 2, B = 2
        actions=torch.tensor([[[1.0], [0.0]], [[0.0], [1.0]], [[9.0], [9.0]]]),  # Q_model = [[1, 1], [2, 4]]
        rewards=torch.zeros(2, 2),
        alive=torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]]),  # sample 1 terminated at step 0
    )
    targets = torch.tensor([[3.0, 0.0], [1.0, 5.0]])  # errors V - Q: [[2, -1], [-1, 1]]
    return critic, critic_ema, batch, next_q, rollout, targets


def test_critic_loss_terms_on_a_hand_made_batch():
    critic, critic_ema, batch, next_q, rollout, targets = hand_made_case()
    gamma, tau = 0.5, 0.1
    terms = critic_loss_terms(critic, critic_ema, batch, rollout, next_q, targets, gamma, tau)
    # dataset: 0.5 (y - Q)^2 = 0.5 * (0.5^2, 1.5^2)
    torch.testing.assert_close(terms["td_data"], torch.tensor(0.5 * (0.25 + 2.25) / 2))
    # imagined, weights w = [[1, 1], [0.5, 0]]: tau * 4 * 1, (1 - tau) * 1 * 1, (1 - tau) * 1 * 0.5, masked
    torch.testing.assert_close(terms["expectile_model"], torch.tensor((0.1 * 4 + 0.9 * 1 + 0.9 * 0.5) / 4))
    # EMA on data: (Q_bar - Q)^2 = (1 - 1.5)^2, (2 - 1.5)^2
    torch.testing.assert_close(terms["ema_data"], torch.tensor(0.25))
    # EMA imagined: Q_bar = [[0, 1], [2, 3]], Q = [[1, 1], [2, 4]]: (1, 0, 0, 1) weighted (1, 1, 0.5, 0)
    torch.testing.assert_close(terms["ema_model"], torch.tensor(1.0 / 4))


def test_imagine_keeps_fixed_shapes_and_masks_terminations():
    horizon = 4
    actor, _, model, terminated, start = make_toy(horizon)
    model.reset()
    rollout = imagine(actor, model, terminated, start, horizon)
    assert rollout.states.shape == (horizon + 1, BATCH, OBS)
    assert rollout.actions.shape == (horizon + 1, BATCH, ACT)
    assert rollout.rewards.shape == (horizon, BATCH) and rollout.alive.shape == (horizon + 1, BATCH)
    assert (rollout.alive[1:] <= rollout.alive[:-1]).all(), "alive never comes back"
    step0_term = terminated(start, actor(start), rollout.states[1])
    torch.testing.assert_close(rollout.alive[1], 1 - step0_term.double())


def test_expansion_buffer_is_a_fifo_of_the_last_expansions():
    """Every expansion writes R states per start (s_0..s_{R-1}); the oldest of `keep` expansions is replaced."""
    size, length, keep = 4, 3, 2
    buffer = ExpansionBuffer(obs_dim=1, size=size, length=length, keep=keep, device="cpu")
    marker = torch.zeros(1)

    def transition(s, a):  # s_{t+1} = s_t + 1, so a stored state tells its step
        return s + 1, torch.zeros(s.shape[0])

    for expansion in range(3):
        marker.fill_(100.0 * expansion)
        buffer.expand(lambda s: torch.zeros(s.shape[0], 1), transition, marker.expand(10, 1).clone(), chunk=3)
        assert buffer.filled.item() == min(expansion + 1, keep) * length * size
    stored = sorted(buffer.states.squeeze(1).tolist())
    assert stored == sorted([100.0 * e + t for e in (1, 2) for t in range(length) for _ in range(size)])
    samples = buffer.sample(1000)
    assert set(samples.squeeze(1).tolist()) <= set(stored)


def test_cosine_actor_lr_decays_to_zero_in_a_device_tensor():
    steps = torch.tensor([0.0, 50.0, 100.0, 150.0])
    torch.testing.assert_close(cosine_lr(3e-5, steps, 100), torch.tensor([3e-5, 1.5e-5, 0.0, 0.0]))


def test_goal_reward_replaces_the_model_reward_with_the_rule_on_the_imagined_next_state():
    """--imagined-reward goal: the same next state as the model's draw (same random numbers), reward 1 where the
    goal rule holds for it and 0 elsewhere, then the data's scale and shift; the model's reward is ignored."""
    obs_dim, act_dim, n = 3, 2, 256
    world_model = EnsembleDynamics(obs_dim, act_dim, hidden_dims=(16, 16), weight_decays=(0, 0, 0)).requires_grad_(False)
    obs, act = torch.randn(n, obs_dim), torch.rand(n, act_dim) * 2 - 1
    in_goal = lambda s, a, s_next: s_next[:, 0] > 0.0
    torch.manual_seed(3)
    model_next, model_reward = make_model_transition(world_model, "exact", 2.0, -1.0)(obs, act)
    torch.manual_seed(3)
    goal_next, goal_reward = make_model_transition(world_model, "exact", 2.0, -1.0, in_goal)(obs, act)
    torch.testing.assert_close(goal_next, model_next)
    expected = torch.where(model_next[:, 0] > 0.0, 1.0, -1.0)  # 2 * 1 - 1 inside, 2 * 0 - 1 outside
    torch.testing.assert_close(goal_reward, expected)
    assert 0 < int((expected > 0).sum()) < n and goal_reward.dtype == model_reward.dtype


def test_both_updates_use_the_pre_step_parameters():
    """One update step equals: both losses from copies of the old actor and critic (same random draws), then
    both optimisers step. Stepping one network before the other loss is computed would differ."""
    torch.manual_seed(0)
    n, obs_dim, act_dim = 64, 3, 2
    obs = torch.randn(n, obs_dim)
    data = {"obs": obs, "act": torch.rand(n, act_dim) * 2 - 1, "reward": torch.randn(n), "mask": torch.ones(n),
            "next_obs": obs + 0.1 * torch.randn(n, obs_dim)}
    stats = normalization_stats(obs.numpy(), data["act"].numpy())
    actor = Actor(stats["obs_mean"], stats["obs_std"], act_dim, hidden_dim=16)
    critic = Critic(stats["obs_act_mean"], stats["obs_act_std"], hidden_dim=16)
    critic_ema = ema_copy(critic)
    world_model = EnsembleDynamics(obs_dim, act_dim, hidden_dims=(16, 16), weight_decays=(0, 0, 0)).requires_grad_(False)
    transition = make_model_transition(world_model, "exact", 1.0, -1.0)

    def terminated(s, a, s_next):
        return s_next[:, 0] > 0.5

    args = Args(total_steps=10, batch_size=8, model_batch_size=8, horizon=3)
    starts = lambda b: obs[torch.randint(0, n, (b,))]
    old_actor, old_critic, old_ema = copy.deepcopy(actor), copy.deepcopy(critic), copy.deepcopy(critic_ema)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=torch.tensor(args.actor_lr))
    critic_opt = torch.optim.Adam(critic.parameters(), lr=args.critic_lr)
    update, _ = make_leq_update(actor, critic, critic_ema, actor_opt, critic_opt, data, starts, transition,
                                terminated, args, tau=0.3)
    torch.manual_seed(1)
    update()

    torch.manual_seed(1)  # the same draws, in the same order, on the old networks
    index = torch.randint(0, n, (args.batch_size,))
    start = starts(args.model_batch_size)
    alpha, beta = return_coefficients("lambda", args.horizon, args.lam)
    actor_loss, *_ = actor_loss_one_sweep(old_actor, old_critic, transition, terminated, start, args.horizon,
                                          args.gamma, alpha, beta, 0.3)
    rollout = imagine(old_actor, transition, terminated, start, args.horizon)
    with torch.no_grad():
        q = old_critic(rollout.states.flatten(0, 1), rollout.actions.flatten(0, 1)).view(args.horizon + 1, -1)
        targets = critic_targets("lambda", q, rollout.rewards, rollout.alive, args.gamma, args.lam)
        next_q = old_critic(data["next_obs"][index], old_actor(data["next_obs"][index]))
    batch = {"observations": data["obs"][index], "actions": data["act"][index], "rewards": data["reward"][index],
             "masks": data["mask"][index]}
    terms = critic_loss_terms(old_critic, old_ema, batch, rollout, next_q, targets, args.gamma, 0.3)
    critic_loss = 0.75 * (terms["td_data"] + terms["ema_data"]) + 0.25 * (terms["expectile_model"] + terms["ema_model"])
    actor_loss.backward()
    critic_loss.backward()
    torch.optim.Adam(old_actor.parameters(), lr=args.actor_lr).step()
    torch.optim.Adam(old_critic.parameters(), lr=args.critic_lr).step()
    for new, old in ((actor, old_actor), (critic, old_critic)):
        for p_new, p_old in zip(new.parameters(), old.parameters()):
            torch.testing.assert_close(p_new, p_old)
