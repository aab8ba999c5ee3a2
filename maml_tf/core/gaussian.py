"""Diagonal Gaussians: over weight lists (PLATIPUS's prior and posterior; LLAMA's Kronecker-factored ones are in
`maml_tf.core.kfac`), and over actions (a Gaussian policy's log-probabilities and KL divergences).

A distribution is a pair `(means, log_stds)`; standard deviations are
`exp(log_std)`, so that any real value is a valid parameter. Written here
rather than taken from tensorflow-probability, which needs Keras 2.
"""

from __future__ import annotations

import math
from typing import Sequence

import tensorflow as tf

LOG_2PI = math.log(2.0 * math.pi)


def sample(means: Sequence[tf.Tensor], log_stds: Sequence[tf.Tensor], num_samples: int, rng: tf.random.Generator):
    """`num_samples` reparameterised draws `mean + exp(log_std) * eps`, stacked `[num_samples, ...]` per entry
    (differentiable in the means and log-stds)."""
    return [m[None] + tf.exp(s)[None] * rng.normal(tf.concat([[num_samples], tf.shape(m)], 0), dtype=m.dtype)
            for m, s in zip(means, log_stds)]


def kl_diagonal(mean_q: Sequence, log_std_q: Sequence, mean_p: Sequence, log_std_p: Sequence) -> tf.Tensor:
    """`KL(q || p)` of two diagonal Gaussians, summed over every entry:
    `sum [log(s_p / s_q) + (s_q^2 + (m_q - m_p)^2) / (2 s_p^2) - 1/2]`."""
    terms = [tf.reduce_sum(lp - lq + (tf.exp(2.0 * lq) + tf.square(mq - mp)) / (2.0 * tf.exp(2.0 * lp)) - 0.5)
             for mq, lq, mp, lp in zip(mean_q, log_std_q, mean_p, log_std_p)]
    return tf.add_n(terms)


def log_prob(x, mean, log_std) -> tf.Tensor:
    """`log N(x; mean, diag(exp(log_std))^2)` summed over the last axis (an action's dimensions); `log_std`
    broadcasts (a state-independent one)."""
    z = (x - mean) * tf.exp(-log_std)
    log_std = tf.broadcast_to(log_std, tf.shape(z))
    return -0.5 * tf.reduce_sum(tf.square(z), -1) - tf.reduce_sum(log_std, -1) - 0.5 * LOG_2PI * tf.cast(
        tf.shape(z)[-1], z.dtype)


def kl(mean_p, log_std_p, mean_q, log_std_q) -> tf.Tensor:
    """`KL(p || q)` of diagonal Gaussians over the last axis (TRPO's constraint: p the old policy, q the new):
    `sum [log(s_q / s_p) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2) - 1/2]`."""
    shape = tf.shape(mean_p - mean_q)
    log_std_p, log_std_q = tf.broadcast_to(log_std_p, shape), tf.broadcast_to(log_std_q, shape)
    return tf.reduce_sum(log_std_q - log_std_p + (tf.exp(2.0 * log_std_p) + tf.square(mean_p - mean_q))
                         / (2.0 * tf.exp(2.0 * log_std_q)) - 0.5, -1)
