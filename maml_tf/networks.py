"""The original MAML networks as Keras 3 models, with the original initialisers.

Registry `NETWORKS` maps a name to a builder; `build_network(config)` picks the
one the original would build for the flags (`fc` for sinusoid or `--conv=False`,
`conv` otherwise). Normalisation layers reproduce TF1 `tf.contrib.layers`
semantics with exact derivatives of every order:

* `BatchNormTF1`: batch statistics on every call (training and test alike, so
  evaluation is transductive as in the original), learned offset only, epsilon
  1e-3, no moving averages. The variance is the mean of the squared *centred*
  values with no stop-gradient on the mean. Keras' `BatchNormalization` (via
  `tf.nn.moments`) stops the gradient of the mean inside the variance; first
  derivatives agree, second derivatives do not, and the MAML meta-gradient
  would be wrong by up to several times.
* `LayerNormTF1`: normalise over all axes but the batch axis, offset and scale of
  size channels, epsilon 1e-12, same exact moments.

Both go through `exact_normalize`; inside a `tf.function` its first
derivative is the closed-form batch-norm gradient, itself differentiable
(fewer passes over the activations than automatic differentiation of the
forward ops; batch norm's second derivative is a closed form too), and in
a pass its caller declares differentiated once (`functional_call(...,
differentiated_once=True)`: MAML's query passes) batch norm runs
TensorFlow's fused kernel.

Each layer is named after the original variable scope so that TF1 checkpoints
map onto it by name (`original_variable_names`).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Dict, List, Sequence

import keras
import tensorflow as tf

from maml_tf.config import Config
from maml_tf.data import DATASOURCES


# --------------------------------------------------------------- normalisation
def exact_normalize(x: tf.Tensor, axes: Sequence[int], epsilon: float, offset, scale=None,
                    fused: bool = False) -> tf.Tensor:
    """`(x - mean) / sqrt(variance + epsilon) * scale + offset` with moments over `axes`.

    The derivatives of every order are exact: the variance is the mean square of
    the centred values with no stop-gradient on the mean (unlike `tf.nn.moments`).
    Centred first, as `tf.nn.batch_normalization`'s `x * inv + (offset - mean * inv)`
    cancels catastrophically in float32 when |mean| >> std (conv outputs), which
    costs the meta-gradient two to three significant digits. Low-precision inputs
    (mixed precision) are normalised in float32, as Keras' normalisation layers
    do, and cast back.

    Inside a `tf.function` the first derivative is the closed form of
    `_normalize_closed_form`, built from ops the enclosing tapes record, so
    higher derivatives stay exact; eagerly (where `tf.custom_gradient` stops the
    tapes during the forward pass) it is plain automatic differentiation.

    `fused`: the caller differentiates this pass at most once (see
    `differentiated_once`), so batch norm may run TensorFlow's fused kernel.
    """
    x32 = at_least_float32(x)
    params = [tf.cast(offset, x32.dtype)] + ([] if scale is None else [tf.cast(scale, x32.dtype)])
    if tf.executing_eagerly():
        y = _normalize_autodiff(x32, axes, epsilon, *params)
    elif (fused or _differentiated_once.depth) and _fusable(x32, axes, params):
        y = _fused_batch_norm(x32, epsilon, params[0])
    else:
        y = _normalize_closed_form(x32, tuple(axes), epsilon, *params)
    return tf.cast(y, x.dtype)


class _DifferentiatedOnce(threading.local):
    depth = 0


_differentiated_once = _DifferentiatedOnce()


@contextlib.contextmanager
def differentiated_once():
    """Declares that the forward passes traced inside are differentiated at most once, for a final gradient.

    Entered by `functional_call(..., differentiated_once=True)` around that
    one call; the task-batched network passes `fused=` to `exact_normalize`
    directly. MAML's query pass is one: the outer tape takes the first
    derivative of the query loss with respect to the fast weights (the
    second-order terms come from the support passes), and that is the
    meta-gradient. Batch norm over every axis but the channels (float32) then
    runs TensorFlow's fused kernel (`FusedBatchNormV3`): faster, but its
    derivative's derivative is not exact and its float32 reductions are less
    accurate, so only query passes use it, where the meta-gradient's float32
    error stayed within its own noise on the golden files (measurements:
    benchmarks/results/notes-2026-11.md). A higher derivative taken through a
    pass traced here would be wrong.
    """
    _differentiated_once.depth += 1
    try:
        yield
    finally:
        _differentiated_once.depth -= 1


def _fusable(x, axes, params) -> bool:
    """Batch norm (an offset, no scale) over every axis but the last of a rank-2 or rank-4 float32 tensor."""
    rank = x.shape.rank
    return (len(params) == 1 and params[0].shape.rank == 1 and x.dtype == tf.float32 and rank in (2, 4)
            and list(axes) == list(range(rank - 1)) and x.shape[-1] is not None)


def _fused_batch_norm(x, epsilon, offset):
    channels = x.shape[-1]
    x4 = x if x.shape.rank == 4 else tf.reshape(x, [-1, 1, 1, channels])
    empty = tf.zeros([0], x.dtype)
    y = tf.raw_ops.FusedBatchNormV3(x=x4, scale=tf.ones([channels], x.dtype), offset=offset, mean=empty,
                                    variance=empty, epsilon=epsilon, is_training=True)[0]
    return y if x.shape.rank == 4 else tf.reshape(y, tf.shape(x))


def _normalize_autodiff(x, axes, epsilon, offset, scale=None):
    """`exact_normalize` differentiated by the tapes, op by op. The centred tensor is
    computed once and serves the variance and the output (computing it twice costs
    time and memory on large activations)."""
    centred, inv = _centred_and_inverse_std(x, axes, epsilon)
    y = centred * inv
    return (y if scale is None else y * scale) + offset


def _centred_and_inverse_std(x, axes, epsilon):
    centred = x - tf.reduce_mean(x, axis=axes, keepdims=True)
    variance = tf.reduce_mean(tf.square(centred), axis=axes, keepdims=True)
    return centred, tf.math.rsqrt(variance + epsilon)


def _normalize_closed_form(x, axes, epsilon, offset, *scale):
    """`exact_normalize` with the textbook batch-norm gradient
    `dx = inv * (g - mean(g) - xhat * mean(g * xhat))`, `g = dy * scale`.

    Automatic differentiation of the forward ops takes more passes over the
    activations (a reduction for every broadcast: offset, the mean in the
    centring, the variance in the scaling, the mean of the square), and the
    MiniImagenet step is faster with this (benchmarks/results/notes-2026-11.md).
    The gradient function uses the normalised `xhat` and `inv` of the forward
    pass; in graph mode `tf.custom_gradient` records the forward ops on the
    enclosing tapes, so an outer tape differentiates the gradient through
    `xhat` and `inv` back to `x`: second and higher derivatives are exact.
    """

    @tf.custom_gradient
    def normalize(x, offset, *scale):
        centred, inv = _centred_and_inverse_std(x, axes, epsilon)
        xhat = centred * inv
        y = (xhat if not scale else xhat * scale[0]) + offset

        def grad(dy):
            count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), x.dtype)
            if not scale and _broadcast_axes(x, offset) == sorted(axes):  # Batch norm.
                dx, sum_g = _batch_norm_backward(dy, x, xhat, inv, axes, count)
                return dx, tf.reshape(sum_g, tf.shape(offset))
            g = dy if not scale else dy * scale[0]
            sum_g = tf.reduce_sum(g, axis=axes, keepdims=True)
            mean_gx = tf.reduce_sum(g * xhat, axis=axes, keepdims=True) / count
            dx = inv * (g - sum_g / count - xhat * mean_gx)
            return (dx, _sum_to(dy, offset)) + ((_sum_to(dy * xhat, scale[0]),) if scale else ())

        return y, grad

    return normalize(x, offset, *scale)


def _batch_norm_backward(dy, x, xhat, inv, axes, count):
    """`(dx, sum(dy))` of batch norm without a scale, with a closed-form derivative of its own.

    `dx = inv * (dy - a - xhat * b)`, `a = mean(dy)`, `b = mean(dy * xhat)` over
    `axes`. Its derivative, for upstream `h` on `dx` and `s` on `sum(dy)`, with
    `m = mean(h)`, `d = mean(h * xhat)`, `e = mean(h * dy)`:

        d/d dy = inv * (h - m - xhat * d) + s
        d/d x  = -inv^2 * (b * (h - m) + d * (dy - a) + xhat * (e - m * a - 3 * b * d))

    (differentiating `dx` through `xhat` and `inv`, whose own derivatives are the
    batch-norm backward pass; `mean(xhat) = 0`). Automatic differentiation of
    the first derivative's ops takes more passes over the activations, and the
    MiniImagenet step is faster with this (benchmarks/results/notes-2026-11.md).
    The derivative is built from ops the enclosing tapes record, through `xhat`
    and `inv`, so third and higher derivatives stay exact.
    """

    @tf.custom_gradient
    def backward(dy, x):  # `x` is an input for its gradient only: `xhat` and `inv` carry its values.
        sum_g = tf.reduce_sum(dy, axis=axes, keepdims=True)
        a = sum_g / count
        b = tf.reduce_sum(dy * xhat, axis=axes, keepdims=True) / count
        dx = inv * (dy - a - xhat * b)

        def grad(h, s):
            m = tf.reduce_sum(h, axis=axes, keepdims=True) / count
            d = tf.reduce_sum(h * xhat, axis=axes, keepdims=True) / count
            e = tf.reduce_sum(h * dy, axis=axes, keepdims=True) / count
            d_dy = inv * (h - xhat * d) + (s - inv * m)
            inv2 = tf.square(inv)
            # Per-channel coefficients first: one pass over the activations per term.
            d_x = inv2 * (b * m + d * a) - (inv2 * b) * h - (inv2 * d) * dy \
                - (inv2 * (e - m * a - 3 * b * d)) * xhat
            return d_dy, d_x

        return (dx, sum_g), grad

    return backward(dy, x)


def _broadcast_axes(x, param):
    """The axes of `x` that broadcasting `param` (static shape) against it repeats."""
    rank, shape = x.shape.rank, param.shape.as_list()
    lead = rank - len(shape)
    return list(range(lead)) + [lead + i for i, d in enumerate(shape) if d == 1]


def _sum_to(t, param):
    """The gradient of `param` broadcast to `t`'s shape: `t` summed over the broadcast axes."""
    return tf.reshape(tf.reduce_sum(t, axis=_broadcast_axes(t, param)), tf.shape(param))


def at_least_float32(x):
    return tf.cast(x, tf.float32) if x.dtype in (tf.float16, tf.bfloat16) else x


@keras.saving.register_keras_serializable(package="maml_tf")
class BatchNormTF1(keras.layers.Layer):
    """`tf.contrib.layers.batch_norm` as the original MAML code uses it.

    Always normalises with the statistics of the current batch (over every axis
    but the last), learns an offset `beta` but no scale, epsilon 1e-3.
    """

    def __init__(self, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        self.beta = self.add_weight(name="beta", shape=(input_shape[-1],), initializer="zeros")

    def call(self, x, training=None):
        del training  # Batch statistics always, as the original.
        return exact_normalize(x, list(range(len(x.shape) - 1)), self.epsilon, self.beta)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="maml_tf")
class LayerNormTF1(keras.layers.Layer):
    """`tf.contrib.layers.layer_norm` with its defaults (epsilon 1e-12)."""

    def __init__(self, epsilon: float = 1e-12, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        self.beta = self.add_weight(name="beta", shape=(input_shape[-1],), initializer="zeros")
        self.gamma = self.add_weight(name="gamma", shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return exact_normalize(x, list(range(1, len(x.shape))), self.epsilon, self.beta, self.gamma)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


# Normalisation layers (their parameters do not adapt in MAML's inner loop); a layer of another module declares
# itself one with a class attribute `normalizes = True` (MAML++'s `PerStepBatchNorm`).
NORMALIZATION_LAYERS = (BatchNormTF1, LayerNormTF1, keras.layers.BatchNormalization, keras.layers.LayerNormalization,
                        keras.layers.GroupNormalization)


def is_normalization(layer) -> bool:
    """Whether `layer` normalises (`NORMALIZATION_LAYERS`, or a layer that declares `normalizes`)."""
    return isinstance(layer, NORMALIZATION_LAYERS) or getattr(type(layer), "normalizes", False)


def _norm_layer(norm: str, scope: str, dtype):
    if norm == "batch_norm":
        return BatchNormTF1(name=f"norm{scope}", dtype=dtype)
    if norm == "layer_norm":
        return LayerNormTF1(name=f"norm{scope}", dtype=dtype)
    return None


# ------------------------------------------------------------------- networks
def build_fc(input_shape, dim_output: int, hidden: Sequence[int], norm: str, dtype="float32",
             kernel_initializer=None, bias_initializer="zeros") -> keras.Model:
    """The original `construct_fc_weights`/`forward_fc`.

    Dense layers with truncated-normal (stddev 0.01) weights and zero biases,
    normalisation + ReLU after each hidden layer. Image inputs are flattened.
    The normalisation scopes are `0, 2, 3, ...` as in the original.

    Args:
      input_shape: shape of one example (without batch axis).
      dim_output: output units.
      hidden: hidden layer sizes.
      norm: 'batch_norm', 'layer_norm' or 'None'.
      dtype: variable and compute dtype, or a Keras dtype policy name
        (e.g. 'mixed_float16': float32 variables, float16 computation).
      kernel_initializer, bias_initializer: another initialisation (BMAML's
        particles: Glorot-normal kernels, N(0, 0.01) biases); default the original's.

    Returns:
      A built `keras.Model`.
    """
    init = kernel_initializer or keras.initializers.TruncatedNormal(stddev=0.01)
    inputs = keras.Input(shape=tuple(input_shape), dtype=keras.DTypePolicy(dtype).variable_dtype)
    h = inputs
    if len(input_shape) > 1:
        h = keras.layers.Flatten(dtype=dtype)(h)
    for i, units in enumerate(hidden):
        h = keras.layers.Dense(units, kernel_initializer=init, bias_initializer=bias_initializer, name=f"dense{i + 1}",
                               dtype=dtype)(h)
        layer = _norm_layer(norm, "0" if i == 0 else str(i + 1), dtype)
        if layer is not None:
            h = layer(h)
        h = keras.layers.ReLU(dtype=dtype)(h)
    out = keras.layers.Dense(dim_output, kernel_initializer=init, bias_initializer=bias_initializer,
                             name=f"dense{len(hidden) + 1}", dtype=dtype)(h)
    return keras.Model(inputs, out, name="fc")


def build_conv(input_shape, dim_output: int, num_filters: int, norm: str, max_pool: bool,
               head: str, dtype="float32") -> keras.Model:
    """The original `construct_conv_weights`/`forward_conv`.

    Four blocks of 3x3 conv (Glorot-uniform kernels, zero biases) ->
    normalisation -> ReLU, either stride-2 SAME convs or stride-1 SAME convs
    followed by 2x2 VALID max-pooling. Head 'mean' (Omniglot): spatial mean and
    a dense layer with N(0, 1) weights; head 'flatten' (MiniImagenet): flatten
    and a Glorot-uniform dense layer.

    Returns:
      A built `keras.Model`.
    """
    inputs = keras.Input(shape=tuple(input_shape), dtype=keras.DTypePolicy(dtype).variable_dtype)
    h = inputs
    for i in range(4):
        h = keras.layers.Conv2D(num_filters, 3, strides=1 if max_pool else 2, padding="same",
                                kernel_initializer="glorot_uniform", name=f"conv{i + 1}", dtype=dtype)(h)
        layer = _norm_layer(norm, str(i), dtype)
        if layer is not None:
            h = layer(h)
        h = keras.layers.ReLU(dtype=dtype)(h)
        if max_pool:
            h = keras.layers.MaxPooling2D(2, 2, padding="valid", dtype=dtype)(h)
    if head == "mean":
        h = keras.layers.GlobalAveragePooling2D(dtype=dtype)(h)
        dense_init = keras.initializers.RandomNormal(stddev=1.0)
    elif head == "flatten":
        h = keras.layers.Flatten(dtype=dtype)(h)
        dense_init = "glorot_uniform"
    else:
        raise ValueError(f"Unknown conv head {head!r}; use 'mean' or 'flatten'.")
    out = keras.layers.Dense(dim_output, kernel_initializer=dense_init, name="dense5", dtype=dtype)(h)
    return keras.Model(inputs, out, name="conv")


def input_shape(config: Config):
    if config.baseline == "oracle":
        return (3,)  # x, amplitude, phase.
    return DATASOURCES[config.datasource].input_shape


def _fc_from_config(config: Config, dtype):
    return build_fc(input_shape(config), config.num_ways, list(config.network_spec.fc_hidden), config.norm, dtype)


def _conv_from_config(config: Config, dtype):
    return build_conv(input_shape(config), config.num_ways, config.num_filters, config.norm,
                      config.max_pool, config.network_spec.conv_head, dtype)


NETWORKS: Dict[str, Callable[[Config, str], keras.Model]] = {"fc": _fc_from_config, "conv": _conv_from_config}


def network_name(config: Config) -> str:
    """Which network the original builds for these flags."""
    return "conv" if config.classification and config.conv else "fc"


def build_network(config: Config, dtype=None) -> keras.Model:
    """Builds the original network for `config` (see `network_name`).

    `dtype`: a dtype or Keras dtype policy name; default float32, or
    'mixed_float16' with `config.mixed_precision`.
    """
    dtype = dtype or ("mixed_float16" if config.mixed_precision else "float32")
    return NETWORKS[network_name(config)](config, dtype)


# ------------------------------------------------- original TF1 variable names
def original_variable_names(model: keras.Model) -> List[str]:
    """The original TF1 name of each of `model.trainable_variables`, in order.

    Conv net: `model/conv1..4`, conv biases `model/Variable`, `model/Variable_1..3`,
    `model/w5`, `model/b5`, norm params `model/{0..3}/beta|gamma`. FC net: the
    unnamed `tf.Variable`s `model/Variable`, `model/Variable_1`, ... in the
    order w1, b1, w2, b2, ..., norm params `model/{scope}/beta|gamma`.
    """
    names = []
    conv = any(isinstance(layer, keras.layers.Conv2D) for layer in model.layers)
    for var in model.trainable_variables:
        layer_name, weight = var.path.split("/")[-2:]
        if layer_name.startswith("norm"):
            names.append(f"model/{layer_name[4:]}/{weight}")
        elif conv and layer_name.startswith("conv"):
            i = int(layer_name[4:])
            names.append(f"model/conv{i}" if weight == "kernel" else _unnamed(i - 1))
        elif conv and layer_name == "dense5":
            names.append("model/w5" if weight == "kernel" else "model/b5")
        elif layer_name.startswith("dense"):
            i = int(layer_name[5:])
            names.append(_unnamed(2 * (i - 1) + (weight == "bias")))
        else:
            raise ValueError(f"Variable {var.path} has no counterpart in the original code.")
    return names


def _unnamed(index: int) -> str:
    return "model/Variable" if index == 0 else f"model/Variable_{index}"
