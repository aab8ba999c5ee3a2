"""Many devices and hosts: the tasks of a meta-batch split across `tf.distribute` replicas.

An execution choice like `MapFn` and `TaskBatched` (`maml_tf.core.execution`),
kept out of the maths: each replica runs whole tasks of its share of the
meta-batch (the inner loop and the per-task batch norm stay on it) and takes
the mean meta-gradient of its tasks; the outer update (`core.outer.outer_update`)
first all-reduces that mean across replicas, so that every replica applies the
meta-gradient of the whole meta-batch, as one device would. With equal shares
the mean of the replicas' means is the mean over all tasks; only the order of
the float additions differs.

- `--distribute=mirrored`: `tf.distribute.MirroredStrategy`, every GPU of
  this host (or the devices given).
- `--distribute=multi_worker`: `tf.distribute.MultiWorkerMirroredStrategy`,
  the hosts of `TF_CONFIG`, each with its GPUs. Every worker draws the same
  task stream (it is a function of the seed and the iteration) and runs the
  tasks of its own replicas.

In the library: build the model and the algorithm (or `MetaModel`) under
`strategy.scope()`; `distribute(algo, strategy)` then replaces the algorithm's
compiled training steps, and `MetaModel.fit` distributes as Keras does.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import keras
import tensorflow as tf

from maml_tf.core.execution import num_tasks
from maml_tf.replicas import all_reduce_mean, assign, gather_tasks, replica_context  # noqa: F401 (re-exported)

STRATEGIES = ("none", "mirrored", "multi_worker")


def make_strategy(kind: str, devices: Optional[Sequence[str]] = None) -> Optional[tf.distribute.Strategy]:
    """The strategy of `--distribute` (None for 'none')."""
    if kind == "none":
        return None
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"distribute must be one of {', '.join(STRATEGIES)}; got {kind!r}.")


def apply_update(optimizer, updates: Sequence, variables: Sequence) -> None:
    """`optimizer` applied to `variables` with the (already all-reduced) gradients `updates`, on every replica; with
    `optimizer=None`, `updates` are added to the variables.

    A Keras optimiser in a replica context sums the gradients of the replicas
    itself, so it is given `updates / replicas`. Added updates are the same on
    every replica (computed from all-reduced values), so each replica's copy
    is assigned alike (`assign`).
    """
    ctx = replica_context()
    if isinstance(optimizer, keras.optimizers.Optimizer):
        if ctx is not None:
            updates = [g / tf.cast(ctx.num_replicas_in_sync, g.dtype) for g in updates]
        optimizer.apply(list(updates), list(variables))
    elif optimizer is None:
        for var, u in zip(variables, updates):
            if ctx is None:
                var.assign_add(u)
            else:
                assign(var, tf.convert_to_tensor(var) + u)
    else:
        raise TypeError(f"optimizer must be a Keras optimiser or None (updates added); got {optimizer!r}.")


def check_divisible(meta_batch_size: int, replicas: int) -> None:
    if meta_batch_size % replicas:
        raise ValueError(f"the meta-batch of {meta_batch_size} tasks does not split evenly across {replicas} "
                         f"replicas; use a --meta_batch_size divisible by {replicas}.")


def shard(strategy: tf.distribute.Strategy, batch):
    """`batch` (the global meta-batch, any nest with a leading task axis) as per-replica values: replica i gets the
    i-th equal share of the tasks."""
    replicas = strategy.num_replicas_in_sync
    size = num_tasks(batch)
    check_divisible(size, replicas)
    share = size // replicas

    def value_fn(context):
        i = context.replica_id_in_sync_group
        return tf.nest.map_structure(lambda t: t[i * share:(i + 1) * share], batch)

    return strategy.experimental_distribute_values_from_function(value_fn)


def _reduce_results(strategy, results):
    """A step's results (means over each replica's tasks) as means over all tasks; non-float entries from the
    first replica (they agree across replicas, e.g. whether a loss-scaled update was skipped)."""

    def reduce(value):
        local = strategy.experimental_local_results(value)
        if local[0].dtype.is_floating:
            return strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
        return local[0]

    return tf.nest.map_structure(reduce, results)


def distribute(algo, strategy: tf.distribute.Strategy):
    """Makes `algo`'s compiled training steps run its meta-batches split across `strategy`'s replicas.

    `algo` (its model, meta-parameters and optimisers) must have been built
    under `strategy.scope()`. Its training steps (`MetaLearner.distributed_steps`)
    take the global meta-batch, as before; `evaluate` and the others stay on
    one device. The learner recompiles its steps (`MetaLearner.compile`).
    """
    if algo.not_distributable:
        raise ValueError(f"{algo.name} cannot be split across replicas: {algo.not_distributable}.")
    algo.strategy = strategy
    with strategy.scope():
        for optimizer in ("optimizer", "pretrain_optimizer"):
            opt = getattr(algo, optimizer, None)
            if opt is not None and hasattr(opt, "build") and not opt.built:
                opt.build(algo.model.trainable_variables if optimizer == "pretrain_optimizer"
                          else algo.meta_variables)
    algo.compile(algo.jit_compile)
    return algo


def replicated(strategy, step):
    """`step(batch, *args)` run by every replica on its share of the global meta-batch, its results reduced."""
    def run(batch, *args):
        return _reduce_results(strategy, strategy.run(step, args=(shard(strategy, batch), *args)))

    return run


def _task() -> tuple:
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = config.get("task", {})
    return task.get("type", "chief"), int(task.get("index", 0)), "chief" in config.get("cluster", {})


def is_chief() -> bool:
    """Whether this process writes the experiment folder: the only one, or the chief of `TF_CONFIG` (the task of
    type 'chief', else worker 0)."""
    kind, index, has_chief = _task()
    return kind == "chief" if has_chief else kind in ("chief", "worker") and index == 0


def worker_index() -> int:
    """This process's task index in `TF_CONFIG` (0 without one)."""
    return _task()[1]
