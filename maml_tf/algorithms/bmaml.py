"""BMAML and its baseline EMAML: M particles of network weights, an ensemble prediction.

Yoon, Kim, Dia, Kim, Bengio & Ahn, "Bayesian Model-Agnostic Meta-Learning",
NeurIPS 2018; the authors' code: `jsikyoon/bmaml` (TensorFlow 1, sinusoid
regression: `bmaml.py`, `bnn.py`, `emaml.py`, `bmaml_main.py`).

BMAML. The meta-parameters are the initial values of M particles, each the
network's weights plus two log-precisions (of the likelihood noise, log
gamma, and of the Gaussian weight prior, log lambda). For a task:

- the chaser: `num_inner_steps` steps of SVGD (`core.svgd.svgd`) from the
  initial particles on the support set's log posterior;
- the leader: `leader_steps` more SVGD steps from the chaser on support and
  query together, under a stop-gradient;
- the meta-loss (chaser loss): the squared distance between chaser and
  leader, summed over particles and network weights (not the
  log-precisions), averaged over tasks.

The log posterior of a particle (the authors' `bnn.py`), summed over the
support points `n`:

    sum_n [log(gamma)/2 - gamma/2 (f(x_n) - y_n)^2]
    + D/2 log(lambda) - lambda/2 ||w||^2                       (D network weights)
    + (a_g - 1) log(gamma) - b_g gamma + log(gamma)            (Gamma prior, and
    + (a_l - 1) log(lambda) - b_l lambda + log(lambda)          the log's Jacobian)

with the authors' `a_g, b_g = 2, 0.2`, `a_l, b_l = 2, 2`. Classification
(`likelihood='categorical'`) uses the log-softmax likelihood and no gamma.
Prediction: the mean of the particles' outputs. Authors' defaults kept: 10
particles, one chaser step and one leader step of size 1e-3, second-order
meta-gradients, the meta step size decayed by 0.98 every 1% of the run,
log gamma initialised near log(100) and log lambda near 0 (spread 0.001),
weights by the network's initialisers (the authors: Xavier; `build_model`
gives the fc network Glorot-normal kernels and N(0, 0.01) biases).

EMAML (`EMAML`), the paper's baseline: M independent MAML particles, each
adapted by plain SGD on its own task loss; the meta-loss is the sum over
particles of each one's query loss (`emaml.py`). One particle is MAML.

Deliberate differences: the SVGD repulsion is the kernel's exact gradient
(the authors' code has half of it: `repulsion=0.5` reproduces theirs, see
`maml_tf.core.svgd`); EMAML's reported query loss is the ensemble's (its
prediction), where the authors' evaluation averages each particle's own MSE;
the first particle's weights are the Keras model's own variables (so that
one particle is exactly MAML on that model), the others live in
`meta_parameters`.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Dict, Optional, Sequence

import keras
import tensorflow as tf

from maml_tf import networks
from maml_tf.algorithms.maml import MAML, Phase, tf1_adam
from maml_tf.algorithms.options import BMAMLOptions, EMAMLOptions
from maml_tf.core import params as P
from maml_tf.core.execution import TaskView
from maml_tf.core.inner import InnerOptimizer, inner_loop, sgd, stack_steps
from maml_tf.core.particles import ParticleView
from maml_tf.core.svgd import svgd
from maml_tf.types import TaskBatch

LIKELIHOODS = ("gaussian", "categorical")


class EMAML(MAML):
    """EMAML: an ensemble of M MAML particles, adapted independently, predicting with their mean.

    Args:
      model, loss_fn: as `MAML`; the model's weights are the first particle.
      num_particles: M.
      lr_decay_iterations: decay the default outer Adam's step size by 0.98
        every 1% of this many iterations, as the authors (None: constant).
      seed: seed of the other particles' initial weights.
      **maml_options: `MAML`'s options (`inner_lr`, `num_inner_steps`, `first_order`, `meta_lr`, ...).
    """

    name = "emaml"
    library_defaults = {"return_outputs": False}
    task_batched = False  # Tasks one by one; each task's particles run at once.
    evaluators = ("predictive",)  # It adapts a set of functions, not one (`adapt_particles`).

    def __init__(self, model: keras.Model, loss_fn: Callable, *, num_particles: int = EMAMLOptions.num_particles,
                 lr_decay_iterations: Optional[int] = None, seed: Optional[int] = None, **maml_options):
        if num_particles < 1:
            raise ValueError(f"num_particles must be at least 1; got {num_particles}.")
        self.num_particles, self.seed = int(num_particles), seed
        if lr_decay_iterations and maml_options.get("optimizer") is None:
            maml_options["optimizer"] = tf1_adam(keras.optimizers.schedules.ExponentialDecay(
                maml_options.get("meta_lr", 1e-3), decay_steps=max(lr_decay_iterations / 100, 1e-9), decay_rate=0.98))
        super().__init__(model, loss_fn, **maml_options)

    @classmethod
    def config_kwargs(cls, config) -> dict:
        o = config.options
        return dict(super().config_kwargs(config), num_particles=o.num_particles, seed=config.seed,
                    lr_decay_iterations=config.metatrain_iterations if o.lr_decay else None)

    @classmethod
    def build_model(cls, config) -> keras.Model:
        return bayesian_network(config)

    # ----------------------------------------------------------- particles
    def build_meta_parameters(self) -> None:
        """Particles 2..M of the model's weights, `[M - 1, ...]` each, drawn with the layers' initialisers."""
        if self.num_particles == 1:
            return
        initializers = _initializers(self.model)
        for i, var in enumerate(self.model.trainable_variables):
            init = initializers.get(id(var))
            if init is None:
                warnings.warn(f"No initializer found for {var.path}: particles 2..M start from its current value.",
                              stacklevel=2)
                value = tf.repeat(tf.convert_to_tensor(var)[None], self.num_particles - 1, axis=0)
            else:
                value = tf.stack([_reseeded(init, (self.seed or 0) * 7919 + 1000 * i + p)(var.shape, var.dtype)
                                  for p in range(1, self.num_particles)])
            self.meta_parameters.add(f"particles_{i}", value)

    def initial_particles(self, params: Sequence, support, query=None, phase: Optional[Phase] = None):
        """`(particles, prior_term)`: the task's initial particle set, stacked `[M, ...]` (the network entries,
        the model's weights first, then the extra per-particle entries: BMAML's log-precisions), and a term
        added to the meta-objective (PLATIPUS's KL; here 0). `support`, `query`: `(x, y)` (PLATIPUS reads them);
        `phase`: a meta-training pass or not (None: not; PLATIPUS draws from its posterior in one)."""
        weights, own = self.unpack(params)
        n = len(weights)
        if self.num_particles == 1:
            return [w[None] for w in weights] + list(own), 0.0
        return [tf.concat([w[None], others], 0) for w, others in zip(weights, own[:n])] + list(own[n:]), 0.0

    def particle_view(self) -> ParticleView:
        return ParticleView(self, len(self.model.trainable_variables))

    def particle_optimizer(self) -> InnerOptimizer:
        """Each particle's own SGD step on its own loss (the sum over particles separates)."""
        return sgd(self.inner_lr)

    def particle_objective(self, view: ParticleView, chaser: Sequence, query_outputs, tasks: TaskBatch):
        """The sum over particles of each particle's query loss after the inner steps (`query_outputs`
        `[M, N, ...]`; the authors' EMAML meta-loss)."""
        return tf.add_n([self.task_loss(query_outputs[i], tasks.query_y) for i in range(query_outputs.shape[0])])

    # ------------------------------------------------------------ per task
    def task_forward(self, view: TaskView, params: Sequence, tasks: TaskBatch, num_steps: int,
                     query_steps: Sequence[int], phase: Optional[Phase] = None) -> Dict[str, tf.Tensor]:
        """MAML's per-task results for the particle set (outputs and losses are the ensemble's), and the
        meta-objective when the chaser's steps ran (`num_steps >= num_inner_steps`). `phase`: MAML's (default: a
        meta-training pass's)."""
        phase = self.phase_for(meta_training=True) if phase is None else phase
        pview, optimizer = self.particle_view(), self.particle_optimizer()
        support, query = view.support(tasks), view.query(tasks)
        particles, prior_term = self.initial_particles(params, support, query, phase)
        # The chaser's steps, then any further reported steps from where it stopped.
        n = min(num_steps, self.num_inner_steps)
        chaser = inner_loop(pview, particles, optimizer, support, n, query=query,
                            query_steps=[k for k in query_steps if k < n], first_order=phase.first_order)
        query_outputs = dict(chaser.query_outputs)
        if num_steps > n:
            rest = inner_loop(pview, chaser.weights, optimizer, support, num_steps - n, query=query,
                              query_steps=[k - n for k in query_steps if k >= n], state=chaser.state,
                              first_order=phase.first_order)
            query_outputs.update({k + n: o for k, o in rest.query_outputs.items()})
        support_prediction = pview.prediction(chaser.support_outputs)
        query_predictions = {k: pview.prediction(o) for k, o in query_outputs.items()}
        out = {"support_outputs": support_prediction,
               "support_loss": self.task_loss(support_prediction, tasks.support_y),
               "query_outputs": stack_steps(query_predictions),
               "query_losses": stack_steps({k: self.task_loss(o, tasks.query_y)
                                            for k, o in query_predictions.items()})}
        if n == self.num_inner_steps and n - 1 in query_outputs:
            objective = self.particle_objective(pview, chaser.weights, query_outputs[n - 1], tasks)
            out["objective"] = objective + prior_term
        if self.metric_fn is not None:
            out["support_metric"] = self.metric_fn(support_prediction, tasks.support_y)
            out["query_metrics"] = stack_steps({k: self.metric_fn(o, tasks.query_y)
                                                for k, o in query_predictions.items()})
        return out

    def adapt(self, support_x, support_y, steps=None, weights=None) -> list:
        raise NotImplementedError(f"{type(self).__name__} adapts a set of weights, not one: use "
                                  "adapt_particles(support_x, support_y, steps) (the set, stacked) or "
                                  "predictive(support_x, support_y, x) (every member's outputs).")

    def adapt_particles(self, support_x, support_y, steps: Optional[int] = None) -> list:
        """The particle set (stacked `[M, ...]`) after `steps` inner steps on one task's support set."""
        steps = self.num_inner_steps if steps is None else steps
        particles, _ = self.initial_particles(self.params(), (support_x, support_y))
        return inner_loop(self.particle_view(), particles, self.particle_optimizer(), (support_x, support_y),
                          steps).weights

    def _predictive(self, support_x, support_y, x, steps: Optional[int] = None, num_samples: Optional[int] = None):
        """`(outputs [M, N, ...], noise_std)`: each particle's outputs on `x` after adapting to the support set
        (the ensemble predicts with their mean); `noise_std` `[M]` (BMAML's gamma^-1/2) or None."""
        del num_samples  # The particles are the samples.
        particles = self.adapt_particles(support_x, support_y, steps)
        view = self.particle_view()
        return view.forward(particles, x), self.noise_std(particles)

    def noise_std(self, particles: Sequence):
        """The likelihood's noise standard deviation per particle, if the algorithm models it."""
        return None


class BMAML(EMAML):
    """BMAML: SVGD particles meta-learned with the chaser loss.

    Args:
      model, loss_fn: as `MAML` (`loss_fn` reports the ensemble's loss; the
        inner loop maximises the log posterior).
      num_particles: M.
      leader_steps: the leader's SVGD steps after the chaser's, on support and query.
      repulsion: scale of SVGD's repulsive term (1: exact; the authors' code: 0.5).
      bandwidth: the RBF kernel's bandwidth h (None: median heuristic).
      likelihood: 'gaussian' (regression, a learned noise precision per
        particle) or 'categorical' (outputs are logits).
      gamma_prior, lambda_prior: `(a, b)` of the Gamma priors on the noise and
        weight precisions.
      init_log_gamma, init_log_lambda: means of their initial values (standard deviation 0.001 across particles).
      **options: `EMAML`'s and `MAML`'s (`inner_lr`: SVGD's step size,
        `num_inner_steps`: the chaser's steps, ...).
    """

    name = "bmaml"

    def __init__(self, model: keras.Model, loss_fn: Callable, *, leader_steps: int = BMAMLOptions.leader_steps,
                 repulsion: float = BMAMLOptions.repulsion, bandwidth: Optional[float] = None,
                 likelihood: str = "gaussian", gamma_prior=(BMAMLOptions.gamma_a, BMAMLOptions.gamma_b),
                 lambda_prior=(BMAMLOptions.lambda_a, BMAMLOptions.lambda_b), init_log_gamma: float = math.log(100.0),
                 init_log_lambda: float = 0.0, **options):
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}; got {likelihood!r}.")
        if leader_steps < 1:
            raise ValueError(f"leader_steps must be at least 1; got {leader_steps}.")
        self.leader_steps, self.repulsion, self.bandwidth = int(leader_steps), float(repulsion), bandwidth
        self.likelihood, self.gamma_prior, self.lambda_prior = likelihood, tuple(gamma_prior), tuple(lambda_prior)
        self.init_log_gamma, self.init_log_lambda = float(init_log_gamma), float(init_log_lambda)
        super().__init__(model, loss_fn, **options)

    @classmethod
    def config_kwargs(cls, config) -> dict:
        o = config.options
        return dict(super().config_kwargs(config), leader_steps=o.leader_steps, repulsion=o.repulsion,
                    bandwidth=o.bandwidth or None, likelihood="categorical" if config.classification else "gaussian",
                    gamma_prior=(o.gamma_a, o.gamma_b), lambda_prior=(o.lambda_a, o.lambda_b))

    def build_meta_parameters(self) -> None:
        """The particles' network weights (see `EMAML`), then log lambda `[M]` (and log gamma `[M]`)."""
        super().build_meta_parameters()
        rng = tf.random.Generator.from_seed(10007 + (self.seed or 0))
        self.meta_parameters.add("log_lambda", self.init_log_lambda + 1e-3 * rng.normal([self.num_particles],
                                                                                       dtype=self.dtype))
        if self.likelihood == "gaussian":
            self.meta_parameters.add("log_gamma", self.init_log_gamma + 1e-3 * rng.normal([self.num_particles],
                                                                                         dtype=self.dtype))

    def particle_view(self) -> ParticleView:
        n = len(self.model.trainable_variables)
        return ParticleView(self, n, size=n + (2 if self.likelihood == "gaussian" else 1), energy=self.energy)

    def particle_optimizer(self) -> InnerOptimizer:
        return svgd(self.inner_lr, self.bandwidth, self.repulsion)

    def log_posterior(self, particles: Sequence, outputs, labels) -> tf.Tensor:
        """`[M]`: each particle's log posterior on `(outputs [M, N, ...], labels)` (see the module docstring)."""
        n = len(self.model.trainable_variables)
        network, log_lambda = particles[:n], particles[n]
        num_weights = sum(int(w.shape[1:].num_elements()) for w in network)
        sq_norm = tf.add_n([tf.reduce_sum(tf.square(tf.reshape(w, [self.num_particles, -1])), 1) for w in network])
        lam = tf.exp(log_lambda)
        a_l, b_l = self.lambda_prior
        log_p = 0.5 * num_weights * log_lambda - 0.5 * lam * sq_norm + (a_l - 1) * log_lambda - b_l * lam + log_lambda
        labels = tf.cast(labels, outputs.dtype)
        if self.likelihood == "categorical":
            logits = tf.reshape(outputs, [self.num_particles, -1, outputs.shape[-1]])
            log_lik = tf.reduce_sum(labels[None] * tf.nn.log_softmax(logits), axis=[1, 2])
            return log_p + log_lik
        log_gamma = particles[n + 1]
        gamma = tf.exp(log_gamma)
        a_g, b_g = self.gamma_prior
        sq_err = tf.reduce_sum(tf.square(tf.reshape(outputs, [self.num_particles, -1]) -
                                         tf.reshape(labels, [1, -1])), axis=1)
        num_points = tf.cast(tf.size(labels), outputs.dtype)
        log_lik = 0.5 * num_points * log_gamma - 0.5 * gamma * sq_err
        return log_p + log_lik + (a_g - 1) * log_gamma - b_g * gamma + log_gamma

    def energy(self, particles: Sequence, outputs, labels) -> tf.Tensor:
        """SVGD's inner loss: minus the log posterior, summed over the particles."""
        return -tf.reduce_sum(self.log_posterior(particles, outputs, labels))

    def particle_objective(self, view: ParticleView, chaser: Sequence, query_outputs, tasks: TaskBatch):
        """The chaser loss: `sum ||chaser - stop_gradient(leader)||^2` over particles and network weights; the
        leader takes `leader_steps` more SVGD steps from the chaser on support and query together."""
        both = tf.nest.map_structure(lambda s, q: tf.concat([s, q], 0), (tasks.support_x, tasks.support_y),
                                     (tasks.query_x, tasks.query_y))
        leader = inner_loop(view, P.stop_gradient(chaser), self.particle_optimizer(), both, self.leader_steps).weights
        n = len(self.model.trainable_variables)
        return tf.add_n([tf.reduce_sum(tf.square(c - tf.stop_gradient(lead)))
                         for c, lead in zip(chaser[:n], leader[:n])])

    def noise_std(self, particles: Sequence):
        if self.likelihood != "gaussian":
            return None
        return tf.exp(-0.5 * particles[len(self.model.trainable_variables) + 1])


def bayesian_network(config) -> keras.Model:
    """The original fc network (or conv net) with the BMAML authors' initialisers for a regression network:
    Glorot-normal kernels and N(0, 0.01) biases, so that particles start apart (the Bayesian algorithms compared
    on regression share it)."""
    if config.classification:
        return networks.build_network(config)
    return networks.build_fc(config.datasource_spec.input_shape, 1, config.network_spec.fc_hidden, config.norm,
                             kernel_initializer="glorot_normal",
                             bias_initializer=keras.initializers.RandomNormal(stddev=0.01))


def _initializers(model: keras.Model) -> dict:
    """`id(variable) -> initializer` from the layers' `<weight name>_initializer` attributes."""
    found = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for var in layer._trainable_variables if hasattr(layer, "_trainable_variables") else []:
            init = getattr(layer, f"{var.name}_initializer", None)
            if init is not None:
                found[id(var)] = keras.initializers.get(init)
    return found


def _reseeded(initializer, seed: int):
    """A copy of a Keras initializer with its own seed (an unseeded one returns the same values every call)."""
    config = initializer.get_config()
    if "seed" not in config:
        return initializer  # Deterministic (zeros, ones, constants).
    return type(initializer).from_config({**config, "seed": seed})
