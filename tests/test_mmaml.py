"""MMAML: the multimodal task distributions, the modulated network (identity modulation is the wrapped network),
MMAML with identity modulation equals MAML, its meta-gradient against finite differences (network and encoder),
gradients reach the encoder, modulations differ between modes, the clipping pieces, main.py, MetaModel and the
image encoder on Omniglot."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf import losses, networks, train
from maml_tf.algorithms import MAML, TaskBatch
from maml_tf.algorithms.mmaml import MMAML, ConvEncoder, Modulated, RecurrentEncoder, modulate, task_encoder
from maml_tf.api import MetaModel
from maml_tf.config import Config, ConfigError
from maml_tf.core.inner import clipped_sgd
from maml_tf.core.transforms import apply_updates, clip_norms
from maml_tf.data import make_tasks
from maml_tf.data.regression import L1_NORM, LINE, MULTIMODAL, QUADRATIC, SINE, TANH, FunctionTasks
from tests.conftest import assert_metamodel_fits_saves_and_loads, shared_path
from tests.test_meta_sgd_anil import batch64, fc64


def max_diff(a, b):
    return max(float(tf.reduce_max(tf.abs(x - y))) for x, y in zip(a, b))


def zero_heads(encoder):
    for head in encoder.heads:
        for v in head.trainable_variables:
            v.assign(tf.zeros_like(v))


def mmaml64(steps=2, **kwargs):
    model = Modulated(fc64())
    keras.utils.set_random_seed(1)
    return MMAML(model, losses.mse, inner_lr=0.1, num_inner_steps=steps, **kwargs)


# ------------------------------------------------------------------ data
def test_multimodal_families_are_the_authors_functions_with_noise():
    x = np.array([[-1.0], [0.5], [2.0]])
    np.testing.assert_allclose(SINE.fn(x, amplitude=2.0, phase=0.5), 2.0 * np.sin(x - 0.5))
    np.testing.assert_allclose(LINE.fn(x, slope=-1.5, intercept=2.0), -1.5 * x + 2.0)
    np.testing.assert_allclose(QUADRATIC.fn(x, curvature=-0.1, center=1.0, bias=0.5), -0.1 * (x - 1.0) ** 2 + 0.5)
    np.testing.assert_allclose(TANH.fn(x, slope=2.0, center=-1.0, bias=0.5), 2.0 * np.tanh(x + 1.0) + 0.5)
    np.testing.assert_allclose(L1_NORM.fn(x, slope=-2.0, center=1.0, bias=0.5), -2.0 * np.abs(x - 1.0) + 0.5)
    assert [f.name for f in MULTIMODAL] == ["sine", "line", "quadratic", "tanh", "l1-norm"]
    source = FunctionTasks(MULTIMODAL, 5, 5, seed=0, balanced=True)
    tasks = source.sample_tasks(500)
    assert [t.family.name for t in tasks[:5]] == [f.name for f in MULTIMODAL]  # In turn: balanced batches.
    assert all(t.noise_std == 0.3 for t in tasks)
    curvatures = np.array([t.params["curvature"] for t in tasks if t.family is QUADRATIC])
    assert np.all((np.abs(curvatures) >= 0.02) & (np.abs(curvatures) <= 0.15))
    assert 0.3 < np.mean(curvatures > 0) < 0.7  # A random sign.
    residual = np.concatenate([t.y - t.f(t.x) for t in tasks])
    assert abs(residual.std() - 0.3) < 0.02
    for t in tasks:
        for k, (lo, hi) in t.family.ranges.items():
            assert lo <= abs(t.params[k]) <= hi if k in t.family.signed else lo <= t.params[k] <= hi


def test_multimodal_datasource_modes_task_mode_and_resumed_stream():
    config = Config(datasource="multimodal_regression", num_modes=3, update_batch_size=5).validate()
    source = make_tasks(config, "train", 0)
    assert [t.family.name for t in source.sample_tasks(6)] == ["sine", "line", "quadratic"] * 2
    batch = next(make_tasks(config, "train", 0).batches(6))
    assert batch.support_x.shape == (6, 5, 1) and batch.query_y.shape == (6, 5, 1)
    one = make_tasks(Config(datasource="multimodal_regression", num_modes=5, task_mode=3).validate(), "train", 0)
    assert {t.family.name for t in one.sample_tasks(4)} == {"tanh"}
    whole = list(make_tasks(config, "train", 0).batches(4, 3))
    resumed = list(make_tasks(config, "train", 0).batches(4, 1, start=2))
    np.testing.assert_array_equal(whole[2].support_y, resumed[0].support_y)
    assert config.exp_string().endswith(".modes3")


@pytest.mark.parametrize("flags, message", [
    (dict(num_modes=6), "--num_modes must be 1 to 5"),
    (dict(num_modes=2, task_mode=2), "--task_mode must be -1"),
    (dict(datasource="sinusoid", task_mode=0), "--task_mode needs --datasource=multimodal_regression"),
    (dict(algorithm="mmaml", mmaml_modulation="gate"), "--mmaml_modulation must be one of"),
    (dict(algorithm="mmaml", mmaml_clip_norm=-1.0), "--mmaml_clip_norm must be at least 0"),
    (dict(algorithm="mmaml", clip_norm=2.0), "MMAML's is --mmaml_clip_norm"),
    (dict(algorithm="reptile", clip_norm=2.0), "--clip_norm applies to MAML and its variants"),
])
def test_bad_multimodal_flags_are_one_line_errors(flags, message):
    with pytest.raises(ConfigError, match=message):
        Config(**{"datasource": "multimodal_regression", **flags}).validate()


# ---------------------------------------------------------- modulation
def test_modulated_network_without_condition_or_with_zero_film_is_the_network():
    network = fc64()
    model = Modulated(network)
    x = tf.constant(np.linspace(-2, 2, 7)[:, None])
    assert model.trainable_variables == network.trainable_variables and model.modulation_sizes == [6, 5]
    np.testing.assert_array_equal(model(x), network(x))
    np.testing.assert_array_equal(model(x, condition=[tf.zeros(12, tf.float64), tf.zeros(10, tf.float64)]),
                                  network(x))


def test_modulations_by_hand():
    h = tf.constant(np.random.default_rng(0).normal(size=(4, 3)))
    e = tf.constant(np.random.default_rng(1).normal(size=6))
    np.testing.assert_allclose(modulate(h, e, "film"), h * (1 + e[:3]) + e[3:])
    np.testing.assert_allclose(modulate(h, e[:3], "sigmoid"), h / (1 + np.exp(-e[:3])))
    np.testing.assert_allclose(modulate(h, e[:3], "softmax"), h * np.exp(e[:3]) / np.sum(np.exp(e[:3])))
    model = Modulated(fc64(), "sigmoid")
    dense1, relu1, dense2, relu2, dense3 = model.chain
    x = tf.constant([[0.3], [-1.0]], tf.float64)
    gated = model(x, condition=[tf.fill([6], tf.constant(-50.0, tf.float64))])  # The first layer's gates shut.
    np.testing.assert_allclose(gated, tf.tile(dense3(relu2(dense2(tf.zeros([1, 6], tf.float64)))), [2, 1]),
                               atol=1e-12)


def test_modulated_conv_net_modulates_every_block_per_channel():
    config = Config(datasource="omniglot", num_classes=3, num_filters=4)
    network = networks.build_network(config)
    model = Modulated(network)
    assert model.modulation_sizes == [4, 4, 4, 4] and model.head_sizes(2) == [8, 8]
    x = tf.random.stateless_normal((2, 28, 28, 1), (0, 1))
    np.testing.assert_array_equal(model(x), network(x))
    shifted = model(x, condition=[tf.concat([tf.zeros(4), tf.fill([4], 1.0)], 0)])
    assert float(tf.reduce_max(tf.abs(shifted - model(x)))) > 1e-3


# ------------------------------------------------- MMAML against MAML
@pytest.mark.parametrize("first_order", [False, True])
def test_with_identity_modulation_mmaml_is_maml(first_order):
    network = fc64()
    keras.utils.set_random_seed(1)
    mmaml = MMAML(Modulated(network), losses.mse, inner_lr=0.1, num_inner_steps=3, inner_grad_clip=None,
                  clip_norm=None, first_order=first_order)
    zero_heads(mmaml.encoder)  # FiLM of zeros: scale 1, shift 0.
    maml = MAML(network, losses.mse, inner_lr=0.1, num_inner_steps=3, batch_tasks=False, first_order=first_order)
    batch = batch64()
    grads, results = mmaml.meta_gradients(batch, num_steps=3)
    expected, expected_results = maml.meta_gradients(batch, num_steps=3)
    n = len(maml.meta_variables)
    assert max_diff(grads[:n], expected) < 1e-12
    np.testing.assert_allclose(results["total_losses2"], expected_results["total_losses2"], rtol=1e-12)
    # The heads' gradients are not zero: the encoder learns from MAML's objective even at identity modulation.
    heads = {id(v) for head in mmaml.encoder.heads for v in head.trainable_variables}
    head_grads = [g for g, v in zip(grads[n:], mmaml.meta_parameters.trainable_variables) if id(v) in heads]
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in head_grads)


def test_meta_gradient_of_network_and_encoder_matches_finite_differences():
    mmaml = mmaml64(steps=2, inner_grad_clip=None, clip_norm=None)
    batch = batch64(tasks=2)
    params = mmaml.params()
    grads, _ = mmaml.meta_gradients(batch, params, num_steps=2)
    rng = np.random.default_rng(0)
    n = len(mmaml.model.trainable_variables)
    for part in (slice(0, n), slice(n, None)):  # The network's initial weights, then the encoder.
        direction = [tf.constant(rng.normal(size=p.shape)) if i in range(len(params))[part] else tf.zeros_like(p)
                     for i, p in enumerate(params)]

        def loss(eps):
            shifted = [p + eps * d for p, d in zip(params, direction)]  # noqa: B023 (used within the iteration)
            return float(mmaml.batch_forward(shifted, batch, 2)["total_losses2"][-1])

        eps = 1e-5
        numeric = (loss(eps) - loss(-eps)) / (2 * eps)
        analytic = sum(float(tf.reduce_sum(g * d)) for g, d in zip(grads, direction))
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6)


def test_gradients_reach_every_encoder_weight_and_modes_get_different_modulations():
    config = Config(datasource="multimodal_regression", num_modes=2, update_batch_size=5).validate()
    keras.utils.set_random_seed(0)
    model = Modulated(networks.build_fc((1,), 1, [16, 16], "None"))
    mmaml = MMAML(model, losses.mse, inner_lr=0.01, num_inner_steps=2)
    assert isinstance(mmaml.encoder, RecurrentEncoder) and len(mmaml.encoder.heads) == 2
    batch = next(make_tasks(config, "train", 0).batches(4))  # Sine, line, sine, line.
    grads, _ = mmaml.meta_gradients(batch)
    n = len(model.trainable_variables)
    assert len(grads) - n == len(mmaml.encoder.trainable_variables) > 2
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads[n:])
    own = mmaml.unpack(mmaml.params())[1]
    mods = [mmaml.encode(own, batch.support_x[i], batch.support_y[i])[1][0] for i in range(2)]
    assert float(tf.reduce_max(tf.abs(mods[0] - mods[1]))) > 1e-3
    again = mmaml.encode(own, batch.support_x[0], batch.support_y[0])[1][0]
    np.testing.assert_array_equal(mods[0], again)


def test_inner_gradient_clipping_and_group_norm_clipping():
    opt = clipped_sgd(0.5, 1.0)
    w = [tf.zeros(3)]
    new = apply_updates(w, opt.update([tf.constant([-3.0, 0.5, 2.0])], opt.init(w), w, step=0)[0])
    np.testing.assert_allclose(new[0], [0.5, -0.25, -0.5])
    grads = [tf.constant([3.0, 4.0]), tf.constant([0.1]), tf.constant([0.3, 0.4])]
    clipped = clip_norms(grads, 2.0, [1, 2])
    np.testing.assert_allclose(clipped[0], [1.2, 1.6], rtol=1e-6)  # Norm 5 -> 2.
    np.testing.assert_allclose(clipped[1], [0.1])  # Norm 0.51 < 2: unchanged.
    np.testing.assert_allclose(clipped[2], [0.3, 0.4])
    mmaml = mmaml64(clip_norm=1e-3)
    grads, _ = mmaml.meta_gradients(batch64())
    n = len(mmaml.model.trainable_variables)
    for part in (mmaml.clip(grads)[:n], mmaml.clip(grads)[n:]):
        assert float(tf.linalg.global_norm(part)) == pytest.approx(1e-3, rel=1e-9)
    maml = MAML(fc64(), losses.mse, inner_lr=0.1, num_inner_steps=1, clip_norm=1e-3)  # --clip_norm: one group.
    grads, _ = maml.meta_gradients(batch64())
    np.testing.assert_allclose(maml.clip(grads)[0], grads[0] * 1e-3 / tf.linalg.global_norm(grads), rtol=1e-9)


def test_a_model_without_a_condition_argument_and_a_branching_network_are_refused():
    with pytest.raises(ValueError, match="must take a `condition` argument"):
        MMAML(fc64(), losses.mse, inner_lr=0.1, num_inner_steps=1)
    inputs = keras.Input((1,))
    h = keras.layers.ReLU()(keras.layers.Dense(4)(inputs))
    branching = keras.Model(inputs, keras.layers.Add()([keras.layers.Dense(4)(h), h]))
    with pytest.raises(ValueError, match="single-input chain of layers"):
        Modulated(branching)


# ------------------------------------------------------------ programs
def test_main_trains_and_tests_mmaml_on_multimodal_regression(tmp_path):
    """(Its checkpoint holds the encoder: `test_conformance.py`'s round trip.)"""
    flags = dict(datasource="multimodal_regression", algorithm="mmaml", num_modes=3, norm="None", num_updates=2,
                 metatrain_iterations=2, meta_batch_size=3, logdir=str(tmp_path), num_test_tasks=3, progress=False,
                 mmaml_encoder_hidden=8)
    train.run(Config(**flags))
    result = train.run(Config(**{**flags, "train": False}))
    assert result["values"].shape == (3, 11)
    assert open(result["embeddings_figure"], "rb").read(4) == b"\x89PNG"


def test_metamodel_fits_saves_and_loads_mmaml(tmp_path):
    keras.utils.set_random_seed(0)
    model = Modulated(networks.build_fc((1,), 1, [8, 8], "None"))
    meta = MetaModel(model, "mmaml", loss="mse", inner_lr=0.01, num_inner_steps=1)
    meta.compile(optimizer=keras.optimizers.Adam(1e-3))
    batches = list(FunctionTasks(MULTIMODAL[:2], 5, 5, seed=0, balanced=True).batches(4, 2))
    assert_metamodel_fits_saves_and_loads(meta, batches, tmp_path)


def test_image_encoder_meta_trains_on_omniglot():
    """MMAML's conv encoder on real Omniglot tasks (5-way 1-shot, small filters): a few meta-updates lower the
    query loss of the batch and change every encoder weight."""
    tfds_dir = shared_path("data", "tfds", "omniglot")
    config = Config(datasource="omniglot", algorithm="mmaml", omniglot_source="tfds",
                    tfds_data_dir=str(tfds_dir.parent), num_classes=5, update_batch_size=1, num_filters=8,
                    update_lr=0.4, meta_lr=0.003).validate()
    keras.utils.set_random_seed(0)
    model = MMAML.build_model(config)
    mmaml = MMAML.from_config(config, model)
    assert isinstance(mmaml.encoder, ConvEncoder) and model.head_sizes() == [16] * 4
    batch = TaskBatch(*[tf.constant(t) for t in next(make_tasks(config, "train", 0).batches(2))])
    before = [v.numpy().copy() for v in mmaml.encoder.trainable_variables]
    loss0 = float(mmaml.evaluate(batch, 1)["total_losses2"][-1])
    for _ in range(10):
        mmaml.train_step(batch)
    assert float(mmaml.evaluate(batch, 1)["total_losses2"][-1]) < loss0
    assert all(np.any(v.numpy() != b) for v, b in zip(mmaml.encoder.trainable_variables, before))
    assert task_encoder(model).heads[0].units == 16


def test_mixed_precision_meta_gradient_is_the_float32_one_up_to_float16_rounding():
    def learner(mixed):
        config = Config(datasource="multimodal_regression", algorithm="mmaml", norm="None", num_updates=2,
                        mixed_precision=mixed, mmaml_encoder_hidden=8).validate()
        keras.utils.set_random_seed(0)
        return MMAML.from_config(config, MMAML.build_model(config))

    plain, mixed = learner(False), learner(True)
    assert mixed.model.chain[0].compute_dtype == "float16" and mixed.encoder.compute_dtype == "float16"
    mixed.loss_scale.scale.assign(2.0 ** 8)
    batch = next(make_tasks(Config(datasource="multimodal_regression").validate(), "train", 0).batches(2))
    want, _ = plain.meta_gradients(batch)
    got, _ = mixed.meta_gradients(batch)
    error = tf.linalg.global_norm([g - w for g, w in zip(got, want)]) / tf.linalg.global_norm(want)
    assert float(error) < 0.02
