"""Meta-SGD and ANIL: their mathematics, and smoke runs of main.py's programs (sinusoid, Omniglot)."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf import losses, networks, train
from maml_tf.algorithms import ANIL, MAML, MetaSGD, TaskBatch
from maml_tf.config import Config
from tests.conftest import shared_path


def fc64():
    keras.utils.set_random_seed(0)
    return networks.build_fc((1,), 1, [6, 5], "None", dtype="float64")


def batch64(tasks=3, n=4, seed=0):
    rng = np.random.default_rng(seed)
    x = lambda: tf.constant(rng.uniform(-3, 3, (tasks, n, 1)))  # noqa: E731
    sx, qx = x(), x()
    return TaskBatch(sx, tf.sin(sx), qx, tf.sin(qx))


@pytest.mark.parametrize("batch_tasks", [False, True])
def test_meta_sgd_with_frozen_step_sizes_equals_maml(batch_tasks):
    model, batch = fc64(), batch64()
    maml = MAML(model, losses.mse, inner_lr=0.1, num_inner_steps=3, batch_tasks=batch_tasks)
    meta_sgd = MetaSGD(model, losses.mse, inner_lr=0.1, num_inner_steps=3, init="update_lr", learn_lr=False,
                       batch_tasks=batch_tasks)
    assert meta_sgd.runs_batched(batch) == batch_tasks and len(meta_sgd.meta_variables) == len(maml.meta_variables)
    g_maml, r_maml = maml.meta_gradients(batch, num_steps=3)
    g_sgd, r_sgd = meta_sgd.meta_gradients(batch, num_steps=3)
    for a, b in zip(g_maml, g_sgd):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(r_sgd["total_losses2"].numpy(), r_maml["total_losses2"].numpy(), rtol=1e-12)


@pytest.mark.parametrize("batch_tasks", [False, True])
def test_meta_sgd_step_size_gradient_is_the_closed_form(batch_tasks):
    """One inner step: d L_q(theta - alpha o g_s) / d alpha = -g_s o grad L_q(theta'), averaged over tasks."""
    model, batch = fc64(), batch64()
    algo = MetaSGD(model, losses.mse, num_inner_steps=1, seed=3, batch_tasks=batch_tasks)
    grads, _ = algo.meta_gradients(batch)
    theta, alphas = algo.unpack(algo.params())
    want = [np.zeros(a.shape) for a in alphas]
    for t in range(3):
        def grad_at(weights, x, y):
            with tf.GradientTape() as tape:
                tape.watch(weights)
                loss = losses.mse(model_out(weights, x), y)  # noqa: B023 (called within the iteration)
            return tape.gradient(loss, weights)

        model_out = lambda w, x: algo.forward(w, x)  # noqa: E731
        g_s = grad_at(theta, batch.support_x[t], batch.support_y[t])
        fast = [w - a * g for w, a, g in zip(theta, alphas, g_s)]
        g_q = grad_at(fast, batch.query_x[t], batch.query_y[t])
        for i, (gs, gq) in enumerate(zip(g_s, g_q)):
            want[i] += -(gs * gq).numpy() / 3
    for got, w in zip(grads[len(theta):], want):
        np.testing.assert_allclose(got.numpy(), w, rtol=1e-10, atol=1e-14)


def test_meta_sgd_learns_and_saves_its_step_sizes(tmp_path):
    model, batch = fc64(), batch64()
    meta = __import__("maml_tf").MetaModel(model, "meta_sgd", loss="mse", num_inner_steps=1, seed=0)
    meta.compile(optimizer=keras.optimizers.Adam(0.01))
    before = [v.numpy().copy() for v in meta.learner.meta_parameters.weights]
    meta.fit(tf.data.Dataset.from_tensors(tuple(batch)).repeat(3), epochs=1, verbose=0)
    after = [v.numpy() for v in meta.learner.meta_parameters.weights]
    assert all(np.any(a != b) for a, b in zip(after, before))
    meta.save(tmp_path / "meta.keras")
    loaded = keras.models.load_model(tmp_path / "meta.keras")
    for a, b in zip(loaded.learner.meta_parameters.weights, after):
        np.testing.assert_array_equal(a.numpy(), b)


def test_anil_adapts_only_the_head():
    model, batch = fc64(), batch64()
    algo = ANIL(model, losses.mse, inner_lr=0.5, num_inner_steps=2)
    assert algo.split.mask == [False, False, False, False, True, True]  # dense3's kernel and bias.
    theta = algo.weights()
    fast = algo.adapt(batch.support_x[0], batch.support_y[0])
    for w, f, adapted in zip(theta, fast, algo.split.mask):
        assert np.array_equal(w.numpy(), f.numpy()) != adapted


@pytest.mark.parametrize("batch_tasks", [False, True])
def test_anil_first_order_body_gradient_comes_through_the_query_loss_only(batch_tasks):
    """First order: the body's meta-gradient is d L_q / d body at the adapted head, nothing else."""
    model, batch = fc64(), batch64()
    algo = ANIL(model, losses.mse, inner_lr=0.5, num_inner_steps=2, first_order=True, batch_tasks=batch_tasks)
    grads, _ = algo.meta_gradients(batch)
    want = [np.zeros(w.shape) for w in algo.weights()]
    for t in range(3):
        fast = algo.adapt(batch.support_x[t], batch.support_y[t])
        with tf.GradientTape() as tape:
            tape.watch(fast)
            loss = losses.mse(algo.forward(fast, batch.query_x[t]), batch.query_y[t])
        for i, g in enumerate(tape.gradient(loss, fast)):
            want[i] += g.numpy() / 3
    for g, w in zip(grads, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-10, atol=1e-14)


def test_anil_second_order_meta_gradient_matches_finite_differences():
    model, batch = fc64(), batch64()
    algo = ANIL(model, losses.mse, inner_lr=0.5, num_inner_steps=2)
    grads, _ = algo.meta_gradients(batch)

    def objective(weights):
        return float(algo.batch_forward(weights, batch, None)["objective_loss"])

    theta, rng, eps = algo.weights(), np.random.default_rng(1), 1e-6
    direction = [tf.constant(rng.standard_normal(w.shape)) for w in theta]
    plus = objective([w + eps * d for w, d in zip(theta, direction)])
    minus = objective([w - eps * d for w, d in zip(theta, direction)])
    want = (plus - minus) / (2 * eps)
    got = sum(float(tf.reduce_sum(g * d)) for g, d in zip(grads, direction))
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("algorithm, options", [("meta_sgd", {"metasgd_init_high": 0.02}),
                                                ("anil", {"anil_head_layers": 1})])
def test_sinusoid_train_resume_test(tmp_path, algorithm, options):
    config = Config(algorithm=algorithm, logdir=str(tmp_path), norm="None", update_batch_size=3, meta_batch_size=2,
                    metatrain_iterations=3, progress=False, num_test_tasks=3, **options).validate()
    train.run(config)
    train.run(dataclasses.replace(config, metatrain_iterations=5))
    result = train.run(dataclasses.replace(config, train=False))
    assert result["values"].shape == (3, 11) and np.all(np.isfinite(result["values"]))
    assert f".{algorithm}." in config.exp_string()


@pytest.mark.parametrize("algorithm", ["meta_sgd", "anil"])
def test_omniglot_smoke(tmp_path, algorithm):
    tfds_dir = shared_path("data", "tfds", "omniglot")
    config = Config(algorithm=algorithm, datasource="omniglot", omniglot_source="tfds",
                    tfds_data_dir=str(tfds_dir.parent), logdir=str(tmp_path), update_batch_size=1, meta_batch_size=2,
                    num_filters=8, update_lr=0.4, metatrain_iterations=2, progress=False, num_test_tasks=2).validate()
    train.run(config)
    values = train.run(dataclasses.replace(config, train=False))["values"]
    assert values.shape == (2, 11) and np.all((values >= 0) & (values <= 1))


@pytest.mark.parametrize("cls, options", [(MetaSGD, dict(seed=2)), (ANIL, dict(inner_lr=0.3))])
def test_task_batched_backend_equals_map_fn(cls, options):
    """The algorithm's own meta-parameters (Meta-SGD's step sizes) and adapt masks (ANIL) in task layout."""
    model, batch = fc64(), batch64(tasks=5)
    mapped = cls(model, losses.mse, num_inner_steps=2, batch_tasks=False, **options)
    batched = cls(model, losses.mse, num_inner_steps=2, batch_tasks=True, task_groups=2, **options)
    assert batched.runs_batched(batch) and not mapped.runs_batched(batch)
    g_map, r_map = mapped.meta_gradients(batch, num_steps=2)
    g_bat, r_bat = batched.meta_gradients(batch, num_steps=2)
    for a, b in zip(g_map, g_bat):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(r_bat["total_losses2"].numpy(), r_map["total_losses2"].numpy(), rtol=1e-12)
