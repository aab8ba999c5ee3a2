"""Networks (architecture, initialisers, parameter counts), losses and the configuration."""

import numpy as np
import pytest
import tensorflow as tf

from maml_tf import losses, networks
from maml_tf.config import Config, ConfigError
from maml_tf.functional import ParameterSplit


@pytest.mark.parametrize("kwargs, count", [
    (dict(), 1 * 40 + 40 + 40 * 40 + 40 + 40 + 1 + 2 * 40),  # Sinusoid with batch-norm offsets.
    (dict(norm="None"), 1 * 40 + 40 + 40 * 40 + 40 + 40 + 1),
    (dict(datasource="omniglot"), 9 * 64 + 3 * 9 * 64 * 64 + 4 * 64 + 64 * 5 + 5 + 4 * 64),
    (dict(datasource="omniglot", num_classes=20, norm="layer_norm"),
     9 * 64 + 3 * 9 * 64 * 64 + 4 * 64 + 64 * 20 + 20 + 8 * 64),
    (dict(datasource="miniimagenet", num_filters=32, max_pool=True), 27 * 32 + 3 * 9 * 32 * 32 + 4 * 32
     + 800 * 5 + 5 + 4 * 32),
    (dict(datasource="omniglot", conv=False, norm="None"), 784 * 256 + 256 + 256 * 128 + 128 + 128 * 64 + 64
     + 64 * 64 + 64 + 64 * 5 + 5),
])
def test_parameter_counts(kwargs, count):
    assert networks.build_network(Config(**kwargs)).count_params() == count


def test_initialisers():
    tf.keras.utils.set_random_seed(0)
    fc = networks.build_network(Config(datasource="omniglot", conv=False, norm="None"))
    w1 = fc.get_layer("dense1").kernel.numpy()
    # Truncated normal, stddev 0.01, cut at 2 stddev: std of the truncated law is 0.0088.
    assert np.abs(w1).max() <= 0.02 and abs(w1.std() - 0.0088) < 3e-4 and abs(w1.mean()) < 1e-4
    assert not fc.get_layer("dense1").bias.numpy().any()
    conv = networks.build_network(Config(datasource="omniglot"))
    k2 = conv.get_layer("conv2").kernel.numpy()
    limit = np.sqrt(6.0 / (9 * 64 + 9 * 64))  # Xavier uniform, kernel area in both fans.
    assert np.abs(k2).max() <= limit and np.abs(k2).max() > 0.95 * limit
    assert abs(k2.std() - limit / np.sqrt(3)) < 0.02 * limit
    w5 = conv.get_layer("dense5").kernel.numpy()
    assert abs(w5.std() - 1.0) < 0.15  # N(0, 1), not Xavier, for Omniglot.
    mini = networks.build_network(Config(datasource="miniimagenet", num_filters=32, max_pool=True))
    w5 = mini.get_layer("dense5").kernel.numpy()
    assert np.abs(w5).max() <= np.sqrt(6.0 / (800 + 5))


def test_shapes_and_strides():
    conv = networks.build_network(Config(datasource="omniglot"))
    shapes = [tuple(layer.output.shape[1:]) for layer in conv.layers if layer.name.startswith("conv")]
    assert shapes == [(14, 14, 64), (7, 7, 64), (4, 4, 64), (2, 2, 64)]
    mini = networks.build_network(Config(datasource="miniimagenet", num_filters=32, max_pool=True))
    assert mini.output.shape[-1] == 5
    pools = [tuple(layer.output.shape[1:3]) for layer in mini.layers if "pool" in layer.name]
    assert pools == [(42, 42), (21, 21), (10, 10), (5, 5)]


def test_normalisation_parameters_are_meta_only():
    model = networks.build_network(Config(datasource="omniglot", norm="layer_norm"))
    split = ParameterSplit(model)
    adapted = {model.trainable_variables[i].path for i in split.adapted_indices}
    assert adapted and not any("norm" in p for p in adapted)
    assert len(adapted) == 10  # 4 kernels + 4 biases + dense kernel and bias.


def test_batch_norm_is_batch_statistics_offset_only():
    layer = networks.BatchNormTF1()
    x = tf.random.normal((6, 4, 4, 3)) * 5 + 2
    y = layer(x).numpy()
    np.testing.assert_allclose(y.mean((0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(y.var((0, 1, 2)), np.var(x.numpy(), (0, 1, 2)) / (np.var(x.numpy(), (0, 1, 2)) + 1e-3),
                               rtol=1e-4)
    assert [w.name for w in layer.weights] == ["beta"]
    np.testing.assert_allclose(layer(x, training=False).numpy(), y)  # Also at test time (transductive).


def test_loss_scaling():
    """Task loss = sum over examples of xent / K = N * mean xent when there are N*K examples."""
    rng = np.random.RandomState(0)
    logits = tf.constant(rng.randn(10, 5), tf.float32)
    labels = tf.one_hot(np.arange(10) % 5, 5)
    xent = tf.nn.softmax_cross_entropy_with_logits(labels, logits)
    np.testing.assert_allclose(losses.scaled_xent(2)(logits, labels), 5 * tf.reduce_mean(xent), rtol=1e-6)
    np.testing.assert_allclose(losses.mse(tf.ones((4, 1)), tf.zeros((4, 1))), 1.0)
    assert float(losses.accuracy(logits, labels)) == pytest.approx(np.mean(np.argmax(logits, 1) == np.arange(10) % 5))


@pytest.mark.parametrize("kwargs, name", [
    (dict(), "cls_5.mbs_25.ubs_5.numstep1.updatelr0.001batchnorm"),
    (dict(norm="None", update_batch_size=10), "cls_5.mbs_25.ubs_10.numstep1.updatelr0.001nonorm"),
    (dict(datasource="omniglot", meta_batch_size=32, update_batch_size=1, update_lr=0.4),
     "cls_5.mbs_32.ubs_1.numstep1.updatelr0.4batchnorm"),
    (dict(datasource="miniimagenet", meta_batch_size=4, update_batch_size=1, update_lr=0.01, num_updates=5,
          num_filters=32, max_pool=True), "cls_5.mbs_4.ubs_1.numstep5.updatelr0.01hidden32maxpoolbatchnorm"),
    (dict(norm="layer_norm", stop_grad=True, baseline="oracle", update_batch_size=5, train_update_batch_size=10,
          update_lr=0.01, train_update_lr=0.001), "cls_5.mbs_25.ubs_10.numstep1.updatelr0.001stopgradoraclelayernorm"),
])
def test_experiment_folder_name(kwargs, name):
    assert Config(**kwargs).exp_string() == name


def test_test_file_stem_and_steps():
    config = Config(update_batch_size=5, update_lr=0.01, train=False)
    assert config.test_file_stem() == "test_ubs5_stepsize0.01"
    assert config.num_steps_reported == 10
    assert Config(datasource="miniimagenet", num_updates=5, max_pool=True).num_steps_reported == 5
    assert Config(datasource="miniimagenet", max_pool=True).num_query_per_class == 15


@pytest.mark.parametrize("kwargs, message", [
    (dict(datasource="cifar"), "--datasource"),
    (dict(norm="batchnorm"), "--norm"),
    (dict(algorithm="nope"), "--algorithm"),
    (dict(datasource="omniglot", baseline="oracle"), "oracle"),
    (dict(update_batch_size=-1), "update_batch_size"),
    (dict(metatrain_iterations=-5), "metatrain_iterations"),
    (dict(datasource="miniimagenet"), "max_pool"),
])
def test_bad_configs(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Config(**kwargs).validate()
