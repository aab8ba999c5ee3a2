"""iMAML: implicit meta-gradients.

Rajeswaran, Finn, Kakade & Levine, "Meta-Learning with Implicit Gradients",
NeurIPS 2019 (authors' code: `aravindr93/imaml_dev`, PyTorch).

Per task, the inner problem is the regularised support loss

    G(phi) = L_support(phi) + lam / 2 * ||phi - theta||^2,

solved approximately from phi = theta by gradient descent (`n_steps` steps of
size `inner_lr` on G) or by a Hessian-free Newton method (`n_steps` Newton
iterations; each direction from `hf_cg_steps` of conjugate gradient on
`(H + lam I) d = -grad G`, then a backtracking line search on G). Neither
solver is differentiated through: no tape records the inner path, so memory
does not grow with `n_steps`.

At the solution, the implicit function theorem gives
`d phi / d theta = (I + H / lam)^-1` with H the support loss's Hessian at
phi, so the task's meta-gradient is `(I + H / lam)^-1 grad L_query(phi)`,
computed with `cg_steps` of conjugate gradient using Hessian-vector products
(double backward with `tf.GradientTape`). The matrix is damped as in the
authors' code: `A v = (1 + cg_damping) v + H v / (lam + lam_damping)`, whose
defaults (1 and 10) make it `2 v + H v / (lam + 10)`; `cg_damping =
lam_damping = 0` gives the exact `(I + H / lam)`. With `cg_steps <= 1` the
meta-gradient is the query gradient at phi (first-order), as theirs. The
meta-gradients are averaged over the meta-batch and applied with Adam
(epsilon 1e-3, as the authors').

Every parameter is adapted in the inner problem (the authors regularise and
differentiate all of them), unless `adapt` says otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Sequence

import keras
import tensorflow as tf

from maml_tf import losses
from maml_tf.algorithms.options import IMAMLOptions
from maml_tf.algorithms.base import MetaLearner, TaskBatch
from maml_tf.core import params as P
from maml_tf.core.execution import MapFn, TaskView
from maml_tf.core.hvp import conjugate_gradient, hvp
from maml_tf.core.inner import inner_while_loop, sgd
from maml_tf.core.transforms import add_proximal_term, chain

SOLVERS = ("gd", "hessian_free")


class IMAML(MetaLearner):
    """iMAML on a Keras model.

    Args:
      model: a built Keras model (trainable variables = meta-parameters).
      loss_fn: `loss_fn(outputs, labels) -> scalar` of a task (the authors:
        mean cross-entropy).
      lam: the proximal regularisation strength lambda.
      solver: 'gd' or 'hessian_free'.
      n_steps: gradient steps or Newton iterations of the inner solver.
      inner_lr: the gradient-descent step size (solver 'gd').
      cg_steps: conjugate-gradient steps for the meta-gradient (<= 1: first-order).
      cg_damping, lam_damping: the authors' damping, see the module docstring.
      hf_cg_steps: CG steps per Newton iteration (solver 'hessian_free').
      hf_line_search_steps: halvings allowed in the backtracking line search.
      cg_residual_tol: every conjugate-gradient solve stops once the squared
        residual norm is below this (the authors' 1e-10).
      adapt: which variables the inner problem adapts (default: all).
      metric_fn: optional `metric_fn(outputs, labels) -> scalar`.
      optimizer: outer optimiser (default: Adam(meta_lr, epsilon=1e-3), the authors').
      meta_lr: outer step size of the default optimiser.
      training: Keras training flag of every forward pass.
    """

    name = "imaml"
    objective_step = 0  # `total_losses2` holds one entry: at the inner solution.

    def __init__(self, model: keras.Model, loss_fn: Callable, *, lam: float = IMAMLOptions.lam,
                 solver: str = IMAMLOptions.solver, n_steps: int = IMAMLOptions.n_steps,
                 inner_lr: float = IMAMLOptions.inner_lr, cg_steps: int = IMAMLOptions.cg_steps,
                 cg_damping: float = IMAMLOptions.cg_damping, lam_damping: float = IMAMLOptions.lam_damping,
                 hf_cg_steps: int = IMAMLOptions.hf_cg_steps, hf_line_search_steps: int = 10,
                 cg_residual_tol: float = 1e-10, adapt=None,
                 metric_fn: Optional[Callable] = None, optimizer=None, meta_lr: float = 1e-3,
                 training: bool = True):
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}; got {solver!r}.")
        if lam <= 0:
            raise ValueError(f"lam must be positive; got {lam}.")
        if n_steps < 0 or cg_steps < 0 or hf_cg_steps < 1 or hf_line_search_steps < 0:
            raise ValueError("n_steps, cg_steps and hf_line_search_steps must be non-negative, hf_cg_steps positive.")
        super().__init__(model, loss_fn, metric_fn=metric_fn, adapt=adapt if adapt is not None else (lambda v: True),
                         training=training, second_order=cg_steps > 1)
        self.lam, self.solver, self.n_steps, self.inner_lr = float(lam), solver, int(n_steps), float(inner_lr)
        self.cg_steps, self.cg_damping, self.lam_damping = int(cg_steps), float(cg_damping), float(lam_damping)
        self.hf_cg_steps, self.hf_line_search_steps = int(hf_cg_steps), int(hf_line_search_steps)
        self.cg_residual_tol = float(cg_residual_tol)
        self.optimizer = optimizer or keras.optimizers.Adam(meta_lr, beta_1=0.9, beta_2=0.999, epsilon=1e-3)
        self.optimizer.build(self.meta_variables)
        self.compile()

    @classmethod
    def from_config(cls, config, model: keras.Model) -> "IMAML":
        """The algorithm `main.py` runs for `--algorithm=imaml`."""
        loss_fn, metric_fn = (losses.mean_xent, losses.accuracy) if config.classification else (losses.mse, None)
        # The options' names are the constructor's.
        return cls(model, loss_fn, **dataclasses.asdict(config.options), metric_fn=metric_fn, meta_lr=config.meta_lr)

    def _checkpoint_objects(self) -> Dict[str, object]:
        return {"model": self.model, "optimizer": self.optimizer}

    # --------------------------------------------------------------- pieces
    def loss_and_grad(self, weights: Sequence, x, y, differentiated_once: bool = False):
        """Loss at `weights` and its gradient with respect to the adapted entries."""
        adapted = self.split.adapted(weights)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(adapted)
            loss = self.task_loss(self.forward(weights, x, differentiated_once=differentiated_once), y)
        return loss, self.gradient(tape, loss, adapted)

    def hvp(self, weights: Sequence, x, y, vector: Sequence[tf.Tensor]) -> list:
        """Hessian of the loss of `(x, y)` at `weights` (adapted entries) times `vector` (double backward)."""
        return hvp(lambda adapted: self.loss_and_grad(self.split.replace(weights, adapted), x, y),
                   self.split.adapted(weights), vector, self.gradient)

    def regularized(self, theta_a: Sequence, weights: Sequence, x, y):
        """`G` and its gradient: support loss + lam/2 ||phi - theta||^2 over the adapted entries."""
        loss, grads = self.loss_and_grad(weights, x, y)
        delta = P.sub(self.split.adapted(weights), theta_a)
        value = loss + 0.5 * self.lam * P.dot(delta, delta)
        return value, loss, [g + self.lam * d for g, d in zip(grads, delta)]

    def inner_solve(self, theta: Sequence, x, y, n_steps: Optional[int] = None) -> list:
        """Approximate minimiser of the regularised support loss from `theta`, outside any tape.

        `n_steps` overrides the solver's step count.
        """
        n_steps = self.n_steps if n_steps is None else int(n_steps)
        theta = [tf.stop_gradient(t) for t in theta]
        theta_a = self.split.adapted(theta)
        if self.solver == "gd":  # Gradient descent on G: SGD on the support loss plus the proximal term.
            optimizer = chain(add_proximal_term(self.lam, theta_a), sgd(self.inner_lr))
            phi, _, _ = inner_while_loop(TaskView(self), theta, optimizer, lambda i: (x, y), n_steps)
            return P.stop_gradient(phi)
        # Newton-CG on G (solver 'hessian_free').
        def body(i, weights):
            value, _, grad = self.regularized(theta_a, weights, x, y)
            # Newton-CG: (H + lam I) d = -grad G, truncated at negative curvature.
            direction = conjugate_gradient(
                lambda v: P.axpy(self.lam, v, self.hvp(weights, x, y, v)), [-g for g in grad],
                self.hf_cg_steps, self.cg_residual_tol, stop_on_negative_curvature=True)
            slope = P.dot(grad, direction)
            direction = tf.cond(slope < 0, lambda: direction, lambda: [-g for g in grad])  # Must descend.
            slope = tf.minimum(slope, -P.dot(grad, grad))
            adapted = self.split.adapted(weights)

            def trial(t):
                moved = self.split.replace(weights, P.axpy(t, direction, adapted))
                return self.regularized(theta_a, moved, x, y)[0]

            # Backtracking (Armijo, c = 1e-4) on G from the full Newton step.
            def ls_cond(k, t):
                return tf.logical_and(k < self.hf_line_search_steps, trial(t) > value + 1e-4 * t * slope)

            _, t = tf.while_loop(ls_cond, lambda k, t: (k + 1, 0.5 * t),
                                 (tf.constant(0), tf.constant(1.0, self.dtype)))
            return i + 1, self.split.replace(weights, P.axpy(t, direction, adapted))

        _, phi = tf.while_loop(lambda i, _: i < n_steps, body, (tf.constant(0), list(theta)))
        return P.stop_gradient(phi)

    def implicit_gradient(self, phi: Sequence, support_x, support_y, query_grad: Sequence[tf.Tensor]) -> list:
        """`A^-1 query_grad` by conjugate gradient, with the authors' damped `A` (see the module docstring)."""
        if self.cg_steps <= 1:
            return list(query_grad)
        scale = 1.0 / (self.lam + self.lam_damping)
        return conjugate_gradient(
            lambda v: P.axpy(scale, self.hvp(phi, support_x, support_y, v), [(1.0 + self.cg_damping) * t for t in v]),
            query_grad, self.cg_steps, self.cg_residual_tol)

    def _task(self, view: TaskView, theta: Sequence, tasks: TaskBatch, with_gradient: bool) -> Dict[str, tf.Tensor]:
        """One task: the inner solution, the query results before and after, and the implicit meta-gradient."""
        sx, sy, qx, qy = tasks
        phi = self.inner_solve(theta, sx, sy)
        # Query passes: the gradient of the query loss is the last derivative taken through them.
        before = self.forward(theta, qx, differentiated_once=True)
        after = self.forward(phi, qx, differentiated_once=True)
        out = {"loss1": self.task_loss(before, qy), "loss2": self.task_loss(after, qy)}
        if with_gradient:
            qgrad = self.loss_and_grad(phi, qx, qy, differentiated_once=True)[1]
            out["grads"] = self.split.replace(P.zeros_like(theta), self.implicit_gradient(phi, sx, sy, qgrad))
        if self.metric_fn is not None:
            out["metric1"], out["metric2"] = self.metric_fn(before, qy), self.metric_fn(after, qy)
        return out

    def _batch(self, batch: TaskBatch, with_gradient: bool):
        keys = ["loss1", "loss2"] + (["metric1", "metric2"] if self.metric_fn is not None else [])
        per_task = MapFn().run(self, lambda view, theta, tasks: self._task(view, theta, tasks, with_gradient),
                               self.weights(), TaskBatch(*batch), keys + ["grads"] * with_gradient)
        after = lambda key: per_task[key][:, None] if key in per_task else None  # noqa: E731
        results = self.totals(per_task["loss1"], after("loss2"), per_task.get("metric1"), after("metric2"))
        return results, per_task.get("grads")

    def meta_gradients(self, batch: TaskBatch):
        """`(gradients, results)`: the mean implicit meta-gradient over the tasks of `batch`."""
        results, grads = self._batch(batch, with_gradient=True)
        return [tf.reduce_mean(g, 0) for g in grads], results

    def _train_step(self, batch: TaskBatch, num_steps: Optional[int] = None):
        """One outer Adam step on the mean implicit meta-gradient. `num_steps` is ignored."""
        del num_steps
        grads, results = self.meta_gradients(batch)
        results.update(self.outer_step(grads, self.optimizer))
        return results

    def adapt(self, support_x, support_y, steps: Optional[int] = None, weights: Optional[Sequence] = None) -> list:
        """The inner solution (fast weights) for one support set; `steps` overrides `n_steps`."""
        weights = self.weights() if weights is None else list(weights)
        return self.inner_solve(weights, support_x, support_y, steps)

    def _evaluate(self, batch: TaskBatch, num_steps: Optional[int] = None):
        """Query loss (and metric) before and after the inner solve, averaged over tasks."""
        del num_steps
        return self._batch(batch, with_gradient=False)[0]
