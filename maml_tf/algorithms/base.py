"""What every algorithm shares: the task-batch type, the model and its inner-loop split, forward passes,
loss checks, and the layout of the results (`totals`).

Results of every algorithm's `train_step`/`evaluate` are means over the tasks
of a batch, with the original MAML names: `total_loss1` (query loss before
adaptation; MAML: the support loss, as the original), `total_losses2` (after
each reported inner step), and with a metric `total_accuracy1`,
`total_accuracies2`. `objective_step` indexes the meta-objective in
`total_losses2`; `objective_loss` (`objective_metric`) is that entry, and is
all a lean MAML training step reports after adaptation.
"""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple, Optional, Sequence

import keras
import tensorflow as tf

from maml_tf.functional import (ParameterSplit, current_non_trainable, functional_call, is_seed_state,
                                training_kwargs)


class TaskBatch(NamedTuple):
    """A meta-batch of tasks; every field has a leading task axis.

    support_x: [tasks, num_support, ...]; support_y: [tasks, num_support, out]
    query_x:   [tasks, num_query, ...];   query_y:   [tasks, num_query, out]
    """

    support_x: tf.Tensor
    support_y: tf.Tensor
    query_x: tf.Tensor
    query_y: tf.Tensor


class MetaLearner:
    """Base of the algorithms: a built Keras model, a per-task loss (and metric), and which variables adapt.

    Args:
      model: a built Keras 3 model; its trainable variables are the meta-parameters.
      loss_fn: `loss_fn(outputs, labels) -> scalar` of one task.
      metric_fn: optional `metric_fn(outputs, labels) -> scalar` (or a vector of metrics).
      adapt: which variables the inner loop adapts (see `ParameterSplit`).
      training: Keras training flag of every forward pass.
      second_order: whether meta-gradients differentiate through inner
        gradients (warns for Keras normalisation layers, whose second
        derivatives are approximate).
    """

    name = "meta_learner"
    compiled_steps = ("train_step", "evaluate")  # Built from `_train_step`, ... by `compile`.
    objective_step = 0
    update_moving_statistics = False  # MAML's option; see `refresh_statistics`.

    def __init__(self, model: keras.Model, loss_fn: Callable, *, metric_fn: Optional[Callable], adapt,
                 training: bool, second_order: bool):
        check_model(model, second_order)
        self.model, self.loss_fn, self.metric_fn, self.training = model, loss_fn, metric_fn, training
        self.split = ParameterSplit(model, adapt)
        self.dtype = model.trainable_variables[0].dtype  # Losses and results are computed in this dtype.
        self.loss_scale = DynamicLossScale() if computes_in_float16(model) else None

    def compile(self, jit_compile: bool = False) -> None:
        """(Re)builds the compiled steps (`train_step`, `evaluate`, ...) as `tf.function`s.

        Args:
          jit_compile: compile them with XLA (`--jit_compile`). Same results up
            to float rounding; on the 2-core CPU benchmark machine XLA made the
            small sinusoid step faster and Omniglot 5-way MAML 4.6x slower.

        The steps are traced without AutoGraph: their loops are unrolled in
        Python or written as `tf.while_loop`/`tf.map_fn`/`tf.cond`, and AutoGraph
        would only re-parse every function they call, several seconds of
        each program's start. As in Keras 3's own `fit`, a model's `call` or
        a loss with Python control flow on tensors must use `tf.cond` and
        `tf.while_loop`.
        """
        self.jit_compile = jit_compile
        for name in self.compiled_steps:
            setattr(self, name, tf.function(getattr(self, "_" + name), jit_compile=jit_compile, autograph=False))

    def weights(self) -> list:
        """The current meta-parameters as tensors (differentiable reads)."""
        return [tf.convert_to_tensor(v) for v in self.model.trainable_variables]

    def forward(self, weights: Sequence, x):
        """Model outputs with `weights`; low-precision outputs (mixed precision) are cast to the variables' dtype."""
        return cast_floats(functional_call(self.model, weights, x, training=self.training), self.dtype)

    def gradient(self, tape: tf.GradientTape, loss, sources: Sequence) -> list:
        """`d sum(loss) / d sources` (zeros where unconnected); with float16 layers, of the scaled loss.

        Loss scaling (`self.loss_scale`): the backward pass starts from
        `scale` instead of 1, so that small float16 gradients of the
        activations do not flush to zero, and the result is divided by the
        scale in the variables' dtype. Inner-loop and outer gradients alike go
        through here.
        """
        if self.loss_scale is None:
            return tape.gradient(loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        scale = self.loss_scale.scale
        grads = tape.gradient(loss, sources, output_gradients=tf.ones_like(loss) * tf.cast(scale, loss.dtype),
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return [g / tf.cast(scale, g.dtype) for g in grads]

    def apply_optimizer(self, optimizer: keras.optimizers.Optimizer, grads: Sequence) -> dict:
        """`optimizer.apply(grads)` to the model's trainable variables, through `apply_update`."""
        return self.apply_update(grads, lambda: optimizer.apply(grads, self.model.trainable_variables))

    def apply_update(self, grads: Sequence, apply: Callable[[], None]) -> dict:
        """Runs `apply()` (the meta-update from `grads`); with loss scaling, only if every gradient is
        finite, else the update is skipped and the scale halves (see `DynamicLossScale`).

        Returns entries for the step's results: none without loss scaling, else
        `loss_scale` (the scale this step used) and `update_skipped`. A skipped
        step's losses after adaptation are inf or NaN (the inner loop overflowed).
        """
        if self.loss_scale is None:
            apply()
            return {}
        used = self.loss_scale.scale.read_value()
        return {"loss_scale": used, "update_skipped": tf.logical_not(self.loss_scale.update(grads, apply))}

    def checkpoint_objects(self) -> dict:
        """What a checkpoint must hold to resume exactly (`_checkpoint_objects`, and the loss scale)."""
        objects = self._checkpoint_objects()
        if self.loss_scale is not None:
            objects["loss_scale"] = self.loss_scale
        return objects

    def _checkpoint_objects(self) -> dict:
        return {"model": self.model}

    def task_loss(self, outputs, labels):
        """`loss_fn(outputs, labels)`, checked to be a scalar (at trace time)."""
        return check_scalar(self.loss_fn(outputs, labels), "loss_fn")

    def clip(self, grads) -> list:
        """The meta-gradient as applied (MAML clips elementwise when asked; others do not)."""
        return list(grads)

    def totals(self, loss1, losses2, metric1=None, metrics2=None, objective: Optional[int] = None) -> dict:
        """Means over tasks: `loss1` [tasks], `losses2` [tasks, steps] (metrics alike) -> the results dict.

        `objective_loss` (and `objective_metric`) is the entry `objective` of
        the step axis (default `objective_step`), when there is one.
        """
        out = {"total_loss1": tf.reduce_mean(loss1, 0), "total_losses2": tf.reduce_mean(losses2, 0)}
        if self.metric_fn is not None:
            out["total_accuracy1"] = tf.reduce_mean(metric1, 0)
            out["total_accuracies2"] = tf.reduce_mean(metrics2, 0)
        objective = self.objective_step if objective is None else objective
        if objective < losses2.shape[1]:
            out["objective_loss"] = out["total_losses2"][objective]
            if self.metric_fn is not None:
                out["objective_metric"] = out["total_accuracies2"][objective]
        return out


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


# ------------------------------------------------------------------ helpers
def computes_in_float16(model: keras.Model) -> bool:
    """Whether a layer of `model` computes in float16 (a `mixed_float16` policy): loss scaling is then on."""
    return any(layer.compute_dtype == "float16" for layer in model._flatten_layers(include_self=False))


def cast_floats(structure, dtype):
    def cast(t):
        return tf.cast(t, dtype) if t.dtype.is_floating and t.dtype != dtype else t
    return tf.nest.map_structure(cast, structure)


def check_scalar(value, what: str):
    """Raises `ValueError` at trace time unless `value` is a scalar."""
    if value.shape.rank not in (0, None):
        raise ValueError(f"{what} must return one scalar per task; it returned shape {tuple(value.shape)}. "
                         "Reduce over the examples (e.g. tf.reduce_mean).")
    return value


def check_model(model: keras.Model, second_order: bool) -> None:
    """Raises for models that cannot be meta-trained; warns where second derivatives are approximate."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected a keras.Model; got {type(model).__name__}.")
    if second_order:
        inexact = {type(layer).__name__ for layer in model._flatten_layers(include_self=False)
                   if isinstance(layer, (keras.layers.BatchNormalization, keras.layers.LayerNormalization))}
        if inexact:
            warnings.warn(
                f"Model {model.name!r} has Keras {', '.join(sorted(inexact))} layers: Keras computes their moments "
                "with a stop-gradient on the mean, so second-order meta-gradients through them are approximate. "
                "Use maml_tf.networks.BatchNormTF1 / LayerNormTF1 (exact) or first_order=True.", stacklevel=3)


def refresh_statistics(model: keras.Model, support_x, training: bool = True) -> None:
    """One stateless training-mode pass over all support examples of a meta-batch; stores the new
    non-trainable state (moving averages), keeping seed-generator states."""
    flat = tf.nest.map_structure(lambda t: tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], 0)), support_x)
    weights = [tf.convert_to_tensor(v) for v in model.trainable_variables]
    _, updated = model.stateless_call(weights, current_non_trainable(model), flat,
                                      **training_kwargs(model, training))
    for var, value in zip(model.non_trainable_variables, updated):
        if not is_seed_state(var):
            var.assign(value)
