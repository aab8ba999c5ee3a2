"""The embedding API: meta_learner and MetaModel on user models, task datasets, saving, errors."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf import MetaModel, TaskBatch, classification_tasks, meta_learner, regression_tasks
from maml_tf import losses, networks, train
from maml_tf.config import Config
from maml_tf.functional import functional_call


def class_batch(rng, tasks=3, ways=3, shots=2, query=2, dim=6, dtype="float32"):
    def labels(k):
        return np.tile(np.eye(ways, dtype=dtype), (tasks, k, 1))
    return TaskBatch(rng.random((tasks, ways * shots, dim)).astype(dtype), labels(shots),
                     rng.random((tasks, ways * query, dim)).astype(dtype), labels(query))


def mlp(dim=6, ways=3, extra=()):
    inp = keras.Input((dim,))
    h = keras.layers.Dense(16, activation="relu")(inp)
    for layer in extra:
        h = layer(h)
    return keras.Model(inp, keras.layers.Dense(ways)(h))


def test_meta_gradient_through_the_api_is_the_core_one():
    config = Config(datasource="omniglot", num_filters=4, update_batch_size=1, update_lr=0.4).validate()
    keras.utils.set_random_seed(0)
    core = train.build_algorithm(config)
    model = networks.build_network(config)
    model.set_weights(core.model.get_weights())
    learner = meta_learner(model, "maml", loss_fn=losses.scaled_xent(1), metric_fn=losses.accuracy,
                           inner_lr=0.4, num_inner_steps=1)
    rng = np.random.default_rng(0)
    batch = TaskBatch(rng.random((2, 5, 28, 28, 1), np.float32), np.tile(np.eye(5, dtype=np.float32), (2, 1, 1)),
                      rng.random((2, 5, 28, 28, 1), np.float32), np.tile(np.eye(5, dtype=np.float32), (2, 1, 1)))
    want, _ = core.meta_gradients(batch)
    got, _ = learner.meta_gradients(batch)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    # The Keras front end applies exactly that gradient (SGD with step 1).
    meta = MetaModel(model, "maml", loss=lambda y, out: losses.scaled_xent(1)(out, y), inner_lr=0.4,
                     num_inner_steps=1)
    meta.compile(optimizer=keras.optimizers.SGD(1.0))
    before = [v.numpy() for v in model.trainable_variables]
    meta.fit(tf.data.Dataset.from_tensors(tuple(batch)), epochs=1, verbose=0)
    for v, w, g in zip(model.trainable_variables, before, want):
        if v.path.startswith("conv") and v.path.endswith("bias"):
            # Right before batch norm: the true gradient is 0, and both are float noise (about 1e-5).
            assert np.abs(v.numpy() - w).max() < 1e-4 and np.abs(g.numpy()).max() < 1e-4, v.path
            continue
        np.testing.assert_allclose(v.numpy(), w - g.numpy(), rtol=1e-4, atol=2e-5, err_msg=v.path)


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(8, activation="tanh")
        self.out = keras.layers.Dense(1)

    def call(self, x):
        return self.out(self.hidden(x))


def two_input_model():
    a, b = keras.Input((3,)), keras.Input((2,))
    h = keras.layers.Concatenate()([keras.layers.Dense(4)(a), b])
    return keras.Model([a, b], keras.layers.Dense(1)(h))


@pytest.mark.parametrize("kind", ["sequential", "functional_two_inputs", "subclassed"])
@pytest.mark.parametrize("algorithm", ["maml", "reptile", "imaml"])
def test_any_keras_model_meta_trains_and_adapts(kind, algorithm):
    rng = np.random.default_rng(1)
    if kind == "sequential":
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
        x = lambda n: rng.random((2, n, 3), np.float32)
    elif kind == "subclassed":
        model = Subclassed()
        model(np.zeros((1, 3), np.float32))
        x = lambda n: rng.random((2, n, 3), np.float32)
    else:
        model = two_input_model()
        x = lambda n: (rng.random((2, n, 3), np.float32), rng.random((2, n, 2), np.float32))
    y = lambda n: rng.random((2, n, 1), np.float32)
    batch = TaskBatch(x(4), y(4), x(3), y(3))
    options = {"maml": dict(inner_lr=0.1, num_inner_steps=2), "reptile": dict(inner_iters=2, inner_batch_size=2,
               eval_inner_iters=2, eval_inner_batch_size=2), "imaml": dict(n_steps=2, cg_steps=2, lam=2.0)}
    learner = meta_learner(model, algorithm, loss="mse", metrics=["mae"], **options[algorithm])
    before = [v.numpy() for v in model.trainable_variables]
    results = learner.train_step(batch)
    assert np.isfinite(float(results["objective_loss"]))
    assert any(not np.allclose(a, v.numpy()) for a, v in zip(before, model.trainable_variables))
    support_x = tf.nest.map_structure(lambda t: t[0], batch.support_x)
    fast = learner.adapt(support_x, batch.support_y[0], steps=3)
    assert len(fast) == len(model.trainable_variables)
    assert functional_call(model, fast, support_x).shape == (4, 1)


def test_keras_batch_norm_warns_and_dropout_draws_new_masks():
    keras.utils.set_random_seed(0)
    model = mlp(extra=[keras.layers.BatchNormalization(), keras.layers.Dropout(0.5)])
    with pytest.warns(UserWarning, match="approximate"):
        learner = meta_learner(model, "maml", loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                               inner_lr=0.1, num_inner_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        meta_learner(model, "maml", loss="mse", first_order=True, inner_lr=0.1, num_inner_steps=1)
    x = tf.random.uniform((4, 6))
    w = learner.weights()
    assert not np.allclose(functional_call(model, w, x), functional_call(model, w, x))  # Fresh dropout masks.
    np.testing.assert_allclose(functional_call(model, w, x, training=False),
                               functional_call(model, w, x, training=False))
    assert np.isfinite(float(learner.train_step(class_batch(np.random.default_rng(2)))["total_loss1"]))


def test_moving_statistics_are_updated_only_on_request():
    for update in (False, True):
        model = mlp(extra=[keras.layers.BatchNormalization()])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            learner = meta_learner(model, "maml", loss="mse", inner_lr=0.1, num_inner_steps=1,
                                   update_moving_statistics=update)
        bn = model.layers[2]
        learner.train_step(class_batch(np.random.default_rng(3)))
        moved = not np.allclose(bn.moving_mean.numpy(), 0.0)
        assert moved == update


def test_mixed_precision_policy_gives_float32_losses():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = mlp()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    learner = meta_learner(model, "maml", loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                           metrics=["accuracy"], inner_lr=0.1, num_inner_steps=1)
    results = learner.train_step(class_batch(np.random.default_rng(4)))
    assert results["objective_loss"].dtype == tf.float32 and np.isfinite(results["objective_loss"].numpy())


def test_metamodel_under_a_float16_policy_scales_losses_itself():
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        meta = MetaModel(mlp(), "maml", loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                         metrics=["accuracy"], inner_lr=0.2, num_inner_steps=1)
        meta.compile(optimizer=keras.optimizers.Adam(1e-3))  # Keras would wrap it in a LossScaleOptimizer.
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert type(meta.optimizer) is keras.optimizers.Adam and meta.learner.loss_scale is not None
    rng = np.random.default_rng(6)
    x, labels = rng.random((60, 6)).astype("float32"), np.repeat(np.arange(6), 10)
    tasks = classification_tasks(x, labels, num_ways=3, num_shots=2, num_query=2, meta_batch_size=2, seed=0)
    history = meta.fit(tasks, epochs=1, steps_per_epoch=3, verbose=0).history
    assert np.isfinite(history["loss"][0]) and int(meta.optimizer.iterations) == 3
    with pytest.raises(ValueError, match="plain optimizer"):
        meta.compile(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam()))


def test_fit_with_callbacks_and_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.random((90, 6)).astype("float32")
    labels = np.repeat(np.arange(9), 10)
    tasks = classification_tasks(x, labels, num_ways=3, num_shots=2, num_query=2, meta_batch_size=3, seed=0)
    meta = MetaModel(mlp(), "maml", loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                     metrics=["accuracy"], inner_lr=0.2, num_inner_steps=2, eval_steps=3)
    meta.compile(optimizer=keras.optimizers.Adam(1e-3))
    callbacks = [keras.callbacks.ModelCheckpoint(str(tmp_path / "ckpt.keras")),
                 keras.callbacks.EarlyStopping(monitor="val_loss", patience=5),
                 keras.callbacks.TensorBoard(str(tmp_path / "tb"))]
    history = meta.fit(tasks, epochs=2, steps_per_epoch=3, validation_data=tasks, validation_steps=1,
                       callbacks=callbacks, verbose=0)
    assert set(history.history) >= {"loss", "pre_loss", "accuracy", "pre_accuracy", "val_loss", "val_accuracy"}
    assert (tmp_path / "ckpt.keras").exists() and list((tmp_path / "tb").rglob("events*"))
    meta.save(tmp_path / "meta.keras")
    loaded = keras.models.load_model(tmp_path / "meta.keras")
    assert loaded.learner.inner_lr == 0.2 and loaded.learner.num_inner_steps == 2 and loaded.eval_steps == 3
    assert int(loaded.optimizer.iterations.numpy()) == 6
    batch = TaskBatch(*next(iter(tasks)))
    a = meta.adapted_model(batch.support_x[0], batch.support_y[0], steps=3).predict(batch.query_x[0])
    b = loaded.adapted_model(batch.support_x[0], batch.support_y[0], steps=3).predict(batch.query_x[0])
    np.testing.assert_allclose(a, b, rtol=1e-6)
    per_step = loaded.evaluate_tasks(batch, steps=4)
    assert per_step["loss"].shape == (4,) and per_step["accuracy"].shape == (4,)


def test_bad_models_and_losses_raise_clear_errors():
    with pytest.raises(ValueError, match="not built"):
        meta_learner(keras.Sequential([keras.layers.Dense(2)]), loss="mse", inner_lr=0.1, num_inner_steps=1)
    frozen = mlp()
    frozen.trainable = False
    with pytest.raises(ValueError, match="no trainable variables"):
        meta_learner(frozen, loss="mse", inner_lr=0.1, num_inner_steps=1)
    learner = meta_learner(mlp(), loss_fn=lambda out, y: tf.square(out - y), inner_lr=0.1, num_inner_steps=1)
    with pytest.raises(ValueError, match="one scalar per task"):
        learner.train_step(class_batch(np.random.default_rng(6)))
    with pytest.raises(ValueError, match="per task"):
        MetaModel(mlp(), loss="mse", inner_lr=0.1, num_inner_steps=1).compile("adam", loss="mse")
    with pytest.raises(TypeError, match="options"):
        meta_learner(mlp(), loss="mse", inner_lr=0.1, num_inner_steps=1, bogus=3)


def test_task_datasets_from_arrays_and_samplers():
    x = np.arange(40, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    labels = np.repeat(np.arange(4), 10)
    batch = TaskBatch(*next(iter(classification_tasks(x, labels, num_ways=2, num_shots=3, num_query=4,
                                                      meta_batch_size=5, seed=1))))
    assert batch.support_x.shape == (5, 6, 2) and batch.query_y.shape == (5, 8, 2)
    # Labels are one-hot and consistent with the examples' classes within a task (shot-major layout).
    for t in range(5):
        cls = (batch.support_x[t, :, 0].numpy() // 10).astype(int)
        lab = batch.support_y[t].numpy().argmax(-1)
        assert all(len(set(cls[lab == j])) == 1 for j in range(2))
    with pytest.raises(ValueError, match="has 10 images"):
        classification_tasks(x, labels, num_ways=2, num_shots=6, num_query=5, meta_batch_size=1)

    def sine(rng, n):
        xs = rng.uniform(-5, 5, (n, 1))
        return xs, np.sin(xs + rng.uniform(0, np.pi))

    batch = TaskBatch(*next(iter(regression_tasks(sine, num_support=5, num_query=7, meta_batch_size=3))))
    assert batch.support_x.shape == (3, 5, 1) and batch.query_y.shape == (3, 7, 1)
