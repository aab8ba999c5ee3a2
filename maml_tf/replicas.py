"""State kept equal on every `tf.distribute` replica: the replica context, the all-reduce, assignments and gathers
(used by the outer update, the algorithms' data-dependent state and the per-step batch norm)."""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf


def replica_context():
    """The replica context when several replicas run this code in sync, else None."""
    ctx = tf.distribute.get_replica_context()
    return ctx if ctx is not None and ctx.num_replicas_in_sync > 1 else None


def all_reduce_mean(values: Sequence) -> list:
    """The mean over replicas of each value (unchanged with one replica or outside `strategy.run`)."""
    ctx = replica_context()
    values = list(values)
    return ctx.all_reduce(tf.distribute.ReduceOp.MEAN, values) if ctx is not None and values else values


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
