"""Conformance over the registries: every algorithm and every datasource passes the same checks (every algorithm:
compiled, XLA-compiled, checkpointed, and through `MetaModel` fit, save and load).

A new algorithm must add its tiny options to `OPTIONS` (the first test fails until it does).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf import algorithms, losses, networks
from maml_tf.algorithms.mmaml import Modulated
from maml_tf.api import MetaModel
from maml_tf.config import Config
from maml_tf.data import DATASOURCES, make_tasks
from maml_tf.data.sinusoid import SinusoidTasks
from maml_tf.types import TaskBatch
from tests.conftest import assert_metamodel_fits_saves_and_loads, shared_path

OPTIONS = {
    "maml": dict(inner_lr=0.02, num_inner_steps=2, meta_lr=0.01),
    "reptile": dict(total_iterations=40, inner_lr=0.02, inner_iters=3, inner_batch_size=5, eval_inner_iters=3,
                    meta_step=1.0, meta_step_final=1.0),
    "imaml": dict(n_steps=3, cg_steps=2, inner_lr=0.02, lam=1.0, meta_lr=0.05),
    "meta_sgd": dict(num_inner_steps=1, meta_lr=0.01, init_low=0.01, init_high=0.03, seed=1),
    "anil": dict(inner_lr=0.02, num_inner_steps=2, meta_lr=0.01),
    "maml++": dict(inner_lr=0.02, num_inner_steps=2, meta_lr=0.01, iterations_per_epoch=10),
    "bmaml": dict(inner_lr=1e-3, num_inner_steps=1, meta_lr=0.03, num_particles=3, seed=1),
    "emaml": dict(inner_lr=0.02, num_inner_steps=2, meta_lr=0.01, num_particles=3, seed=1),
    "platipus": dict(inner_lr=0.02, num_inner_steps=2, meta_lr=0.01, num_samples=3, seed=1),
    "llama": dict(inner_lr=0.02, num_inner_steps=2, meta_lr=0.01, eta=1e-3, num_samples=3, seed=1),
    "mmaml": dict(inner_lr=0.02, num_inner_steps=2, meta_lr=0.01),
}


def test_every_registered_algorithm_has_conformance_options():
    assert set(OPTIONS) == set(algorithms.ALGORITHMS)


def sinusoid_batch(seed=0, tasks=4, k=5):
    return TaskBatch(*[tf.constant(t) for t in next(SinusoidTasks(k, k, seed).batches(tasks))])


def network(name, dtype="float32"):
    keras.utils.set_random_seed(0)
    model = networks.build_fc((1,), 1, [20, 20], "None", dtype=dtype)
    return Modulated(model) if name == "mmaml" else model  # The network MMAML modulates.


def learner(name, dtype="float32"):
    return algorithms.get(name)(network(name, dtype), losses.mse, **OPTIONS[name])


@pytest.mark.parametrize("name", list(OPTIONS))
def test_compiles_without_retracing_and_gives_finite_meta_gradients(name):
    algo = learner(name)
    batch = sinusoid_batch()
    algo.train_step(batch)
    algo.train_step(sinusoid_batch(seed=1))
    assert algo.train_step.experimental_get_tracing_count() == 1
    grads, _ = algo.meta_gradients(batch)
    assert len(grads) == len(algo.meta_variables)
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)
    assert any(np.any(g.numpy() != 0) for g in grads)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_a_tiny_run_lowers_the_query_loss_after_adaptation(name):
    algo = learner(name)
    batch = sinusoid_batch(tasks=4)
    before = float(algo.evaluate(batch, 2)["total_losses2"][-1])
    for _ in range(40):
        algo.train_step(batch)
    after = float(algo.evaluate(batch, 2)["total_losses2"][-1])
    assert after < 0.95 * before, (before, after)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_checkpoint_round_trip(name, tmp_path):
    algo = learner(name)
    algo.train_step(sinusoid_batch())
    saved = [v.numpy().copy() for v in algo.meta_variables]
    path = tf.train.Checkpoint(**algo.checkpoint_objects()).save(str(tmp_path / "ckpt"))
    algo.train_step(sinusoid_batch(seed=1))
    assert any(np.any(v.numpy() != s) for v, s in zip(algo.meta_variables, saved))
    fresh = learner(name)
    tf.train.Checkpoint(**fresh.checkpoint_objects()).restore(path).assert_existing_objects_matched()
    for v, s in zip(fresh.meta_variables, saved):
        np.testing.assert_array_equal(v.numpy(), s)


# Algorithms whose XLA-compiled steps draw other random numbers than the plain ones (tf.random.Generator.normal
# under XLA), so only finiteness is compared.
XLA_DRAWS_DIFFER = {"platipus"}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_xla_compiled_steps_equal_the_plain_ones(name):
    plain, xla = learner(name, "float64"), learner(name, "float64")
    xla.compile(jit_compile=True)
    for seed in range(2):
        batch = tf.nest.map_structure(lambda t: tf.cast(t, tf.float64), sinusoid_batch(seed=seed))
        plain.train_step(batch)
        xla.train_step(batch)
    for a, b in zip(plain.meta_variables, xla.meta_variables):
        assert np.all(np.isfinite(b.numpy()))
        if name not in XLA_DRAWS_DIFFER:
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-9, atol=1e-9 * float(np.max(np.abs(a.numpy()))))


@pytest.mark.parametrize("name", list(OPTIONS))
def test_metamodel_fits_saves_and_loads(name, tmp_path):
    options = {k: v for k, v in OPTIONS[name].items() if k != "meta_lr"}  # The compiled optimiser's.
    meta = MetaModel(network(name), name, loss="mse", **options)
    meta.compile(optimizer=keras.optimizers.Adam(1e-3))
    assert_metamodel_fits_saves_and_loads(meta, [sinusoid_batch(seed=s) for s in range(2)], tmp_path)


def datasource_config(name, tmp_path_factory):
    if not DATASOURCES[name].classification:
        return Config(datasource=name, update_batch_size=3)
    if name == "omniglot":
        tfds_dir = shared_path("data", "tfds", "omniglot")
        return Config(datasource=name, omniglot_source="tfds", tfds_data_dir=str(tfds_dir.parent), num_classes=3,
                      update_batch_size=2)
    from tests.test_prepare import write_miniimagenet_source
    from maml_tf.data import prepare

    work = tmp_path_factory.mktemp("mini")
    source = write_miniimagenet_source(work / "src", {"train": (5, 16), "val": (5, 2), "test": (6, 2)})
    prepare.prepare_miniimagenet(source, source / "images", work / "data" / "miniImagenet", workers=1,
                                 log=lambda _: None)
    return Config(datasource=name, data_dir=str(work / "data"), num_classes=3, update_batch_size=1, max_pool=True)


@pytest.mark.parametrize("name", list(DATASOURCES))
def test_every_datasource_yields_well_formed_task_batches(name, tmp_path_factory):
    config = datasource_config(name, tmp_path_factory).validate()
    batch = next(make_tasks(config, "train", 0).batches(2))
    n, k, q = config.num_ways, config.update_batch_size, config.num_query_per_class
    shape = tuple(networks.input_shape(config))
    assert tuple(batch.support_x.shape) == (2, n * k) + shape and tuple(batch.query_x.shape) == (2, n * q) + shape
    assert tuple(batch.support_y.shape) == (2, n * k, n) and tuple(batch.query_y.shape) == (2, n * q, n)
    assert all(tf.as_dtype(t.dtype) == tf.float32 for t in batch)
    if config.classification:  # One-hot labels, every class K times in the support set.
        np.testing.assert_array_equal(np.sum(batch.support_y, -1), 1)
        np.testing.assert_array_equal(np.sum(batch.support_y, 1), k)
    model = networks.build_network(config)
    assert tuple(model(batch.support_x[0]).shape) == (n * k, n)
