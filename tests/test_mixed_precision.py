"""Mixed precision (`--mixed_precision`): float16 computation, float32 where the meta-gradient needs it, and
dynamic loss scaling."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf import losses, meta_learner, train
from maml_tf.algorithms.base import TaskBatch
from maml_tf.config import Config


def twin_algorithms(**overrides):
    """The same algorithm and weights in float32 and in mixed float16."""
    keras.utils.set_random_seed(0)
    plain = train.build_algorithm(Config(**overrides).validate())
    mixed = train.build_algorithm(Config(mixed_precision=True, **overrides).validate())
    mixed.model.set_weights(plain.model.get_weights())
    mixed.loss_scale.scale.assign(2.0 ** 8)  # Where these problems' scaled gradients fit in float16.
    return plain, mixed


def sinusoid_batch(rng, tasks=4, n=10):
    x = lambda: rng.uniform(-5, 5, (tasks, n, 1)).astype(np.float32)
    return TaskBatch(x(), x(), x(), x())


def omniglot_batch(rng, tasks=2, ways=5):
    x = lambda: rng.random((tasks, ways, 28, 28, 1), np.float32)
    y = np.tile(np.eye(ways, dtype=np.float32), (tasks, 1, 1))
    return TaskBatch(x(), y, x(), y)


def relative_error(got, want) -> float:
    """|got - want| / |want| of the whole meta-gradient (all variables as one vector)."""
    for g in got:
        assert g.dtype == tf.float32
    flat = lambda grads: tf.concat([tf.reshape(g, [-1]) for g in grads], 0)
    return float(tf.norm(flat(got) - flat(want)) / tf.norm(flat(want)))


@pytest.mark.parametrize("case", ["sinusoid_task_batched", "omniglot_map_fn"])
def test_meta_gradient_is_the_float32_one_up_to_float16_rounding(case):
    rng = np.random.default_rng(0)
    if case == "sinusoid_task_batched":
        plain, mixed = twin_algorithms(datasource="sinusoid", num_updates=2)
        batch = sinusoid_batch(rng)
    else:
        plain, mixed = twin_algorithms(datasource="omniglot", num_filters=4, meta_batch_size=2)
        batch = omniglot_batch(rng)
    # float16 convolutions have no task-batched gradient on the CPU: the conv net runs per task there.
    assert (mixed.batched is not None) == (case == "sinusoid_task_batched")
    assert {layer.compute_dtype for layer in mixed.model.layers[1:]} == {"float16"}
    assert {v.dtype for v in mixed.model.trainable_variables} == {"float32"}
    assert mixed.loss_scale is not None and plain.loss_scale is None
    want, want_results = plain.meta_gradients(batch)
    got, got_results = mixed.meta_gradients(batch)
    assert got_results["objective_loss"].dtype == tf.float32
    np.testing.assert_allclose(got_results["objective_loss"], want_results["objective_loss"], rtol=2e-3)
    # float16 has 11 significant bits; the second-order meta-gradient keeps about two digits.
    assert relative_error(got, want) < (0.05 if case == "sinusoid_task_batched" else 0.02)


def test_loss_scaling_keeps_gradients_that_float16_would_flush_to_zero():
    rng = np.random.default_rng(1)
    plain, mixed = twin_algorithms(datasource="sinusoid")
    for algo in (plain, mixed):  # A loss small enough that its float16 backward pass underflows unscaled.
        algo.loss_fn = lambda out, y: 1e-6 * losses.mse(out, y)
    batch = sinusoid_batch(rng)
    want, _ = plain.meta_gradients(batch)
    mixed.loss_scale.scale.assign(2.0 ** 15)  # The default.
    got, _ = mixed.meta_gradients(batch)
    assert relative_error(got, want) < 0.05
    mixed.loss_scale.scale.assign(1.0)  # No scaling: the same gradients are lost to underflow.
    unscaled, _ = mixed.meta_gradients(batch)
    assert relative_error(unscaled, want) > 0.2


def test_overflow_skips_the_update_and_halves_the_scale_growth_doubles_it():
    rng = np.random.default_rng(2)
    _, mixed = twin_algorithms(datasource="sinusoid")
    mixed.loss_scale.growth_steps = 2
    batch = sinusoid_batch(rng)
    before = [v.numpy() for v in mixed.model.trainable_variables]
    mixed.loss_scale.scale.assign(2.0 ** 40)  # Scaled float16 gradients overflow.
    mixed.train_step(batch)
    assert float(mixed.loss_scale.scale) == 2.0 ** 39 and int(mixed.optimizer.iterations) == 0
    for b, v in zip(before, mixed.model.trainable_variables):
        np.testing.assert_array_equal(b, v.numpy())
    mixed.loss_scale.scale.assign(2.0 ** 6)
    mixed.train_step(batch)
    assert float(mixed.loss_scale.scale) == 2.0 ** 6 and int(mixed.loss_scale.good_steps) == 1
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, mixed.model.trainable_variables))
    mixed.train_step(batch)
    assert float(mixed.loss_scale.scale) == 2.0 ** 7 and int(mixed.loss_scale.good_steps) == 0
    assert int(mixed.optimizer.iterations) == 2


@pytest.mark.parametrize("algorithm,options", [
    ("reptile", dict(inner_iters=2, inner_batch_size=3, eval_inner_iters=2, eval_inner_batch_size=3, sgd=True,
                     inner_lr=0.1)),
    ("imaml", dict(n_steps=2, cg_steps=3, lam=2.0)),
])
def test_reptile_and_imaml_run_in_mixed_precision(algorithm, options):
    rng = np.random.default_rng(3)

    def model(dtype):
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="tanh", dtype=dtype),
                                 keras.layers.Dense(1, dtype=dtype)])

    x = lambda: rng.random((2, 6, 4), np.float32)
    batch = TaskBatch(x(), x()[..., :1], x(), x()[..., :1])
    plain = meta_learner(model("float32"), algorithm, loss="mse", **options)
    mixed = meta_learner(model("mixed_float16"), algorithm, loss="mse", **options)
    mixed.loss_scale.scale.assign(2.0 ** 8)
    want, _ = plain.meta_gradients(batch)
    got, _ = mixed.meta_gradients(batch)
    assert relative_error(got, want) < 0.02
    mixed.train_step(batch)
    assert "loss_scale" in mixed.checkpoint_objects()
