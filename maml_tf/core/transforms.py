"""Updates as chainable transformations (optax's design): each link turns gradients into updates, with explicit state.

    opt = chain(clip_by_value(10.0), scale(-0.4))        # Clipped SGD.
    state = opt.init(params)
    updates, state = opt.update(grads, state, params, step=k)
    params = apply_updates(params, updates)               # params + updates

A `Transform` is `(init, update, prepare)`:

- `init(params) -> state`;
- `update(updates, state, params, **extra) -> (updates, state)`: the
  incoming `updates` are the gradients for the first link, the previous
  link's output for the others; `extra` carries what a link may need besides
  (the inner step `step` for per-step step sizes; a trust region's
  `curvature_product`, `objective` and `constraint`), and a link ignores what
  it does not read;
- `prepare(params) -> params`: a map of the weights *before* the gradient is
  taken (Reptile's weight decay multiplies them; most links leave them).

Inner optimisers (`maml_tf.core.inner`) and the outer update
(`maml_tf.core.outer`) are chains of these links. Updates are added to the
parameters, so a descent link ends with a negative scale; `a + (-b)` is
`a - b` bit for bit in IEEE arithmetic, so SGD written this way gives the
original's numbers exactly.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import tensorflow as tf

from maml_tf.core import params as P
from maml_tf.core.hvp import conjugate_gradient


def _identity(params):
    return params


class Transform(NamedTuple):
    """`init(params) -> state`; `update(updates, state, params, **extra) -> (updates, state)`; `prepare(params)`."""

    init: Callable
    update: Callable
    prepare: Callable = _identity


def _no_state(params):
    return ()


def stateless(fn: Callable) -> Transform:
    """A link without state from `fn(updates, params, **extra) -> updates`."""
    return Transform(_no_state, lambda updates, state, params, **extra: (fn(updates, params, **extra), state))


def chain(*links: Transform) -> Transform:
    """The links applied in order; the state is the tuple of theirs (a single link keeps its own state)."""
    if len(links) == 1:
        return links[0]

    def init(params):
        return tuple(link.init(params) for link in links)

    def update(updates, state, params, **extra):
        new_state = []
        for link, s in zip(links, state, strict=True):  # A state of another chain is an error, not a skip.
            updates, s = link.update(updates, s, params, **extra)
            new_state.append(s)
        return updates, tuple(new_state)

    def prepare(params):
        for link in links:
            params = link.prepare(params)
        return params

    return Transform(init, update, prepare)


def apply_updates(params: Sequence, updates: Sequence) -> list:
    """`params + updates`, entry by entry."""
    return [p + u for p, u in zip(params, updates)]


# ----------------------------------------------------------------- the links
def scale(factor) -> Transform:
    """`factor * updates` (SGD's `-lr`; Reptile's outer `-epsilon`); `factor` a number or a scalar tensor."""
    return stateless(lambda updates, params, **extra: [factor * u for u in updates])


def scale_by_learned(step_sizes: Sequence, per_step: bool = False) -> Transform:
    """`-a * updates` with meta-learned step sizes `a`, one per entry (Meta-SGD: tensors of the weight's shape;
    MAML++: scalars per layer). `per_step`: each entry has a leading axis of inner steps, indexed by the extra
    `step`; steps past the last use the last entry (evaluation longer than training)."""

    def fn(updates, params, step=None, **extra):
        sizes = [a[min(step, a.shape[0] - 1)] for a in step_sizes] if per_step else step_sizes
        return [-(a * u) for a, u in zip(sizes, updates)]

    return stateless(fn)


def scale_by_adam(learning_rate, beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-8) -> Transform:
    """TF1 `AdamOptimizer`'s step `-lr_t m / (sqrt(v) + eps)`, `lr_t = lr sqrt(1 - b2^t) / (1 - b1^t)`; state
    `(m, v, steps)` (Reptile's inner Adam, beta1 = 0, carries it across tasks)."""

    def init(params):
        return [tf.zeros_like(w) for w in params], [tf.zeros_like(w) for w in params], tf.constant(0, tf.int64)

    def update(grads, state, params, **extra):
        m, v, steps = state
        steps = steps + 1
        t = tf.cast(steps, grads[0].dtype)
        m = [beta1 * mi + (1.0 - beta1) * g for mi, g in zip(m, grads)]
        v = [beta2 * vi + (1.0 - beta2) * tf.square(g) for vi, g in zip(v, grads)]
        lr_t = learning_rate * tf.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
        return [-(lr_t * mi / (tf.sqrt(vi) + epsilon)) for mi, vi in zip(m, v)], (m, v, steps)

    return Transform(init, update)


def clip_by_value(value: Optional[float]) -> Transform:
    """Each element clipped to `[-value, value]` (the original's MiniImagenet meta-gradient; MMAML's inner
    gradients); None: unchanged."""
    return stateless(lambda updates, params, **extra: clip_values(updates, value))


def clip_by_global_norm(norm: Optional[float], groups: Optional[Sequence[int]] = None) -> Transform:
    """Each group of consecutive entries (`groups`: their sizes; default one group) scaled down together to a global
    norm of at most `norm` (MMAML's network and encoder, as its authors' two optimisers); None: unchanged."""
    return stateless(lambda updates, params, **extra: clip_norms(updates, norm, groups or [len(updates)]))


def add_proximal_term(lam: float, anchor: Sequence) -> Transform:
    """`updates + lam (params - anchor)`: the gradient of `lam / 2 ||w - anchor||^2` added (iMAML's inner problem)."""
    return stateless(lambda updates, params, **extra: [g + lam * (w - a)
                                                       for g, w, a in zip(updates, params, anchor)])


def weight_decay(factor: float) -> Transform:
    """The weights multiplied by `factor` before each step's gradient is taken (Reptile's `--weight-decay`; 1:
    nothing). It acts in `prepare`; the updates pass unchanged."""
    if factor == 1.0:
        return stateless(lambda updates, params, **extra: updates)
    return Transform(_no_state, lambda updates, state, params, **extra: (updates, state),
                     lambda params: [w * factor for w in params])


def trust_region(max_constraint: float, *, cg_iters: int = 10, damping: float = 1e-5, backtrack_ratio: float = 0.8,
                 max_backtracks: int = 15) -> Transform:
    """TRPO's step (rllab's `ConjugateGradientOptimizer`, as MAML's RL experiments use it): gradients -> a step.

    The incoming updates are the gradient `g` of a loss to decrease. With `H` the constraint's curvature (its
    Hessian at the current parameters, given as `curvature_product(v) -> H v`) plus `damping`, conjugate
    gradient (`cg_iters` iterations) solves `H d = g`; the full step `-sqrt(2 delta / (d^T H d)) d` reaches the
    constraint `delta = max_constraint` of its quadratic model. A backtracking line search then shrinks it by
    `backtrack_ratio` (at most `max_backtracks` tries) until `objective(step) < objective(0)` and
    `constraint(step) <= max_constraint`, both evaluated at `params + step`; if no try passes (or a value is not
    finite), the step is zero, as rllab rejects it.

    Extra arguments of `update`: `curvature_product`, `objective`, `constraint` (functions of aligned lists). The
    results of the search are returned in the state: `(backtracks, accepted)`.
    """

    def init(params):
        return tf.constant(0, tf.int32), tf.constant(False)

    def update(grads, state, params, *, curvature_product, objective, constraint, **extra):
        grads = list(grads)

        def damped(v):
            return P.axpy(damping, v, curvature_product(v))

        direction = conjugate_gradient(damped, grads, cg_iters, residual_tol=1e-10)
        curvature = P.dot(direction, damped(direction))
        full = P.scale(-tf.sqrt(2.0 * max_constraint / (curvature + 1e-8)), direction)
        before = objective(P.zeros_like(full))

        def acceptable(step):
            loss, kl = objective(step), constraint(step)
            ok = tf.logical_and(loss < before, kl <= max_constraint)
            return tf.logical_and(ok, tf.logical_and(tf.math.is_finite(loss), tf.math.is_finite(kl)))

        def cond(k, accepted):
            return tf.logical_and(k < max_backtracks, tf.logical_not(accepted))

        def body(k, accepted):
            accepted = acceptable(P.scale(tf.cast(backtrack_ratio, full[0].dtype) ** tf.cast(k, full[0].dtype), full))
            return tf.where(accepted, k, k + 1), accepted

        k, accepted = tf.while_loop(cond, body, (tf.constant(0), tf.constant(False)))
        ratio = tf.where(accepted, tf.cast(backtrack_ratio, full[0].dtype) ** tf.cast(k, full[0].dtype), 0.0)
        return P.scale(ratio, full), (k, accepted)

    return Transform(init, update)


# ------------------------------------------------------------- as functions
def clip_values(grads: Sequence, clip_value: Optional[float]) -> list:
    """Elementwise clipping to `[-clip_value, clip_value]` (none if `clip_value` is None)."""
    if clip_value is None:
        return list(grads)
    return [tf.clip_by_value(g, -clip_value, clip_value) for g in grads]


def clip_norms(grads: Sequence, clip_norm: Optional[float], groups: Sequence[int]) -> list:
    """Each group's gradients scaled down together so that their global norm is at most `clip_norm` (PyTorch's
    `clip_grad_norm_` per optimiser); `groups`: the sizes of consecutive groups of `grads`. None: unchanged."""
    if clip_norm is None:
        return list(grads)
    out, start = [], 0
    for size in groups:
        out += tf.clip_by_global_norm(list(grads[start:start + size]), clip_norm)[0]
        start += size
    return out + list(grads[start:])

