"""LLAMA: MAML as hierarchical Bayes, with a Laplace approximation from K-FAC curvature.

Grant, Finn, Levine, Darrell & Griffiths, "Recasting Gradient-Based
Meta-Learning as Hierarchical Bayes", ICLR 2018 (Lightweight Laplace
Approximation for Meta-Adaptation). The authors published no code; we follow
the paper's Subroutine 4 (ML-LAPLACE).

MAML's inner loop from theta is read as the MAP estimate phi of a task's
weights under an implicit Gaussian prior around theta (early stopping). The
Laplace approximation of the task's marginal likelihood adds the curvature of
the negative log posterior at phi, so that for each task the meta-objective is

    query loss at phi (MAML's) + eta / 2 * log det H,
    H = curvature of -log p(support | phi) + tau I            (tau I: the prior's curvature)

with H approximated per layer by K-FAC (`maml_tf.core.kfac`: Kronecker
factors from the layer inputs and the back-propagated output gradients, the
prior as factored Tikhonov damping). The meta-gradient goes through phi and
through H (second order, unless `first_order`). Predictions: the point
estimate phi (reported losses and accuracies, as MAML), and draws from
N(phi, H^-1) made with the Kronecker factors (`predictive`), a predictive
distribution for regression and classification.

Where the paper leaves a choice, ours:

- H is taken on the support set, the data phi is the posterior mode of and
  the only data a test task has (so training and prediction use the same
  posterior); the likelihood is the one whose negative log is the per-example
  task loss summed over the support set: Gaussian for the MSE (the noise
  variance D/2 that makes it so), categorical for the softmax cross-entropy.
- The query term is MAML's task loss (a mean), so that eta = 0 is MAML
  exactly (`tests/test_llama.py`); eta absorbs the scale between that mean
  and the summed log-likelihood of the paper's objective. The paper writes
  `eta log det H` with eta a tuned coefficient (the Laplace approximation of
  the summed log-likelihood itself has 1/2).
- The paper gives no numeric eta, tau or number of samples that we could
  find. Defaults: eta = 1e-3, the best of a sweep on the sinusoid
  (docs/results.md); tau = 1 / (inner_lr * num_inner_steps), the
  precision of the prior that early stopping implies (the paper's section
  3); 10 posterior samples for predictions.
- On regression `main.py` builds the network of the Bayesian algorithms it
  is compared with (Glorot-normal kernels, N(0, 0.01) biases: BMAML's
  initialisers, `bmaml.bayesian_network`); MAML's own is the original's.
- The draws come from a seeded `tf.random.Generator`, checkpointed, so a
  resumed run's predictive samples continue exactly.
"""

from __future__ import annotations

from typing import Callable, Optional

import keras
import tensorflow as tf

from maml_tf.algorithms.bmaml import bayesian_network
from maml_tf.algorithms.maml import MAML
from maml_tf.algorithms.options import LLAMAOptions
from maml_tf.core.kfac import KFAC, LIKELIHOODS
from maml_tf.core.particles import particle_forward


class LLAMA(MAML):
    """LLAMA on a Keras model (a chain of layers `maml_tf.core.kfac` supports).

    Args:
      model, loss_fn: as `MAML`.
      eta: weight of `log det H / 2` in each task's meta-objective.
      tau: the prior's curvature (precision), as K-FAC damping. None: the precision `1 / (inner_lr *
        num_inner_steps)` of the Gaussian prior that early stopping implies (the paper's section 3, in the
        directions of low curvature); 0: none (the factors must then be positive definite).
      num_samples: posterior draws per task for `predictive`.
      likelihood: 'gaussian' (MSE) or 'categorical' (softmax cross-entropy on logits).
      predict_tau: the prior's curvature for the posterior samples of `predictive` (default: `tau`); a test-time
        choice, as the Laplace literature tunes the prior precision on held-out data.
      seed: seed of the posterior sampler.
      **maml_options: `MAML`'s options (`inner_lr`, `num_inner_steps`, `first_order`, `meta_lr`, ...).
    """

    name = "llama"
    task_batched = False  # The curvature is taken per task, in the plain layout.
    has_objective_term = True
    summaries = {"total_objective_term": "Objective term"}  # eta/2 log det H, added to the query loss.

    def __init__(self, model: keras.Model, loss_fn: Callable, *, eta: float = LLAMAOptions.eta,
                 tau: Optional[float] = None, num_samples: int = LLAMAOptions.num_samples, likelihood: str = "gaussian",
                 predict_tau: Optional[float] = None,
                 seed: Optional[int] = None, **maml_options):
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}; got {likelihood!r}.")
        if eta < 0 or min(tau or 0, predict_tau or 0) < 0 or num_samples < 1:
            raise ValueError(f"eta, tau and predict_tau must be >= 0 and num_samples >= 1; got {eta}, {tau}, "
                             f"{predict_tau}, {num_samples}.")
        if tau is None:  # The implicit prior of early stopping (the paper's section 3): precision 1 / (alpha k).
            tau = 1.0 / (maml_options["inner_lr"] * maml_options["num_inner_steps"])
        self.eta, self.tau, self.num_samples, self.likelihood = float(eta), float(tau), int(num_samples), likelihood
        self.predict_tau = self.tau if predict_tau is None else float(predict_tau)
        self.rng = tf.random.Generator.from_seed(seed or 0)
        super().__init__(model, loss_fn, **maml_options)
        self.curvature = KFAC(model, self.split, likelihood)

    @classmethod
    def config_kwargs(cls, config) -> dict:
        o = config.options
        return dict(super().config_kwargs(config), eta=o.eta, tau=o.tau or None, num_samples=o.num_samples,
                    predict_tau=o.predict_tau or None,
                    likelihood="categorical" if config.classification else "gaussian", seed=config.seed)

    @classmethod
    def build_model(cls, config) -> keras.Model:
        """On regression, the network of the Bayesian algorithms it is compared with (BMAML's initialisers)."""
        return bayesian_network(config)

    def _checkpoint_objects(self) -> dict:
        return {**super()._checkpoint_objects(), "sampler": self.rng}

    def objective_term(self, view, trajectory, tasks, own):
        """`eta / 2 * log det H` at the weights after `num_inner_steps` steps, on the support set."""
        phi = trajectory.query_weights[self.objective_step]
        return 0.5 * self.eta * self.curvature.log_det(phi, tasks.support_x, self.tau)

    def log_det(self, support_x, support_y, steps: Optional[int] = None) -> tf.Tensor:
        """`log det H` at the weights adapted to one task's support set (K-FAC, damped by tau)."""
        return self.curvature.log_det(self.adapt(support_x, support_y, steps), support_x, self.tau)

    def posterior_samples(self, support_x, support_y, steps: Optional[int] = None,
                          num_samples: Optional[int] = None) -> list:
        """Draws from the Laplace posterior N(phi, H^-1) of one task (H damped by `predict_tau`), stacked `[S, ...]`
        per weight."""
        phi = self.adapt(support_x, support_y, steps)
        return self.curvature.sample(phi, support_x, self.predict_tau, num_samples or self.num_samples, self.rng)

    def _predictive(self, support_x, support_y, x, steps: Optional[int] = None, num_samples: Optional[int] = None):
        """`(outputs [S, N, ...], None)`: the outputs on `x` of S draws from the Laplace posterior."""
        return particle_forward(self, self.posterior_samples(support_x, support_y, steps, num_samples), x), None
