"""Every task of a meta-batch through the network at once, each task with its own weights.

`TaskBatchedNetwork(model)` runs a Keras model that is a chain of the layers
below for T tasks in one pass, where the per-task loop of `tf.map_fn` would
run T small passes. Weights are held in a *task layout*: T copies side by side.

* Convolutional stage ("grouped" layout): activations are `[N, H, W, T*C]`,
  the tasks' channels side by side; a conv kernel `[kh, kw, C_in, T*C_out]`
  with T groups is T independent convolutions; batch-norm moments over
  `(N, H, W)` are per task and channel; pooling and activations act per
  channel. Biases and norm parameters are `[T*C]`.
* Dense stage ("task" layout): activations are `[T, N, F]`; a dense kernel is
  `[T, F, O]` (a batched matmul); biases and norm parameters are `[T, F]`.

Both are exactly the per-task computation (same operations, same order of the
reductions' axes), so every derivative matches the per-task path up to float
rounding; `tests/test_batched.py` checks outputs, inner gradients and
meta-gradients against `functional_call` per task.

Supported layers: Conv2D (channels-last, no dilation or groups),
Dense (on `[batch, features]`), BatchNormTF1, LayerNormTF1, MaxPooling2D,
AveragePooling2D, GlobalAveragePooling2D, Flatten, and the elementwise
activation layers (ReLU, LeakyReLU, ELU, Activation). Under a mixed
precision policy, dense layers run in their compute dtype (float16) and
normalisation moments in float32; convolutions must compute in float32
(TensorFlow's CPU kernels differentiate grouped convolutions in float32 only,
and the float16 grouped path is untested on GPUs). `unsupported_reason` says
why another model is not supported, and the algorithms then fall back to the
per-task loop.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import keras
import tensorflow as tf

from maml_tf.networks import BatchNormTF1, LayerNormTF1, exact_normalize

_ELEMENTWISE = (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU, keras.layers.Activation)
_POOLING = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
_NORMS = (BatchNormTF1, LayerNormTF1)
_SUPPORTED = (keras.layers.Conv2D, keras.layers.Dense, keras.layers.Flatten,
              keras.layers.GlobalAveragePooling2D) + _ELEMENTWISE + _POOLING + _NORMS


def chain_layers(model: keras.Model) -> Optional[list]:
    """The model's layers in order if each takes the previous one's single output, else None."""
    if isinstance(model, keras.Sequential):
        return list(model.layers)
    if type(model) is not keras.Model and type(model).__name__ != "Functional":
        return None  # Subclassed: its call() is arbitrary code.
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return None
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    previous = model.inputs[0]
    for layer in layers:
        nodes = layer._inbound_nodes
        if len(nodes) != 1 or len(nodes[0].input_tensors) != 1 or nodes[0].input_tensors[0] is not previous:
            return None
        previous = layer.output
    return layers if previous is model.outputs[0] else None


def unsupported_reason(model: keras.Model, grouped_convolutions: bool = True) -> Optional[str]:
    """Why `model` cannot run task-batched (None if it can). `grouped_convolutions=False`: whether it is a chain
    of these layers at all, for a per-task pass (K-FAC's), without the grouped convolutions' dtype limit."""
    layers = chain_layers(model)
    if layers is None:
        return "it is not a single-input chain of layers (Sequential or linear functional model)"
    if model.non_trainable_variables:
        return "it has non-trainable state"
    for layer in layers:
        if not isinstance(layer, _SUPPORTED):
            return f"layer {layer.name!r} ({type(layer).__name__}) has no task-batched form"
        if isinstance(layer, keras.layers.Conv2D) and (
                layer.data_format != "channels_last" or tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1):
            return f"conv layer {layer.name!r} is not a plain channels-last convolution"
        if grouped_convolutions and isinstance(layer, keras.layers.Conv2D) and layer.compute_dtype != "float32":
            # TensorFlow's CPU kernels differentiate grouped convolutions in float32 only (oneDNN).
            return f"conv layer {layer.name!r} computes in {layer.compute_dtype}, not float32"
        if isinstance(layer, _POOLING + (keras.layers.GlobalAveragePooling2D,)) and \
                layer.data_format != "channels_last":
            return f"pooling layer {layer.name!r} is not channels-last"
        if isinstance(layer, keras.layers.GlobalAveragePooling2D) and layer.keepdims:
            return f"layer {layer.name!r} keeps dims"
        if isinstance(layer, keras.layers.Dense) and len(layer.input.shape) != 2:
            return f"dense layer {layer.name!r} is applied to a rank-{len(layer.input.shape)} input"
        if isinstance(layer, keras.layers.Conv2D) and len(layer.input.shape) != 4:
            return f"conv layer {layer.name!r} is applied to a rank-{len(layer.input.shape)} input"
    return None


class TaskBatchedNetwork:
    """Runs a supported Keras model (see `unsupported_reason`) for a whole meta-batch with per-task weights.

    Args:
      model: the built Keras model; weights lists are aligned with its
        `trainable_variables`.
    """

    def __init__(self, model: keras.Model):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"Model {model.name!r} cannot run task-batched: {reason}.")
        self.model = model
        self.layers = chain_layers(model)
        self.convolutional = any(isinstance(layer, keras.layers.Conv2D) for layer in self.layers)
        index = {id(v): i for i, v in enumerate(model.trainable_variables)}
        # Per layer: the indices of its weights; per weight: grouped (conv stage) or task layout.
        self.weight_indices: List[List[int]] = []
        self.grouped = [False] * len(model.trainable_variables)
        grouped = False
        for layer in self.layers:
            if isinstance(layer, keras.layers.Conv2D):
                grouped = True
            elif isinstance(layer, (keras.layers.Flatten, keras.layers.GlobalAveragePooling2D, keras.layers.Dense)):
                grouped = False
            elif isinstance(layer, _NORMS):
                grouped = len(layer.input.shape) == 4  # Images (also before any conv) or features.
            ids = [index[id(v)] for v in layer.trainable_variables]
            for i in ids:
                self.grouped[i] = grouped
            self.weight_indices.append(ids)

    # ---------------------------------------------------------- weight layout
    def per_task(self, weights: Sequence, num_tasks, indices: Optional[Sequence[int]] = None) -> list:
        """The same weights for each of `num_tasks` tasks, in task layout.

        `indices`: which of the model's trainable variables `weights` align with (default: all of them);
        tensors of those variables' shapes (e.g. per-parameter step sizes) take their layout.
        """
        indices = range(len(self.grouped)) if indices is None else indices
        out = []
        for w, grouped in zip(weights, [self.grouped[i] for i in indices]):
            if grouped:  # Last axis: T blocks, task-major.
                out.append(tf.tile(w, tf.concat([tf.ones([w.shape.rank - 1], tf.int32), [num_tasks]], 0)))
            else:
                out.append(tf.tile(w[None], tf.concat([[num_tasks], tf.ones([w.shape.rank], tf.int32)], 0)))
        return out

    def task_weights(self, weights: Sequence, task: int, num_tasks: int) -> list:
        """Task `task`'s weights in the model's own layout, from task-layout `weights` of `num_tasks` tasks."""
        out = []
        for w, grouped in zip(weights, self.grouped):
            size = w.shape[-1] // num_tasks
            out.append(w[..., task * size:(task + 1) * size] if grouped else w[task])
        return out

    # ---------------------------------------------------------------- forward
    def __call__(self, weights: Sequence, x, differentiated_once: bool = False):
        """Outputs `[T, N, ...]` of task t's weights on `x[t]` for each task.

        Args:
          weights: task-layout weights (see `per_task`), aligned with
            `model.trainable_variables`.
          x: inputs `[T, N, ...]`.
          differentiated_once: the caller differentiates this pass at most
            once: batch norm may use the fused kernel (`exact_normalize`).
        """
        num_tasks = x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]
        h, grouped = x, False
        for layer, ids in zip(self.layers, self.weight_indices):
            h, grouped = _apply(layer, [weights[i] for i in ids], h, grouped, num_tasks, differentiated_once)
        h = _to_tasks(h, num_tasks) if grouped else h
        return tf.cast(h, weights[0].dtype)  # Mixed precision: outputs in the variables' dtype, as `forward`.


def _apply(layer, params, h, grouped: bool, num_tasks, fused: bool = False):
    """One layer on activations in the current layout; returns `(outputs, grouped)`."""
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):  # In the layer's compute dtype.
        h, params = tf.cast(h, layer.compute_dtype), [tf.cast(p, layer.compute_dtype) for p in params]
    if isinstance(layer, keras.layers.Conv2D):
        h = h if grouped else _to_grouped(h)
        h = tf.nn.conv2d(h, params[0], list(layer.strides), layer.padding.upper())  # T groups
        if layer.use_bias:
            h = h + params[1]
        return layer.activation(h), True
    if isinstance(layer, _POOLING):
        return layer(h if grouped else _to_grouped(h)), True
    if isinstance(layer, _ELEMENTWISE):
        return layer(h), grouped
    if isinstance(layer, keras.layers.GlobalAveragePooling2D):
        h = h if grouped else _to_grouped(h)
        return _to_tasks(tf.reduce_mean(h, axis=[1, 2]), num_tasks), False  # [T, N, C]
    if isinstance(layer, keras.layers.Flatten):
        h = _to_tasks(h, num_tasks) if grouped else h
        return tf.reshape(h, tf.concat([tf.shape(h)[:2], [-1]], 0)), False  # [T, N, H*W*C]
    if isinstance(layer, keras.layers.Dense):
        h = tf.matmul(h, params[0])  # [T, N, F] @ [T, F, O]
        if layer.use_bias:
            h = h + params[1][:, None, :]
        return layer.activation(h), False
    if isinstance(layer, _NORMS) and not grouped and h.shape.rank == 5:
        h, grouped = _to_grouped(h), True  # Images before any conv.
    if isinstance(layer, BatchNormTF1):
        if grouped:  # [N, H, W, T*C]: moments over (N, H, W) of each task's channel.
            return exact_normalize(h, list(range(h.shape.rank - 1)), layer.epsilon, params[0], fused=fused), True
        # [T, N, F]: over N.
        return exact_normalize(h, list(range(1, h.shape.rank - 1)), layer.epsilon, params[0][:, None, :],
                              fused=fused), False
    if isinstance(layer, LayerNormTF1):
        beta, gamma = params
        if grouped:  # [N, H, W, T, C]: moments over (H, W, C) of each example and task.
            split = tf.reshape(h, tf.concat([tf.shape(h)[:-1], [num_tasks, -1]], 0))
            channels = split.shape[-1]
            out = exact_normalize(split, [1, 2, 4], layer.epsilon, tf.reshape(beta, [-1, channels]),
                                  tf.reshape(gamma, [-1, channels]))
            return tf.reshape(out, tf.shape(h)), True
        # [T, N, F]: over F.
        return exact_normalize(h, [2], layer.epsilon, beta[:, None, :], gamma[:, None, :]), False
    raise TypeError(f"Unsupported layer {layer.name!r}.")  # Excluded by unsupported_reason.


def _to_grouped(h):
    """`[T, N, H, W, C]` -> `[N, H, W, T*C]`."""
    g = tf.transpose(h, [1, 2, 3, 0, 4])
    return tf.reshape(g, tf.concat([tf.shape(g)[:3], [-1]], 0))


def _to_tasks(h, num_tasks):
    """`[N, ..., T*C]` -> `[T, N, ..., C]`."""
    split = tf.reshape(h, tf.concat([tf.shape(h)[:-1], [num_tasks, -1]], 0))
    rank = split.shape.rank
    return tf.transpose(split, [rank - 2] + list(range(rank - 2)) + [rank - 1])
