"""Reptile / FOML: the paper's identities, the authors' inner optimiser, schedules and evaluation modes."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from maml_tf import losses, networks
from maml_tf.algorithms import Reptile, TaskBatch
from maml_tf.functional import functional_call


def small_net(dim=3, norm="None", hidden=(8,)):
    return networks.build_fc((dim,), 2, list(hidden), norm, dtype="float64")


def random_batch(rng, tasks, n, dim, q=4):
    return TaskBatch(*[tf.constant(rng.randn(tasks, m, d)) for m, d in ((n, dim), (n, 2), (q, dim), (q, 2))])


def make(model, **kw):
    kw.setdefault("total_iterations", 10)
    return Reptile(model, losses.mse, **kw)


def task_gradient(model, weights, x, y):
    with tf.GradientTape() as tape:
        tape.watch(weights)
        loss = losses.mse(functional_call(model, weights, x), y)
    return tape.gradient(loss, weights)


def test_one_sgd_step_is_joint_training():
    """Paper, Section 5: with one full-batch SGD inner step and epsilon = 1, Reptile is a gradient
    step on the expected loss over tasks (joint training)."""
    rng = np.random.RandomState(0)
    model = small_net()
    algo = make(model, sgd=True, inner_iters=1, inner_batch_size=6, meta_step=1.0, meta_step_final=1.0,
                inner_lr=0.05)
    batch = random_batch(rng, 3, 6, 3)
    theta = algo.weights()
    grads = [task_gradient(model, theta, batch.support_x[t], batch.support_y[t]) for t in range(3)]
    mean_grad = [np.mean([g[i].numpy() for g in grads], 0) for i in range(len(theta))]
    algo.train_step(batch)
    for var, w, g in zip(model.trainable_variables, theta, mean_grad):
        np.testing.assert_allclose(var.numpy(), w.numpy() - 0.05 * g, rtol=1e-10, atol=1e-12)


def tf1_adam_beta1_0(grads_seq, w0, lr=1e-3, b2=0.999, eps=1e-8):
    """TF1 AdamOptimizer(beta1=0) by hand, in numpy."""
    w, v = w0.copy(), np.zeros_like(w0)
    for t, g in enumerate(grads_seq, 1):
        v = b2 * v + (1 - b2) * g * g
        w = w - lr * np.sqrt(1 - b2 ** t) / 1.0 * g / (np.sqrt(v) + eps)
    return w


def test_inner_adam_is_tf1_adam_with_beta1_zero():
    rng = np.random.RandomState(1)
    model = small_net()
    algo = make(model)
    weights, state = algo.weights(), algo.inner_state.read()
    x, y = tf.constant(rng.randn(5, 3)), tf.constant(rng.randn(5, 2))
    seen = []
    for _ in range(3):
        seen.append([g.numpy() for g in task_gradient(model, weights, x, y)])
        weights, state, _ = algo.inner_step(weights, state, x, y)
    for i, w0 in enumerate(model.trainable_variables):
        expected = tf1_adam_beta1_0([s[i] for s in seen], w0.numpy())
        np.testing.assert_allclose(weights[i].numpy(), expected, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(state[0][i].numpy(), seen[-1][i], rtol=1e-12)  # beta1 = 0: m is the last gradient.
    assert int(state[2]) == 3
    # Keras' Adam (the TF1 update) with beta_1 = 0 agrees up to its float32 internals.
    keras_vars = [tf.Variable(v.numpy()) for v in model.trainable_variables]
    opt = keras.optimizers.Adam(1e-3, beta_1=0.0, beta_2=0.999, epsilon=1e-8)
    for grads in seen:
        opt.apply([tf.constant(g) for g in grads], keras_vars)
    for w, k in zip(weights, keras_vars):
        np.testing.assert_allclose(w.numpy(), k.numpy(), rtol=0, atol=1e-7)


def test_outer_step_interpolates_and_adam_state_carries_over_tasks():
    rng = np.random.RandomState(2)
    model = small_net()
    algo = make(model, inner_iters=3, inner_batch_size=6, meta_step=0.3, meta_step_final=0.0)
    batch = random_batch(rng, 2, 6, 3)
    theta, state = algo.weights(), algo.inner_state.read()
    phis = []
    for t in range(2):  # A full-batch mini-batch is the task in some order; the summed loss does not care.
        w = theta
        for _ in range(3):
            w, state, _ = algo.inner_step(w, state, batch.support_x[t], batch.support_y[t])
        phis.append(w)
    algo.train_step(batch)
    for i, var in enumerate(model.trainable_variables):
        mean_phi = (phis[0][i] + phis[1][i]).numpy() / 2
        np.testing.assert_allclose(var.numpy(), theta[i].numpy() + 0.3 * (mean_phi - theta[i].numpy()),
                                   rtol=1e-9, atol=1e-12)
    m, v, steps = algo.inner_state.read()
    assert int(steps) == 6  # The inner Adam ran through both tasks without a reset.
    for got, want in zip(v, state[1]):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-9)


def test_epsilon_schedule_is_linear_and_follows_the_iteration():
    algo = make(small_net(), total_iterations=4, meta_step=1.0, meta_step_final=0.0)
    np.testing.assert_allclose([float(algo.meta_step_size(i)) for i in range(5)], [1.0, 0.75, 0.5, 0.25, 0.0])
    batch = random_batch(np.random.RandomState(3), 1, 6, 3)
    for _ in range(2):
        algo.train_step(batch)
    assert int(algo.iterations.numpy()) == 2


@pytest.mark.parametrize("replacement", [False, True])
def test_minibatches_follow_the_authors_sampling(replacement):
    algo = make(small_net(), replacement=replacement)
    idx = algo.minibatch_indices(2, 10, 4, 5).numpy()
    assert idx.shape == (2, 5, 4) and idx.min() >= 0 and idx.max() < 10
    for task in idx:
        if replacement:  # Each mini-batch is a subset (random.sample).
            assert all(len(set(b)) == 4 for b in task)
        else:  # The stream is a concatenation of permutations; a mini-batch may span two of them.
            stream = task.reshape(-1)
            assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))


def test_foml_moves_along_the_last_step():
    rng = np.random.RandomState(4)
    model = small_net()
    algo = Reptile(model, losses.mse, total_iterations=10, sgd=True, inner_iters=2, inner_batch_size=6,
                   inner_lr=0.1, meta_step=0.5, meta_step_final=0.5, foml=True)
    batch = random_batch(rng, 1, 6, 3)
    theta = algo.weights()
    g1 = task_gradient(model, theta, batch.support_x[0], batch.support_y[0])
    phi1 = [w - 0.1 * g for w, g in zip(theta, g1)]
    g2 = task_gradient(model, phi1, batch.support_x[0], batch.support_y[0])
    algo.train_step(batch)
    for var, w, g in zip(model.trainable_variables, theta, g2):
        np.testing.assert_allclose(var.numpy(), w.numpy() - 0.5 * 0.1 * g.numpy(), rtol=1e-9, atol=1e-12)


def test_foml_tail_takes_the_last_step_on_the_held_out_shots():
    rng = np.random.RandomState(5)
    model = small_net()
    algo = Reptile(model, losses.mse, total_iterations=10, sgd=True, inner_iters=1, inner_batch_size=2,
                   inner_lr=0.1, meta_step=1.0, meta_step_final=1.0, foml=True, foml_tail=1)
    batch = random_batch(rng, 1, 6, 3)  # 2 "classes" (label width) x 3 shots; the tail is the last 2 examples.
    theta = algo.weights()
    g = task_gradient(model, theta, batch.support_x[0, 4:], batch.support_y[0, 4:])
    algo.train_step(batch)
    for var, w, gi in zip(model.trainable_variables, theta, g):
        np.testing.assert_allclose(var.numpy(), w.numpy() - 0.1 * gi.numpy(), rtol=1e-9, atol=1e-12)


def test_evaluation_leaves_the_inner_state_and_weights_alone():
    rng = np.random.RandomState(6)
    model = small_net()
    algo = make(model, inner_iters=2, eval_inner_iters=3)
    batch = random_batch(rng, 2, 6, 3)
    algo.train_step(batch)
    before = [v.numpy().copy() for v in model.trainable_variables + algo.inner_state.m + algo.inner_state.v]
    steps = int(algo.inner_state.steps.numpy())
    out = algo.evaluate(batch)
    after = [v.numpy() for v in model.trainable_variables + algo.inner_state.m + algo.inner_state.v]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert int(algo.inner_state.steps.numpy()) == steps
    assert out["total_losses2"].shape == (1,) and np.isfinite(out["total_loss1"])


def test_transductive_and_non_transductive_differ_only_through_batch_norm():
    rng = np.random.RandomState(7)
    support, query = tf.constant(rng.randn(4, 3)), tf.constant(rng.randn(5, 3))
    for norm, same in (("None", True), ("batch_norm", False)):
        model = small_net(norm=norm)
        algo = make(model)
        w = algo.weights()
        trans = algo.predict(w, support, query, transductive=True).numpy()
        non = algo.predict(w, support, query, transductive=False).numpy()
        assert np.allclose(trans, non, rtol=1e-12) == same
        # Non-transductive: each query example is predicted in a batch of the support set plus itself.
        for q in range(5):
            alone = algo.forward(w, tf.concat([support, query[q:q + 1]], 0))[-1].numpy()
            np.testing.assert_allclose(non[q], alone, rtol=1e-12)
