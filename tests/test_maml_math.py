"""The mathematics of MAML: closed forms, finite differences, invariants."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from maml_tf import losses, networks
from maml_tf.algorithms import MAML, TaskBatch


def linear_model(dim):
    inputs = keras.Input((dim,), dtype="float64")
    return keras.Model(inputs, keras.layers.Dense(1, dtype="float64")(inputs))


def random_batch(rng, tasks, n, dim):
    return TaskBatch(*[tf.constant(rng.randn(tasks, n, d)) for d in (dim, 1, dim, 1)])


def closed_form_linear(theta, batch, alpha, steps, first_order):
    """MAML meta-gradient for linear regression with MSE, by hand.

    L(theta) = mean((Phi theta - y)^2) with Phi = [x, 1]: gradient
    2/n Phi^T (Phi theta - y), Hessian H = 2/n Phi^T Phi (constant). After
    `steps` inner steps theta' , the meta-gradient is
    (I - alpha H_s)^steps grad L_q(theta') (second order) or grad L_q(theta').
    """
    grads = []
    for sx, sy, qx, qy in zip(*[b.numpy() for b in batch]):
        phi_s = np.concatenate([sx, np.ones((len(sx), 1))], 1)
        phi_q = np.concatenate([qx, np.ones((len(qx), 1))], 1)
        grad = lambda phi, y, th: 2.0 / len(phi) * phi.T @ (phi @ th - y)
        fast = theta.copy()
        for _ in range(steps):
            fast = fast - alpha * grad(phi_s, sy, fast)
        g = grad(phi_q, qy, fast)
        if not first_order:
            h = 2.0 / len(phi_s) * phi_s.T @ phi_s
            jac = np.linalg.matrix_power(np.eye(len(theta)) - alpha * h, steps)
            g = jac @ g
        grads.append(g)
    return np.mean(grads, 0)


@pytest.mark.parametrize("batch_tasks", [True, False])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
def test_meta_gradient_matches_closed_form(first_order, steps, batch_tasks):
    """Both ways of running the tasks: at once (task-batched weights) and one by one (tf.map_fn)."""
    rng = np.random.RandomState(0)
    model = linear_model(3)
    algo = MAML(model, losses.mse, inner_lr=0.1, num_inner_steps=steps, first_order=first_order,
                batch_tasks=batch_tasks)
    assert (algo.batched is not None) == batch_tasks
    batch = random_batch(rng, 4, 6, 3)
    grads, _ = algo.meta_gradients(batch)
    kernel, bias = [v.numpy() for v in model.trainable_variables]
    theta = np.concatenate([kernel, bias[:, None]], 0)
    expected = closed_form_linear(theta, batch, 0.1, steps, first_order)
    got = np.concatenate([grads[0].numpy(), grads[1].numpy()[:, None]], 0)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_first_and_second_order_differ():
    rng = np.random.RandomState(1)
    model = networks.build_fc((1,), 1, [8], "None", dtype="float64")
    batch = random_batch(rng, 2, 5, 1)
    second, _ = MAML(model, losses.mse, inner_lr=0.5, num_inner_steps=1).meta_gradients(batch)
    first, _ = MAML(model, losses.mse, inner_lr=0.5, num_inner_steps=1, first_order=True).meta_gradients(batch)
    diff = max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(first, second))
    assert diff > 1e-4


def _finite_difference(f, weights, eps=1e-6):
    out = []
    for i, w in enumerate(weights):
        flat = w.numpy().ravel()
        g = np.zeros_like(flat)
        for j in range(flat.size):
            for sign in (1.0, -1.0):
                shifted = flat.copy()
                shifted[j] += sign * eps
                ws = list(weights)
                ws[i] = tf.constant(shifted.reshape(w.shape))
                g[j] += sign * f(ws) / (2 * eps)
        out.append(g.reshape(w.shape))
    return out


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("batch_tasks", [True, False])
@pytest.mark.parametrize("norm", ["None", "batch_norm", "layer_norm"])
def test_second_order_meta_gradient_matches_finite_differences(norm, batch_tasks, compiled):
    """Float64 FD of the query loss after 2 inner steps, through every normalisation, eagerly and
    compiled (normalisation differentiates differently in graph mode: networks.exact_normalize)."""
    rng = np.random.RandomState(2)
    model = networks.build_fc((1,), 1, [4, 3], norm, dtype="float64")
    algo = MAML(model, losses.mse, inner_lr=0.3, num_inner_steps=2, batch_tasks=batch_tasks)
    batch = random_batch(rng, 2, 5, 1)
    # Random values everywhere (also offsets and scales) so no term is trivially zero.
    weights = [tf.constant(rng.randn(*v.shape) * 0.7) for v in model.trainable_variables]
    meta_gradients = tf.function(algo.meta_gradients) if compiled else algo.meta_gradients
    grads, _ = meta_gradients(batch, weights=weights)
    fd = _finite_difference(lambda ws: float(algo.batch_forward(ws, batch, 2)["total_losses2"][1]), weights)
    for g, f, v in zip(grads, fd, model.trainable_variables):
        np.testing.assert_allclose(g.numpy(), f, rtol=1e-5, atol=1e-7, err_msg=v.path)


def test_hand_unrolled_inner_loop():
    """The algorithm equals a hand-written two-step inner loop with nested tapes."""
    rng = np.random.RandomState(3)
    model = networks.build_fc((1,), 1, [6], "batch_norm", dtype="float64")
    algo = MAML(model, losses.mse, inner_lr=0.2, num_inner_steps=2)
    batch = random_batch(rng, 1, 4, 1)
    sx, sy, qx, qy = [b[0] for b in batch]
    w1, b1, beta, w2, b2 = [tf.convert_to_tensor(v) for v in model.trainable_variables]

    def net(x, w1, b1, w2, b2):
        h = x @ w1 + b1
        mean = tf.reduce_mean(h, 0)
        var = tf.reduce_mean(tf.square(h - mean), 0)
        h = tf.nn.relu((h - mean) / tf.sqrt(var + 1e-3) + beta)
        return h @ w2 + b2

    with tf.GradientTape() as outer:
        outer.watch([w1, b1, beta, w2, b2])
        fast = [w1, b1, w2, b2]
        for _ in range(2):
            with tf.GradientTape() as inner:
                inner.watch(fast)
                loss = tf.reduce_mean(tf.square(net(sx, *fast) - sy))
            fast = [w - 0.2 * g for w, g in zip(fast, inner.gradient(loss, fast))]
        query_loss = tf.reduce_mean(tf.square(net(qx, *fast) - qy))
    expected = outer.gradient(query_loss, [w1, b1, beta, w2, b2])
    got, results = algo.meta_gradients(batch)
    np.testing.assert_allclose(results["objective_loss"].numpy(), query_loss.numpy(), rtol=1e-12)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-9, atol=1e-12)


def test_zero_inner_step_size_is_plain_training():
    """With alpha = 0 a meta-update is an Adam step on the query loss."""
    rng = np.random.RandomState(4)
    batch = random_batch(rng, 3, 5, 1)
    keras.utils.set_random_seed(0)
    model = networks.build_fc((1,), 1, [8, 8], "None", dtype="float64")
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    algo = MAML(model, losses.mse, inner_lr=0.0, num_inner_steps=2, meta_lr=0.01)
    optimizer = keras.optimizers.Adam(0.01, epsilon=1e-8)
    for _ in range(3):
        algo.train_step(batch)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean([losses.mse(reference(batch.query_x[t]), batch.query_y[t]) for t in range(3)])
        optimizer.apply(tape.gradient(loss, reference.trainable_variables), reference.trainable_variables)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_adaptation_lowers_support_loss_and_normalisation_is_not_adapted():
    rng = np.random.RandomState(5)
    model = networks.build_fc((1,), 1, [16], "batch_norm")
    algo = MAML(model, losses.mse, inner_lr=0.01, num_inner_steps=1)
    x = tf.constant(rng.uniform(-5, 5, (10, 1)), tf.float32)
    y = 3.0 * tf.sin(x)
    before = algo.weights()
    after = algo.adapt(x, y, steps=5)
    assert float(losses.mse(algo.forward(after, x), y)) < float(losses.mse(algo.forward(before, x), y))
    for v, b, a in zip(model.trainable_variables, before, after):
        changed = not np.allclose(b.numpy(), a.numpy())
        if "norm" in v.path:
            assert not changed, v.path  # Meta-learned only, as the original.
        elif "kernel" in v.path:
            assert changed, v.path
    # The bias right before batch norm has an inner gradient of zero (float32 noise).
    np.testing.assert_allclose(before[1].numpy(), after[1].numpy(), atol=1e-6)


@pytest.mark.parametrize("compiled", [True, False])
def test_batch_norm_second_derivatives_are_exact(compiled):
    """Hessian-vector products through BatchNormTF1 against float64 finite differences."""
    rng = np.random.RandomState(6)
    x = tf.constant(rng.randn(7, 3))
    v = tf.constant(rng.randn(7, 3))
    c = tf.constant(rng.randn(7, 3))
    layer = networks.BatchNormTF1(dtype="float64")
    layer.build((7, 3))

    def grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(tf.sin(layer(x)) * c)
        return tape.gradient(y, x)

    def hvp(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            g = tf.reduce_sum(grad(x) * v)
        return tape.gradient(g, x)

    hvp = (tf.function(hvp) if compiled else hvp)(x).numpy()
    eps = 1e-5
    fd = ((grad(x + eps * v) - grad(x - eps * v)) / (2 * eps)).numpy()
    np.testing.assert_allclose(hvp, fd, rtol=1e-6, atol=1e-8)
    # tf.nn.moments (Keras' BatchNormalization) gets this wrong: the trap this layer avoids.
    with tf.GradientTape() as t2:
        t2.watch(x)
        with tf.GradientTape() as t1:
            t1.watch(x)
            mean, var = tf.nn.moments(x, [0])
            y = tf.reduce_sum(tf.sin((x - mean) * tf.math.rsqrt(var + 1e-3)) * c)
        g2 = tf.reduce_sum(t1.gradient(y, x) * v)
    assert np.max(np.abs(t2.gradient(g2, x).numpy() - fd)) > 1e-3


def test_meta_batch_mean_of_task_gradients():
    rng = np.random.RandomState(7)
    model = networks.build_fc((1,), 1, [5], "None", dtype="float64")
    algo = MAML(model, losses.mse, inner_lr=0.1, num_inner_steps=1)
    batch = random_batch(rng, 3, 4, 1)
    full, _ = algo.meta_gradients(batch)
    per_task = [algo.meta_gradients(TaskBatch(*[b[t:t + 1] for b in batch]))[0] for t in range(3)]
    for i, g in enumerate(full):
        np.testing.assert_allclose(g.numpy(), np.mean([p[i].numpy() for p in per_task], 0), rtol=1e-10)


def test_train_step_does_not_retrace():
    rng = np.random.RandomState(8)
    model = networks.build_fc((1,), 1, [4], "None")
    algo = MAML(model, losses.mse, inner_lr=0.1, num_inner_steps=1)
    for _ in range(3):
        batch = TaskBatch(*[rng.randn(2, 3, 1).astype(np.float32) for _ in range(4)])
        algo.train_step(batch)
    assert algo.train_step.experimental_get_tracing_count() == 1


def test_functional_call_rejects_wrong_weights():
    model = networks.build_fc((1,), 1, [4], "None")
    algo = MAML(model, losses.mse, inner_lr=0.1, num_inner_steps=1)
    with pytest.raises(ValueError, match="trainable variables"):
        algo.forward(algo.weights()[:-1], tf.zeros((2, 1)))
    bad = algo.weights()
    bad[0] = tf.zeros((2, 4))
    with pytest.raises(ValueError, match="shape"):
        algo.forward(bad, tf.zeros((2, 1)))
