"""λ-returns and the expectile loss against brute-force definitions (leq-spec §5, paper Eq. 1)."""

import numpy as np
import pytest
import torch

from leq_state import expectile_loss, expectile_weight, lambda_returns


def brute_force_lambda_returns(q, rewards, alive, gamma, lam):
    """V_t = sum_n λ^n G^(n)_t / sum_n λ^n over n = 0..H-t, with the n-step return
    G^(n)_t = sum_{k<n} γ^k m_{t+k} r_{t+k} + γ^n m_{t+n} q_{t+n} (G^(0)_t = q_t)."""
    horizon, batch = rewards.shape
    out = np.zeros((horizon + 1, batch))
    for t in range(horizon + 1):
        for b in range(batch):
            num = den = 0.0
            for n in range(horizon - t + 1):
                ret = sum(gamma**k * alive[t + k, b] * rewards[t + k, b] for k in range(n))
                ret += gamma**n * alive[t + n, b] * q[t + n, b] if n > 0 else q[t, b]
                num += lam**n * ret
                den += lam**n
            out[t, b] = num / den
    return out


@pytest.mark.parametrize("horizon", [1, 3, 10])
def test_lambda_returns_match_brute_force_with_terminations(horizon):
    gen = np.random.default_rng(horizon)
    batch = 32
    q = gen.normal(size=(horizon + 1, batch))
    rewards = gen.normal(size=(horizon, batch))
    terminated = gen.random((horizon, batch)) < 1 - 0.5 ** (1 / horizon)  # term_t of (s_t, a_t, s_{t+1}); half survive
    alive = np.ones((horizon + 1, batch))
    for t in range(horizon):
        alive[t + 1] = alive[t] * (1 - terminated[t])
    assert (alive[-1] == 0).any() and (alive[-1] == 1).any(), "the draw must contain mid-rollout terminations"
    gamma, lam = 0.997, 0.95
    expected = brute_force_lambda_returns(q, rewards, alive, gamma, lam)
    got = lambda_returns(*(torch.tensor(x, dtype=torch.float64) for x in (q, rewards, alive)), gamma, lam)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_lambda_returns_last_step_is_q_and_lambda_zero_is_one_step():
    q, rewards, alive = torch.randn(4, 5), torch.randn(3, 5), torch.ones(4, 5)
    values = lambda_returns(q, rewards, alive, 0.9, 0.0)
    torch.testing.assert_close(values[-1], q[-1])
    # λ = 0 keeps only n = 0: every V_t is q_t.
    torch.testing.assert_close(values, q)


def test_expectile_loss_weights_and_values():
    target = torch.tensor([2.0, -1.0, 0.5])
    prediction = torch.tensor([1.0, 1.0, 0.5])
    tau = 0.1
    # target above prediction: weight tau; below: 1 - tau; the loss is weight * (target - prediction)^2.
    torch.testing.assert_close(expectile_weight(target, prediction, tau), torch.tensor([0.1, 0.9, 0.9]))
    torch.testing.assert_close(expectile_loss(target, prediction, tau), torch.tensor([0.1 * 1.0, 0.9 * 4.0, 0.0]))


def test_expectile_loss_minimiser_is_the_lower_expectile():
    """Minimising mean L2_tau over a constant gives the tau-expectile, which for tau < 0.5 lies below the mean."""
    samples = torch.tensor([0.0, 1.0, 2.0, 10.0])
    tau = 0.1
    estimate = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.SGD([estimate], lr=0.05)
    for _ in range(3000):
        optimizer.zero_grad()
        expectile_loss(samples, estimate.expand(4), tau).mean().backward()
        optimizer.step()
    # The tau-expectile e solves tau * sum_{x>e}(x - e) = (1 - tau) * sum_{x<e}(e - x).
    e = estimate.item()
    above, below = samples[samples > e], samples[samples < e]
    assert abs(tau * (above - e).sum().item() - (1 - tau) * (e - below).sum().item()) < 1e-3
    assert e < samples.mean().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_expectile_weight_follows_the_input_dtype_exactly(dtype):
    target = torch.tensor([1.0, -1.0, 0.0], dtype=dtype)
    prediction = torch.zeros(3, dtype=dtype)
    weight = expectile_weight(target, prediction, 0.1)
    assert weight.dtype == dtype
    # in float64 the weights are exactly 0.1 and 0.9, not float32's 0.10000000149...
    torch.testing.assert_close(weight, torch.tensor([0.1, 0.9, 0.9], dtype=dtype), rtol=0, atol=0)
    assert expectile_loss(target, prediction, 0.1).dtype == dtype
