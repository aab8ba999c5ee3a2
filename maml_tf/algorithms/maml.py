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

import contextlib
import os
from typing import Callable, Dict, Optional, Sequence

import keras
import tensorflow as tf

from maml_tf.algorithms.base import MetaLearner, TaskBatch, refresh_statistics
from maml_tf.batched import TaskBatchedNetwork, unsupported_reason
from maml_tf.losses import per_task
from maml_tf.networks import differentiated_once


def tf1_adam(learning_rate: float) -> keras.optimizers.Optimizer:
    """Adam with the TF1 `AdamOptimizer` defaults the original uses.

    Keras 3 Adam's update (`lr_t = lr*sqrt(1-b2^t)/(1-b1^t)`,
    `w -= lr_t*m/(sqrt(v)+eps)`) is the TF1 update; only epsilon differs by default.
    """
    return keras.optimizers.Adam(learning_rate=learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-8)


def default_task_groups(jit_compile: bool = False) -> int:
    """Groups of tasks in a task-batched step: one on a GPU or under XLA (the largest operations), else two
    per CPU core.

    On the 2-core benchmark machine with one thread per op, Omniglot 5-way took
    0.10-0.15 s with 4 groups, 0.12-0.14 s with 2 or 8 and 0.17 s with 32 (the
    runs vary that much); MiniImagenet (4 tasks) 1.41 s with 4 groups, 1.83 s
    with 2; XLA-compiled sinusoid steps a median 0.00125 s over seven runs with
    one group, 0.00153-0.00158 s with 2. See README, Speed and memory.
    """
    if jit_compile or tf.config.list_physical_devices("GPU"):
        return 1
    return 2 * (os.cpu_count() or 1)


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
      batch_tasks: run all tasks of a meta-batch through the network at once
        (`maml_tf.batched.TaskBatchedNetwork`: grouped convolutions and batched
        matmuls, each task with its own fast weights) instead of looping over
        them with `tf.map_fn`. Same mathematics, fewer and larger operations.
        Default (None): whenever the model is supported (a chain of the layers
        the original networks use) and, for conv nets, a task has fewer than
        `batched_conv_max_support` support examples; True: always, and raises
        if the model is not supported.
      batched_conv_max_support: see `batch_tasks`; 0: no limit. On the 2-core
        CPU task-batched conv nets were faster for small support sets only:
        Omniglot 5-way 1-shot (5 examples) 0.134 s against 0.149 s with
        map_fn, 20-way 1-shot (20 examples) 0.915 s against 0.799 s and 1.57
        against 1.33 GB (medians of 3 suite runs; README, Speed and memory).
      task_groups: with `batch_tasks`, split the meta-batch into this many
        groups of tasks, batched within and run in parallel (on a CPU each
        core is fastest on its own groups). Default: `default_task_groups()`
        (one when compiled with XLA).
    """

    name = "maml"
    compiled_steps = ("train_step", "pretrain_step", "evaluate")

    def __init__(self, model: keras.Model, loss_fn: Callable, *, inner_lr: float, num_inner_steps: int,
                 first_order: bool = False, adapt=None, metric_fn: Optional[Callable] = None,
                 clip_value: Optional[float] = None, optimizer=None, pretrain_optimizer=None,
                 meta_lr: float = 1e-3, training: bool = True, update_moving_statistics: bool = False,
                 return_outputs: bool = True, batch_tasks: Optional[bool] = None,
                 task_groups: Optional[int] = None, batched_conv_max_support: int = 10):
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
        reason = unsupported_reason(model)
        if batch_tasks and reason is not None:
            raise ValueError(f"batch_tasks=True, but model {model.name!r} cannot run task-batched: {reason}.")
        self.batched = TaskBatchedNetwork(model) if reason is None and batch_tasks is not False else None
        self.batch_tasks, self.batched_conv_max_support = batch_tasks, int(batched_conv_max_support)
        self.task_groups = None if task_groups is None else int(task_groups)
        self.objective_step = self.num_inner_steps - 1  # Index of the meta-objective in `total_losses2`.
        self.compile()

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
                   meta_lr=config.meta_lr, batch_tasks=None if config.batch_tasks else False,
                   task_groups=config.task_groups or None,
                   batched_conv_max_support=config.batched_conv_max_support)

    def _checkpoint_objects(self) -> Dict[str, object]:
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
        grads = self.gradient(tape, loss, adapted)
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
                     num_steps: int, query_steps: Optional[Sequence[int]] = None) -> Dict[str, tf.Tensor]:
        """The original `task_metalearn`: adaptation and the query loss after each step.

        Args:
          query_steps: after which steps (0-based) to run the query set
            (default: every step).

        Returns a dict: `support_outputs`, `support_loss` (pre-update),
        `query_outputs` [query steps, ...], `query_losses` [query steps] (and
        `support_metric`, `query_metrics` [query steps] with a metric).
        """
        query_steps = range(num_steps) if query_steps is None else query_steps
        query_outputs, query_losses = [], []
        support_outputs = support_loss = None
        for step in range(num_steps):
            outputs, loss, weights = self.inner_step(weights, support_x, support_y)
            if support_outputs is None:
                support_outputs, support_loss = outputs, loss
            if step not in query_steps:
                continue
            with differentiated_once():  # Only the meta-gradient's first derivative passes through.
                out_q = self.forward(weights, query_x)
            query_outputs.append(out_q)
            query_losses.append(self.task_loss(out_q, query_y))
        result = {"support_outputs": support_outputs, "support_loss": support_loss,
                  "query_outputs": tf.stack(query_outputs), "query_losses": tf.stack(query_losses)}
        if self.metric_fn is not None:
            result["support_metric"] = self.metric_fn(support_outputs, support_y)
            result["query_metrics"] = tf.stack([self.metric_fn(o, query_y) for o in query_outputs])
        return result

    def batch_forward(self, weights: Sequence, batch: TaskBatch, num_steps: Optional[int],
                      with_gradients: bool = False) -> Dict[str, tf.Tensor]:
        """`task_forward` for every task of a meta-batch, and the totals.

        Runs the tasks at once through `self.batched` when the model allows it,
        else maps `task_forward` over them with `tf.map_fn` (as the original).
        Per-task entries have a leading task axis (`query_losses` [tasks, steps]).
        With `with_gradients`, `grads` holds the meta-gradient: the gradient of
        the mean query loss after `num_inner_steps` steps with respect to
        `weights`.

        `num_steps=None` runs what the meta-objective needs and nothing more,
        as the original's training iterations do (TF1 runs only the ops
        `metatrain_op` depends on): `num_inner_steps` steps, the query set only
        after the last. The results then hold `total_loss1` and the
        `objective_loss` (`objective_metric`) but no per-step `total_losses2`.
        """
        batch = TaskBatch(*batch)
        lean = num_steps is None
        num_steps = self.num_inner_steps if lean else num_steps
        query_steps = [self.objective_step] if lean else list(range(num_steps))
        if self.runs_batched(batch):
            per_task = self._batched_tasks(weights, batch, num_steps, query_steps, with_gradients)
        else:
            per_task = self._mapped_tasks(weights, batch, num_steps, query_steps, with_gradients)
        # Totals as the original: sums over tasks divided by the meta-batch size.
        per_task.update(self.totals(per_task["support_loss"], per_task["query_losses"],
                                    per_task.get("support_metric"), per_task.get("query_metrics"),
                                    objective=0 if lean else None))
        if lean:
            per_task.pop("total_losses2")
            per_task.pop("total_accuracies2", None)
        return per_task

    def runs_batched(self, batch: TaskBatch) -> bool:
        """Whether `batch_forward` runs `batch`'s tasks at once (`self.batched`) or maps over them."""
        if self.batched is None:
            return False
        if self.batch_tasks or not self.batched.convolutional or not self.batched_conv_max_support:
            return True
        examples = TaskBatch(*batch).support_x.shape[1]
        return examples is not None and examples < self.batched_conv_max_support

    def _result_keys(self) -> list:
        keys = ["support_loss", "query_losses"]
        keys += ["support_outputs", "query_outputs"] if self.return_outputs else []
        keys += ["support_metric", "query_metrics"] if self.metric_fn is not None else []
        return keys

    def _mapped_tasks(self, weights, batch: TaskBatch, num_steps: int, query_steps, with_gradients: bool):
        """`task_forward` mapped over the tasks; each task's gradient is taken inside the mapped function,
        so nothing is differentiated through the loop (no while-loop gradient, no accumulation of every
        task's intermediates at once), and the meta-gradient is their mean."""
        keys = self._result_keys()
        spec = {k: tf.TensorSpec(None, self.dtype) for k in keys}
        if with_gradients:
            spec["grads"] = [tf.TensorSpec(w.shape, w.dtype) for w in weights]

        def task(data):
            if not with_gradients:
                out = self.task_forward(weights, *data, num_steps=num_steps, query_steps=query_steps)
                return {k: out[k] for k in keys}
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(weights)
                out = self.task_forward(weights, *data, num_steps=num_steps, query_steps=query_steps)
                objective = out["query_losses"][query_steps.index(self.objective_step)]
            grads = self.gradient(tape, objective, weights)
            return {**{k: out[k] for k in keys}, "grads": grads}

        per_task = tf.map_fn(task, tuple(batch), fn_output_signature=spec, parallel_iterations=32)
        if with_gradients:
            per_task["grads"] = [tf.reduce_mean(g, 0) for g in per_task["grads"]]
        return per_task

    def _batched_tasks(self, weights, batch: TaskBatch, num_steps: int, query_steps, with_gradients: bool):
        """The same computation as `_mapped_tasks`, with task-layout fast weights: the tasks of each of
        `task_groups` groups at once (independent branches of the graph, which TensorFlow runs in
        parallel on its inter-op threads)."""
        tape = tf.GradientTape(watch_accessed_variables=False) if with_gradients else None
        with tape or contextlib.nullcontext():
            if tape:
                tape.watch(weights)
            parts = [self._task_group(weights, group, num_steps, query_steps) for group in self._groups(batch)]
            out = {k: tf.concat([p[k] for p in parts], 0) for k in parts[0]}
            if tape:
                objective = tf.reduce_mean(out["query_losses"][:, query_steps.index(self.objective_step)])
        if self.metric_fn is not None:
            out["support_metric"] = per_task(self.metric_fn, out["support_outputs"], batch.support_y)
            out["query_metrics"] = tf.stack([per_task(self.metric_fn, out["query_outputs"][:, i], batch.query_y)
                                             for i in range(len(query_steps))], 1)
        out = {k: out[k] for k in self._result_keys()}
        if with_gradients:
            out["grads"] = self.gradient(tape, objective, weights)
        return out

    def _groups(self, batch: TaskBatch) -> list:
        """`batch` split along the task axis into `task_groups` near-equal groups (one if its size is dynamic)."""
        num_tasks = batch.support_x.shape[0]
        wanted = self.task_groups or default_task_groups(self.jit_compile)
        groups = 1 if num_tasks is None else min(wanted, num_tasks)
        if groups == 1:
            return [batch]
        sizes = [num_tasks // groups + (g < num_tasks % groups) for g in range(groups)]
        return [TaskBatch(*parts) for parts in zip(*[tf.split(t, sizes) for t in batch])]

    def _task_group(self, weights, batch: TaskBatch, num_steps: int, query_steps) -> Dict[str, tf.Tensor]:
        """Adaptation of every task of `batch` at once (`self.batched`), recorded on the caller's tape."""
        net, split = self.batched, self.split
        fast = net.per_task(weights, batch.support_x.shape[0] or tf.shape(batch.support_x)[0])
        support_outputs = support_loss = None
        query_outputs, query_losses = [], []
        for step in range(num_steps):
            adapted = split.adapted(fast)
            with tf.GradientTape(watch_accessed_variables=False) as inner:
                inner.watch(adapted)
                outputs = net(fast, batch.support_x)  # [tasks, N, out]
                losses = self._task_losses(outputs, batch.support_y)  # [tasks]
            # Task t's loss depends on task t's weights only: each slice is that task's gradient.
            grads = self.gradient(inner, losses, adapted)  # Of the sum.
            if self.first_order:
                grads = [tf.stop_gradient(g) for g in grads]
            fast = split.replace(fast, [w - self.inner_lr * g for w, g in zip(adapted, grads)])
            if support_outputs is None:
                support_outputs, support_loss = outputs, losses
            if step in query_steps:
                with differentiated_once():  # As in `task_forward`.
                    query_outputs.append(net(fast, batch.query_x))
                query_losses.append(self._task_losses(query_outputs[-1], batch.query_y))
        return {"support_loss": support_loss, "query_losses": tf.stack(query_losses, 1),
                "support_outputs": support_outputs, "query_outputs": tf.stack(query_outputs, 1)}

    def _task_losses(self, outputs, labels):
        """Per-task losses `[tasks]` of `[tasks, N, ...]` outputs (`loss_fn.batched` if it has one)."""
        return per_task(self.loss_fn if hasattr(self.loss_fn, "batched") else self.task_loss, outputs, labels)

    # ------------------------------------------------------------ outer step
    def meta_gradients(self, batch: TaskBatch, weights: Optional[Sequence] = None, num_steps: Optional[int] = None):
        """Meta-gradient of the mean query loss after `num_inner_steps` steps.

        See `batch_forward` for how the tasks are run.

        Args:
          batch: the task batch.
          weights: meta-parameters as tensors (default: the model's).
          num_steps: inner steps to build and report (>= num_inner_steps);
            default: only what the meta-objective needs (see `batch_forward`).

        Returns:
          `(gradients, results)`: unclipped gradients aligned with `weights`,
          and the `batch_forward` results.
        """
        weights = self.weights() if weights is None else list(weights)
        results = self.batch_forward(weights, batch, num_steps, with_gradients=True)
        return results.pop("grads"), results

    def clip(self, grads):
        """Elementwise clipping of the meta-gradient (the original clips MiniImagenet's)."""
        if self.clip_value is None:
            return list(grads)
        return [tf.clip_by_value(g, -self.clip_value, self.clip_value) for g in grads]

    def _train_step(self, batch: TaskBatch, num_steps: Optional[int] = None):
        """One meta-update (the original `metatrain_op`). Returns the batch results.

        `num_steps` (a Python int) builds and reports that many steps
        (`total_losses2`); by default only what the update needs runs, and the
        results hold `objective_loss` (see `batch_forward`). The update is the same.
        """
        grads, results = self.meta_gradients(batch, num_steps=num_steps)
        grads = self.clip(grads)
        results.update(self.apply_optimizer(self.optimizer, grads))
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
        grads = self.gradient(tape, loss, weights)
        # The original's pretrain_op is a plain Adam minimize: no clipping.
        return {"total_loss1": loss, **self.apply_optimizer(self.pretrain_optimizer, grads)}

    def _evaluate(self, batch: TaskBatch, num_steps: int):
        """Pre-update and per-step post-update results, without any update."""
        return self.batch_forward(self.weights(), batch, num_steps)
