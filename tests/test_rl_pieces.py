"""The first pieces of MAML for reinforcement learning, against hand computations and closed forms: the 2D
navigation environment, the authors' baseline and GAE advantages, Gaussian log-probabilities and KL divergences."""

import math

import numpy as np
import pytest
import tensorflow as tf

from maml_tf.core import gaussian
from maml_tf.envs import ENVIRONMENTS, make_environment
from maml_tf.rl.advantages import advantages, baseline_features, discounted_cumsum, fit_linear_baseline


# ------------------------------------------------------------------ navigation
def authors_episode(goal, actions):
    """One episode as the authors' `PointEnvRandGoal` under rllab's `normalize`, step by step."""
    state, rewards = np.zeros(2), []
    for a in actions:
        state = state + np.clip(-0.1 + (a + 1.0) * 0.5 * 0.2, -0.1, 0.1)
        x, y = state - goal
        rewards.append(-(x ** 2 + y ** 2) ** 0.5)
        if abs(x) < 0.01 and abs(y) < 0.01:
            break
    return np.array(rewards)


def test_navigation_rewards_and_termination_by_hand():
    env = make_environment("point_navigation")
    obs = env.reset(np.array([[0.15, -0.05]]))
    np.testing.assert_array_equal(obs, [[0.0, 0.0]])
    obs, reward, done = env.step(np.array([[3.0, -0.5]]))  # Clipped to 0.1, scaled -0.05.
    np.testing.assert_allclose(obs, [[0.1, -0.05]])
    np.testing.assert_allclose(reward, [-0.05], atol=1e-15)
    assert not done[0]
    obs, reward, done = env.step(np.array([[0.5, 0.0]]))  # 0.05: onto the goal.
    np.testing.assert_allclose(obs, [[0.15, -0.05]], atol=1e-15)
    assert done[0] and abs(reward[0]) < 1e-12
    obs, reward, done = env.step(np.array([[1.0, 1.0]]))  # Finished: it stays, with no reward.
    np.testing.assert_allclose(obs, [[0.15, -0.05]], atol=1e-15)
    assert reward[0] == 0.0 and done[0]


def test_navigation_vectorised_equals_one_episode_at_a_time():
    env, rng = make_environment("point_navigation"), np.random.default_rng(0)
    goals = np.repeat(env.sample_tasks(4, rng), 3, axis=0)  # 4 tasks x 3 trajectories.
    assert np.all(np.abs(goals) <= 0.5)
    actions = rng.normal(scale=0.8, size=(env.horizon, len(goals), 2))
    actions[:, 0] = 0.0  # One episode heads nowhere; others may reach their goal.
    goals[1] = [0.1, 0.1]
    actions[:, 1] = [0.5, 0.5]  # Velocity 0.05: reaches its goal at the second step.
    env.reset(goals)
    rewards = np.stack([env.step(actions[t])[1] for t in range(env.horizon)], axis=1)
    for i, goal in enumerate(goals):
        want = authors_episode(goal, actions[:, i])
        np.testing.assert_allclose(rewards[i, :len(want)], want, rtol=1e-13, atol=1e-15)
        assert np.all(rewards[i, len(want):] == 0.0)
    assert len(authors_episode(goals[1], actions[:, 1])) == 2


def test_unknown_environment_names_the_choices():
    with pytest.raises(ValueError, match="point_navigation"):
        make_environment("cartpole")
    assert "point_navigation" in ENVIRONMENTS


# ------------------------------------------------------ returns, baseline, GAE
def episodes(rng, n=5, horizon=7):
    lengths = rng.integers(2, horizon + 1, size=n)
    mask = (np.arange(horizon)[None] < lengths[:, None]).astype(float)
    obs = rng.normal(size=(n, horizon, 2)) * 4.0
    obs[0, 0, 0] = 30.0  # Clipped to 10 in the features.
    rewards = rng.normal(size=(n, horizon)) * mask
    return obs, rewards, mask, lengths


def test_discounted_returns_by_hand():
    rewards, mask = np.array([[1.0, 2.0, 4.0, 8.0]]), np.array([[1.0, 1.0, 1.0, 0.0]])
    np.testing.assert_allclose(discounted_cumsum(rewards, mask, 0.5), [[1 + 1 + 1, 2 + 2, 4, 0]])


def test_baseline_is_the_ridge_least_squares_solution_on_the_steps_taken():
    rng = np.random.default_rng(1)
    obs, rewards, mask, lengths = episodes(rng)
    returns = discounted_cumsum(rewards, mask, 0.99)
    coeffs = fit_linear_baseline(obs, returns, mask)
    rows = []
    for i, length in enumerate(lengths):  # The authors' features, episode by episode.
        o = np.clip(obs[i, :length], -10, 10)
        t = np.arange(length)[:, None] / 100.0
        rows.append(np.concatenate([o, o ** 2, t, t ** 2, t ** 3, np.ones((length, 1))], axis=1))
    x = np.concatenate(rows)
    y = np.concatenate([returns[i, :length] for i, length in enumerate(lengths)])
    np.testing.assert_allclose(coeffs, np.linalg.solve(x.T @ x + 1e-5 * np.eye(x.shape[1]), x.T @ y), rtol=1e-8)
    np.testing.assert_allclose(baseline_features(obs)[mask > 0], x)


def test_gae_with_lambda_one_is_the_returns_minus_the_baseline_and_masks_drop_finished_steps():
    rng = np.random.default_rng(2)
    obs, rewards, mask, _ = episodes(rng)
    returns, adv, baseline = advantages(obs, rewards, mask, discount=0.99, gae_lambda=1.0, center=False)
    np.testing.assert_allclose(adv, (returns - baseline) * mask, rtol=1e-10, atol=1e-12)
    assert np.all(adv[mask == 0] == 0) and np.all(baseline[mask == 0] == 0)
    _, centred, _ = advantages(obs, rewards, mask)
    steps = centred[mask > 0]
    assert abs(steps.mean()) < 1e-12 and abs(steps.std() - 1.0) < 1e-6 and np.all(centred[mask == 0] == 0)
    # Steps after an episode's end change nothing.
    noisy = obs + (1 - mask)[..., None] * 100.0
    np.testing.assert_allclose(advantages(noisy, rewards + (1 - mask) * 5.0, mask)[1], centred, atol=1e-12)


# ------------------------------------------------------------- Gaussians
def test_gaussian_log_prob_and_kl_against_closed_forms():
    rng = np.random.default_rng(3)
    x, m, m2 = (rng.normal(size=(4, 3)) for _ in range(3))
    s, s2 = rng.normal(size=3) * 0.3, rng.normal(size=3) * 0.3  # State-independent log-stds.
    want = [sum(-0.5 * ((x[i, j] - m[i, j]) / math.exp(s[j])) ** 2 - s[j] - 0.5 * math.log(2 * math.pi)
                for j in range(3)) for i in range(4)]
    np.testing.assert_allclose(gaussian.log_prob(tf.constant(x), tf.constant(m), tf.constant(s)), want, rtol=1e-12)
    want_kl = [sum(s2[j] - s[j] + (math.exp(2 * s[j]) + (m[i, j] - m2[i, j]) ** 2) / (2 * math.exp(2 * s2[j])) - 0.5
                   for j in range(3)) for i in range(4)]
    got = gaussian.kl(tf.constant(m), tf.constant(s), tf.constant(m2), tf.constant(s2))
    np.testing.assert_allclose(got, want_kl, rtol=1e-12)
    np.testing.assert_allclose(gaussian.kl(tf.constant(m), tf.constant(s), tf.constant(m), tf.constant(s)), 0.0,
                               atol=1e-15)
    # KL is the expected log-ratio under p (Monte Carlo, 200,000 draws).
    draws = m[0] + np.exp(s) * rng.normal(size=(200000, 3))
    ratio = (gaussian.log_prob(tf.constant(draws), tf.constant(m[0]), tf.constant(s))
             - gaussian.log_prob(tf.constant(draws), tf.constant(m2[0]), tf.constant(s2))).numpy()
    assert abs(ratio.mean() - want_kl[0]) < 4 * ratio.std() / math.sqrt(len(ratio))


def test_kl_hessian_vector_product_at_the_old_policy_is_the_fisher_vector_product():
    """TRPO's curvature: the Hessian of the mean KL(old || new) at new = old, times v, equals the Fisher matrix of
    the Gaussian policy times v, computed directly: `J^T diag(1/sigma^2) J v` for the mean and `2 v` for each
    state-independent log standard deviation (averaged over the states)."""
    from maml_tf.core.hvp import hvp

    rng = np.random.default_rng(4)
    states = tf.constant(rng.normal(size=(6, 3)))
    weights = [tf.constant(rng.normal(size=(3, 2))), tf.constant(rng.normal(size=2)),
               tf.constant([0.3, -0.2], tf.float64)]  # W, b of the mean; the log standard deviation.
    vector = [tf.constant(rng.normal(size=w.shape)) for w in weights]

    def mean_of(w):
        return tf.tanh(states @ w[0] + w[1])  # A nonlinear mean: the Fisher is not the KL's Hessian elsewhere.

    old_mean, old_log_std = tf.stop_gradient(mean_of(weights)), tf.stop_gradient(weights[2])

    def kl_and_grads(w):
        with tf.GradientTape() as tape:
            tape.watch(w)
            kl = tf.reduce_mean(gaussian.kl(old_mean, old_log_std, mean_of(w), w[2]))
        return kl, tape.gradient(kl, w)

    got = hvp(kl_and_grads, weights, vector)
    with tf.autodiff.ForwardAccumulator(weights[:2], vector[:2]) as acc:
        mean = mean_of(weights)
    jv = acc.jvp(mean)  # J v, [states, actions].
    with tf.GradientTape() as tape:
        tape.watch(weights[:2])
        mean = mean_of(weights)
    # J^T diag(1/sigma^2) J v / states, by a vector-Jacobian product.
    seed = tf.stop_gradient(jv * tf.exp(-2.0 * weights[2])) / states.shape[0]
    want = tape.gradient(mean, weights[:2], output_gradients=seed) + [2.0 * vector[2]]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-10, atol=1e-12)
