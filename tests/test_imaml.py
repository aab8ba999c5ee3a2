"""iMAML: conjugate gradient, Hessian-vector products, the implicit meta-gradient against closed forms."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from maml_tf import losses, networks
from maml_tf.algorithms import IMAML, TaskBatch
from maml_tf.algorithms.imaml import conjugate_gradient


def linear_model(dim, seed=0):
    inputs = keras.Input((dim,), dtype="float64")
    model = keras.Model(inputs, keras.layers.Dense(1, dtype="float64")(inputs))
    rng = np.random.RandomState(seed)
    model.set_weights([rng.randn(dim, 1), rng.randn(1)])
    return model


EXACT = dict(cg_residual_tol=0.0)  # Run every CG step: exact on these small systems.


def test_conjugate_gradient_solves_a_positive_definite_system():
    rng = np.random.RandomState(0)
    m = rng.randn(6, 6)
    a = tf.constant(m @ m.T + 0.5 * np.eye(6))
    b = tf.constant(rng.randn(6, 1))
    split = [b[:2], b[2:]]  # A list of tensors, as weights are.
    matvec = lambda v: tf.split(a @ tf.concat(v, 0), [2, 4])
    x = conjugate_gradient(matvec, split, steps=6)
    np.testing.assert_allclose(tf.concat(x, 0).numpy(), tf.linalg.solve(a, b).numpy(), rtol=1e-8, atol=1e-10)
    few = tf.concat(conjugate_gradient(matvec, split, steps=2), 0)  # Fewer steps: a worse but finite answer.
    assert np.linalg.norm(a @ few - b) > 1e-6


def test_hessian_vector_product_matches_finite_differences():
    rng = np.random.RandomState(1)
    model = networks.build_fc((3,), 2, [5], "None", dtype="float64")
    algo = IMAML(model, losses.mse)
    w = algo.weights()
    x, y = tf.constant(rng.randn(7, 3)), tf.constant(rng.randn(7, 2))
    v = [tf.constant(rng.randn(*t.shape)) for t in w]
    hv = algo.hvp(w, x, y, v)
    eps = 1e-5
    plus = algo.loss_and_grad([a + eps * b for a, b in zip(w, v)], x, y)[1]
    minus = algo.loss_and_grad([a - eps * b for a, b in zip(w, v)], x, y)[1]
    for h, p, m in zip(hv, plus, minus):
        np.testing.assert_allclose(h.numpy(), (p - m).numpy() / (2 * eps), rtol=1e-5, atol=1e-8)


def closed_form(theta, sx, sy, qx, qy, lam):
    """Regularised linear regression: phi* = (H + lam I)^-1 (lam theta + 2/n X^T y) and its exact meta-gradient."""
    feats = lambda x: np.concatenate([x, np.ones((len(x), 1))], 1)
    xs, xq = feats(sx), feats(qx)
    h = 2.0 / len(xs) * xs.T @ xs
    phi = np.linalg.solve(h + lam * np.eye(len(theta)), lam * theta + 2.0 / len(xs) * xs.T @ sy)
    gq = 2.0 / len(xq) * xq.T @ (xq @ phi - qy)
    return phi, np.linalg.solve(np.eye(len(theta)) + h / lam, gq), gq


@pytest.mark.parametrize("solver", ["gd", "hessian_free"])
def test_implicit_meta_gradient_is_exact_on_regularised_linear_regression(solver):
    rng = np.random.RandomState(2)
    model = linear_model(3)
    lam = 2.0
    steps = 400 if solver == "gd" else 2
    algo = IMAML(model, losses.mse, lam=lam, solver=solver, n_steps=steps, inner_lr=0.1, cg_steps=4,
                 cg_damping=0.0, lam_damping=0.0, hf_cg_steps=4, **EXACT)
    batch = TaskBatch(*[tf.constant(rng.randn(2, 8, d)) for d in (3, 1, 3, 1)])
    grads, _ = algo.meta_gradients(batch)
    kernel, bias = [v.numpy() for v in model.trainable_variables]
    theta = np.concatenate([kernel, bias[:, None]], 0)
    expected = np.mean([closed_form(theta, *[b[t].numpy() for b in batch], lam)[1] for t in range(2)], 0)
    got = np.concatenate([grads[0].numpy(), grads[1].numpy()[:, None]], 0)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    phi = algo.adapt(batch.support_x[0], batch.support_y[0])
    want_phi = closed_form(theta, *[b[0].numpy() for b in batch], lam)[0]
    np.testing.assert_allclose(np.concatenate([phi[0].numpy(), phi[1].numpy()[:, None]]), want_phi, rtol=1e-6)


def test_implicit_gradient_matches_finite_differences_of_the_inner_solution():
    rng = np.random.RandomState(3)
    model = linear_model(2)
    algo = IMAML(model, losses.mse, lam=1.5, solver="hessian_free", n_steps=2, cg_steps=3, cg_damping=0.0,
                 lam_damping=0.0, hf_cg_steps=3, **EXACT)
    batch = TaskBatch(*[tf.constant(rng.randn(1, 6, d)) for d in (2, 1, 2, 1)])
    grads, _ = algo.meta_gradients(batch)
    theta = algo.weights()

    def outer_loss(weights):
        phi = algo.inner_solve(weights, batch.support_x[0], batch.support_y[0])
        return float(losses.mse(algo.forward(phi, batch.query_x[0]), batch.query_y[0]))

    eps = 1e-6
    for i, t in enumerate(theta):
        flat = t.numpy().reshape(-1)
        for j in range(flat.size):
            e = np.zeros_like(flat)
            e[j] = eps
            plus = [w if k != i else tf.constant((flat + e).reshape(t.shape)) for k, w in enumerate(theta)]
            minus = [w if k != i else tf.constant((flat - e).reshape(t.shape)) for k, w in enumerate(theta)]
            fd = (outer_loss(plus) - outer_loss(minus)) / (2 * eps)
            np.testing.assert_allclose(grads[i].numpy().reshape(-1)[j], fd, rtol=1e-5, atol=1e-8)


def test_large_lambda_approaches_the_first_order_gradient():
    rng = np.random.RandomState(4)
    batch = TaskBatch(*[tf.constant(rng.randn(2, 8, d)) for d in (3, 1, 3, 1)])
    gaps = []
    for lam in (1.0, 10.0, 100.0, 1000.0):
        model = linear_model(3)
        model.set_weights([np.full((3, 1), 0.3), np.zeros(1)])
        kw = dict(lam=lam, solver="hessian_free", n_steps=2, cg_damping=0.0, lam_damping=0.0, hf_cg_steps=4)
        implicit = IMAML(model, losses.mse, cg_steps=4, **kw).meta_gradients(batch)[0]
        first_order = IMAML(model, losses.mse, cg_steps=1, **kw).meta_gradients(batch)[0]
        gaps.append(sum(float(tf.norm(a - b)) for a, b in zip(implicit, first_order)))
    assert all(b < a for a, b in zip(gaps, gaps[1:])) and gaps[-1] < 1e-2 * gaps[0]


def test_authors_damping_is_the_documented_matrix():
    """With cg_damping c and lam_damping d, CG solves ((1 + c) I + H / (lam + d)) x = g."""
    rng = np.random.RandomState(5)
    model = linear_model(3)
    algo = IMAML(model, losses.mse, lam=2.0, solver="hessian_free", n_steps=2, cg_steps=4, hf_cg_steps=4, **EXACT)
    batch = TaskBatch(*[tf.constant(rng.randn(1, 8, d)) for d in (3, 1, 3, 1)])
    grads, _ = algo.meta_gradients(batch)
    kernel, bias = [v.numpy() for v in model.trainable_variables]
    theta = np.concatenate([kernel, bias[:, None]], 0)
    sx, sy, qx, qy = [b[0].numpy() for b in batch]
    _, _, gq = closed_form(theta, sx, sy, qx, qy, 2.0)
    xs = np.concatenate([sx, np.ones((8, 1))], 1)
    h = 2.0 / 8 * xs.T @ xs
    expected = np.linalg.solve(2.0 * np.eye(4) + h / 12.0, gq)
    got = np.concatenate([grads[0].numpy(), grads[1].numpy()[:, None]], 0)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


def test_train_step_applies_the_outer_adam_and_evaluate_does_not_move():
    rng = np.random.RandomState(6)
    model = networks.build_fc((1,), 1, [8, 8], "None")
    algo = IMAML(model, losses.mse, lam=2.0, n_steps=3, inner_lr=0.05, cg_steps=3)
    batch = TaskBatch(*[tf.constant(rng.randn(4, 5, 1), tf.float32) for _ in range(4)])
    before = [v.numpy().copy() for v in model.trainable_variables]
    out = algo.evaluate(batch)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.trainable_variables))
    assert out["total_losses2"].shape == (1,)
    algo.train_step(batch)
    assert int(algo.optimizer.iterations.numpy()) == 1
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(before, model.trainable_variables))
