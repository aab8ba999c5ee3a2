"""Stein variational gradient descent (Liu & Wang, NeurIPS 2016) as an inner optimiser (BMAML's inner loop).

M particles `x_1..x_M` move along

    phi(x_i) = 1/M sum_j [ k(x_j, x_i) grad log p(x_j) + grad_{x_j} k(x_j, x_i) ],

the first term pulling them toward high posterior density, the second
pushing them apart. With one particle, `k = 1` and its gradient is 0: SVGD is
gradient ascent on `log p`. The kernel is the RBF `k(x, y) = exp(-||x - y||^2 / h)`
over the whole flattened particle (every weight entry of the list).

Bandwidth: BMAML's code (`jsikyoon/bmaml`, `bmaml.py`) uses the median
heuristic `h = med / log M`, `med` the median of the M x M matrix of squared
distances (its zero diagonal included), with `h` under a stop-gradient; we
follow it. One deliberate difference: the authors' repulsive term is
`sum_j k_ji (x_i - x_j) / h`, half the kernel's gradient
`2 sum_j k_ji (x_i - x_j) / h`; `repulsion=1` (default) is the exact SVGD
direction, `repulsion=0.5` the authors' (BMAML's `--bmaml_repulsion`).
The meta-gradient flows through the kernel (as the authors'), not through `h`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import tensorflow as tf

from maml_tf.core.transforms import Transform, chain, scale, stateless


def flatten_particles(stacked: Sequence[tf.Tensor]) -> tf.Tensor:
    """Entries `[M, ...]` -> one matrix `[M, D]` (each row one particle's entries, concatenated)."""
    m = stacked[0].shape[0]
    return tf.concat([tf.reshape(t, [m, -1]) for t in stacked], axis=1)


def unflatten_particles(flat: tf.Tensor, like: Sequence[tf.Tensor]) -> list:
    """The inverse of `flatten_particles`: `[M, D]` -> entries shaped as `like`."""
    sizes = [int(tf.TensorShape(t.shape[1:]).num_elements()) for t in like]
    return [tf.reshape(part, t.shape) for part, t in zip(tf.split(flat, sizes, axis=1), like)]


def median_bandwidth(sq_dists: tf.Tensor) -> tf.Tensor:
    """BMAML's `h = median(squared distances) / log M` over the full `[M, M]` matrix, under a stop-gradient.

    One particle has no distances: `h = 1` (its kernel is 1 and the repulsion 0 whatever `h` is). A median of
    zero (every particle equal) gives `h = 1` too, instead of a division by zero.
    """
    m = sq_dists.shape[0]
    if m == 1:
        return tf.ones([], sq_dists.dtype)
    values = tf.sort(tf.reshape(tf.stop_gradient(sq_dists), [-1]))
    n = m * m
    median = 0.5 * (values[(n - 1) // 2] + values[n // 2])
    h = median / math.log(m)
    return tf.where(h > 0, h, tf.ones_like(h))


def rbf_kernel(flat: tf.Tensor, bandwidth: Optional[float] = None):
    """`(K, h)`: the RBF kernel matrix `K_ij = exp(-||x_i - x_j||^2 / h)` of particles `flat` `[M, D]`, and `h`
    (`bandwidth`, or the median heuristic)."""
    sq_norms = tf.reduce_sum(tf.square(flat), axis=1)
    sq_dists = sq_norms[:, None] + sq_norms[None, :] - 2.0 * tf.matmul(flat, flat, transpose_b=True)
    sq_dists = tf.maximum(sq_dists, 0.0)  # Rounding can make the expansion slightly negative.
    h = median_bandwidth(sq_dists) if bandwidth is None else tf.constant(bandwidth, flat.dtype)
    return tf.exp(-sq_dists / h), h


def svgd_direction(flat: tf.Tensor, grad_log_p: tf.Tensor, bandwidth: Optional[float] = None,
                   repulsion: float = 1.0) -> tf.Tensor:
    """SVGD's `phi` `[M, D]` for particles `flat` `[M, D]` and their `grad log p` `[M, D]`.

    `grad_{x_j} k(x_j, x_i) = 2 k_ji (x_i - x_j) / h`, so the repulsive term
    summed over j is `2 (x_i sum_j k_ij - sum_j k_ij x_j) / h` (K is symmetric),
    scaled by `repulsion` (1: exact; 0.5: the authors' code).
    """
    k, h = rbf_kernel(flat, bandwidth)
    m = flat.shape[0]
    repulsive = (2.0 * repulsion / h) * (flat * tf.reduce_sum(k, axis=1, keepdims=True) - tf.matmul(k, flat))
    return (tf.matmul(k, grad_log_p) + repulsive) / m


def scale_by_svgd(bandwidth: Optional[float] = None, repulsion: float = 1.0) -> Transform:
    """The link that turns the gradients of the inner *loss* (the negative log posterior summed over the
    particles, so `grad log p = -grads`: each particle's row is its own gradient) into SVGD's direction `phi`."""

    def direction(grads, weights, **extra):
        phi = svgd_direction(flatten_particles(weights), -flatten_particles(grads), bandwidth, repulsion)
        return unflatten_particles(phi, weights)

    return stateless(direction)


def svgd(step_size, bandwidth: Optional[float] = None, repulsion: float = 1.0) -> Transform:
    """SVGD as an inner optimiser over particle entries `[M, ...]`: `x <- x + step_size * phi(x)`."""
    return chain(scale_by_svgd(bandwidth, repulsion), scale(step_size))
