"""LLAMA and its K-FAC curvature: the Kronecker log-determinant, the factors against the exact Gauss-Newton block,
the linear-Gaussian posterior in closed form, the reduction to MAML at eta = 0, the meta-gradient against finite
differences, the posterior samples' covariance, main.py and MetaModel."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf import losses, networks, train, uncertainty
from maml_tf.algorithms import MAML, TaskBatch
from maml_tf.algorithms.llama import LLAMA
from maml_tf.api import MetaModel
from maml_tf.config import Config
from maml_tf.core import kfac
from maml_tf.core.execution import TaskView
from maml_tf.core.hvp import conjugate_gradient, hvp
from maml_tf.data.regression import SINE, FunctionTasks
from tests.conftest import assert_metamodel_fits_saves_and_loads
from tests.test_meta_sgd_anil import batch64, fc64


def dense_model(d_in, d_out, hidden=(), activation="tanh", seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((d_in,), dtype="float64")
    h = inputs
    for units in hidden:
        h = keras.layers.Dense(units, activation=activation, dtype="float64",
                               kernel_initializer=keras.initializers.RandomNormal(stddev=0.7),
                               bias_initializer=keras.initializers.RandomNormal(stddev=0.3))(h)
    out = keras.layers.Dense(d_out, dtype="float64", kernel_initializer=keras.initializers.RandomNormal(stddev=0.7),
                             bias_initializer=keras.initializers.RandomNormal(stddev=0.3))(h)
    return keras.Model(inputs, out)


def curvature_of(model, likelihood="gaussian"):
    return kfac.KFAC(model, MAML(model, losses.mse, inner_lr=0.1, num_inner_steps=1).split, likelihood)


def max_diff(a, b):
    return max(float(tf.reduce_max(tf.abs(x - y))) for x, y in zip(a, b))


def weights_of(model):
    return [tf.convert_to_tensor(v) for v in model.trainable_variables]


# -------------------------------------------------------------- K-FAC
def test_kfac_log_det_of_one_dense_layer_equals_the_exact_log_det_of_the_kronecker_product():
    model = dense_model(3, 2)
    x = tf.constant(np.random.default_rng(0).normal(size=(7, 3)))
    curvature, tau = curvature_of(model), 0.3
    (a, g), = curvature.factors(weights_of(model), x)
    exact = np.linalg.slogdet(np.kron(a.numpy() + np.sqrt(tau) * np.eye(4), g.numpy() + np.sqrt(tau) * np.eye(2)))
    assert exact[0] > 0
    np.testing.assert_allclose(curvature.log_det(weights_of(model), x, tau).numpy(), exact[1], rtol=1e-12)


@pytest.mark.parametrize("likelihood", ["gaussian", "categorical"])
def test_kfac_factors_are_the_exact_gauss_newton_block_for_one_example(likelihood):
    """For one example, `A (x) G` of each layer is the layer's block of J^T H_out J (the Gauss-Newton matrix of the
    negative log-likelihood), `H_out` = (2/D) I (squared error) or diag(p) - p p^T (softmax cross-entropy)."""
    model = dense_model(3, 4, hidden=(5,))
    x = tf.constant(np.random.default_rng(1).normal(size=(1, 3)))
    weights = weights_of(model)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(weights)
        out = model.stateless_call(weights, [], x)[0][0]
    h_out = np.eye(4) * 0.5 if likelihood == "gaussian" else np.diag(p := tf.nn.softmax(out).numpy()) - np.outer(p, p)
    jac = [tape.jacobian(out, w).numpy().reshape(4, -1) for w in weights]  # Row-major, kernel then bias.
    factors = curvature_of(model, likelihood).factors(weights, x)
    for (a, g), (kernel, bias) in zip(factors, [(0, 1), (2, 3)]):
        j = np.concatenate([jac[kernel], jac[bias]], axis=1)
        np.testing.assert_allclose(np.kron(a.numpy(), g.numpy()), j.T @ h_out @ j, rtol=1e-10, atol=1e-12)


def test_conv_rows_are_the_patches_the_kernel_multiplies():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((7, 7, 2), dtype="float64")
    conv = keras.layers.Conv2D(3, 3, strides=2, padding="same", dtype="float64")
    model = keras.Model(inputs, keras.layers.Dense(2, dtype="float64")(keras.layers.Flatten()(conv(inputs))))
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 7, 7, 2)))
    rows = kfac.KFAC._rows(conv, x, with_bias=True)
    kernel, bias = conv.kernel.numpy(), conv.bias.numpy()
    expected = tf.nn.conv2d(x, kernel, [2, 2], "SAME").numpy().reshape(-1, 3) + bias
    np.testing.assert_allclose(rows.numpy() @ np.concatenate([kernel.reshape(-1, 3), bias[None]]), expected,
                               rtol=1e-12)
    assert len(curvature_of(model).blocks) == 2


def test_kronecker_inverse_square_root_gives_the_inverse_as_covariance():
    rng = np.random.default_rng(0)
    a, g = [rng.normal(size=(n, n)) for n in (3, 2)]
    factors = kfac.damp(tf.constant(a @ a.T), tf.constant(g @ g.T), 0.5)
    basis = tf.constant(np.eye(6).reshape(6, 3, 2))  # Z = each basis matrix: T's columns, T T^T = covariance.
    t = kfac.kronecker_inverse_sqrt(factors, basis).numpy().reshape(6, 6).T
    np.testing.assert_allclose(t @ t.T, np.linalg.inv(np.kron(factors.a.numpy(), factors.g.numpy())), rtol=1e-10)


# ------------------------------------------------- the linear Gaussian case
def test_linear_gaussian_laplace_posterior_is_the_exact_posterior():
    """y = x w + b + noise, noise variance 1/2 (the likelihood of the summed squared error), flat prior (tau = 0):
    the exact posterior is N(OLS, (2 X^T X)^-1) with X the inputs and a column of ones. LLAMA's inner loop
    converges to its mean, the K-FAC precision is its precision (and the exact Hessian, by Hessian-vector
    products), a conjugate-gradient Newton step with the K-FAC matrix lands on the mean, and the samples have its
    moments."""
    rng = np.random.default_rng(0)
    n = 40
    x = rng.normal(size=(n, 2))
    y = x @ np.array([[1.5], [-0.5]]) + 0.3 + rng.normal(size=(n, 1)) * np.sqrt(0.5)
    xb = np.concatenate([x, np.ones((n, 1))], axis=1)
    precision = 2 * xb.T @ xb
    mean = np.linalg.solve(xb.T @ xb, xb.T @ y)[:, 0]
    model = dense_model(2, 1)
    llama = LLAMA(model, losses.mse, inner_lr=0.2, num_inner_steps=200, eta=1.0, tau=0.0, seed=3)
    tx, ty = tf.constant(x), tf.constant(y)
    phi = llama.adapt(tx, ty)
    np.testing.assert_allclose(np.concatenate([phi[0].numpy()[:, 0], phi[1].numpy()]), mean, rtol=1e-9)

    (a, g), = llama.curvature.factors(phi, tx)
    kron = np.kron(a.numpy(), g.numpy())
    np.testing.assert_allclose(kron, precision, rtol=1e-12)
    np.testing.assert_allclose(llama.log_det(tx, ty).numpy(), np.linalg.slogdet(precision)[1], rtol=1e-12)

    def loss_and_grads(w):  # The summed squared error: n * MSE.
        with tf.GradientTape() as tape:
            tape.watch(w)
            loss = n * losses.mse(model.stateless_call(w, [], tx)[0], ty)
        return loss, tape.gradient(loss, w)

    theta = weights_of(model)
    columns = [hvp(loss_and_grads, theta, [tf.constant(e[:2, None]), tf.constant(e[2:])]) for e in np.eye(3)]
    exact_hessian = np.stack([np.concatenate([c[0].numpy()[:, 0], c[1].numpy()]) for c in columns], axis=1)
    np.testing.assert_allclose(exact_hessian, precision, rtol=1e-10)
    _, grads = loss_and_grads(theta)
    flat = lambda w: tf.concat([w[0][:, 0], w[1]], 0)  # noqa: E731
    step = conjugate_gradient(lambda v: [tf.linalg.matvec(tf.constant(kron), v[0])], [flat(grads)], steps=3)[0]
    np.testing.assert_allclose((flat(theta) - step).numpy(), mean, rtol=1e-8)

    draws = llama.posterior_samples(tx, ty, num_samples=40000)
    flat_draws = np.concatenate([draws[0].numpy()[:, :, 0], draws[1].numpy()], axis=1)
    covariance = np.linalg.inv(precision)
    standard_error = np.sqrt(np.diag(covariance).max() / len(flat_draws))  # Of a mean; a covariance's: about this
    np.testing.assert_allclose(flat_draws.mean(0), mean, rtol=0, atol=4 * standard_error)  # times its scale.
    np.testing.assert_allclose(np.cov(flat_draws.T), covariance, rtol=0, atol=4 * standard_error * 1.5 *
                               np.sqrt(np.diag(covariance).max()))


# -------------------------------------------------------- the algorithm
def test_with_eta_zero_llama_is_maml():
    model, batch = fc64(), batch64(n=6)
    maml = MAML(model, losses.mse, inner_lr=0.1, num_inner_steps=2)
    llama = LLAMA(model, losses.mse, inner_lr=0.1, num_inner_steps=2, eta=0.0, tau=0.1)
    g_maml, r_maml = maml.meta_gradients(batch)
    g_llama, r_llama = llama.meta_gradients(batch)
    np.testing.assert_allclose(r_llama["objective_loss"].numpy(), r_maml["objective_loss"].numpy(), rtol=1e-12)
    for a, b in zip(g_maml, g_llama):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-12, atol=1e-18)


def test_default_tau_is_the_precision_of_the_early_stopping_prior():
    llama = LLAMA(fc64(), losses.mse, inner_lr=0.05, num_inner_steps=4)
    assert llama.tau == pytest.approx(5.0)


def conv_model(head="mean", norm="batch_norm"):
    keras.utils.set_random_seed(0)
    return networks.build_conv((16, 16, 1), 3, 3, norm, True, head, dtype="float64")


@pytest.mark.parametrize("head, norm", [("mean", "batch_norm"), ("flatten", "layer_norm")])  # Omniglot, MiniImagenet
def test_kfac_pass_of_a_conv_net_with_normalisation_and_pooling_is_the_model(head, norm):
    model = conv_model(head, norm)
    x = tf.constant(np.random.default_rng(0).normal(size=(4, 16, 16, 1)))
    factors, outputs = curvature_of(model, "categorical").factors(weights_of(model), x, return_outputs=True)
    np.testing.assert_allclose(outputs.numpy(), model(x).numpy(), rtol=1e-12)
    # 3x3 patches of 1 and 3 channels, and a 1 for the bias; the dense head on 3 features (1x1 after pooling).
    assert [f[0].shape[0] for f in factors] == [10, 28, 28, 28, 4]


@pytest.mark.parametrize("likelihood, kind", [("gaussian", "fc"), ("categorical", "fc"), ("categorical", "conv")])
def test_meta_gradient_of_the_laplace_term_matches_finite_differences(likelihood, kind):
    """d/d theta of eta/2 log det H(phi(theta)): through the inner step and through the K-FAC factors (the
    output-gradient back-propagation included), second order."""
    model = dense_model(2, 3, hidden=(4,)) if kind == "fc" else conv_model()
    rng = np.random.default_rng(2)
    shape = (1, 5, 2) if kind == "fc" else (1, 3, 16, 16, 1)
    sx, qx = rng.normal(size=shape), rng.normal(size=shape)
    label = (lambda k: np.eye(3)[rng.integers(0, 3, (1, k))]) if likelihood == "categorical" else \
        (lambda k: rng.normal(size=(1, k, 3)))
    batch = TaskBatch(*[tf.constant(v) for v in (sx, label(shape[1]), qx, label(shape[1]))])
    loss = losses.scaled_xent(1) if likelihood == "categorical" else losses.mse
    # A small step on the conv net: a large one makes its objective kinked (ReLU, max-pooling) at this scale.
    llama = LLAMA(model, loss, inner_lr=0.3 if kind == "fc" else 0.01, num_inner_steps=2, eta=1.0, tau=0.2,
                  likelihood=likelihood)
    params = llama.params()
    grads, _ = llama.meta_gradients(batch)
    direction = [tf.constant(rng.normal(size=p.shape)) for p in params]
    eps = 1e-5
    plus = _objective(llama, [p + eps * d for p, d in zip(params, direction)], batch)
    minus = _objective(llama, [p - eps * d for p, d in zip(params, direction)], batch)
    numeric = (plus - minus) / (2 * eps)
    analytic = sum(float(tf.reduce_sum(g * d)) for g, d in zip(grads, direction))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6)
    laplace = 0.5 * float(llama.curvature.log_det(llama.adapt(sx[0], batch.support_y[0]), tf.constant(sx[0]), 0.2))
    assert _objective(llama, params, batch) == pytest.approx(
        float(llama.evaluate(batch, 2)["total_losses2"][1]) + laplace, rel=1e-12)


def _objective(llama, params, batch):
    """The meta-objective of the one task of `batch` (query loss + eta/2 log det H) at `params`."""
    task = TaskBatch(*[t[0] for t in batch])
    return float(llama.task_forward(TaskView(llama), params, task, llama.num_inner_steps, [1])["objective"])


def test_llama_resumes_its_sampler_exactly(tmp_path):
    model, batch = fc64(), batch64()
    llama = LLAMA(model, losses.mse, inner_lr=0.1, num_inner_steps=1, num_samples=4, seed=5)
    checkpoint = tf.train.Checkpoint(**llama.checkpoint_objects())
    path = checkpoint.save(str(tmp_path / "ckpt"))
    first = llama.predictive(batch.support_x[0], batch.support_y[0], batch.query_x[0])[0].numpy()
    checkpoint.restore(path).assert_existing_objects_matched()
    again = llama.predictive(batch.support_x[0], batch.support_y[0], batch.query_x[0])[0].numpy()
    np.testing.assert_array_equal(first, again)
    assert first.shape == (4, 4, 1) and np.all(first.std(0) > 0)


# ------------------------------------------------------------- programs
def test_main_trains_and_tests_llama_with_predictive_measures_and_plot(tmp_path):
    flags = dict(datasource="sine_line", algorithm="llama", norm="None", metatrain_iterations=3, meta_batch_size=2,
                 update_batch_size=3, logdir=str(tmp_path), num_test_tasks=4, progress=False, llama_num_samples=4)
    train.run(Config(**flags))
    result = train.run(Config(**{**flags, "train": False}))
    assert result["values"].shape == (4, 11)
    assert result["uncertainty"]["samples"] == 4 and not result["uncertainty"]["learned_noise"]
    stem = result["csv"][:-4]
    assert json.load(open(stem + ".uncertainty.json"))["tasks"] == 4
    assert open(stem + ".samples.png", "rb").read(4) == b"\x89PNG"


def test_metamodel_fits_saves_and_loads_llama(tmp_path):
    keras.utils.set_random_seed(0)
    model = networks.build_fc((1,), 1, [8, 8], "None", kernel_initializer="glorot_normal")
    meta = MetaModel(model, "llama", loss="mse", inner_lr=0.01, num_inner_steps=1, eta=1e-3, seed=1)
    meta.compile(optimizer=keras.optimizers.Adam(1e-3))
    assert_metamodel_fits_saves_and_loads(meta, list(FunctionTasks([SINE], 5, 5, seed=0).batches(4, 3)), tmp_path)


class _FixedLogits:
    """An algorithm whose predictive returns given logit samples `[S, N, C]`, whatever the task."""

    def __init__(self, logits):
        self.logits = tf.constant(logits)

    def predictive(self, support_x, support_y, x, steps, num_samples):
        return self.logits, None


def test_classification_measures_of_the_mean_softmax():
    logits = np.log(np.array([[[0.8, 0.1, 0.1], [0.1, 0.2, 0.7]], [[0.5, 0.3, 0.2], [0.3, 0.3, 0.4]]]))
    labels = np.eye(3)[[0, 1]]
    batch = TaskBatch(*[tf.constant(v[None]) for v in (np.zeros((2, 1)), labels, np.zeros((2, 1)), labels)])
    result = uncertainty.evaluate_classification(_FixedLogits(logits), [batch, batch], bins=10)
    # The samples' mean probabilities: [0.65, 0.2, 0.15] and [0.2, 0.25, 0.55].
    assert result["summary"]["accuracy"]["mean"] == 0.5 and result["samples"] == 2
    assert result["summary"]["nll"]["mean"] == pytest.approx(-np.mean(np.log([0.65, 0.25])), rel=1e-12)
    # Confidences 0.65 (bin 6, right) and 0.55 (bin 5, wrong), each half of the examples.
    assert result["summary"]["ece"]["mean"] == pytest.approx(0.5 * abs(1 - 0.65) + 0.5 * abs(0 - 0.55), rel=1e-12)


def test_predict_tau_narrows_the_samples_and_leaves_training_alone():
    model, batch = fc64(), batch64()
    spreads, grads = {}, {}
    for predict_tau in (None, 400.0):
        llama = LLAMA(model, losses.mse, inner_lr=0.1, num_inner_steps=1, tau=4.0, predict_tau=predict_tau, seed=2)
        draws = llama.posterior_samples(batch.support_x[0], batch.support_y[0], num_samples=500)
        spreads[predict_tau] = float(np.std(draws[0].numpy(), axis=0).mean())
        grads[predict_tau] = llama.meta_gradients(batch)[0]
    assert llama.predict_tau == 400.0 and spreads[400.0] < 0.5 * spreads[None]
    assert max_diff(grads[None], grads[400.0]) == 0


def test_the_laplace_term_is_reported_per_task_and_in_the_totals():
    model, batch = fc64(), batch64(tasks=2)
    llama = LLAMA(model, losses.mse, inner_lr=0.1, num_inner_steps=1, eta=0.5, tau=0.3)
    results = llama.evaluate(batch, 3)
    expected = [0.5 * 0.5 * float(llama.log_det(batch.support_x[t], batch.support_y[t])) for t in range(2)]
    np.testing.assert_allclose(results["objective_term"].numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(float(llama.train_step(batch)["total_objective_term"]), np.mean(expected), rtol=1e-10)
    assert "total_objective_term" not in MAML(model, losses.mse, inner_lr=0.1, num_inner_steps=1).evaluate(batch, 3)
