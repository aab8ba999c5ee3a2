"""One way to run a Keras model with other weights: `functional_call`.

Every inner loop of every algorithm runs the model through `functional_call`,
built on Keras 3 `model.stateless_call`. Weights are passed as a list aligned
with `model.trainable_variables`; `ParameterSplit` says explicitly which of them
are adapted in the inner loop (fast weights) and which are only meta-learned
(by default the normalisation parameters, as in the original code, where the
inner update touches only the weight dictionary).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Callable, List, Optional, Sequence

import keras
import tensorflow as tf

from maml_tf import networks
from maml_tf.batched import TaskBatchedNetwork


def check_weights(model: keras.Model, weights: Sequence) -> None:
    """Raises `ValueError` unless `weights` fits `model.trainable_variables`.

    Runs at trace time (static shapes), so it costs nothing per step.
    """
    variables = model.trainable_variables
    if len(weights) != len(variables):
        raise ValueError(
            f"Model {model.name!r} has {len(variables)} trainable variables but {len(weights)} weights were "
            "given; pass one tensor per entry of model.trainable_variables, in that order.")
    for i, (w, v) in enumerate(zip(weights, variables)):
        if not tf.TensorShape(w.shape).is_compatible_with(v.shape):
            raise ValueError(
                f"Weight {i} for variable {v.path!r} has shape {tuple(w.shape)}, expected {tuple(v.shape)}.")


def functional_call(model: keras.Model, weights: Sequence, inputs, training: bool = True,
                    non_trainable: Optional[Sequence] = None, *, step=None, condition=None,
                    differentiated_once: bool = False, task_layout: bool = False):
    """Runs `model(inputs)` with `weights` in place of its trainable variables.

    Args:
      model: a built Keras 3 model.
      weights: tensors aligned with `model.trainable_variables` (differentiable).
      inputs: model inputs.
      training: Keras training flag (honoured by dropout; the TF1 batch norm
        always uses batch statistics).
      non_trainable: values for `model.non_trainable_variables` (default: their
        current values).
      step: the 0-based inner step, passed as `model.call(..., step=step)` to
        a model whose `call` takes it (per-step batch norm); ignored otherwise.
      condition: a conditioning input, passed as `model.call(..., condition=...)`
        (FiLM modulation from a task encoder); the model's `call` must take it.
      differentiated_once: the caller takes at most a first derivative through
        this pass (MAML's query pass), so batch norm may run TensorFlow's fused
        kernel, whose second derivative is inexact (`networks.exact_normalize`).
        Only this call's trace is affected.
      task_layout: `weights` hold one copy per task and `inputs` a leading
        task axis `[T, N, ...]`: every task runs at once, each with its own
        weights (`maml_tf.batched.TaskBatchedNetwork`; the model must be a
        supported chain of layers, `maml_tf.batched.unsupported_reason`).

    Returns:
      The model outputs (`[T, N, ...]` in task layout).
    """
    if task_layout:
        if step is not None and takes_argument(model, "step") or condition is not None:
            raise ValueError("A step-aware or conditioned model cannot run in task layout.")
        return task_batched_network(model)(weights, inputs, differentiated_once=differentiated_once)
    check_weights(model, weights)
    if non_trainable is None:
        non_trainable = current_non_trainable(model, fresh_seeds=training)
    kwargs = training_kwargs(model, training)
    if step is not None and takes_argument(model, "step"):
        kwargs["step"] = step
    if condition is not None:
        if not takes_argument(model, "condition"):
            raise ValueError(f"A condition was given but {type(model).__name__}.call takes no `condition` argument.")
        kwargs["condition"] = condition
    with networks.differentiated_once() if differentiated_once else contextlib.nullcontext():
        outputs, _ = model.stateless_call(list(weights), list(non_trainable), inputs, **kwargs)
    return outputs


def task_batched_network(model: keras.Model):
    """The task-layout form of `model` (built once per model)."""
    network = getattr(model, "_maml_tf_task_batched", None)
    if network is None:
        network = TaskBatchedNetwork(model)
        object.__setattr__(model, "_maml_tf_task_batched", network)  # Not tracked by Keras.
    return network


def takes_argument(model: keras.Model, name: str) -> bool:
    """Whether `model.call` has a parameter `name` (explicitly, not through `**kwargs`)."""
    return name in inspect.signature(model.call).parameters


def training_kwargs(model: keras.Model, training: bool) -> dict:
    """`{'training': training}` if `model.call` takes it (a subclassed model may not, and `stateless_call`
    passes its keyword arguments on unchecked)."""
    params = inspect.signature(model.call).parameters
    takes = "training" in params or any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {"training": training} if takes else {}


def is_seed_state(v) -> bool:
    """Whether `v` is the state of a Keras seed generator (dropout and other random layers)."""
    return v.path.endswith("seed_generator_state")


def current_non_trainable(model: keras.Model, fresh_seeds: bool = True) -> list:
    """Values of `model.non_trainable_variables` for a stateless call.

    With `fresh_seeds`, the states of Keras seed generators (dropout and other
    random layers) are replaced by fresh random seeds: a stateless call never
    advances them, so without this every call would reuse one dropout mask.
    """
    values = []
    for v in model.non_trainable_variables:
        if fresh_seeds and is_seed_state(v):
            values.append(tf.random.uniform(v.shape, minval=0, maxval=2 ** 62, dtype=tf.int64))
        else:
            values.append(v.value)
    return values


def _is_normalization_variable(model: keras.Model) -> Callable:
    owned = set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if networks.is_normalization(layer):
            owned.update(id(v) for v in layer.trainable_variables)
    return lambda v: id(v) in owned


class ParameterSplit:
    """Which trainable variables are adapted in the inner loop.

    Args:
      model: the Keras model.
      adapt: a predicate on a variable (True: adapted in the inner loop), or a
        list of booleans aligned with `model.trainable_variables`. Default:
        everything except normalisation parameters, as in the original.
    """

    def __init__(self, model: keras.Model, adapt=None):
        variables = model.trainable_variables
        if not model.built:
            raise ValueError(f"Model {model.name!r} is not built: call it once on a batch or give keras.Input shapes.")
        if not variables:
            raise ValueError(f"Model {model.name!r} has no trainable variables: build it (call it once or give "
                             "keras.Input shapes) and make sure some layers are trainable.")
        if adapt is None:
            is_norm = _is_normalization_variable(model)
            mask = [not is_norm(v) for v in variables]
        elif callable(adapt):
            mask = [bool(adapt(v)) for v in variables]
        else:
            mask = [bool(a) for a in adapt]
            if len(mask) != len(variables):
                raise ValueError(f"adapt has {len(mask)} entries but the model has {len(variables)} trainable "
                                 "variables.")
        if not any(mask):
            raise ValueError("No variable is adapted in the inner loop; check the `adapt` selection.")
        self.mask: List[bool] = mask
        self.adapted_indices = [i for i, a in enumerate(mask) if a]

    def adapted(self, weights: Sequence) -> list:
        """The adapted entries of a full weight list."""
        return [weights[i] for i in self.adapted_indices]

    def replace(self, weights: Sequence, adapted: Sequence) -> list:
        """A full weight list with the adapted entries replaced."""
        out = list(weights)
        for i, w in zip(self.adapted_indices, adapted):
            out[i] = w
        return out
