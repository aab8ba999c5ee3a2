"""What every algorithm shares: the model and its inner-loop split, its meta-parameters, the forward pass,
the outer step, checkpoints and the layout of the results (`totals`).

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
from typing import Callable, Optional, Sequence

import keras
import tensorflow as tf

from maml_tf.replicas import assign, gather_tasks
from maml_tf.core.distribute import replicated
from maml_tf.core.execution import Execution, TaskView
from maml_tf.core.outer import DynamicLossScale, meta_gradient_chain, outer_update
from maml_tf.core.transforms import Transform, clip_norms, clip_values
from maml_tf import losses, networks
from maml_tf.functional import ParameterSplit, current_non_trainable, functional_call, is_seed_state, training_kwargs
from maml_tf.types import TaskBatch

__all__ = ["MetaLearner", "MetaParameters", "TaskBatch", "refresh_statistics"]


@keras.saving.register_keras_serializable(package="maml_tf")
class MetaParameters(keras.layers.Layer):
    """Meta-parameters an algorithm owns beyond the model's weights (step sizes, particles, an encoder's
    weights, ...): a layer, so that checkpoints, `MetaModel.save` and Keras optimisers handle them as weights."""

    def add(self, name: str, initial_value, trainable: bool = True) -> keras.Variable:
        value = tf.convert_to_tensor(initial_value)
        variable = self.add_weight(name=name, shape=tuple(value.shape), dtype=value.dtype.name,
                                   initializer=lambda shape, dtype=None: value, trainable=trainable)
        setattr(self, name, variable)  # An attribute, so that `tf.train.Checkpoint` saves it too.
        return variable


class MetaLearner:
    """Base of the algorithms: a built Keras model, a per-task loss (and metric), and which variables adapt.

    The meta-parameters are `meta_variables`: the model's trainable variables,
    then the algorithm's own (`self.meta_parameters`, see `MetaParameters`).
    Meta-gradients are flat lists aligned with them.

    Args:
      model: a built Keras 3 model; its trainable variables are meta-parameters.
      loss_fn: `loss_fn(outputs, labels) -> scalar` of one task.
      metric_fn: optional `metric_fn(outputs, labels) -> scalar` (or a vector of metrics).
      adapt: which variables the inner loop adapts (see `ParameterSplit`).
      training: Keras training flag of every forward pass.
      second_order: whether meta-gradients differentiate through inner
        gradients (warns for Keras normalisation layers, whose second
        derivatives are approximate).
      execution: how the tasks of a meta-batch run (`maml_tf.core.execution.Execution`);
        default: one at a time with `tf.map_fn`.
    """

    name = "meta_learner"
    compiled_steps = ("train_step", "evaluate")  # Built from `_train_step`, ... by `compile`.
    distributed_steps = ("train_step", "pretrain_step")  # Steps split across replicas (given a `strategy`).
    strategy = None  # The `tf.distribute` strategy of `maml_tf.core.distribute.distribute`, if any.
    objective_step = 0
    update_moving_statistics = False  # MAML's option; see `refresh_statistics`.
    clip_value: Optional[float] = None
    clip_norm: Optional[float] = None  # See `clip_groups`.
    library_defaults: dict = {}  # Keyword defaults of `maml_tf.meta_learner` / `MetaModel` (not of main.py).
    task_view_class = TaskView  # The kind of task it learns from: its view defines the losses on a task's data.
    # What `main.py --train=False` runs after the original's test, by name (`maml_tf.training.evaluation.EVALUATORS`):
    # one adapted function (`adapt`) drawn on the sinusoid.
    evaluators: tuple = ("adapted_function",)
    summaries: dict = {}  # Results of its own written to TensorBoard: result key -> tag.
    not_distributable: Optional[str] = None  # Why its meta-batches cannot be split across replicas, if they cannot.

    def __init__(self, model: keras.Model, loss_fn: Callable, *, metric_fn: Optional[Callable], adapt,
                 training: bool, second_order: bool, execution: Optional[Execution] = None):
        check_model(model, second_order)
        self.model, self.loss_fn, self.metric_fn, self.training = model, loss_fn, metric_fn, training
        self.split = ParameterSplit(model, adapt)
        self.dtype = model.trainable_variables[0].dtype  # Losses and results are computed in this dtype.
        self.loss_scale = DynamicLossScale() if computes_in_float16(model) else None
        self.execution = execution or Execution(model, batch_tasks=False)
        self.meta_parameters = MetaParameters(name=f"{self.name.replace('+', 'p')}_meta_parameters",  # maml++
                                              dtype=self.dtype)
        self.meta_parameters.built = True
        self.jit_compile = False

    def compile(self, jit_compile: bool = False) -> None:
        """(Re)builds the compiled steps (`train_step`, `evaluate`, ...) as `tf.function`s.

        Args:
          jit_compile: compile them with XLA (`--jit_compile`). Same results up
            to float rounding.

        The steps are traced without AutoGraph: their loops are unrolled in
        Python or written as `tf.while_loop`/`tf.map_fn`/`tf.cond`, and AutoGraph
        would only re-parse every function they call, several seconds of
        each program's start. As in Keras 3's own `fit`, a model's `call` or
        a loss with Python control flow on tensors must use `tf.cond` and
        `tf.while_loop`.
        """
        self.jit_compile = self.execution.jit_compile = jit_compile
        for name in self.compiled_steps:
            setattr(self, name, self.compiled_step(name))

    def compiled_step(self, name: str):
        """The compiled form of the step `_<name>` (MAML++: one per phase of its schedules)."""
        return self.function(getattr(self, "_" + name), distributed=name in self.distributed_steps)

    def function(self, fn: Callable, distributed: bool = False):
        """`fn` as the learner compiles it: a `tf.function` (with XLA if asked); a training step of a distributed
        learner runs its global meta-batch split across the strategy's replicas (`maml_tf.core.distribute`)."""
        if distributed and self.strategy is not None:
            fn = replicated(self.strategy, fn)
        return tf.function(fn, jit_compile=self.jit_compile, autograph=False)

    @classmethod
    def build_model(cls, config) -> keras.Model:
        """The network `main.py` meta-trains for `config` (the original's; MAML++: the authors')."""
        return networks.build_network(config)

    # ------------------------------------------------------ meta-parameters
    @property
    def meta_variables(self) -> list:
        """Every meta-parameter: the model's trainable variables, then the algorithm's own."""
        return list(self.model.trainable_variables) + list(self.meta_parameters.trainable_variables)

    def weights(self) -> list:
        """The model's current weights as tensors (differentiable reads)."""
        return [tf.convert_to_tensor(v) for v in self.model.trainable_variables]

    def params(self) -> list:
        """Every meta-parameter as a tensor, aligned with `meta_variables`."""
        return [tf.convert_to_tensor(v) for v in self.meta_variables]

    def unpack(self, params: Sequence) -> tuple:
        """`params` (aligned with `meta_variables`) -> `(model weights, the algorithm's own)`."""
        n = len(self.model.trainable_variables)
        return list(params[:n]), list(params[n:])

    # ------------------------------------------------------- shared maths
    def forward(self, weights: Sequence, x, *, step=None, condition=None, differentiated_once: bool = False,
                task_layout: bool = False, training: Optional[bool] = None):
        """Model outputs with `weights` (`functional_call`, every forward pass of every algorithm);
        `condition`: the model's conditioning input (MMAML's modulations); low-precision outputs are cast to the
        variables' dtype (mixed precision)."""
        training = self.training if training is None else training
        outputs = functional_call(self.model, weights, x, training=training, step=step, condition=condition,
                                  differentiated_once=differentiated_once, task_layout=task_layout)
        return cast_floats(outputs, self.dtype)

    def task_loss(self, outputs, labels):
        """`loss_fn(outputs, labels)`, checked (at trace time) to be a scalar of labels shaped like the outputs."""
        check_labels(outputs, labels)
        return check_scalar(self.loss_fn(outputs, labels), "loss_fn")

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
        return tf.nest.map_structure(lambda g: g / tf.cast(scale, g.dtype), grads)

    def clip_groups(self) -> list:
        """Sizes of the consecutive groups of `meta_variables` whose meta-gradients are each clipped to the norm
        `clip_norm`: one group (MMAML: the network's, then the encoder's)."""
        return [len(self.meta_variables)]

    def outer_transform(self) -> Transform:
        """The chain of links the meta-gradient goes through before the optimiser
        (`maml_tf.core.outer.meta_gradient_chain`): the all-reduce over replicas (if distributed), clipping to the
        norm `clip_norm` per `clip_groups` and elementwise to `clip_value`."""
        return meta_gradient_chain(clip_value=self.clip_value, clip_norm=self.clip_norm, clip_groups=self.clip_groups())

    def outer_step(self, grads: Sequence, optimizer, **extra) -> dict:
        """The outer update of `meta_variables` (`maml_tf.core.outer.outer_update`): `outer_transform`, the loss-scale
        guard, then `optimizer` (a Keras optimiser, or None to add the chain's output as an update)."""
        return outer_update(grads, self.meta_variables, optimizer, transform=self.outer_transform(),
                            loss_scale=self.loss_scale, **extra)

    def clip(self, grads: Sequence) -> list:
        """The meta-gradient as `outer_step` applies it: clipped to the norm `clip_norm` and elementwise to
        `clip_value` (each if set)."""
        return clip_values(clip_norms(grads, self.clip_norm, self.clip_groups()), self.clip_value)

    # ------------------------------------------------------------ execution
    @property
    def batched(self):
        """The task-batched network, or None when every meta-batch runs with `tf.map_fn`."""
        return self.execution.network

    def runs_batched(self, batch: TaskBatch) -> bool:
        """Whether `batch`'s tasks run at once (task-batched) or one at a time."""
        return self.execution.runs_batched(batch)

    # ------------------------------------------------------------ checkpoint
    def checkpoint_objects(self) -> dict:
        """What a checkpoint must hold to resume exactly (`_checkpoint_objects`, own meta-parameters, the loss
        scale)."""
        objects = self._checkpoint_objects()
        if self.meta_parameters.weights:
            objects["meta_parameters"] = self.meta_parameters
        if self.loss_scale is not None:
            objects["loss_scale"] = self.loss_scale
        return objects

    def _checkpoint_objects(self) -> dict:
        return {"model": self.model}

    # -------------------------------------------------------------- results
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

    @classmethod
    def task_losses(cls, config):
        """The original losses for `config`: `(loss_fn, metric_fn)` (scaled cross-entropy and accuracy for
        classification, MSE for regression)."""
        if config.classification:
            return losses.scaled_xent(config.update_batch_size), losses.accuracy
        return losses.mse, None


# ------------------------------------------------------------------ helpers
def computes_in_float16(model: keras.Model) -> bool:
    """Whether a layer of `model` computes in float16 (a `mixed_float16` policy): loss scaling is then on."""
    return any(layer.compute_dtype == "float16" for layer in model._flatten_layers(include_self=False))


def cast_floats(structure, dtype):
    def cast(t):
        return tf.cast(t, dtype) if t.dtype.is_floating and t.dtype != dtype else t
    return tf.nest.map_structure(cast, structure)


def as_float_tensor(value, what: str, expected: str = "a float tensor"):
    """`value` as a float tensor, or `ValueError` saying that `what` must return `expected` (at trace time)."""
    try:
        value = tf.convert_to_tensor(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must return {expected}; it returned {type(value).__name__} {value!r:.60}.") from None
    if not value.dtype.is_floating:
        raise ValueError(f"{what} must return {expected}; it returned dtype {value.dtype.name}.")
    return value


def check_scalar(value, what: str):
    """Raises `ValueError` at trace time unless `value` is a scalar float tensor."""
    value = as_float_tensor(value, what, "a scalar float tensor per task")
    if value.shape.rank not in (0, None):
        raise ValueError(f"{what} must return one scalar per task; it returned shape {tuple(value.shape)}. "
                         "Reduce over the examples (e.g. tf.reduce_mean).")
    return value


def check_labels(outputs, labels) -> None:
    """Raises `ValueError` for labels of the outputs' rank but another shape, which a loss would broadcast
    silently (labels of another rank, e.g. sparse class ids, are the loss's business)."""
    if not (isinstance(outputs, tf.Tensor) and hasattr(labels, "shape")):
        return
    out, lab = outputs.shape, tf.TensorShape(labels.shape)
    if out.rank is not None and out.rank == lab.rank and not out.is_compatible_with(lab):
        raise ValueError(f"Labels of shape {lab.as_list()} do not match the model's outputs {out.as_list()}: the loss "
                         f"would broadcast them. Give labels shaped like the outputs (last axis {out[-1]}).")


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
    support_x = gather_tasks(support_x)  # Distributed: the whole meta-batch's, on every replica.
    flat = tf.nest.map_structure(lambda t: tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], 0)), support_x)
    weights = [tf.convert_to_tensor(v) for v in model.trainable_variables]
    _, updated = model.stateless_call(weights, current_non_trainable(model), flat,
                                      **training_kwargs(model, training))
    for var, value in zip(model.non_trainable_variables, updated):
        if not is_seed_state(var):
            assign(var, value)
