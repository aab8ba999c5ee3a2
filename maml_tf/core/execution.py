"""How the tasks of a meta-batch are run: an execution choice, kept apart from the maths.

A meta-batch is any nested structure of tensors with a leading task axis:
`TaskBatch(support_x, support_y, query_x, query_y)` for supervised tasks,
episodes for reinforcement learning. An algorithm writes its per-task
computation once, as `task_fn(view, params, tasks) -> dict`, against a task
view: `TaskView` for supervised tasks (the forward pass, the support and
query losses of an `(x, y)` pair, the gradient and the layout of weights);
another kind of task brings a view of its own (a subclass that reads its own
structure), chosen by the learner's `task_view_class`. A backend runs it over
a meta-batch:

- `MapFn`: one task at a time under `tf.map_fn`, as the original. `tasks`
  is one task (no task axis); each task's meta-gradient is taken inside the
  mapped function, so nothing is differentiated through the loop.
- `TaskBatched`: every task of a group at once through
  `maml_tf.batched.TaskBatchedNetwork` (grouped convolutions, batched
  matmuls), each task with its own fast weights in *task layout*; `tasks`
  has a leading task axis and losses are one per task. Groups are
  independent branches of the graph, which TensorFlow runs in parallel.

Both map any structure and return per-task results with a leading task axis
and, when asked, the mean over tasks of the gradient of `task_fn`'s
`objective` with respect to `params`. `tests/test_batched.py` checks that
they agree. Across devices and hosts, `maml_tf.core.distribute` gives each
`tf.distribute` replica an equal share of a meta-batch's tasks, which it runs
with one of these.
"""

from __future__ import annotations

import contextlib
import copy
import os
from typing import Callable, Dict, Optional, Sequence

import tensorflow as tf

from maml_tf.batched import TaskBatchedNetwork, unsupported_reason
from maml_tf.functional import task_batched_network
from maml_tf.losses import per_task
from maml_tf.types import TaskBatch


def num_tasks(batch) -> int:
    """The static number of tasks of a meta-batch (its leading axis), or None if it is dynamic."""
    return tf.nest.flatten(batch)[0].shape[0]


def examples_per_task(batch) -> Optional[int]:
    """The static size of the second axis of a meta-batch's first tensor (a supervised task's support examples)."""
    first = tf.TensorShape(tf.nest.flatten(batch)[0].shape)
    return first[1] if first.rank and first.rank > 1 else None


def check_task_batch(batch: TaskBatch) -> TaskBatch:
    """Raises `ValueError` unless every field of `batch` has the same number of tasks (leading axis) and each
    set has as many labels as inputs."""
    batch = TaskBatch(*batch)
    leading = [tf.TensorShape(tf.nest.flatten(t)[0].shape)[:2] for t in batch]
    tasks = {name: shape[0] for name, shape in zip(TaskBatch._fields, leading) if shape.rank and shape[0] is not None}
    if len(set(tasks.values())) > 1:
        raise ValueError(f"Every field of a task batch needs the same number of tasks (leading axis); got "
                         f"{', '.join(f'{k}: {v}' for k, v in tasks.items())}.")
    for x, y, name in ((0, 1, "support"), (2, 3, "query")):
        nx, ny = leading[x][1] if leading[x].rank > 1 else None, leading[y][1] if leading[y].rank > 1 else None
        if nx is not None and ny is not None and nx != ny:
            raise ValueError(f"The {name} set has {nx} inputs but {ny} labels per task.")
    return batch


class TaskView:
    """One backend's view of the model for supervised tasks (`TaskBatch`), for an algorithm's per-task maths.

    A task's data for a loss is an `(x, y)` pair: `support(tasks)` and
    `query(tasks)` give them; `inner_loss` and `query_loss` are the task loss
    of the model's outputs on them. Another kind of task subclasses this view
    and redefines those four (and `check`).

    Attributes:
      split: which weights adapt (`ParameterSplit`).
      dtype: the dtype of losses and results.
      batched: whether tensors carry a leading task axis (task layout).
    """

    condition = None  # The model's conditioning input for this task (`with_condition`).
    training = None  # Keras' training flag of its forward passes (`with_training`; None: the learner's).

    def __init__(self, learner, network: Optional[TaskBatchedNetwork] = None, num_tasks=None):
        self.learner, self.network, self.num_tasks = learner, network, num_tasks
        self.split, self.dtype, self.batched = learner.split, learner.dtype, network is not None

    @staticmethod
    def check(batch):
        """`batch` as this kind of task's structure, or `ValueError` saying what is wrong with it."""
        return check_task_batch(batch)

    @staticmethod
    def support(tasks):
        """The support data of `tasks` (one task, or a group in task layout)."""
        return tasks.support_x, tasks.support_y

    @staticmethod
    def query(tasks):
        """The query data of `tasks`."""
        return tasks.query_x, tasks.query_y

    def with_condition(self, condition) -> "TaskView":
        """This view, with every forward pass given `condition` (MMAML's modulations of the task)."""
        view = copy.copy(self)
        view.condition = condition
        return view

    def with_training(self, training: Optional[bool]) -> "TaskView":
        """This view, with every forward pass given Keras' `training` flag (MAML's `Phase.training`)."""
        view = copy.copy(self)
        view.training = training
        return view

    def forward(self, weights: Sequence, x, *, step=None, differentiated_once: bool = False):
        """Outputs of the model with `weights` on `x` (`MetaLearner.forward`, in this view's layout)."""
        return self.learner.forward(weights, x, step=step, condition=self.condition,
                                    differentiated_once=differentiated_once, task_layout=self.batched,
                                    training=self.training)

    def loss(self, outputs, labels):
        """The task loss: a scalar, or `[tasks]` in task layout."""
        if self.network is None:
            return self.learner.task_loss(outputs, labels)
        fn = self.learner.loss_fn
        return per_task(fn if hasattr(fn, "batched") else self.learner.task_loss, outputs, labels)

    def inner_loss(self, weights: Sequence, data, step=None):
        """`(outputs, loss)` of the inner loop's objective at `weights` on `data` (the task loss; BMAML's particle
        views: a negative log posterior)."""
        x, y = data
        outputs = self.forward(weights, x, step=step)
        return outputs, self.loss(outputs, y)

    def query_loss(self, weights: Sequence, data, step=None):
        """`(outputs, loss)` on query `data` after inner step `step`: a pass the meta-gradient differentiates once."""
        x, y = data
        outputs = self.forward(weights, x, step=step, differentiated_once=True)
        return outputs, self.loss(outputs, y)

    def metric(self, outputs, data):
        """The metric of `outputs` on `data`'s labels."""
        labels = data[1]
        if self.network is None:
            return self.learner.metric_fn(outputs, labels)
        return per_task(self.learner.metric_fn, outputs, labels)

    def gradient(self, tape, loss, sources):
        """`d sum(loss) / d sources`: in task layout, each task's slice is that task's own gradient."""
        return self.learner.gradient(tape, loss, sources)

    def layout(self, tensors: Sequence, indices: Optional[Sequence[int]] = None) -> list:
        """Meta-parameters -> this view's layout: unchanged one task at a time; in task layout, one copy
        per task. `indices`: which of the model's trainable variables `tensors` align with (default all)."""
        if self.network is None:
            return list(tensors)
        return self.network.per_task(tensors, self.num_tasks, indices)


class MapFn:
    """Tasks one at a time with `tf.map_fn` (the original's `map_fn` over `task_metalearn`)."""

    def run(self, learner, task_fn: Callable, params, batch, keys: Sequence[str],
            with_gradients: bool = False) -> Dict[str, object]:
        view = learner.task_view_class(learner)
        spec = {k: tf.TensorSpec(None, learner.dtype) for k in keys if k != "grads"}
        if with_gradients or "grads" in keys:  # A task_fn may return its own gradient (iMAML's implicit one).
            spec["grads"] = tf.nest.map_structure(lambda w: tf.TensorSpec(w.shape, w.dtype), params)

        def task(tasks):
            if not with_gradients:
                out = task_fn(view, params, tasks)
                return {k: out[k] for k in keys}
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(params)
                out = task_fn(view, params, tasks)
            return {**{k: out[k] for k in keys}, "grads": learner.gradient(tape, out["objective"], params)}

        results = tf.map_fn(task, batch, fn_output_signature=spec, parallel_iterations=32)
        if with_gradients:
            results["grads"] = tf.nest.map_structure(lambda g: tf.reduce_mean(g, 0), results["grads"])
        return results


class TaskBatched:
    """Tasks at once, in `groups` groups run in parallel, through the task-batched network."""

    def __init__(self, network: TaskBatchedNetwork, groups: int):
        self.network, self.groups = network, groups

    def run(self, learner, task_fn: Callable, params, batch, keys: Sequence[str],
            with_gradients: bool = False) -> Dict[str, object]:
        tape = tf.GradientTape(watch_accessed_variables=False) if with_gradients else None
        with tape or contextlib.nullcontext():
            if tape:
                tape.watch(params)
            parts = []
            for group in self.split(batch):
                size = num_tasks(group) or tf.shape(tf.nest.flatten(group)[0])[0]
                parts.append(task_fn(learner.task_view_class(learner, self.network, size), params, group))
            out = {k: tf.concat([p[k] for p in parts], 0) for k in list(keys) + ["objective"] * with_gradients}
            objective = tf.reduce_mean(out.pop("objective")) if tape else None
        if with_gradients:
            out["grads"] = learner.gradient(tape, objective, params)
        return out

    def split(self, batch) -> list:
        """`batch` split along the task axis into near-equal groups (one if its size is dynamic)."""
        size = num_tasks(batch)
        groups = 1 if size is None else min(self.groups, size)
        if groups == 1:
            return [batch]
        sizes = [size // groups + (g < size % groups) for g in range(groups)]
        flat = [tf.split(t, sizes) for t in tf.nest.flatten(batch)]
        return [tf.nest.pack_sequence_as(batch, [parts[g] for parts in flat]) for g in range(groups)]


def default_task_groups(jit_compile: bool = False) -> int:
    """Groups of tasks in a task-batched step: one on a GPU or under XLA (the largest operations), else two
    per CPU core, which was fastest on the CPU benchmarks (benchmarks/README.md)."""
    if jit_compile or tf.config.list_physical_devices("GPU"):
        return 1
    return 2 * (os.cpu_count() or 1)


class Execution:
    """Chooses the backend of each meta-batch.

    Args:
      model: the Keras model.
      batch_tasks: None (default): task-batched whenever the model is
        supported (a chain of the layers the original networks use, see
        `maml_tf.batched.unsupported_reason`) and, for conv nets, a task has
        fewer than `batched_conv_max_support` support examples; True: always
        (raises if the model is not supported); False: never.
      task_groups: groups of tasks when task-batched (default:
        `default_task_groups`).
      batched_conv_max_support: see `batch_tasks`; 0: no limit. On the 2-core
        CPU, task-batched conv nets were faster for small support sets only.
    """

    def __init__(self, model, batch_tasks: Optional[bool] = None, task_groups: Optional[int] = None,
                 batched_conv_max_support: int = 10):
        reason = unsupported_reason(model) if batch_tasks is not False else "batch_tasks=False"
        if batch_tasks and reason is not None:
            raise ValueError(f"batch_tasks=True, but model {model.name!r} cannot run task-batched: {reason}.")
        self.network = task_batched_network(model) if reason is None and batch_tasks is not False else None
        self.batch_tasks, self.batched_conv_max_support = batch_tasks, int(batched_conv_max_support)
        self.task_groups = None if task_groups is None else int(task_groups)
        self.jit_compile = False

    def runs_batched(self, batch) -> bool:
        if self.network is None:
            return False
        if self.batch_tasks or not self.network.convolutional or not self.batched_conv_max_support:
            return True
        examples = examples_per_task(batch)
        return examples is not None and examples < self.batched_conv_max_support

    def backend(self, batch):
        """The backend that runs `batch`."""
        if self.runs_batched(batch):
            return TaskBatched(self.network, self.task_groups or default_task_groups(self.jit_compile))
        return MapFn()
