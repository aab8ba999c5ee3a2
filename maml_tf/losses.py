"""The original losses and metrics, per task.

Classification: softmax cross-entropy per example divided by K
(`update_batch_size`) and summed over the task's examples, so the task loss is
N times the mean cross-entropy (support and query sets alike). Regression: mean
squared error over the task's points. Each function returns one scalar per task.
"""

from __future__ import annotations

import tensorflow as tf


def mse(predictions, labels):
    """Mean squared error over all points of one task (original `utils.mse`)."""
    return tf.reduce_mean(tf.square(tf.reshape(predictions, [-1]) - tf.reshape(labels, [-1])))


def scaled_xent(num_shots: int):
    """Sum over examples of softmax cross-entropy / K (original `utils.xent`)."""

    def loss(logits, labels):
        per_example = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        return tf.reduce_sum(per_example) / tf.cast(num_shots, per_example.dtype)

    return loss


def mean_xent(logits, labels):
    """Mean softmax cross-entropy over the examples (PyTorch's `CrossEntropyLoss`, as iMAML's authors use)."""
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits))


def accuracy(logits, labels):
    """Fraction of examples whose logit argmax equals the one-hot label argmax."""
    hits = tf.equal(tf.argmax(logits, -1), tf.argmax(labels, -1))
    return tf.reduce_mean(tf.cast(hits, logits.dtype))
