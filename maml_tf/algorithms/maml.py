"""MAML and first-order MAML.

Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of
Deep Networks", ICML 2017 (reference code: `cbfinn/maml`, TensorFlow 1).

The structure mirrors the original `MAML.construct_model`: per task (mapped
with `tf.map_fn` over the meta-batch), inner SGD steps on the support loss
with step size `inner_lr`, the query loss after every step, and the
meta-objective = mean over tasks of the query loss after `num_inner_steps`
steps, minimised with Adam. Second-order meta-gradients come from nested
`tf.GradientTape`s; `first_order=True` stops the gradient through the inner
gradients (the original `--stop_grad`).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import keras
import tensorflow as tf

from maml_tf.algorithms.base import MetaLearner, TaskBatch, refresh_statistics


def tf1_adam(learning_rate: float) -> keras.optimizers.Optimizer:
    """Adam with the TF1 `AdamOptimizer` defaults the original uses.

    Keras 3 Adam's update (`lr_t = lr*sqrt(1-b2^t)/(1-b1^t)`,
    `w -= lr_t*m/(sqrt(v)+eps)`) is the TF1 update; only epsilon differs by default.
    """
    return keras.optimizers.Adam(learning_rate=learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-8)


class MAML(MetaLearner):
    """Model-agnostic meta-learning on a Keras model.

    Args:
      model: a built Keras 3 model (its trainable variables are the
        meta-parameters).
      loss_fn: `loss_fn(outputs, labels) -> scalar` loss of one task.
      inner_lr: inner SGD step size (alpha, `--update_lr`).
      num_inner_steps: inner steps whose query loss is meta-optimised
        (`--num_updates`).
      first_order: stop the gradient through inner gradients (`--stop_grad`).
      adapt: which variables the inner loop adapts (see `ParameterSplit`);
        default: all but normalisation parameters, as the original.
      metric_fn: optional `metric_fn(outputs, labels) -> scalar` per task
        (accuracy for classification).
      clip_value: clip each meta-gradient element to [-clip_value, clip_value].
      optimizer: outer optimiser (default: TF1-style Adam with `meta_lr`).
      pretrain_optimizer: optimiser of the pretraining phase (default: a
        separate TF1-style Adam, as the original).
      meta_lr: Adam step size when the optimisers are defaults.
      training: Keras training flag for every forward pass.
      update_moving_statistics: after each meta-update, refresh the model's
        non-trainable state (e.g. Keras `BatchNormalization` moving averages)
        with one pass over the meta-batch's support sets at the new weights,
        so that `training=False` inference can use it. Default: off, as the
        original (batch statistics everywhere).
      return_outputs: keep the per-task model outputs in the results (the
        CLI and parity tests read them; they must be single tensors).
    """

    name = "maml"

    def __init__(self, model: keras.Model, loss_fn: Callable, *, inner_lr: float, num_inner_steps: int,
                 first_order: bool = False, adapt=None, metric_fn: Optional[Callable] = None,
                 clip_value: Optional[float] = None, optimizer=None, pretrain_optimizer=None,
                 meta_lr: float = 1e-3, training: bool = True, update_moving_statistics: bool = False,
                 return_outputs: bool = True):
        if num_inner_steps < 1:
            raise ValueError(f"num_inner_steps must be at least 1; got {num_inner_steps}.")
        super().__init__(model, loss_fn, metric_fn=metric_fn, adapt=adapt, training=training,
                         second_order=not first_order)
        self.inner_lr = float(inner_lr)
        self.num_inner_steps = int(num_inner_steps)
        self.first_order = bool(first_order)
        self.clip_value = clip_value
        self.update_moving_statistics = update_moving_statistics
        self.return_outputs = return_outputs
        self.optimizer = optimizer or tf1_adam(meta_lr)
        self.pretrain_optimizer = pretrain_optimizer or tf1_adam(meta_lr)
        for opt in (self.optimizer, self.pretrain_optimizer):
            opt.build(model.trainable_variables)
        self.objective_step = self.num_inner_steps - 1  # Index of the meta-objective in `total_losses2`.
        self.train_step = tf.function(self._train_step)
        self.pretrain_step = tf.function(self._pretrain_step)
        self.evaluate = tf.function(self._evaluate)

    @classmethod
    def from_config(cls, config, model: keras.Model) -> "MAML":
        """The algorithm `main.py` runs for `--algorithm=maml` (the original's losses and options)."""
        from maml_tf import losses

        if config.classification:
            loss_fn, metric_fn = losses.scaled_xent(config.update_batch_size), losses.accuracy
        else:
            loss_fn, metric_fn = losses.mse, None
        return cls(model, loss_fn, inner_lr=config.update_lr, num_inner_steps=config.num_updates,
                   first_order=config.first_order, metric_fn=metric_fn, clip_value=config.clip_value,
                   meta_lr=config.meta_lr)

    def checkpoint_objects(self) -> Dict[str, object]:
        """What a checkpoint must hold to resume exactly: weights and both Adam states."""
        return {"model": self.model, "optimizer": self.optimizer, "pretrain_optimizer": self.pretrain_optimizer}

    # ------------------------------------------------------------- inner loop
    def inner_step(self, weights: Sequence, x, y):
        """One inner SGD step on the loss of `(x, y)`.

        Returns:
          `(outputs, loss, new_weights)`: outputs and loss at `weights`, and the
          full weight list after the step (only adapted entries change).
        """
        adapted = self.split.adapted(weights)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(adapted)
            outputs = self.forward(weights, x)
            loss = self.task_loss(outputs, y)
        grads = tape.gradient(loss, adapted, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        if self.first_order:
            grads = [tf.stop_gradient(g) for g in grads]
        fast = [w - self.inner_lr * g for w, g in zip(adapted, grads)]
        return outputs, loss, self.split.replace(weights, fast)

    def adapt(self, support_x, support_y, steps: Optional[int] = None, weights: Optional[Sequence] = None) -> list:
        """Fast weights after `steps` inner steps on one task's support set."""
        weights = self.weights() if weights is None else list(weights)
        for _ in range(self.num_inner_steps if steps is None else steps):
            _, _, weights = self.inner_step(weights, support_x, support_y)
        return weights

    def task_forward(self, weights: Sequence, support_x, support_y, query_x, query_y,
                     num_steps: int) -> Dict[str, tf.Tensor]:
        """The original `task_metalearn`: adaptation and the query loss after each step.

        Returns a dict: `support_outputs`, `support_loss` (pre-update),
        `query_outputs` [steps, ...], `query_losses` [steps] (and
        `support_metric`, `query_metrics` [steps] with a metric).
        """
        query_outputs, query_losses = [], []
        support_outputs = support_loss = None
        for _ in range(num_steps):
            outputs, loss, weights = self.inner_step(weights, support_x, support_y)
            if support_outputs is None:
                support_outputs, support_loss = outputs, loss
            out_q = self.forward(weights, query_x)
            query_outputs.append(out_q)
            query_losses.append(self.task_loss(out_q, query_y))
        result = {"support_outputs": support_outputs, "support_loss": support_loss,
                  "query_outputs": tf.stack(query_outputs), "query_losses": tf.stack(query_losses)}
        if self.metric_fn is not None:
            result["support_metric"] = self.metric_fn(support_outputs, support_y)
            result["query_metrics"] = tf.stack([self.metric_fn(o, query_y) for o in query_outputs])
        return result

    def batch_forward(self, weights: Sequence, batch: TaskBatch, num_steps: int,
                      with_gradients: bool = False) -> Dict[str, tf.Tensor]:
        """`task_forward` mapped over the tasks of a meta-batch (as `tf.map_fn` in the original).

        With `with_gradients`, each task also returns the gradient of its query
        loss after `num_inner_steps` steps with respect to `weights`
        (`grads`, stacked over tasks), computed inside the mapped function: the
        meta-gradient is their mean, and nothing is differentiated through the
        loop over tasks (no while-loop gradient, no accumulation of every task's
        intermediates at once).
        """
        batch = TaskBatch(*batch)
        keys = ["support_loss", "query_losses"]
        keys += ["support_outputs", "query_outputs"] if self.return_outputs else []
        keys += ["support_metric", "query_metrics"] if self.metric_fn is not None else []
        spec = {k: tf.TensorSpec(None, self.dtype) for k in keys}
        if with_gradients:
            spec["grads"] = [tf.TensorSpec(w.shape, w.dtype) for w in weights]

        def task(data):
            if not with_gradients:
                out = self.task_forward(weights, *data, num_steps=num_steps)
                return {k: out[k] for k in keys}
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(weights)
                out = self.task_forward(weights, *data, num_steps=num_steps)
                objective = out["query_losses"][self.objective_step]
            grads = tape.gradient(objective, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return {**{k: out[k] for k in keys}, "grads": grads}

        per_task = tf.map_fn(task, tuple(batch), fn_output_signature=spec, parallel_iterations=32)
        # Totals as the original: sums over tasks divided by the meta-batch size.
        per_task.update(self.totals(per_task["support_loss"], per_task["query_losses"],
                                    per_task.get("support_metric"), per_task.get("query_metrics")))
        return per_task

    # ------------------------------------------------------------ outer step
    def meta_gradients(self, batch: TaskBatch, weights: Optional[Sequence] = None, num_steps: Optional[int] = None):
        """Meta-gradient of the mean query loss after `num_inner_steps` steps.

        The gradient of the mean over tasks is the mean of the tasks'
        gradients; each is taken inside the loop over tasks (see `batch_forward`).

        Args:
          batch: the task batch.
          weights: meta-parameters as tensors (default: the model's).
          num_steps: inner steps to build and report (>= num_inner_steps).

        Returns:
          `(gradients, results)`: unclipped gradients aligned with `weights`,
          and the `batch_forward` results.
        """
        num_steps = self.num_inner_steps if num_steps is None else num_steps
        weights = self.weights() if weights is None else list(weights)
        results = self.batch_forward(weights, batch, num_steps, with_gradients=True)
        return [tf.reduce_mean(g, 0) for g in results.pop("grads")], results

    def clip(self, grads):
        """Elementwise clipping of the meta-gradient (the original clips MiniImagenet's)."""
        if self.clip_value is None:
            return list(grads)
        return [tf.clip_by_value(g, -self.clip_value, self.clip_value) for g in grads]

    def _train_step(self, batch: TaskBatch, num_steps: Optional[int] = None):
        """One meta-update (the original `metatrain_op`). Returns the batch results.

        `num_steps` (a Python int, default `num_inner_steps`) builds more steps
        for reporting; the update is the same.
        """
        grads, results = self.meta_gradients(batch, num_steps=num_steps)
        self.optimizer.apply(self.clip(grads), self.model.trainable_variables)
        if self.update_moving_statistics:
            refresh_statistics(self.model, TaskBatch(*batch).support_x, self.training)
        return results

    def _pretrain_step(self, batch: TaskBatch):
        """One step of plain multi-task training on the pre-update loss (`pretrain_op`)."""
        batch = TaskBatch(*batch)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            weights = self.weights()
            tape.watch(weights)
            losses = tf.map_fn(lambda t: self.task_loss(self.forward(weights, t[0]), t[1]),
                               (batch.support_x, batch.support_y), fn_output_signature=self.dtype)
            loss = tf.reduce_mean(losses)
        grads = tape.gradient(loss, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        # The original's pretrain_op is a plain Adam minimize: no clipping.
        self.pretrain_optimizer.apply(grads, self.model.trainable_variables)
        return {"total_loss1": loss}

    def _evaluate(self, batch: TaskBatch, num_steps: int):
        """Pre-update and per-step post-update results, without any update."""
        return self.batch_forward(self.weights(), batch, num_steps)
