"""Reptile and the authors' first-order MAML (FOML).

Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms", 2018
(authors' code: `openai/supervised-reptile`, TensorFlow 1). Their procedure,
step by step:

* Per training task (N classes, `train_shots` examples each), `inner_iters`
  steps of the inner optimiser on mini-batches of `inner_batch_size` of the
  task's examples. Mini-batches without replacement are consecutive chunks of
  a stream of random permutations of the examples (a chunk may span two
  permutations); with replacement, each mini-batch is a random subset.
* The inner optimiser is Adam with beta1 = 0 (or plain SGD). Its state (the
  moments and the step count) is *not* reset between tasks: the authors' one
  `AdamOptimizer` runs through all training tasks, so the state carries from
  task to task and from meta-iteration to meta-iteration. Tasks of a
  meta-batch therefore run one after the other.
* The inner loss is the softmax cross-entropy *summed* over the mini-batch
  (their `minimize` of a per-example loss vector). Before every inner step
  the weights are multiplied by `weight_decay` (1: no decay).
* Outer update: `theta <- theta + epsilon * (mean_tasks(phi_task) - theta)`,
  with `epsilon` moving linearly from `meta_step` to `meta_step_final` over
  `total_iterations`. FOML instead moves along the mean of the last inner
  step's change, `theta <- theta + epsilon * mean_tasks(phi_last - phi_before_last)`;
  with `foml_tail`, that last step is taken on `foml_tail` held-out shots per
  class and the earlier ones on the rest.
* Evaluation of a task: `eval_inner_iters` steps on mini-batches of
  `eval_inner_batch_size` of the support set, starting from the current inner
  optimiser state, which is then discarded (the authors save and restore it
  around evaluation, so nothing leaks between evaluation tasks or into
  training). Transductive evaluation predicts all query examples in one
  batch (batch norm statistics of the query set); non-transductive
  evaluation predicts each query example in a batch made of the support set
  plus that one example, as the authors do.

Everything runs in TensorFlow: the mini-batch indices come from a seeded
`tf.random.Generator` (checkpointed with the weights, the inner optimiser
state and the iteration counter), and each train step is one `tf.function`.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import keras
import tensorflow as tf

from maml_tf import losses
from maml_tf.algorithms.base import MetaLearner, TaskBatch
from maml_tf.algorithms.options import ReptileOptions
from maml_tf.core import params as P
from maml_tf.core.execution import TaskView
from maml_tf.core.inner import adam, inner_step, inner_while_loop, sgd
from maml_tf.core.outer import meta_gradient_chain, outer_update
from maml_tf.core.transforms import Transform, chain, scale
from maml_tf.core.transforms import weight_decay as decay_weights

_O = ReptileOptions  # Its defaults are the options' (the authors' flags), declared there once.


class InnerOptimizerState(tf.Module):
    """The inner Adam's moments (one pair per adapted variable) and its step count, kept across tasks."""

    def __init__(self, variables: Sequence[tf.Variable]):
        super().__init__(name="inner_optimizer")
        self.m = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name="m") for v in variables]
        self.v = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name="v") for v in variables]
        self.steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="steps")

    def read(self):
        return ([tf.convert_to_tensor(m) for m in self.m], [tf.convert_to_tensor(v) for v in self.v],
                tf.convert_to_tensor(self.steps))

    def assign(self, state) -> None:
        m, v, steps = state
        for var, value in zip(self.m + self.v, list(m) + list(v)):
            var.assign(value)
        self.steps.assign(steps)


class Reptile(MetaLearner):
    """Reptile (or FOML) on a Keras model, with the authors' options and defaults.

    Args:
      model: a built Keras model (its trainable variables are the meta-parameters).
      loss_fn: `loss_fn(outputs, labels) -> scalar` of a mini-batch (the
        authors: softmax cross-entropy summed over the mini-batch).
      total_iterations: meta-iterations of the whole run (epsilon's schedule).
      inner_lr: inner Adam (or SGD) step size (`--learning-rate`).
      inner_batch_size, inner_iters: inner mini-batch size and steps in training.
      eval_inner_batch_size, eval_inner_iters: the same in evaluation.
      meta_step, meta_step_final: epsilon at the first and after the last iteration.
      replacement: draw inner mini-batches with replacement.
      sgd: plain SGD instead of Adam(beta1=0) in the inner loop.
      inner_beta1, inner_beta2, inner_epsilon: the inner Adam's constants
        (the authors: 0, TF1's 0.999 and 1e-8).
      weight_decay: multiply the adapted weights by this before each inner step.
      transductive: evaluate the query examples in one batch.
      foml: the first-order MAML variant; foml_tail: held-out shots per class
        for its last step (None: the last step's mini-batch is drawn as the others).
      adapt: which variables the inner loop trains (default: all, as the authors).
      metric_fn: optional `metric_fn(outputs, labels) -> scalar` (accuracy).
      seed: seed of the mini-batch sampler.
      training: Keras training flag of every forward pass.
    """

    name = "reptile"
    not_distributable = ReptileOptions.not_distributable
    objective_step = 0  # `total_losses2` holds one entry: after the inner loop.
    library_defaults = {"total_iterations": 1}

    def __init__(self, model: keras.Model, loss_fn: Callable, *, total_iterations: int,
                 inner_lr: float = _O.learning_rate, inner_batch_size: int = _O.inner_batch,
                 inner_iters: int = _O.inner_iters, eval_inner_batch_size: int = _O.eval_batch,
                 eval_inner_iters: int = _O.eval_iters, meta_step: float = _O.meta_step,
                 meta_step_final: float = _O.meta_step_final, replacement: bool = _O.replacement, sgd: bool = _O.sgd,
                 inner_beta1: float = 0.0, inner_beta2: float = 0.999, inner_epsilon: float = 1e-8,
                 weight_decay: float = _O.weight_decay, transductive: bool = _O.transductive, foml: bool = _O.foml,
                 foml_tail: Optional[int] = None,
                 adapt=None, metric_fn: Optional[Callable] = None, seed: int = 0, training: bool = True):
        if inner_iters < 1 or eval_inner_iters < 0 or inner_batch_size < 1 or eval_inner_batch_size < 1:
            raise ValueError("inner_iters and the inner batch sizes must be at least 1, eval_inner_iters at least 0.")
        if foml_tail is not None and not foml:
            raise ValueError("foml_tail needs foml=True.")
        super().__init__(model, loss_fn, metric_fn=metric_fn, adapt=adapt if adapt is not None else (lambda v: True),
                         training=training, second_order=False)
        self.total_iterations = max(int(total_iterations), 1)
        self.inner_lr = float(inner_lr)
        self.inner_batch_size, self.inner_iters = int(inner_batch_size), int(inner_iters)
        self.eval_inner_batch_size, self.eval_inner_iters = int(eval_inner_batch_size), int(eval_inner_iters)
        self.meta_step, self.meta_step_final = float(meta_step), float(meta_step_final)
        self.replacement, self.sgd = bool(replacement), bool(sgd)
        self.beta1, self.beta2, self.epsilon = float(inner_beta1), float(inner_beta2), float(inner_epsilon)
        self.weight_decay = float(weight_decay)
        self.transductive, self.foml, self.foml_tail = bool(transductive), bool(foml), foml_tail
        self.inner_state = InnerOptimizerState(self.split.adapted(model.trainable_variables))
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="meta_iterations")
        self.rng = tf.random.Generator.from_seed(seed)
        self.compile()

    @classmethod
    def from_config(cls, config, model: keras.Model) -> "Reptile":
        """The algorithm `main.py` runs for `--algorithm=reptile`."""
        o = config.options
        loss_fn, metric_fn = (losses.scaled_xent(1), losses.accuracy) if config.classification else (losses.mse, None)
        return cls(model, loss_fn, total_iterations=config.metatrain_iterations, inner_lr=o.learning_rate,
                   inner_batch_size=o.inner_batch, inner_iters=o.inner_iters, eval_inner_batch_size=o.eval_batch,
                   eval_inner_iters=o.eval_iters, meta_step=o.meta_step, meta_step_final=o.meta_step_final,
                   replacement=o.replacement, sgd=o.sgd, weight_decay=o.weight_decay, transductive=o.transductive,
                   foml=o.foml, foml_tail=o.foml_tail or None, metric_fn=metric_fn, seed=config.seed)

    def _checkpoint_objects(self) -> Dict[str, tf.Module]:
        """What a checkpoint must hold to resume exactly."""
        return {"model": self.model, "inner_optimizer": self.inner_state, "meta_iterations": self.iterations,
                "sampler": self.rng}

    # --------------------------------------------------------------- pieces
    def inner_optimizer(self) -> Transform:
        """The weight decay, then TF1 Adam with beta1 = 0 (or SGD); its state `((), (m, v, steps))` (SGD ignores the
        moments, which `inner_state` keeps for either)."""
        opt = sgd(self.inner_lr) if self.sgd else adam(self.inner_lr, self.beta1, self.beta2, self.epsilon)
        return chain(decay_weights(self.weight_decay), opt)

    def meta_step_size(self, iteration) -> tf.Tensor:
        """Epsilon at 0-based meta-iteration `iteration`: linear from `meta_step` to `meta_step_final`."""
        frac = tf.cast(iteration, tf.float64) / self.total_iterations
        return frac * self.meta_step_final + (1.0 - frac) * self.meta_step

    def minibatch_indices(self, num_tasks: int, pool: int, batch_size: int, num_batches: int) -> tf.Tensor:
        """[num_tasks, num_batches, batch_size] indices into a pool of `pool` examples, per task.

        Without replacement: consecutive chunks of concatenated random
        permutations of the pool (the authors' `_mini_batches`); with
        replacement: each mini-batch is a random subset.
        """
        if self.replacement:
            if batch_size > pool:
                raise ValueError(f"Mini-batches of {batch_size} drawn with replacement need at least that many "
                                 f"examples per task; a task has {pool}.")
            keys = self.rng.uniform([num_tasks, num_batches, pool])
            return tf.argsort(keys, axis=-1)[..., :batch_size]
        permutations = -(-num_batches * batch_size // pool)
        perms = tf.argsort(self.rng.uniform([num_tasks, permutations, pool]), axis=-1)
        stream = tf.reshape(perms, [num_tasks, permutations * pool])[:, :num_batches * batch_size]
        return tf.reshape(stream, [num_tasks, num_batches, batch_size])

    def inner_step(self, weights: Sequence, state, x, y):
        """One inner step (TF1 Adam, or SGD) on the loss of `(x, y)`.

        Returns:
          `(new_weights, new_state, loss)`; `state` is `(m, v, steps)`.
        """
        _, loss, weights, state = inner_step(TaskView(self), weights, self.inner_optimizer(), ((), state), (x, y))
        return weights, state[1], loss

    def inner_loop(self, weights: Sequence, state, x, y, indices):
        """Inner steps on the mini-batches `x[indices[i]]`, i = 0, 1, ... (a `tf.while_loop`).

        Returns:
          `(weights, state, first_loss)`: the loss is that of the first mini-batch (before any step).
        """
        batch = lambda i: (_gather(x, indices[i]), tf.gather(y, indices[i]))  # noqa: E731
        weights, state, first_loss = inner_while_loop(TaskView(self), weights, self.inner_optimizer(), batch,
                                                      tf.shape(indices)[0], state=((), state))
        return weights, state[1], first_loss

    def predict(self, weights: Sequence, support_x, query_x, transductive: Optional[bool] = None):
        """Query outputs: in one batch (transductive) or each with the support set (non-transductive).

        `transductive` defaults to the algorithm's setting.
        """
        if self.transductive if transductive is None else transductive:
            return self.forward(weights, query_x)
        num_query = tf.shape(tf.nest.flatten(query_x)[0])[0]
        groups = tf.nest.map_structure(  # [Q, S + 1, ...]: the support set, then one query example.
            lambda s, q: tf.concat([tf.repeat(s[None], num_query, axis=0), q[:, None]], axis=1), support_x, query_x)
        return tf.map_fn(lambda g: self.forward(weights, g)[-1], groups,
                         fn_output_signature=tf.TensorSpec(None, self.dtype))

    def _report(self, results: Dict[str, list]) -> Dict[str, tf.Tensor]:
        """Per-task lists -> `totals` (one reported step: the end of the inner loop)."""
        stack = lambda key: tf.stack(results[key]) if results[key] else None  # noqa: E731
        after = lambda key: tf.stack(results[key])[:, None] if results[key] else None  # noqa: E731
        return self.totals(stack("loss1"), after("loss2"), stack("metric1"), after("metric2"))

    def _query_results(self, results, theta, phi, support_x, query_x, query_y, transductive=None):
        for key, weights in (("1", theta), ("2", phi)):
            outputs = self.predict(weights, support_x, query_x, transductive)
            results["loss" + key].append(self.task_loss(outputs, query_y))
            if self.metric_fn is not None:
                results["metric" + key].append(self.metric_fn(outputs, query_y))

    # ---------------------------------------------------------- train, test
    def meta_gradients(self, batch: TaskBatch):
        """Runs every task's inner loop (advancing the inner optimiser state) and returns the Reptile direction.

        Returns:
          `(gradients, results)`: `gradients = -mean_tasks(phi - theta)` (FOML:
          `-mean_tasks(phi_last - phi_before_last)`), so that a gradient step of
          size epsilon is the Reptile update (any Keras optimiser can apply it),
          and the mean over tasks of the transductive query loss (and metric)
          before (`total_loss1`) and after (`total_losses2[0]`) each inner loop.
        """
        batch = TaskBatch(*batch)
        num_tasks, pool = batch.support_y.shape[0], batch.support_y.shape[1]
        num_ways = batch.support_y.shape[-1]
        theta = self.weights()
        state = self.inner_state.read()
        if self.foml_tail:
            train_pool = pool - self.foml_tail * num_ways  # Shot-major layout: the tail is the last shots.
            if train_pool < 1:
                raise ValueError(f"foml_tail={self.foml_tail} leaves no training shots out of {pool // num_ways}.")
            main = self.minibatch_indices(num_tasks, train_pool, self.inner_batch_size, self.inner_iters - 1)
            last = tf.tile(tf.range(train_pool, pool)[None], [num_tasks, 1])
        else:
            indices = self.minibatch_indices(num_tasks, pool, self.inner_batch_size, self.inner_iters)
            main, last = indices[:, :-1], indices[:, -1]
        directions = []
        results = {"loss1": [], "loss2": [], "metric1": [], "metric2": []}
        for task in range(num_tasks):  # In order: the inner optimiser state carries over.
            x, y = _task(batch.support_x, task), batch.support_y[task]
            before_last, state, _ = self.inner_loop(theta, state, x, y, main[task])
            phi, state, _ = self.inner_step(before_last, state, _gather(x, last[task]), tf.gather(y, last[task]))
            start = before_last if self.foml else theta
            directions.append(P.sub(phi, start))
            self._query_results(results, theta, phi, x, _task(batch.query_x, task), batch.query_y[task],
                                transductive=True)
        self.inner_state.assign(state)
        return P.scale(-1.0, P.mean(directions)), self._report(results)

    def _train_step(self, batch: TaskBatch, num_steps: Optional[int] = None):
        """One meta-iteration: `theta <- theta - epsilon * meta_gradients` with the annealed epsilon.

        Returns `meta_gradients`' results. `num_steps` is accepted for the
        training loop's sake and ignored.
        """
        del num_steps
        grads, results = self.meta_gradients(batch)
        epsilon = self.meta_step_size(self.iterations)
        # The outer update is an SGD step of size epsilon: the chain's output is added to the weights.
        step = meta_gradient_chain(links=[scale(-tf.cast(epsilon, grads[0].dtype))])
        results.update(outer_update(grads, self.meta_variables, None, transform=step, loss_scale=self.loss_scale))
        self.iterations.assign_add(1)
        return results

    def adapt(self, support_x, support_y, steps: Optional[int] = None, weights: Optional[Sequence] = None) -> list:
        """Fast weights after `steps` (default `eval_inner_iters`) evaluation steps on one support set.

        Starts from a copy of the current inner optimiser state, which is left unchanged.
        """
        steps = self.eval_inner_iters if steps is None else steps
        weights = self.weights() if weights is None else list(weights)
        indices = self.minibatch_indices(1, support_y.shape[0], self.eval_inner_batch_size, steps)[0]
        weights, _, _ = self.inner_loop(weights, self.inner_state.read(), support_x, support_y, indices)
        return weights

    def _evaluate(self, batch: TaskBatch, num_steps: Optional[int] = None):
        """Query loss (and metric) of each task before and after `eval_inner_iters` steps, averaged.

        `num_steps` is ignored (the evaluation runs `eval_inner_iters` steps
        and reports their end point).
        """
        del num_steps
        batch = TaskBatch(*batch)
        theta = self.weights()
        results = {"loss1": [], "loss2": [], "metric1": [], "metric2": []}
        for task in range(batch.support_y.shape[0]):
            sx, sy = _task(batch.support_x, task), batch.support_y[task]
            phi = self.adapt(sx, sy, weights=theta)
            self._query_results(results, theta, phi, sx, _task(batch.query_x, task), batch.query_y[task])
        return self._report(results)


def _task(x, task: int):
    """Task `task` of a (possibly nested) batched input."""
    return tf.nest.map_structure(lambda t: t[task], x)


def _gather(x, indices):
    """The examples `indices` of a (possibly nested) input."""
    return tf.nest.map_structure(lambda t: tf.gather(t, indices), x)
