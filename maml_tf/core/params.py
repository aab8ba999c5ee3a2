"""Parameter arithmetic on lists of tensors, so that update rules read like the papers.

Every function takes and returns lists aligned entry by entry (a model's
weights, fast weights, gradients, step sizes), as `openai/supervised-reptile`'s
`average_vars`/`subtract_vars`/`scale_vars` (its `interpolate_vars` step is the outer chain `scale(-epsilon)`
of `maml_tf.core.transforms` applied to `-mean(phi - theta)`).
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf


def add(a: Sequence, b: Sequence) -> list:
    """`a + b`."""
    return [x + y for x, y in zip(a, b)]


def sub(a: Sequence, b: Sequence) -> list:
    """`a - b`."""
    return [x - y for x, y in zip(a, b)]


def scale(s, a: Sequence) -> list:
    """`s * a` for a scalar `s`."""
    return [s * x for x in a]


def axpy(alpha, x: Sequence, y: Sequence) -> list:
    """`alpha * x + y`."""
    return [alpha * xi + yi for xi, yi in zip(x, y)]


def mean(lists: Sequence[Sequence]) -> list:
    """The entrywise mean of several aligned lists."""
    return [tf.add_n(list(group)) / len(group) for group in zip(*lists)]


def dot(a: Sequence, b: Sequence) -> tf.Tensor:
    """`sum_i <a_i, b_i>` over every entry."""
    return tf.add_n([tf.reduce_sum(x * y) for x, y in zip(a, b)])


def zeros_like(a: Sequence) -> list:
    return [tf.zeros_like(x) for x in a]


def stop_gradient(a: Sequence) -> list:
    return [tf.stop_gradient(x) for x in a]
