"""BMAML, EMAML, PLATIPUS and the uncertainty measures: SVGD's limits and target, the chaser loss, the KL and the
reductions to MAML, the log posterior against its formula, the particle forward pass, main.py and MetaModel."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf import losses, networks, train, uncertainty
from maml_tf.algorithms import MAML, TaskBatch
from maml_tf.algorithms.bmaml import BMAML, EMAML
from maml_tf.algorithms.platipus import PLATIPUS
from maml_tf.api import MetaModel
from maml_tf.config import Config
from maml_tf.core import gaussian
from maml_tf.core.execution import TaskView
from maml_tf.core.inner import inner_loop
from maml_tf.core.particles import particle_forward, stack
from maml_tf.core.svgd import svgd, svgd_direction
from maml_tf.core.transforms import apply_updates
from maml_tf.data.regression import LINE, SINE, FunctionTasks
from tests.conftest import assert_metamodel_fits_saves_and_loads
from tests.test_meta_sgd_anil import batch64, fc64


def clone(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def max_diff(a, b):
    return max(float(tf.reduce_max(tf.abs(x - y))) for x, y in zip(a, b))


# ------------------------------------------------------------------ SVGD
def test_svgd_with_one_particle_is_gradient_ascent_on_the_log_posterior():
    rng = np.random.default_rng(0)
    weights = [tf.constant(rng.normal(size=(1, 3, 2))), tf.constant(rng.normal(size=(1, 2)))]
    grads = [tf.constant(rng.normal(size=w.shape)) for w in weights]  # Of the loss: -grad log p.
    opt = svgd(0.3)
    new = apply_updates(weights, opt.update(grads, opt.init(weights), weights, step=0)[0])
    for n, w, g in zip(new, weights, grads):
        np.testing.assert_allclose(n.numpy(), (w - 0.3 * g).numpy(), rtol=0, atol=1e-15)


def test_svgd_particles_approach_a_2d_gaussian_target():
    """Exact SVGD with the median bandwidth: the particles' mean and covariance match the target's."""
    mean, cov = np.array([1.0, -2.0]), np.array([[2.0, 0.8], [0.8, 1.0]])
    precision = tf.constant(np.linalg.inv(cov))

    @tf.function
    def run(x):
        for _ in tf.range(2000):
            x = x + 0.05 * svgd_direction(x, -tf.matmul(x - mean, precision))
        return x

    x = run(tf.constant(np.random.default_rng(0).normal(size=(150, 2)) * 0.5)).numpy()
    np.testing.assert_allclose(x.mean(0), mean, atol=0.05)
    np.testing.assert_allclose(np.cov(x.T), cov, rtol=0.15, atol=0.1)


def test_svgd_repulsion_keeps_particles_apart_and_its_scale_halves_it():
    x = tf.constant([[0.0, 0.0], [0.1, 0.0], [0.0, 0.3]], tf.float64)
    zero = tf.zeros_like(x)
    full, half = svgd_direction(x, zero).numpy(), svgd_direction(x, zero, repulsion=0.5).numpy()
    np.testing.assert_allclose(half, full / 2, rtol=1e-14)
    assert full[1, 0] > 0 > full[0, 0]  # The two closest particles move apart.


# ------------------------------------------------------------- particles
@pytest.mark.parametrize("conv", [False, True])
def test_particle_forward_batched_equals_one_call_per_particle(conv):
    keras.utils.set_random_seed(0)
    model = networks.build_conv((16, 16, 1), 3, 4, "batch_norm", True, "mean", dtype="float64") if conv else \
        networks.build_fc((1,), 1, [6, 5], "batch_norm", dtype="float64")
    rng = np.random.default_rng(1)
    particles = [[tf.constant(rng.normal(size=v.shape)) for v in model.trainable_variables] for _ in range(3)]
    learner = MAML(model, losses.mse, inner_lr=0.1, num_inner_steps=1)
    x = tf.constant(rng.normal(size=(4,) + tuple(model.input_shape[1:])))
    batched = particle_forward(learner, stack(particles), x).numpy()
    for i, weights in enumerate(particles):
        np.testing.assert_allclose(batched[i], learner.forward(weights, x).numpy(), rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------- reductions
@pytest.mark.parametrize("steps", [1, 3])
def test_emaml_with_one_particle_is_maml(steps):
    model, batch = fc64(), batch64()
    maml = MAML(clone(model), losses.mse, inner_lr=0.1, num_inner_steps=steps)
    emaml = EMAML(clone(model), losses.mse, inner_lr=0.1, num_inner_steps=steps, num_particles=1)
    g_maml, r_maml = maml.meta_gradients(batch, num_steps=4)
    g_emaml, r_emaml = emaml.meta_gradients(batch, num_steps=4)
    assert max_diff(g_maml, g_emaml) < 1e-12
    np.testing.assert_allclose(r_emaml["total_losses2"].numpy(), r_maml["total_losses2"].numpy(), rtol=1e-12)


def test_emaml_particles_adapt_independently_and_its_loss_sums_theirs():
    """M particles: the meta-gradient of particle i is MAML's meta-gradient at particle i's weights."""
    model, batch = fc64(), batch64()
    emaml = EMAML(model, losses.mse, inner_lr=0.1, num_inner_steps=2, num_particles=3, seed=4)
    grads, _ = emaml.meta_gradients(batch)
    n = len(model.trainable_variables)
    for i in (0, 2):
        weights = [v.numpy() if i == 0 else emaml.meta_parameters.weights[j].numpy()[i - 1]
                   for j, v in enumerate(model.trainable_variables)]
        single = clone(model)
        single.set_weights(weights)
        g_maml, _ = MAML(single, losses.mse, inner_lr=0.1, num_inner_steps=2).meta_gradients(batch)
        got = grads[:n] if i == 0 else [g[i - 1] for g in grads[n:]]
        assert max_diff(got, g_maml) < 1e-12


def bmaml64(**kwargs):
    options = dict(inner_lr=1e-3, num_inner_steps=1, num_particles=3, seed=2)
    return BMAML(fc64(), losses.mse, **{**options, **kwargs})


def numpy_log_posterior(particle, x, y):
    """BMAML's log posterior of one particle (`jsikyoon/bmaml`'s `bnn.py`), in numpy, from its weights."""
    weights, log_lambda, log_gamma = particle[:-2], particle[-2], particle[-1]
    h = x
    for i in range(0, len(weights) - 2, 2):
        h = np.maximum(h @ weights[i] + weights[i + 1], 0)
    f = h @ weights[-2] + weights[-1]
    d = sum(w.size for w in weights)
    lam, gam = math.exp(log_lambda), math.exp(log_gamma)
    out = 0.5 * d * log_lambda - 0.5 * lam * sum(np.sum(w ** 2) for w in weights)
    out += (2.0 - 1) * log_lambda - 2.0 * lam + log_lambda
    out += np.sum(0.5 * log_gamma - 0.5 * gam * (f - y) ** 2)
    return out + (2.0 - 1) * log_gamma - 0.2 * gam + log_gamma


def test_bmaml_log_posterior_is_the_authors_formula():
    algo, batch = bmaml64(), batch64()
    particles, _ = algo.initial_particles(algo.params(), (batch.support_x[0], batch.support_y[0]))
    view = algo.particle_view()
    outputs = view.forward(particles, batch.support_x[0])
    got = algo.log_posterior(particles, outputs, batch.support_y[0]).numpy()
    for m in range(3):
        particle = [p[m].numpy() for p in particles]
        np.testing.assert_allclose(got[m], numpy_log_posterior(particle, batch.support_x[0].numpy(),
                                                               batch.support_y[0].numpy()), rtol=1e-12)


def test_bmaml_categorical_likelihood_is_the_log_softmax_of_the_labels():
    keras.utils.set_random_seed(0)
    model = networks.build_fc((4,), 3, [5], "None", dtype="float64")
    algo = BMAML(model, losses.mean_xent, metric_fn=losses.accuracy, likelihood="categorical", num_particles=2,
                 inner_lr=1e-3, num_inner_steps=1, seed=1)
    rng = np.random.default_rng(0)
    x, y = tf.constant(rng.normal(size=(6, 4))), tf.constant(np.eye(3)[rng.integers(3, size=6)])
    particles, _ = algo.initial_particles(algo.params(), (x, y))
    assert len(particles) == len(model.trainable_variables) + 1  # log lambda only: no noise precision.
    got = algo.log_posterior(particles, algo.particle_view().forward(particles, x), y).numpy()
    for m in range(2):
        w = [p[m].numpy() for p in particles[:-1]]
        logits = np.maximum(x.numpy() @ w[0] + w[1], 0) @ w[2] + w[3]
        log_softmax = logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
        log_lambda = float(particles[-1][m])
        lam = math.exp(log_lambda)
        prior = 0.5 * sum(a.size for a in w) * log_lambda - 0.5 * lam * sum(np.sum(a ** 2) for a in w)
        prior += (2.0 - 1) * log_lambda - 2.0 * lam + log_lambda
        np.testing.assert_allclose(got[m], prior + np.sum(y.numpy() * log_softmax), rtol=1e-12)
    batch = TaskBatch(x[None], y[None], x[None], y[None])
    grads, results = algo.meta_gradients(batch)
    assert all(np.all(np.isfinite(g.numpy())) for g in grads) and 0 <= float(results["objective_metric"]) <= 1


def test_bmaml_with_one_particle_steps_up_its_log_posterior():
    algo, batch = bmaml64(num_particles=1, inner_lr=1e-4), batch64()
    x, y = batch.support_x[0], batch.support_y[0]
    particles, _ = algo.initial_particles(algo.params(), (x, y))
    with tf.GradientTape() as tape:
        tape.watch(particles)
        log_p = tf.reduce_sum(algo.log_posterior(particles, algo.particle_view().forward(particles, x), y))
    grads = tape.gradient(log_p, particles)
    adapted = algo.adapt_particles(x, y, steps=1)
    expected = [p + 1e-4 * g for p, g in zip(particles, grads)]
    assert max_diff(adapted, expected) < 1e-12


def test_chaser_loss_is_zero_when_leader_and_chaser_coincide_and_its_gradient_reaches_the_chaser_only():
    algo, batch = bmaml64(), batch64()
    tasks = TaskBatch(*[t[0] for t in batch])
    chaser, _ = algo.initial_particles(algo.params(), (tasks.support_x, tasks.support_y))
    view = algo.particle_view()
    algo.inner_lr = 0.0  # The leader's steps do not move it: leader == chaser.
    assert float(algo.particle_objective(view, chaser, None, tasks)) == 0.0
    algo.inner_lr = 1e-3
    with tf.GradientTape() as tape:
        tape.watch(chaser)
        loss = algo.particle_objective(view, chaser, None, tasks)
    grads = tape.gradient(loss, chaser, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    both = (tf.concat([tasks.support_x, tasks.query_x], 0), tf.concat([tasks.support_y, tasks.query_y], 0))
    lead = inner_loop(view, chaser, algo.particle_optimizer(), both, 1).weights
    n = len(algo.model.trainable_variables)
    assert float(loss) > 0
    # d/dc sum (c - sg(l))^2 = 2 (c - l): nothing flows back through the leader; the log-precisions get none.
    assert max_diff(grads[:n], [2 * (c - d) for c, d in zip(chaser[:n], lead[:n])]) < 1e-12
    assert all(float(tf.reduce_max(tf.abs(g))) == 0 for g in grads[n:])


def test_bmaml_meta_gradient_flows_through_svgd_to_every_particle():
    algo = bmaml64()
    grads, results = algo.meta_gradients(batch64())
    n = len(algo.model.trainable_variables)
    assert float(results["objective_loss"]) > 0
    assert all(np.any(g.numpy() != 0) for g in grads[:n])  # Particle 1 (the model's own weights).
    assert all(np.all(np.any(g.numpy().reshape(g.shape[0], -1) != 0, axis=1)) for g in grads[n:2 * n])


# ------------------------------------------------------------- PLATIPUS
def test_kl_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(3)
    mq, lq, mp, lp = ([rng.normal(size=(3, 2)), rng.normal(size=(4,))] for _ in range(4))
    got = float(gaussian.kl_diagonal(*[[tf.constant(a) for a in x] for x in (mq, lq, mp, lp)]))
    mu_q, mu_p = np.concatenate([a.ravel() for a in mq]), np.concatenate([a.ravel() for a in mp])
    var_q = np.exp(2 * np.concatenate([a.ravel() for a in lq]))
    var_p = np.exp(2 * np.concatenate([a.ravel() for a in lp]))
    sigma_p_inv = np.diag(1 / var_p)
    expected = 0.5 * (np.trace(sigma_p_inv @ np.diag(var_q)) + (mu_p - mu_q) @ sigma_p_inv @ (mu_p - mu_q)
                      - len(mu_q) + np.log(np.prod(var_p) / np.prod(var_q)))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert abs(float(gaussian.kl_diagonal(*[[tf.constant(a) for a in x] for x in (mq, lq, mq, lq)]))) < 1e-12


def test_platipus_with_zero_variances_and_gamma_q_zero_is_maml():
    model, batch = fc64(), batch64()
    maml = MAML(clone(model), losses.mse, inner_lr=0.1, num_inner_steps=2)
    platipus = PLATIPUS(clone(model), losses.mse, inner_lr=0.1, num_inner_steps=2, kl_weight=0.0,
                        init_log_std=-1e3, init_gamma=0.0)
    g_maml, r_maml = maml.meta_gradients(batch)
    g_plat, r_plat = platipus.meta_gradients(batch)
    n = len(model.trainable_variables)
    assert max_diff(g_maml, g_plat[:n]) < 1e-12
    np.testing.assert_allclose(float(r_plat["objective_loss"]), float(r_maml["objective_loss"]), rtol=1e-12)


def test_platipus_objective_adds_the_weighted_kl_of_q_and_p():
    model, batch = fc64(), batch64(tasks=1)
    tasks = TaskBatch(*[t[0] for t in batch])
    objectives = {}
    for w in (0.0, 0.5):
        algo = PLATIPUS(clone(model), losses.mse, inner_lr=0.1, num_inner_steps=1, kl_weight=w, seed=3,
                        init_gamma=0.05)
        # A meta-training pass: theta ~ q (the same draw for the same seed).
        objectives[w] = float(algo.task_forward(TaskView(algo), algo.params(), tasks, 1, [0],
                                                algo.phase_for(meta_training=True))["objective"])
    weights = algo.weights()
    mean_q = algo.gradient_step(weights, tasks.query_x, tasks.query_y, 0.05)
    mean_p = algo.gradient_step(weights, tasks.support_x, tasks.support_y, 0.05)
    log_std = [tf.fill(m.shape, tf.constant(-4.0, tf.float64)) for m in mean_q]
    kl = float(gaussian.kl_diagonal(mean_q, log_std, mean_p, log_std))
    assert kl > 0
    np.testing.assert_allclose(objectives[0.5] - objectives[0.0], 0.5 * kl, rtol=1e-9)


def test_platipus_samples_from_the_prior_at_test_time():
    algo = PLATIPUS(fc64(), losses.mse, inner_lr=0.1, num_inner_steps=1, init_log_std=-1.0, num_samples=50,
                    seed=1, init_gamma=0.0)
    batch = batch64(tasks=1)
    particles, _ = algo.initial_particles(algo.params(), (batch.support_x[0], batch.support_y[0]))
    kernel = particles[0].numpy()  # [50, 1, 6]: draws of N(mu, e^-2).
    np.testing.assert_allclose(kernel.mean(0), algo.model.trainable_variables[0].numpy(), atol=4 * math.exp(-1) / 7)
    np.testing.assert_allclose(kernel.std(0).mean(), math.exp(-1.0), rtol=0.15)


# ----------------------------------------------------------- uncertainty
def test_predictive_measures_of_a_single_gaussian():
    means, stds = np.zeros((1, 3)), np.full((1, 3), 2.0)
    lower, upper = uncertainty.mixture_interval(means, stds, 0.9)
    np.testing.assert_allclose(upper, 2.0 * 1.6448536269514722, rtol=1e-6)
    np.testing.assert_allclose(lower, -upper, rtol=1e-6)
    y = np.array([0.0, 1.0, -3.0])
    expected = np.mean(0.5 * (y / 2) ** 2 + math.log(2.0) + 0.5 * math.log(2 * math.pi))
    np.testing.assert_allclose(uncertainty.mixture_nll(y, means, stds), expected, rtol=1e-12)


def test_observations_drawn_from_the_predictive_are_covered_at_the_nominal_rate():
    rng = np.random.default_rng(0)
    means, stds = rng.normal(size=(5, 4000)), np.full((5, 4000), 0.5)
    pick = rng.integers(5, size=4000)
    y = means[pick, np.arange(4000)] + 0.5 * rng.normal(size=4000)
    lower, upper = uncertainty.mixture_interval(means, stds, 0.9)
    assert abs(np.mean((y >= lower) & (y <= upper)) - 0.9) < 0.015


class _TrueFunction:
    """A predictive with one sample, the true function, and the task's noise: calibrated."""

    dtype = tf.float64

    def __init__(self, task_of):
        self.task_of = task_of

    def predictive(self, support_x, support_y, x, steps, num_samples):
        return tf.constant(self.task_of(support_x.numpy()).f(x.numpy())[None]), None


def test_calibration_curve_of_a_calibrated_predictive_is_the_diagonal():
    tasks = FunctionTasks([SINE, LINE], 5, 400, seed=0).sample_tasks(10)  # Noise 0.3.
    lookup = {t.x[:5].tobytes(): t for t in tasks}
    curve = uncertainty.evaluate_regression(_TrueFunction(lambda sx: lookup[sx.tobytes()]), tasks)["calibration"]
    assert sorted(map(float, curve)) == list(uncertainty.CALIBRATION_LEVELS)
    for level, observed in curve.items():
        assert abs(observed - float(level)) < 0.03, (level, observed)


class _Exact:
    """A predictive that knows the true function: samples at f(x) with the task's noise."""

    dtype = tf.float64

    def __init__(self, task_of):
        self.task_of = task_of

    def predictive(self, support_x, support_y, x, steps, num_samples):
        task = self.task_of(support_x.numpy())
        return tf.constant(np.stack([task.f(x.numpy()), task.f(x.numpy()) + 10.0])), None


def test_function_coverage_counts_a_task_when_one_sample_fits():
    tasks = FunctionTasks([SINE, LINE], 5, 20, seed=0).sample_tasks(6)
    lookup = {t.x[:5].tobytes(): t for t in tasks}
    result = uncertainty.evaluate_regression(_Exact(lambda sx: lookup[sx.tobytes()]), tasks)
    assert result["summary"]["fits"]["mean"] == 1.0 and result["samples"] == 2
    assert set(result["coverage_by_family"]) <= {"sine", "line"}


# ------------------------------------------------------------- programs
@pytest.mark.parametrize("algorithm", ["bmaml", "platipus"])
def test_main_trains_and_tests_with_predictive_measures_and_plot(tmp_path, algorithm):
    flags = dict(datasource="sine_line", algorithm=algorithm, norm="None", metatrain_iterations=3, meta_batch_size=2,
                 update_batch_size=3, logdir=str(tmp_path), num_test_tasks=4, progress=False,
                 bmaml_num_particles=3, platipus_num_samples=4)
    train.run(Config(**flags))
    result = train.run(Config(**{**flags, "train": False}))
    assert result["values"].shape == (4, 11)
    summary = result["uncertainty"]["summary"]
    assert 0 <= summary["coverage90"]["mean"] <= 1 and summary["mse"]["mean"] > 0
    assert result["uncertainty"]["samples"] == (3 if algorithm == "bmaml" else 4)
    assert result["uncertainty"]["learned_noise"] == (algorithm == "bmaml")
    stem = result["csv"][:-4]
    assert json.load(open(stem + ".uncertainty.json"))["tasks"] == 4
    assert open(stem + ".samples.png", "rb").read(4) == b"\x89PNG"


def test_platipus_resumes_its_sampler_exactly(tmp_path):
    """Two steps, a checkpoint, two more; restored from the checkpoint, the same two steps again: the same draws
    and the same meta-parameters (the sampler's state is in the checkpoint)."""
    algo, batch = PLATIPUS(fc64(), losses.mse, inner_lr=0.1, num_inner_steps=1, seed=5), batch64()
    for _ in range(2):
        algo.train_step(batch)
    checkpoint = tf.train.Checkpoint(**algo.checkpoint_objects())
    path = checkpoint.save(str(tmp_path / "ckpt"))
    for _ in range(2):
        algo.train_step(batch)
    straight = [v.numpy().copy() for v in algo.meta_variables]
    checkpoint.restore(path).assert_existing_objects_matched()
    for _ in range(2):
        algo.train_step(batch)
    assert max_diff(straight, algo.meta_variables) == 0


@pytest.mark.parametrize("algorithm, options", [("bmaml", dict(num_particles=3, inner_lr=1e-3)),
                                                ("platipus", dict(num_samples=3, inner_lr=0.01))])
def test_metamodel_fits_saves_and_loads(tmp_path, algorithm, options):
    keras.utils.set_random_seed(0)
    model = networks.build_fc((1,), 1, [8, 8], "None", kernel_initializer="glorot_normal")
    meta = MetaModel(model, algorithm, loss="mse", num_inner_steps=1, seed=1, **options)
    meta.compile(optimizer=keras.optimizers.Adam(1e-3))
    assert_metamodel_fits_saves_and_loads(meta, list(FunctionTasks([SINE], 5, 5, seed=0).batches(4, 3)), tmp_path)
