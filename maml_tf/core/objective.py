"""The meta-objective as weights over the inner steps: `sum_k w_k * L_query(phi_k)`.

MAML meta-optimises the query loss after the last inner step only (one-hot
weights); MAML++'s multi-step loss weights every step, annealed toward the
last. Steps whose weight is a static 0 are not computed at all (MAML's lean
training step runs the query set once, as the original's graph does).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Union

import tensorflow as tf

Weights = Union[Sequence[float], tf.Tensor]


def last_step(num_steps: int) -> List[float]:
    """MAML: all weight on the query loss after step `num_steps` (index `num_steps - 1`)."""
    return [0.0] * (num_steps - 1) + [1.0]


def steps_needed(weights: Weights) -> List[int]:
    """Indices of the steps whose query loss the objective needs (every step if the weights are a tensor)."""
    if isinstance(weights, tf.Tensor):
        return list(range(weights.shape[0]))
    return [k for k, w in enumerate(weights) if w != 0]


def combine(query_losses: Dict[int, tf.Tensor], weights: Weights) -> tf.Tensor:
    """`sum_k weights[k] * query_losses[k]` over the needed steps.

    A single weight of exactly 1 returns that loss itself, so that MAML's
    objective (and its gradient) is bit-identical to the original's.
    """
    steps = steps_needed(weights)
    if not isinstance(weights, tf.Tensor) and len(steps) == 1 and weights[steps[0]] == 1.0:
        return query_losses[steps[0]]
    loss = query_losses[steps[0]]
    return tf.add_n([tf.cast(weights[k], loss.dtype) * query_losses[k] for k in steps])


def multi_step_loss_weights(epoch, num_steps: int, msl_epochs: int) -> tf.Tensor:
    """MAML++'s per-step loss importance vector at `epoch` (a scalar tensor or number), float64 `[num_steps]`.

    The authors' `get_per_step_loss_importance_vector`: uniform `1/K` at
    epoch 0; each epoch moves `1/(K * msl_epochs)` from every non-final step
    (down to at least `0.03/K`) to the final one (up to at most
    `1 - (K - 1) * 0.03/K`). From epoch `msl_epochs` on, the authors train on
    the final step's loss alone: the weights are then one-hot on the last step.
    """
    k = num_steps
    epoch = tf.cast(epoch, tf.float64)
    decay = 1.0 / k / msl_epochs
    floor = 0.03 / k
    early = tf.maximum(1.0 / k - epoch * decay, floor) * tf.ones([k - 1], tf.float64)
    last = tf.minimum(1.0 / k + epoch * (k - 1) * decay, 1.0 - (k - 1) * floor)
    annealed = tf.concat([early, [last]], 0)
    return tf.where(epoch < msl_epochs, annealed, tf.constant(last_step(k), tf.float64))
