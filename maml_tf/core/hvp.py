"""Hessian-vector products and conjugate gradient (iMAML's implicit gradient and Newton-CG solver; the checks of
LLAMA's K-FAC curvature)."""

from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf

from maml_tf.core.params import axpy, dot


def hvp(loss_and_grads: Callable[[list], tuple], weights: Sequence, vector: Sequence,
        gradient: Callable = None) -> list:
    """`H v`: the Hessian of a loss at `weights` times `vector`, by double backward.

    Args:
      loss_and_grads: `f(weights) -> (loss, grads)` with `grads = d loss / d weights`
        recorded on tapes (so that it can be differentiated again).
      weights, vector: aligned lists.
      gradient: `gradient(tape, target, sources)` (default `tape.gradient`
        with zeros for unconnected sources), e.g. a loss-scaled gradient.
    """
    weights = list(weights)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(weights)
        _, grads = loss_and_grads(weights)
        gv = dot(grads, vector)
    if gradient is None:
        return tape.gradient(gv, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return gradient(tape, gv, weights)


def conjugate_gradient(matvec: Callable, b: Sequence[tf.Tensor], steps: int, residual_tol: float = 1e-10,
                       stop_on_negative_curvature: bool = False) -> list:
    """Solves `A x = b` for symmetric positive-definite `A`, given as `matvec(list) -> list`.

    As iMAML's authors' `utils.cg_solve`: x0 = 0, at most `steps` iterations,
    stop when the squared residual falls below `residual_tol`. With
    `stop_on_negative_curvature` (Newton-CG), an iteration meeting
    `p^T A p <= 0` stops the solve; if that happens at the first iteration
    the result is `b` itself (the steepest-descent direction).
    """
    b = list(b)
    x = [tf.zeros_like(t) for t in b]
    r, p = list(b), list(b)
    rdotr = dot(r, r)

    def cond(i, x, r, p, rdotr, done):
        return tf.logical_and(i < steps, tf.logical_not(done))

    def body(i, x, r, p, rdotr, done):
        ap = matvec(p)
        pap = dot(p, ap)
        negative = tf.logical_and(tf.constant(stop_on_negative_curvature), pap <= 0)
        alpha = tf.where(negative, tf.zeros_like(pap), rdotr / tf.where(pap == 0, tf.ones_like(pap), pap))
        x_new = axpy(alpha, p, x)
        if stop_on_negative_curvature:
            x_new = [tf.where(tf.logical_and(negative, tf.equal(i, 0)), bi, xi) for bi, xi in zip(b, x_new)]
        r_new = axpy(-alpha, ap, r)
        new_rdotr = dot(r_new, r_new)
        beta = new_rdotr / tf.where(rdotr == 0, tf.ones_like(rdotr), rdotr)
        p_new = axpy(beta, p, r_new)
        return i + 1, x_new, r_new, p_new, new_rdotr, tf.logical_or(negative, new_rdotr < residual_tol)

    _, x, _, _, _, _ = tf.while_loop(cond, body, (tf.constant(0), x, r, p, rdotr, rdotr < residual_tol))
    return x
