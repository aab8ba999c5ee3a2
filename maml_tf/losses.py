"""The original losses and metrics, per task.

Classification: softmax cross-entropy per example divided by K
(`update_batch_size`) and summed over the task's examples, so the task loss is
N times the mean cross-entropy (support and query sets alike). Regression: mean
squared error over the task's points. Each function returns one scalar per task.

Each also has a `batched` form, `fn.batched(outputs, labels)`, for tensors with
a leading task axis `[T, N, ...]`, returning `[T]` (what the task-batched MAML
uses; see `per_task`).
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf


def with_batched(fn: Callable, batched: Callable) -> Callable:
    """Attaches `batched`, the form of `fn` for a leading task axis, as `fn.batched`."""
    fn.batched = batched
    return fn


def per_task(fn: Callable, outputs, labels):
    """`fn(outputs[t], labels[t])` for each task t of `[T, N, ...]` tensors, stacked: `[T, ...]`.

    Uses `fn.batched` when it has one, else one call per task (unrolled when T is static).
    """
    batched = getattr(fn, "batched", None)
    if batched is not None:
        return batched(outputs, labels)
    num_tasks = outputs.shape[0]
    if num_tasks is not None:
        return tf.stack([fn(outputs[t], labels[t]) for t in range(num_tasks)])
    return tf.map_fn(lambda a: fn(*a), (outputs, labels), fn_output_signature=outputs.dtype)


def _per_task_mean(x):
    """Mean over every axis but the first (tasks)."""
    return tf.reduce_mean(tf.reshape(x, tf.stack([tf.shape(x)[0], -1])), axis=1)


def mse(predictions, labels):
    """Mean squared error over all points of one task (original `utils.mse`)."""
    return tf.reduce_mean(tf.square(tf.reshape(predictions, [-1]) - tf.reshape(labels, [-1])))


with_batched(mse, lambda predictions, labels: _per_task_mean(
    tf.square(predictions - tf.reshape(labels, tf.shape(predictions)))))


def scaled_xent(num_shots: int):
    """Sum over examples of softmax cross-entropy / K (original `utils.xent`)."""

    def loss(logits, labels):
        per_example = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        return tf.reduce_sum(per_example) / tf.cast(num_shots, per_example.dtype)

    def batched(logits, labels):  # [T, N, classes] -> [T]
        per_example = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        return tf.reduce_sum(per_example, axis=1) / tf.cast(num_shots, per_example.dtype)

    return with_batched(loss, batched)


def mean_xent(logits, labels):
    """Mean softmax cross-entropy over the examples (PyTorch's `CrossEntropyLoss`, as iMAML's authors use)."""
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits))


with_batched(mean_xent, lambda logits, labels: tf.reduce_mean(
    tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits), axis=1))


def _hits(logits, labels):
    return tf.cast(tf.equal(tf.argmax(logits, -1), tf.argmax(labels, -1)), logits.dtype)


def accuracy(logits, labels):
    """Fraction of examples whose logit argmax equals the one-hot label argmax."""
    return tf.reduce_mean(_hits(logits, labels))


with_batched(accuracy, lambda logits, labels: _per_task_mean(_hits(logits, labels)))
