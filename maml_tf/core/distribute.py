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

import os
from typing import Optional, Sequence

import keras
import tensorflow as tf

from maml_tf.types import TaskBatch

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


def replica_context():
    """The replica context when several replicas run this code in sync, else None."""
    ctx = tf.distribute.get_replica_context()
    return ctx if ctx is not None and ctx.num_replicas_in_sync > 1 else None


def all_reduce_mean(values: Sequence) -> list:
    """The mean over replicas of each value (unchanged with one replica or outside `strategy.run`)."""
    ctx = replica_context()
    values = list(values)
    return ctx.all_reduce(tf.distribute.ReduceOp.MEAN, values) if ctx is not None and values else values


def apply_update(optimizer, grads: Sequence, variables: Sequence) -> None:
    """`optimizer` applied to `variables` with the (already all-reduced) `grads`, on every replica.

    A Keras optimiser in a replica context sums the gradients of the replicas
    itself, so it is given `grads / replicas`. A function `apply(grads,
    variables)` (Reptile's step, which is not distributed) runs on one device only.
    """
    ctx = replica_context()
    if isinstance(optimizer, keras.optimizers.Optimizer):
        if ctx is not None:
            grads = [g / tf.cast(ctx.num_replicas_in_sync, g.dtype) for g in grads]
        optimizer.apply(list(grads), list(variables))
    elif ctx is None:
        optimizer(list(grads), list(variables))
    else:
        raise ValueError("an outer update given as a function cannot run on several replicas; give a Keras "
                         "optimiser.")


def assign(variable, value) -> None:
    """`variable.assign(value)` where every replica computed the same `value` (e.g. from all-gathered data)."""
    ctx = replica_context()
    if ctx is None:
        variable.assign(value)
    else:
        def update(strategy, v):
            strategy.extended.update(_tf_variable(variable), lambda var, x: var.assign(x), args=(v,), group=False)

        ctx.merge_call(update, args=(value,))


def _tf_variable(variable):
    """The `tf.Variable` (a mirrored one under a strategy) behind a Keras variable."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def gather_tasks(x):
    """`x` (a nest with a leading task axis) with the tasks of every replica, in replica order."""
    ctx = replica_context()
    return x if ctx is None else tf.nest.map_structure(lambda t: ctx.all_gather(t, axis=0), x)


def check_divisible(meta_batch_size: int, replicas: int) -> None:
    if meta_batch_size % replicas:
        raise ValueError(f"the meta-batch of {meta_batch_size} tasks does not split evenly across {replicas} "
                         f"replicas; use a --meta_batch_size divisible by {replicas}.")


def shard(strategy: tf.distribute.Strategy, batch: TaskBatch):
    """`batch` (the global meta-batch) as per-replica values: replica i gets the i-th equal share of the tasks."""
    replicas = strategy.num_replicas_in_sync
    size = TaskBatch(*batch).support_y.shape[0]
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


def distribute(algo, strategy: tf.distribute.Strategy, steps: Sequence[str] = ("train_step", "pretrain_step")):
    """Makes `algo`'s compiled training steps run its meta-batches split across `strategy`'s replicas.

    `algo` (its model, meta-parameters and optimisers) must have been built
    under `strategy.scope()`. Each of `steps` the algorithm has (`train_step`,
    `pretrain_step`) takes the global meta-batch, as before; `evaluate` and the
    others stay on one device.
    """
    from maml_tf import algorithms

    entry = algorithms.ALGORITHMS.get(getattr(algo, "name", ""))
    if entry is not None and entry.options.not_distributable:
        raise ValueError(f"{algo.name} cannot be split across replicas: {entry.options.not_distributable}.")
    algo.strategy = strategy
    with strategy.scope():
        for optimizer in ("optimizer", "pretrain_optimizer"):
            opt = getattr(algo, optimizer, None)
            if opt is not None and hasattr(opt, "build") and not opt.built:
                opt.build(algo.model.trainable_variables if optimizer == "pretrain_optimizer"
                          else algo.meta_variables)
    for name in steps:
        if hasattr(algo, "_" + name):
            setattr(algo, name, tf.function(_replicated(strategy, getattr(algo, "_" + name)), autograph=False))
    return algo


def _replicated(strategy, step):
    def replicated(batch, *args):
        return _reduce_results(strategy, strategy.run(step, args=(shard(strategy, batch), *args)))

    return replicated


def _task() -> tuple:
    import json

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
