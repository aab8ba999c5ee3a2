"""PLATIPUS: probabilistic MAML with a learned Gaussian prior over the initial weights.

Finn, Xu & Levine, "Probabilistic Model-Agnostic Meta-Learning", NeurIPS
2018. The authors published no code; we follow the paper's Algorithm 1
(training) and Algorithm 2 (inference).

Meta-parameters: the prior mean `mu_theta` (the model's weights), the prior
standard deviations `sigma_theta`, the standard deviations `v_q` of the
training posterior q (both per adapted weight, as log-stds), and two learned
scalar step sizes `gamma_p`, `gamma_q`. For a task:

- training (Algorithm 1): `q = N(mu - gamma_q grad_mu L(mu, query), v_q^2)`;
  sample `theta ~ q` (reparameterised), adapt it with `num_inner_steps` SGD
  steps of size `inner_lr` on the support set to `phi`; the meta-loss is
  `L(phi, query) + kl_weight * KL(q || p)` with
  `p = N(mu - gamma_p grad_mu L(mu, support), sigma^2)`;
- inference (Algorithm 2): sample `theta ~ p`, adapt it the same way,
  predict. `num_samples` draws give as many plausible functions; reported
  losses are those of their mean.

We follow Algorithm 1 where the paper's text also describes q conditioned on
support and query together: q's gradient step is on the query set only (the
reimplementation `cnguyen10/few_shot_meta_learning` does the same). Defaults
(no authors' code to take them from): one sample from q in training
(Algorithm 1), 10 samples at test time, `kl_weight = 1` (Algorithm 1's
objective has no coefficient), log-stds initialised to -4 and
`gamma_p = gamma_q = 0.01` (as that reimplementation), the weights by the
network's initialisers (`EMAML.build_model`: Glorot-normal for the fc net).
Only the weights MAML adapts are stochastic (normalisation parameters are
not, as they are not adapted). The draws come from a seeded
`tf.random.Generator`, checkpointed, so a resumed run continues exactly.

With `v_q -> 0`, `gamma_q = 0` and `kl_weight = 0` the objective is MAML's
(`tests/test_bayesian.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import keras
import tensorflow as tf

from maml_tf.algorithms.bmaml import EMAML
from maml_tf.algorithms.options import PLATIPUSOptions
from maml_tf.core import gaussian
from maml_tf.core.particles import ParticleView


class PLATIPUS(EMAML):
    """PLATIPUS on a Keras model.

    Args:
      model, loss_fn: as `MAML` (the model's weights are the prior mean).
      num_samples: draws from p at inference (predictions, evaluation).
      train_samples: draws from q per task in training (their query losses are averaged).
      kl_weight: weight of `KL(q || p)` in the meta-loss.
      init_log_std: initial log standard deviation of p and q.
      init_gamma: initial `gamma_p` and `gamma_q`.
      seed: seed of the weight sampler.
      **maml_options: `MAML`'s options (`inner_lr`, `num_inner_steps`, `first_order`, `meta_lr`, ...).
    """

    name = "platipus"
    not_distributable = PLATIPUSOptions.not_distributable

    def __init__(self, model: keras.Model, loss_fn: Callable, *, num_samples: int = PLATIPUSOptions.num_samples,
                 train_samples: int = PLATIPUSOptions.train_samples, kl_weight: float = PLATIPUSOptions.kl_weight,
                 init_log_std: float = PLATIPUSOptions.init_log_std, init_gamma: float = PLATIPUSOptions.init_gamma,
                 seed: Optional[int] = None, **maml_options):
        if num_samples < 1 or train_samples < 1:
            raise ValueError(f"num_samples and train_samples must be at least 1; got {num_samples}, {train_samples}.")
        self.num_samples, self.train_samples = int(num_samples), int(train_samples)
        self.kl_weight, self.init_log_std, self.init_gamma = float(kl_weight), float(init_log_std), float(init_gamma)
        self.rng = tf.random.Generator.from_seed(seed or 0)
        super().__init__(model, loss_fn, num_particles=1, seed=seed, **maml_options)

    @classmethod
    def config_kwargs(cls, config) -> dict:
        return dict(super(EMAML, cls).config_kwargs(config), **dataclasses.asdict(config.options), seed=config.seed)

    def build_meta_parameters(self) -> None:
        """log sigma_theta and log v_q per adapted weight, gamma_p and gamma_q."""
        for prefix in ("log_sigma", "log_v_q"):
            for i in self.split.adapted_indices:
                var = self.model.trainable_variables[i]
                self.meta_parameters.add(f"{prefix}_{i}", tf.fill(var.shape, tf.constant(self.init_log_std,
                                                                                           var.dtype)))
        for name in ("gamma_p", "gamma_q"):
            self.meta_parameters.add(name, tf.constant(self.init_gamma, self.dtype))

    def _checkpoint_objects(self) -> dict:
        return {**super()._checkpoint_objects(), "sampler": self.rng}

    # ------------------------------------------------------------ per task
    def gradient_step(self, weights: Sequence, x, y, step_size) -> list:
        """`mu - step_size * grad_mu L(mu; x, y)` over the adapted weights (differentiable: second order unless
        `first_order`)."""
        mu = self.split.adapted(weights)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(mu)
            loss = self.task_loss(self.forward(self.split.replace(weights, mu), x), y)
        grads = self.gradient(tape, loss, mu)
        if self.first_order:
            grads = [tf.stop_gradient(g) for g in grads]
        return [m - step_size * g for m, g in zip(mu, grads)]

    def initial_particles(self, params: Sequence, support, query=None, phase=None):
        """Draws from q (a meta-training pass; with the KL term) or p (inference; `num_samples` draws), as full
        weight lists stacked `[S, ...]` (the weights that are not adapted, tiled)."""
        weights, own = self.unpack(params)
        k = len(self.split.adapted_indices)
        log_sigma, log_v_q, (gamma_p, gamma_q) = own[:k], own[k:2 * k], own[2 * k:]
        if phase is not None and phase.meta_training:
            mean_q = self.gradient_step(weights, *query, gamma_q)
            theta = gaussian.sample(mean_q, log_v_q, self.train_samples, self.rng)
            prior_term = 0.0  # At a KL weight of 0, not computed (variances of 0 would make it inf * 0).
            if self.kl_weight:
                mean_p = self.gradient_step(weights, *support, gamma_p)
                prior_term = self.kl_weight * gaussian.kl_diagonal(mean_q, log_v_q, mean_p, log_sigma)
            count = self.train_samples
        else:
            mean_p = self.gradient_step(weights, *support, gamma_p)
            theta, prior_term = gaussian.sample(mean_p, log_sigma, self.num_samples, self.rng), 0.0
            count = self.num_samples
        tiled = [tf.repeat(w[None], count, axis=0) for w in weights]
        return self.split.replace(tiled, theta), prior_term

    def particle_view(self) -> ParticleView:
        return ParticleView(self, len(self.model.trainable_variables), split=self.split)

    def particle_objective(self, view, chaser, query_outputs, tasks):
        """The mean over the draws of each one's query loss after the inner steps (one draw: Algorithm 1)."""
        return super().particle_objective(view, chaser, query_outputs, tasks) / self.train_samples

    def _predictive(self, support_x, support_y, x, steps: Optional[int] = None, num_samples: Optional[int] = None):
        """`(outputs [S, N, ...], None)`: `num_samples` (default `self.num_samples`) draws from p, each adapted."""
        saved, self.num_samples = self.num_samples, num_samples or self.num_samples
        try:
            return super()._predictive(support_x, support_y, x, steps)
        finally:
            self.num_samples = saved
