"""MAML++'s network (Antoniou, Edwards & Storkey 2019; `AntreasAntoniou/HowToTrainYourMAMLPytorch`,
`meta_neural_network_architectures.py`): batch norm with scale, offset and running statistics per inner step, and
the conv/fc network built on it. With its algorithm (`maml_tf.algorithms.mamlpp`), as MMAML's modulated network
is with MMAML; the shared exact normalisation (`maml_tf.networks.exact_normalize`) does the arithmetic.

`collect_moments` is the side channel through which the forward passes traced inside report the batch moments
each `PerStepBatchNorm` normalised with, so that MAML++ updates its running statistics within the same trace
(a `threading.local`: traces on other threads do not see it).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Sequence

import keras
import tensorflow as tf

from maml_tf.networks import at_least_float32, exact_normalize
from maml_tf.replicas import assign


class _Moments(threading.local):
    records = None


_moments = _Moments()


@contextlib.contextmanager
def collect_moments():
    """Collects, while open, the batch moments every `PerStepBatchNorm` normalises with in training mode.

    Yields a list of `(layer, index, mean, variance)` records (the statistics
    index of the step, the mean and unbiased variance over the batch, no
    gradient), appended as the forward passes inside are traced. MAML++ reads
    them within the same trace to update the per-step running statistics.
    """
    previous, _moments.records = _moments.records, []
    try:
        yield _moments.records
    finally:
        _moments.records = previous


@keras.saving.register_keras_serializable(package="maml_tf")
class PerStepBatchNorm(keras.layers.Layer):
    """MAML++'s batch norm: scale and offset, and running statistics, one set per inner step.

    Antoniou et al.'s `MetaBatchNormLayer`: epsilon 1e-5, momentum 0.1,
    scale `gamma` (ones) and offset `beta` (zeros) of shape `[num_steps, C]`
    with `per_step_weights` (BNWB; else `[C]`), running mean and variance of
    shape `[num_steps, C]` with `per_step_statistics` (BNRS; else `[C]`).
    `call(x, training, step)` uses the entries of inner step `step` (steps
    past the last use the last). In training mode (the default, as the
    authors' code, which always normalises with batch statistics) it
    normalises with the batch moments, exactly (`exact_normalize`, derivatives
    of every order); with `training=False` with the running statistics (the
    non-transductive evaluation). The running statistics are updated by the
    algorithm (see `collect_moments`), not by the layer: a stateless call
    cannot update them.
    """

    normalizes = True  # A normalisation layer: its parameters do not adapt (`maml_tf.networks.is_normalization`).

    def __init__(self, num_steps: int = 1, per_step_weights: bool = True, per_step_statistics: bool = True,
                 momentum: float = 0.1, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.num_steps, self.momentum, self.epsilon = int(num_steps), float(momentum), float(epsilon)
        self.per_step_weights, self.per_step_statistics = bool(per_step_weights), bool(per_step_statistics)

    def build(self, input_shape):
        channels = input_shape[-1]
        weights = (self.num_steps, channels) if self.per_step_weights else (channels,)
        statistics = (self.num_steps, channels) if self.per_step_statistics else (channels,)
        self.gamma = self.add_weight(name="gamma", shape=weights, initializer="ones")
        self.beta = self.add_weight(name="beta", shape=weights, initializer="zeros")
        self.moving_mean = self.add_weight(name="moving_mean", shape=statistics, initializer="zeros",
                                           trainable=False)
        self.moving_variance = self.add_weight(name="moving_variance", shape=statistics, initializer="ones",
                                               trainable=False)

    def index(self, step) -> int:
        """The row of inner step `step` (a Python int; None: 0)."""
        return min(int(step or 0), self.num_steps - 1)

    def call(self, x, training=None, step=None):
        k = self.index(step)
        gamma, beta = (self.gamma[k], self.beta[k]) if self.per_step_weights else (self.gamma, self.beta)
        axes = list(range(len(x.shape) - 1))
        if training is False:
            mean, var = ((self.moving_mean[k], self.moving_variance[k]) if self.per_step_statistics
                         else (self.moving_mean, self.moving_variance))
            inv = tf.math.rsqrt(tf.cast(var, x.dtype) + self.epsilon)
            return (x - tf.cast(mean, x.dtype)) * inv * tf.cast(gamma, x.dtype) + tf.cast(beta, x.dtype)
        if _moments.records is not None:
            x32 = tf.stop_gradient(at_least_float32(x))
            mean, var = tf.nn.moments(x32, axes)
            count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x32), axes)), x32.dtype)
            _moments.records.append((self, k if self.per_step_statistics else 0, mean,
                                     var * count / tf.maximum(count - 1.0, 1.0)))
        return exact_normalize(x, axes, self.epsilon, beta, gamma)

    def update_statistics(self, rows) -> None:
        """`rows`: `{row: (batch mean, batch variance, keep)}`; each such row of the running statistics
        becomes `keep * running + (1 - keep) * batch` (one pass: `keep = 1 - momentum`), the others stay."""
        for var, j in ((self.moving_mean, 0), (self.moving_variance, 1)):
            value = tf.convert_to_tensor(var)
            if not self.per_step_statistics:
                (row,) = rows.values()
                assign(var, row[2] * value + (1.0 - row[2]) * row[j])
                continue
            assign(var, tf.stack([rows[k][2] * value[k] + (1.0 - rows[k][2]) * rows[k][j] if k in rows else value[k]
                                 for k in range(var.shape[0])]))

    def get_config(self):
        return {**super().get_config(), "num_steps": self.num_steps, "per_step_weights": self.per_step_weights,
                "per_step_statistics": self.per_step_statistics, "momentum": self.momentum,
                "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="maml_tf")
class PerStepNetwork(keras.Model):
    """MAML++'s network (the authors' `VGGReLUNormNetwork`), or a fully connected one, with per-step batch norm.

    Conv: `stages` blocks of 3x3 conv (SAME, Glorot-uniform kernels, zero
    biases) -> `PerStepBatchNorm` -> leaky ReLU (slope 0.01) -> 2x2 max-pool
    (`max_pool`; else stride-2 convs and a spatial mean at the end), then
    flatten and a Glorot-uniform dense layer. FC (`conv=False`): dense
    layers of `widths` with the original fc net's initialisers, batch norm,
    ReLU. `norm=False` leaves the batch norm out. `call(x, training, step)`:
    `step` picks the batch-norm row of each inner step.
    """

    def __init__(self, input_shape, num_outputs: int, widths: Sequence[int], num_steps: int, conv: bool = True,
                 max_pool: bool = True, norm: bool = True, per_step_weights: bool = True,
                 per_step_statistics: bool = True, **kwargs):
        kwargs.setdefault("name", "per_step_network")
        super().__init__(**kwargs)
        self.spec = dict(input_shape=tuple(input_shape), num_outputs=int(num_outputs), widths=list(widths),
                         num_steps=int(num_steps), conv=bool(conv), max_pool=bool(max_pool), norm=bool(norm),
                         per_step_weights=bool(per_step_weights), per_step_statistics=bool(per_step_statistics))
        dtype = kwargs.get("dtype")
        # Layers are attributes (not lists) so that `tf.train.Checkpoint` tracks them; `_body` names them in order.
        self._body, self._norms = [], []
        for i, width in enumerate(widths):
            if conv:
                layer = keras.layers.Conv2D(width, 3, strides=1 if max_pool else 2, padding="same",
                                            kernel_initializer="glorot_uniform", name=f"conv{i + 1}", dtype=dtype)
            else:
                layer = keras.layers.Dense(width, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01),
                                           name=f"dense{i + 1}", dtype=dtype)
            setattr(self, layer.name, layer)
            self._body.append(layer.name)
            if norm:
                setattr(self, f"norm{i}", PerStepBatchNorm(num_steps, per_step_weights, per_step_statistics,
                                                           name=f"norm{i}", dtype=dtype))
                self._norms.append(f"norm{i}")
        self.flatten = keras.layers.Flatten(dtype=dtype)
        init = "glorot_uniform" if conv else keras.initializers.TruncatedNormal(stddev=0.01)
        self.head = keras.layers.Dense(num_outputs, kernel_initializer=init, name="dense_out", dtype=dtype)
        self.build((None,) + tuple(input_shape))

    def build(self, input_shape):
        self.call(keras.ops.zeros((1,) + tuple(input_shape[1:])), training=True)
        self.built = True

    def call(self, x, training=None, step=None):
        h = x
        if not self.spec["conv"] and len(x.shape) > 2:
            h = self.flatten(h)
        for i, name in enumerate(self._body):
            h = getattr(self, name)(h)
            if self._norms:
                h = getattr(self, self._norms[i])(h, training=training, step=step)
            if self.spec["conv"]:
                h = tf.nn.leaky_relu(h, 0.01)
                if self.spec["max_pool"]:
                    h = tf.nn.max_pool2d(h, 2, 2, "VALID")
            else:
                h = tf.nn.relu(h)
        if self.spec["conv"] and not self.spec["max_pool"]:
            h = tf.reduce_mean(h, axis=[1, 2])
        return self.head(self.flatten(h))

    def get_config(self):
        return {**self.spec, "name": self.name}
