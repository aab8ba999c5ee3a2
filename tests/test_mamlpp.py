"""MAML++: each of its six components against its closed form or against MAML, and main.py's epochs."""

import json
import math
import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf import losses, train
from maml_tf.algorithms import MAML, MAMLPlusPlus, TaskBatch
from maml_tf.config import Config
from maml_tf.core import objective
from maml_tf.core.outer import CosineAnnealing, cosine_annealing
from maml_tf.functional import functional_call
from maml_tf.algorithms.mamlpp_network import PerStepBatchNorm, PerStepNetwork, collect_moments
from maml_tf.training.progress import Progress
from tests.conftest import shared_path
from tests.test_meta_sgd_anil import batch64, fc64


def plain(**kwargs):
    """MAML++ with every component off (MAML with MAML++'s epochs)."""
    options = dict(inner_lr=0.1, num_inner_steps=3, msl=False, lslr=False, cosine_annealing=False,
                   iterations_per_epoch=2)
    return {**options, **kwargs}


def authors_importance_vector(epoch, k, msl_epochs):
    """`get_per_step_loss_importance_vector` of the authors' code, in plain numpy."""
    weights = np.ones(k) / k
    decay = 1.0 / k / msl_epochs
    floor = 0.03 / k
    for i in range(k - 1):
        weights[i] = max(weights[i] - epoch * decay, floor)
    weights[-1] = min(weights[-1] + epoch * (k - 1) * decay, 1.0 - (k - 1) * floor)
    return weights


# ------------------------------------------------------------------ MSL
@pytest.mark.parametrize("k,msl_epochs", [(5, 10), (3, 2), (1, 4)])
def test_msl_weights_are_the_authors_vector_then_the_last_step(k, msl_epochs):
    for epoch in range(msl_epochs):
        got = objective.multi_step_loss_weights(epoch, k, msl_epochs).numpy()
        np.testing.assert_allclose(got, authors_importance_vector(epoch, k, msl_epochs), rtol=1e-15)
        np.testing.assert_allclose(got.sum(), 1.0, rtol=1e-12)
    for epoch in (msl_epochs, msl_epochs + 7):
        np.testing.assert_array_equal(objective.multi_step_loss_weights(epoch, k, msl_epochs).numpy(),
                                      objective.last_step(k))


def test_msl_after_its_epochs_and_frozen_step_sizes_equal_maml():
    """MSL with all weight on the last step (past its epochs) and LSLR frozen at alpha: MAML's meta-gradient."""
    model, batch = fc64(), batch64()
    maml = MAML(model, losses.mse, inner_lr=0.1, num_inner_steps=3)
    g_maml, r_maml = maml.meta_gradients(batch, num_steps=3)
    for msl in (False, True):
        pp = MAMLPlusPlus(model, losses.mse, **plain(msl=msl, msl_epochs=2))
        pp.iterations.assign(4)  # Epoch 2: the multi-step loss is over.
        g, r = pp.meta_gradients(batch, num_steps=3)
        assert len(g) == len(g_maml)
        for a, b in zip(g_maml, g):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(r["total_losses2"].numpy(), r_maml["total_losses2"].numpy(), rtol=1e-12)


def test_msl_gradient_is_the_weighted_sum_of_each_steps_maml_gradient():
    """While MSL is on, the meta-gradient is sum_k w_k * (MAML's meta-gradient with k + 1 inner steps)."""
    model, batch = fc64(), batch64()
    pp = MAMLPlusPlus(model, losses.mse, **plain(msl=True, msl_epochs=4))
    pp.iterations.assign(2)  # Epoch 1 of 4.
    weights = authors_importance_vector(1, 3, 4)
    grads, _ = pp.meta_gradients(batch, num_steps=3)
    expected = [0.0] * len(grads)
    for k in range(3):
        g, _ = MAML(model, losses.mse, inner_lr=0.1, num_inner_steps=k + 1).meta_gradients(batch)
        expected = [e + weights[k] * gi.numpy() for e, gi in zip(expected, g)]
    for a, b in zip(expected, grads):
        np.testing.assert_allclose(b.numpy(), a, rtol=1e-10, atol=1e-14)


# ----------------------------------------------------------------- LSLR
def test_lslr_step_size_gradient_matches_finite_differences():
    model, batch = fc64(), batch64()
    pp = MAMLPlusPlus(model, losses.mse, **plain(lslr=True))
    assert len(pp.meta_variables) == len(model.trainable_variables) + len(pp.step_sizes)
    grads, _ = pp.meta_gradients(batch)
    n = len(model.trainable_variables)
    for i in (0, len(pp.step_sizes) - 1):
        for k in range(3):
            var, eps = pp.step_sizes[i], 1e-6
            values = []
            for sign in (1, -1):
                original = var.numpy().copy()
                var.assign(original + sign * eps * np.eye(3)[k])
                values.append(float(pp.meta_gradients(batch)[1]["objective_loss"]))
                var.assign(original)
            np.testing.assert_allclose(grads[n + i].numpy()[k], (values[0] - values[1]) / (2 * eps), rtol=1e-5,
                                       atol=1e-10)


def test_lslr_starts_at_the_initial_step_size_for_every_layer_and_step():
    pp = MAMLPlusPlus(fc64(), losses.mse, inner_lr=0.07, num_inner_steps=4)
    assert len(pp.step_sizes) == 6  # Kernel and bias of three dense layers.
    for v in pp.step_sizes:
        np.testing.assert_array_equal(v.numpy(), np.full(4, 0.07))
        assert v.trainable


# ------------------------------------------------------------------- DA
def test_da_is_first_order_up_to_its_epoch_and_second_order_after():
    model, batch = fc64(), batch64()
    first = MAML(model, losses.mse, inner_lr=0.1, num_inner_steps=3, first_order=True).meta_gradients(batch)[0]
    second = MAML(model, losses.mse, inner_lr=0.1, num_inner_steps=3).meta_gradients(batch)[0]
    pp = MAMLPlusPlus(model, losses.mse, **plain(first_order_to_second_order_epoch=1))
    assert [pp.phase(e)[0] for e in range(4)] == [False, False, True, True]
    compiled = tf.function(pp.meta_gradients)  # As MetaModel.fit traces it: the epoch decides in the graph.
    for iterations, expected in ((0, first), (3, first), (4, second), (9, second)):
        pp.iterations.assign(iterations)
        for a, b in zip(expected, compiled(batch)[0]):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-12, atol=1e-15)
    # main.py's train step: one compiled step per phase, switching at the epoch boundary.
    pp.iterations.assign(0)
    phases = []
    for _ in range(6):
        before = pp.phase(pp.epoch())
        pp.train_step(batch)
        phases.append(before)
    assert phases == [(False, False)] * 4 + [(True, False)] * 2
    assert set(pp.train_step.steps) == {(False, False), (True, False)}
    assert pp.train_step.experimental_get_tracing_count() == 2


# ------------------------------------------------------------------- CA
def test_ca_sets_the_meta_step_size_to_the_cosine_of_the_epoch():
    assert float(cosine_annealing(0, 10, 1e-3, 1e-5)) == pytest.approx(1e-3, rel=1e-12)
    assert float(cosine_annealing(5, 10, 1e-3, 1e-5)) == pytest.approx((1e-3 + 1e-5) / 2, rel=1e-12)
    assert float(cosine_annealing(10, 10, 1e-3, 1e-5)) == pytest.approx(1e-5, rel=1e-12)
    assert float(cosine_annealing(25, 10, 1e-3, 1e-5)) == pytest.approx(1e-5, rel=1e-12)
    pp = MAMLPlusPlus(fc64(), losses.mse, **plain(cosine_annealing=True, total_epochs=3, meta_lr=0.01,
                                                  min_meta_lr=0.001))
    for itr in range(7):  # The step size of update `itr` (before it): the cosine at its epoch.
        expected = 0.001 + 0.009 * (1 + math.cos(math.pi * min(itr // 2, 3) / 3)) / 2
        assert float(pp.optimizer.learning_rate) == pytest.approx(expected, rel=1e-6)
        pp.train_step(batch64(seed=itr))
    assert int(pp.iterations.numpy()) == 7 and int(pp.optimizer.iterations.numpy()) == 7


# ----------------------------------------------------------- BNRS, BNWB
def test_per_step_batch_norm_with_shared_rows_equals_one_batch_norm():
    x = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, (6, 4, 4, 5)))
    shared = PerStepBatchNorm(3, per_step_weights=False, per_step_statistics=False, dtype="float64")
    per_step = PerStepBatchNorm(3, dtype="float64")
    shared.build(x.shape), per_step.build(x.shape)
    gamma, beta = np.linspace(0.5, 1.5, 5), np.linspace(-1, 1, 5)
    shared.gamma.assign(gamma), shared.beta.assign(beta)
    per_step.gamma.assign(np.tile(gamma, (3, 1))), per_step.beta.assign(np.tile(beta, (3, 1)))
    mean, var = x.numpy().mean((0, 1, 2)), x.numpy().var((0, 1, 2))
    expected = (x.numpy() - mean) / np.sqrt(var + 1e-5) * gamma + beta
    for step in range(4):  # Step 3 is past the last: it reuses row 2.
        np.testing.assert_allclose(per_step(x, training=True, step=step).numpy(), expected, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(shared(x, training=True, step=step).numpy(), expected, rtol=1e-10, atol=1e-12)
    # Running statistics: each step its own row.
    per_step.moving_mean.assign(np.arange(15.0).reshape(3, 5))
    per_step.moving_variance.assign(np.full((3, 5), 4.0))
    np.testing.assert_allclose(per_step(x, training=False, step=1).numpy(),
                               (x.numpy() - np.arange(5.0, 10.0)) / np.sqrt(4.0 + 1e-5) * gamma + beta, rtol=1e-12)


def tiny_per_step_net(steps=2, **kwargs):
    keras.utils.set_random_seed(0)
    return PerStepNetwork((8, 8, 1), 3, [4, 4], steps, dtype="float64", **kwargs)


def image_batch(tasks=1, seed=0):
    rng = np.random.default_rng(seed)
    x = lambda: tf.constant(rng.normal(size=(tasks, 6, 8, 8, 1)))  # noqa: E731
    y = tf.constant(np.tile(np.eye(3)[[0, 1, 2, 0, 1, 2]], (tasks, 1, 1)))
    return TaskBatch(x(), y, x(), y)


def test_bnrs_running_statistics_follow_the_batch_moments_of_each_step():
    model = tiny_per_step_net()
    pp = MAMLPlusPlus(model, losses.mean_xent, metric_fn=losses.accuracy, **plain(num_inner_steps=2))
    batch = image_batch()
    # The support pass of step 0 runs at the initial weights: its moments are those of a plain call.
    with collect_moments() as records:
        functional_call(model, [tf.convert_to_tensor(v) for v in model.trainable_variables], batch.support_x[0],
                        step=0)
    norm0 = model.norm0
    mean0, var0 = records[0][2].numpy(), records[0][3].numpy()
    pp.train_step(batch)
    # Row 0 saw one pass (the support set at step 0; the query set runs after the last step only): momentum 0.1.
    np.testing.assert_allclose(norm0.moving_mean.numpy()[0], 0.1 * mean0, rtol=1e-10)
    np.testing.assert_allclose(norm0.moving_variance.numpy()[0], 0.9 + 0.1 * var0, rtol=1e-10)
    # Row 1 saw the support pass of step 1 and the query pass: different moments, also updated.
    assert not np.allclose(norm0.moving_mean.numpy()[1], 0.0)
    # Evaluation leaves them unchanged.
    before = [v.numpy().copy() for v in model.non_trainable_variables]
    pp.evaluate(image_batch(seed=1), 2)
    for v, b in zip(model.non_trainable_variables, before):
        np.testing.assert_array_equal(v.numpy(), b)


@pytest.mark.parametrize("transductive", [True, False])
def test_non_transductive_evaluation_predicts_each_query_example_on_its_own(transductive):
    model = tiny_per_step_net()
    pp = MAMLPlusPlus(model, losses.mean_xent, metric_fn=losses.accuracy,
                      **plain(num_inner_steps=2, transductive=transductive))
    for seed in range(3):
        pp.train_step(image_batch(seed=seed))  # Running statistics away from their initial values.
    batch = image_batch(seed=5)
    other = batch._replace(query_x=tf.concat([batch.query_x[:, :1], batch.query_x[:, 1:] * 2.0 + 1.0], 1))
    a = pp.evaluate(batch, 2)["query_outputs"][0, -1, 0].numpy()
    b = pp.evaluate(other, 2)["query_outputs"][0, -1, 0].numpy()
    assert np.allclose(a, b, rtol=1e-12) == (not transductive)


def test_bnwb_per_step_scale_and_offset_are_meta_learned_not_adapted():
    model = tiny_per_step_net(steps=3)
    pp = MAMLPlusPlus(model, losses.mean_xent, **plain(num_inner_steps=3))
    norm_vars = [i for i, v in enumerate(model.trainable_variables) if "norm" in v.path]
    assert norm_vars and not set(norm_vars) & set(pp.split.adapted_indices)
    assert all(model.trainable_variables[i].shape[0] == 3 for i in norm_vars)
    grads, _ = pp.meta_gradients(image_batch(tasks=2))
    for i in norm_vars:  # Every step's row of scale and offset gets a meta-gradient.
        assert np.all(np.abs(grads[i].numpy()).sum(-1) > 0)


def test_maml_plus_plus_reduces_to_maml_on_a_network_without_per_step_parameters():
    """Every component off on a network with shared batch norm: MAML's meta-gradient (the ablation's base)."""
    model = tiny_per_step_net(steps=2, per_step_weights=False, per_step_statistics=False)
    batch = image_batch(tasks=2)
    g_maml, _ = MAML(model, losses.mean_xent, inner_lr=0.1, num_inner_steps=2).meta_gradients(batch)
    g_pp, _ = MAMLPlusPlus(model, losses.mean_xent, **plain(num_inner_steps=2)).meta_gradients(batch)
    for a, b in zip(g_maml, g_pp):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-10, atol=1e-13)


# ------------------------------------------------------ main.py: epochs
def test_cli_epochs_validate_keep_the_best_and_test_the_ensemble(tmp_path):
    config = Config(datasource="sinusoid", algorithm="mamlpp", norm="batch_norm", num_updates=2, meta_batch_size=4,
                    metatrain_iterations=12, epoch_iterations=3, val_tasks=6, keep_best=2, test_ensemble=2,
                    num_test_tasks=10, logdir=str(tmp_path), progress=False, log=False)
    algo = train.build_algorithm(config)
    assert isinstance(algo.model, PerStepNetwork) and algo.iterations_per_epoch == 3 and algo.total_epochs == 4
    train.run(config)
    directory = train.experiment_dir(config)
    records = json.load(open(os.path.join(directory, "epochs.json")))["epochs"]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4] and [r["iteration"] for r in records] == [3, 6, 9, 12]
    kept = sorted(records, key=lambda r: r["val"])[:2]  # MSE: lower is better.
    assert sorted(os.listdir(os.path.join(directory, "epochs"))) == sorted(
        f"{r['checkpoint']}.{ext}" for r in kept for ext in ("data-00000-of-00001", "index"))
    result = train.run(Config(**{**config.flat(), "train": False}))
    ensemble = result["ensemble"]
    assert ensemble["epochs"] == [r["epoch"] for r in kept]
    assert np.isfinite(ensemble["ensemble"]["mean"]) and np.isfinite(ensemble["best"]["mean"])


def test_cli_resume_continues_every_schedule_exactly(tmp_path, monkeypatch):
    """Ctrl-C mid-epoch, then the same command: the same epochs' validation and the same final state as one
    uninterrupted run (the iteration counter, step sizes, running statistics and Adam are checkpointed)."""
    flags = dict(datasource="sinusoid", algorithm="maml++", norm="batch_norm", num_updates=2, meta_batch_size=4,
                 metatrain_iterations=8, epoch_iterations=2, val_tasks=4, progress=False, log=False,
                 mamlpp_multi_step_loss_num_epochs=2, mamlpp_first_order_to_second_order_epoch=1)
    train.run(Config(**flags, logdir=str(tmp_path / "a")))
    update = Progress.update

    def interrupt_after_iteration_4(progress, itr):
        update(progress, itr)
        if itr == 4:
            os.kill(os.getpid(), signal.SIGINT)

    with monkeypatch.context() as patch:
        patch.setattr(Progress, "update", interrupt_after_iteration_4)
        with pytest.raises(KeyboardInterrupt):
            train.run(Config(**flags, logdir=str(tmp_path / "b")))
    train.run(Config(**flags, logdir=str(tmp_path / "b")))
    folders = [os.path.join(tmp_path, run, Config(**flags).exp_string()) for run in "ab"]
    curves = [[r["val"] for r in json.load(open(os.path.join(d, "epochs.json")))["epochs"]] for d in folders]
    assert len(curves[0]) == 4 and curves[0] == curves[1]
    a, b = [tf.train.load_checkpoint(tf.train.latest_checkpoint(d)) for d in folders]
    names = [n for n in a.get_variable_to_shape_map() if not n.startswith(("_CHECKPOINTABLE", "save_counter"))]
    assert any("iterations" in n for n in names) and any("moving_mean" in n for n in names)
    for name in names:
        np.testing.assert_array_equal(a.get_tensor(name), b.get_tensor(name), err_msg=name)


def test_cli_refuses_to_resume_maml_plus_plus_with_another_length(tmp_path):
    """The run's length sets the cosine annealing's epochs: resuming with another would change the schedule."""
    flags = dict(datasource="sinusoid", algorithm="maml++", num_updates=1, meta_batch_size=2, metatrain_iterations=2,
                 epoch_iterations=1, val_tasks=2, progress=False, log=False, logdir=str(tmp_path))
    train.run(Config(**flags))
    with pytest.raises(train.TrainingError, match="metatrain_iterations"):
        train.run(Config(**{**flags, "metatrain_iterations": 4}))


def test_metamodel_fit_anneals_saves_and_adapts_with_the_last_steps_batch_norm(tmp_path):
    from maml_tf import MetaModel
    from maml_tf.data.tasks import classification_tasks

    rng = np.random.default_rng(5)
    x = rng.random((90, 8, 8, 1)).astype("float32")
    tasks = classification_tasks(x, np.repeat(np.arange(9), 10), num_ways=3, num_shots=2, num_query=2,
                                 meta_batch_size=2, seed=0)
    keras.utils.set_random_seed(0)
    model = PerStepNetwork((8, 8, 1), 3, [4, 4], 2)
    meta = MetaModel(model, "mamlpp", loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                     metrics=["accuracy"], num_inner_steps=2, iterations_per_epoch=2,
                     first_order_to_second_order_epoch=0)
    meta.compile(optimizer=keras.optimizers.Adam(CosineAnnealing(0.01, 0.001, total_epochs=3, iterations_per_epoch=2)))
    history = meta.fit(tasks, epochs=1, steps_per_epoch=5, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and int(meta.learner.iterations.numpy()) == 5
    assert float(meta.optimizer.learning_rate) == pytest.approx(float(cosine_annealing(2, 3, 0.01, 0.001)))
    assert not np.allclose(model.norm0.moving_mean.numpy(), 0.0)  # Running statistics were collected.
    meta.save(tmp_path / "meta.keras")
    loaded = keras.models.load_model(tmp_path / "meta.keras")
    assert int(loaded.learner.iterations.numpy()) == 5
    batch = TaskBatch(*next(iter(tasks)))
    fast = meta.adapted_model(batch.support_x[0], batch.support_y[0])
    assert fast.step == 1  # Predictions after 2 steps use the batch norm of step 2 (index 1), as the query pass.
    meta.learner.return_outputs = True  # (The library's default leaves them out.)
    np.testing.assert_allclose(fast.predict(batch.query_x[0]),
                               meta.learner.evaluate(batch, 2)["query_outputs"][0, -1].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast.predict(batch.query_x[0]),
                               loaded.adapted_model(batch.support_x[0], batch.support_y[0]).predict(batch.query_x[0]),
                               rtol=1e-5, atol=1e-6)


def test_cli_omniglot_trains_and_tests_the_authors_network(tmp_path):
    tfds_dir = shared_path("data", "tfds", "omniglot")
    config = Config(datasource="omniglot", omniglot_source="tfds", tfds_data_dir=str(tfds_dir.parent),
                    algorithm="maml++", num_classes=3, update_batch_size=1, num_updates=2, meta_batch_size=2,
                    metatrain_iterations=4, epoch_iterations=2, val_tasks=4, num_test_tasks=3, mamlpp_filters=8,
                    logdir=str(tmp_path), progress=False, log=False)
    train.run(config)
    result = train.run(Config(**{**config.flat(), "train": False, "test_set": True}))
    assert result["values"].shape == (3, 3)  # Before adaptation and after each of the 2 trained steps.
    assert result["ensemble"]["epochs"] and 0 <= result["ensemble"]["ensemble"]["mean"] <= 1
    model = train.build_algorithm(config).model
    assert isinstance(model, PerStepNetwork) and model.norm0.gamma.shape == (2, 8)
