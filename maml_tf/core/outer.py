"""The one outer update, used by every algorithm and `MetaModel`: a chain of links over the meta-gradient, then
the optimiser.

    outer_update(grads, variables, optimizer, transform=meta_gradient_chain(clip_value=10.0))

The chain (`maml_tf.core.transforms`) starts, in a distributed run, with the
all-reduce (`all_reduce_mean`: the mean over the replicas of their tasks'
mean meta-gradients, `maml_tf.core.distribute`) before anything that looks
at the values; the usual chain then clips to a global norm (`--clip_norm`)
and elementwise (the original clips MiniImagenet's meta-gradient to [-10,
10]). Its output is given to `optimizer`: a Keras optimiser applies it as a
gradient; `None` adds it to the variables as an update (a chain that ends
in a step of its own: Reptile's `-epsilon` scale, TRPO's trust region).
With float16 layers the loss-scale guard skips an update whose gradient is
not finite.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import keras
import tensorflow as tf

from maml_tf.core.distribute import apply_update
from maml_tf.replicas import all_reduce_mean
from maml_tf.core.transforms import Transform, chain, clip_by_global_norm, clip_by_value, stateless


def all_reduce() -> Transform:
    """The link that averages the meta-gradient over the replicas (unchanged on one device)."""
    return stateless(lambda grads, params, **extra: all_reduce_mean(grads))


def meta_gradient_chain(*, clip_value: Optional[float] = None, clip_norm: Optional[float] = None,
                        clip_groups: Optional[Sequence[int]] = None, links: Sequence[Transform] = ()) -> Transform:
    """The all-reduce, clipping to a global norm per group (`clip_groups`: their sizes), elementwise clipping,
    then `links`."""
    return chain(all_reduce(), clip_by_global_norm(clip_norm, clip_groups), clip_by_value(clip_value), *links)


class DynamicLossScale(tf.Module):
    """Dynamic loss scaling for float16 computation (`--mixed_precision`), as Keras' `LossScaleOptimizer`.

    Gradients are taken of `loss * scale` and divided by `scale`
    (`MetaLearner.gradient`). An update whose gradients are all finite is
    applied, and after `growth_steps` such updates in a row the scale doubles;
    an update with an inf or NaN is skipped and the scale halves.
    Kept separate from the optimiser so that MAML's elementwise clipping sees
    the unscaled meta-gradient, and the inner loop uses the same scale.
    """

    def __init__(self, initial_scale: float = 2.0 ** 15, growth_steps: int = 2000):
        super().__init__(name="loss_scale")
        self.scale = tf.Variable(initial_scale, trainable=False, dtype=tf.float32, name="scale")
        self.good_steps = tf.Variable(0, trainable=False, dtype=tf.int64, name="good_steps")
        self.growth_steps = growth_steps

    def update(self, grads: Sequence, apply: Callable[[], None]) -> tf.Tensor:
        """Runs `apply()` if every gradient is finite and adjusts the scale; returns whether it applied."""
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])

        def good():
            apply()
            grow = self.good_steps + 1 >= self.growth_steps
            self.scale.assign(tf.where(grow, self.scale * 2.0, self.scale))
            self.good_steps.assign(tf.where(grow, tf.constant(0, tf.int64), self.good_steps + 1))
            return tf.constant(True)

        def bad():
            self.scale.assign(tf.maximum(self.scale * 0.5, 1.0))
            self.good_steps.assign(0)
            return tf.constant(False)

        return tf.cond(finite, good, bad)


def outer_update(grads, variables, optimizer, *, transform: Optional[Transform] = None,
                 loss_scale: Optional[DynamicLossScale] = None, **extra) -> dict:
    """Applies the meta-gradient `grads` to `variables` (aligned nests).

    Args:
      optimizer: a Keras optimiser (`optimizer.apply` of the chain's output as
        a gradient), or None: the chain's output is an update added to the
        variables.
      transform: the chain of links over the meta-gradient (default: the
        all-reduce alone); stateless across meta-updates (state that must last
        lives in the optimiser's variables).
      loss_scale: with float16 layers: skip the update if a gradient is not
        finite, and adjust the scale.
      **extra: passed to the links (a trust region's `curvature_product`,
        `objective`, `constraint`).

    Returns:
      Entries for the step's results: none without loss scaling, else
      `loss_scale` (the scale this step used) and `update_skipped`.
    """
    grads, variables = tf.nest.flatten(grads), tf.nest.flatten(variables)
    transform = transform or all_reduce()
    params = [tf.convert_to_tensor(v) for v in variables]
    updates, _ = transform.update(grads, transform.init(params), params, **extra)
    apply = lambda: apply_update(optimizer, updates, variables)  # noqa: E731
    if loss_scale is None:
        apply()
        return {}
    used = loss_scale.scale.read_value()
    return {"loss_scale": used, "update_skipped": tf.logical_not(loss_scale.update(updates, apply))}


def cosine_annealing(epoch, total_epochs: int, base: float, minimum: float):
    """The meta step size at `epoch` under cosine annealing (MAML++'s CA; PyTorch's `CosineAnnealingLR` with
    `T_max=total_epochs`, `eta_min=minimum`, stepped by epoch, in closed form):
    `minimum + (base - minimum) * (1 + cos(pi * epoch / total_epochs)) / 2`. Past `total_epochs` it stays at
    `minimum` (PyTorch's would rise again; the authors' runs end there)."""
    epoch = tf.minimum(tf.cast(epoch, tf.float64), float(total_epochs))
    return minimum + (base - minimum) * (1.0 + tf.cos(tf.constant(3.141592653589793, tf.float64) * epoch
                                                      / float(total_epochs))) / 2.0


@keras.saving.register_keras_serializable(package="maml_tf")
class CosineAnnealing(keras.optimizers.schedules.LearningRateSchedule):
    """`cosine_annealing` as a Keras schedule of the optimiser's update count: constant within each epoch of
    `iterations_per_epoch` updates. Give it to the outer optimiser (`keras.optimizers.Adam(CosineAnnealing(...))`);
    the count is in the optimiser's checkpointed state, so a resumed run continues the schedule."""

    def __init__(self, base: float, minimum: float, total_epochs: int, iterations_per_epoch: int):
        self.base, self.minimum = float(base), float(minimum)
        self.total_epochs, self.iterations_per_epoch = int(total_epochs), int(iterations_per_epoch)

    def __call__(self, step):
        epoch = tf.cast(step, tf.int64) // self.iterations_per_epoch
        return tf.cast(cosine_annealing(epoch, self.total_epochs, self.base, self.minimum), tf.float32)

    def get_config(self):
        return {"base": self.base, "minimum": self.minimum, "total_epochs": self.total_epochs,
                "iterations_per_epoch": self.iterations_per_epoch}
