"""Diagonal Gaussians over weight lists (PLATIPUS's prior and posterior; LLAMA's Kronecker-factored ones are in
`maml_tf.core.kfac`).

A distribution is a pair of aligned lists `(means, log_stds)`; standard
deviations are `exp(log_std)`, so that any real value is a valid parameter.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf


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
