"""Inner optimisers (chains of `maml_tf.core.transforms` links), one inner step, and the inner loop.

An inner optimiser is a `Transform` over the *adapted* entries of the weights
(see `maml_tf.functional.ParameterSplit`) with an explicit state:

    state = opt.init(adapted)
    updates, state = opt.update(grads, state, adapted, step=step)
    adapted = apply_updates(adapted, updates)

`step` is the 0-based inner step (a Python int in an unrolled loop, a tensor
in a `tf.while_loop`), which per-step step sizes (MAML++) index. `prepare`
maps the weights before the gradient is taken (Reptile's weight decay).

The inner loop runs on a task view (`maml_tf.core.execution.TaskView` or
another kind): one task under `tf.map_fn`, or every task of a group at once
in task layout. The view defines the loss of its kind of task on its data
(`view.inner_loss(weights, data, step)`, `view.query_loss(...)`): for
supervised tasks the data is an `(x, y)` pair. In task layout losses are one
per task and the gradient of their sum is each task's own gradient, so the
same code serves both.
"""

from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Sequence

import tensorflow as tf

from maml_tf.core.transforms import (Transform, apply_updates, chain, clip_by_value, scale, scale_by_adam,
                                     scale_by_learned)

InnerOptimizer = Transform  # An inner optimiser is a chain of update links.


def sgd(learning_rate) -> Transform:
    """`w - lr * g` (MAML's inner step, `--update_lr`)."""
    return scale(-learning_rate)


def learned_sgd(step_sizes: Sequence, per_step: bool = False) -> Transform:
    """`w - a * g` with meta-learned step sizes `a`, one per adapted weight.

    Args:
      step_sizes: aligned with the adapted weights: tensors of the weight's
        shape (Meta-SGD: one step size per parameter), or scalars (per layer).
      per_step: each entry has a leading axis of inner steps, indexed by the
        step (MAML++'s per-layer per-step learning rates); steps past the
        last use the last entry (longer evaluation than training).
    """
    return scale_by_learned(step_sizes, per_step)


def adam(learning_rate, beta1: float = 0.0, beta2: float = 0.999, epsilon: float = 1e-8) -> Transform:
    """TF1 `AdamOptimizer`'s update, state `(m, v, steps)` (Reptile: beta1 = 0, the state carried across tasks)."""
    return scale_by_adam(learning_rate, beta1, beta2, epsilon)


def clipped_sgd(learning_rate, clip_value) -> Transform:
    """SGD on the gradients clipped elementwise to `[-clip_value, clip_value]` (MMAML's inner loop; None: not
    clipped)."""
    return chain(clip_by_value(clip_value), sgd(learning_rate)) if clip_value is not None else sgd(learning_rate)


def inner_step(view, weights: Sequence, optimizer: Transform, state, data, step=None, *,
               first_order: bool = False):
    """One step of `optimizer` on the view's inner loss of `data` over the adapted entries of `weights`.

    Args:
      view: the task view (the inner loss `view.inner_loss`, the gradient, which entries adapt).
      data: the task's data for the inner loss (supervised: `(x, y)`).
      first_order: stop the gradient through the inner gradient (first-order MAML).

    Returns:
      `(outputs, loss, new_weights, state)`: outputs and loss at `weights`
      (after `prepare`), the full weight list after the step.
    """
    split = view.split
    adapted = optimizer.prepare(split.adapted(weights))
    weights = split.replace(weights, adapted)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(adapted)
        outputs, loss = view.inner_loss(weights, data, step)
    grads = view.gradient(tape, loss, adapted)
    if first_order:
        grads = [tf.stop_gradient(g) for g in grads]
    updates, state = optimizer.update(grads, state, adapted, step=step)
    return outputs, loss, split.replace(weights, apply_updates(adapted, updates)), state


class Trajectory(NamedTuple):
    """What `inner_loop` returns.

    weights: the fast weights after the last step; state: the optimiser's.
    support_outputs, support_loss: at the initial weights (pre-update).
    query_outputs, query_losses: `{step: ...}` after each requested step (0-based).
    query_weights: `{step: fast weights}` after each requested step (LLAMA's curvature is taken there).
    history: with `keep_weights`, the weights before the first step and after each (`recomputed_gradient`).
    """

    weights: list
    state: object
    support_outputs: tf.Tensor
    support_loss: tf.Tensor
    query_outputs: Dict[int, tf.Tensor]
    query_losses: Dict[int, tf.Tensor]
    query_weights: Dict[int, list]
    history: tuple = ()


def inner_loop(view, weights: Sequence, optimizer: Transform, support, num_steps: int, *,
               query=None, query_steps: Sequence[int] = (), state=None, first_order: bool = False,
               keep_weights: bool = False) -> Trajectory:
    """`num_steps` inner steps on the `support` data, unrolled in Python, with the `query` data's loss after
    each of `query_steps`; `keep_weights`: the weights of every step in `Trajectory.history`.

    The query passes (`view.query_loss`) are declared `differentiated_once`:
    only the outer gradient's first derivative goes through them, so batch
    norm may use its fused kernel there (see `maml_tf.networks.exact_normalize`).
    """
    state = optimizer.init(view.split.adapted(weights)) if state is None else state
    support_outputs = support_loss = None
    query_outputs, query_losses, query_weights = {}, {}, {}
    history = [list(weights)] if keep_weights else None
    for step in range(num_steps):
        outputs, loss, weights, state = inner_step(view, weights, optimizer, state, support, step,
                                                   first_order=first_order)
        if step == 0:
            support_outputs, support_loss = outputs, loss
        if step in query_steps:
            query_outputs[step], query_losses[step] = view.query_loss(weights, query, step)
            query_weights[step] = list(weights)
        if keep_weights:
            history.append(list(weights))
    return Trajectory(list(weights), state, support_outputs, support_loss, query_outputs, query_losses,
                      query_weights, tuple(history or ()))


def recomputed_gradient(history: Sequence[Sequence[tf.Tensor]], params: Sequence[tf.Tensor], step_fn: Callable):
    """The meta-gradient of an inner loop by recomputing each step in the backward pass (memory flat in the steps).

    The objective is `sum_k L_k(w_{k+1}, params)` over the trajectory `w_{k+1} = S_k(w_k, params)`, where
    `step_fn(k, w_k, params) -> (w_{k+1}, L_k or None)` recomputes step k and its objective term from the
    differentiable inputs alone. `history`: `[w_0, ..., w_K]`, kept from a forward pass that no tape recorded,
    so that no step's activations outlive it. Going backwards, each step is recomputed under its own tape and
    its vector-Jacobian product taken (through the inner gradient: second order unless the step stops it), so
    that at most one step's activations are alive at a time, for about one more forward pass per step.

    Returns:
      `(d objective / d params, d objective / d w_0)`: the caller adds the second where `w_0` comes from `params`.
    """
    params = list(params)
    grad_params = [tf.zeros_like(p) for p in params]
    grad_w = [tf.zeros_like(w) for w in history[-1]]
    for k in reversed(range(len(history) - 1)):
        # In a graph, step k's recomputation could start as soon as its inputs exist, keeping every step's
        # activations alive at once: it waits for step k + 1's backward pass instead.
        with tf.control_dependencies(grad_w):
            w = [tf.identity(t) for t in history[k]]  # Fresh tensors: sources distinct from `params`.
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(w)
                tape.watch(params)
                new, loss = step_fn(k, w, params)
        targets, seeds = list(new), list(grad_w)
        if loss is not None:
            targets.append(loss)
            seeds.append(tf.ones_like(loss))
        grad_w, step_params = tape.gradient(targets, [w, params], output_gradients=seeds,
                                            unconnected_gradients=tf.UnconnectedGradients.ZERO)
        grad_params = [g + s for g, s in zip(grad_params, step_params)]
    return grad_params, grad_w


def inner_while_loop(view, weights: Sequence, optimizer: Transform, batches: Callable, num_steps, *,
                     state=None):
    """`num_steps` inner steps (a `tf.while_loop`, not differentiated), step i on the data `batches(i)`.

    For long inner loops whose path the meta-gradient does not need (Reptile,
    iMAML's solver): the graph holds one step whatever `num_steps` is.

    Returns:
      `(weights, state, first_loss)`: the loss at the first step (before any update).
    """
    state = optimizer.init(view.split.adapted(weights)) if state is None else state

    def body(i, weights, state, first_loss):
        _, loss, weights, state = inner_step(view, weights, optimizer, state, batches(i), i)
        return i + 1, weights, state, tf.where(i == 0, loss, first_loss)

    first = tf.constant(float("nan"), view.dtype)
    _, weights, state, first_loss = tf.while_loop(lambda i, *_: i < num_steps, body,
                                                  (tf.constant(0), list(weights), state, first))
    return weights, state, first_loss


def stack_steps(values: Dict[int, tf.Tensor], axis: int = 0) -> tf.Tensor:
    """The per-step dict of a `Trajectory` as one tensor, steps in order along `axis`."""
    return tf.stack([values[k] for k in sorted(values)], axis)
