"""MMAML: multimodal MAML, a task encoder that modulates the network before MAML's inner loop.

Vuorio, Sun, Hu & Lim, "Multimodal Model-Agnostic Meta-Learning via
Task-Aware Modulation", NeurIPS 2019; the authors' code:
`vuoristo/MMAML-Regression` (PyTorch; `maml/models/gated_net.py`,
`lstm_embedding_model.py`, `metalearner.py`) and
`shaohua0116/MMAML-Classification` (`conv_embedding_model.py`,
`gated_conv_net.py`).

For a task, an encoder reads the support set and produces one modulation
vector per modulated layer of the network; the network's hidden layers are
modulated (FiLM: `h * (1 + gamma) + beta` on the pre-activations, before the
non-linearity) and MAML's inner loop adapts the network's weights, the
modulations held fixed. The meta-objective is MAML's (the query loss after
the inner steps); its gradient reaches the network's initial weights and,
through the modulations (also through the inner gradients, second order),
the encoder. Only the network's weights adapt; the encoder is meta-learned.

- `Modulated` wraps a chain network (the original fc or conv net): the
  modulation goes before each activation, lowest layers first (the authors'
  `low2high`); variants `film` (the authors' `affine`, the paper's FiLM),
  `sigmoid` (`sigmoid_gate`) and `softmax`. Without a condition it is the
  wrapped network, exactly.
- `RecurrentEncoder` (regression): a 2-layer bidirectional LSTM of 40 units
  over the support pairs (x, y); the embedding is the forward direction's
  last output and the backward direction's first; a linear head per
  modulated layer.
- `ConvEncoder` (images): four 3x3 stride-2 convolutions (32, 64, 128, 256
  channels) with batch norm and ReLU, a spatial mean, a 128-unit ReLU layer,
  the mean over the support images, a linear head per layer (the authors'
  classification encoder, which reads the images and not the labels).

Authors' defaults kept (their regression commands): 5 inner SGD steps of
size 0.001 (`--num_updates=5`, `--update_lr`), inner gradients clipped
elementwise to [-10, 10], the network's and the encoder's meta-gradients each
clipped to norm 2 (their two Adam optimisers with step size 0.001), the
network 3 x 100 with N(0, 0.01) kernels and zero biases, the encoder with
PyTorch's default initialisation, meta-batches of 25 tasks per mode.
Their 2-mode command modulates the first layer only
(`--mmaml_modulated_layers=1`), the 3- and 5-mode ones every layer (default).

Deliberate differences: the Keras LSTM has one bias per gate where PyTorch's
has two (the same function class); tasks run one at a time (`tf.map_fn`),
each network modulated by its own task's encoding, where the authors loop
over tasks in Python. Their MAML baselines add a learned 20-unit "bias
transformation" input, which `benchmarks/mmaml_runs.sh`'s do not.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import keras
import tensorflow as tf

from maml_tf import networks
from maml_tf.algorithms.base import cast_floats
from maml_tf.algorithms.maml import MAML
from maml_tf.algorithms.options import MMAMLOptions
from maml_tf.batched import chain_layers
from maml_tf.core.execution import TaskView
from maml_tf.core.inner import InnerOptimizer, clipped_sgd
from maml_tf.functional import current_non_trainable, takes_argument
from maml_tf.networks import BatchNormTF1

MODULATIONS = ("film", "sigmoid", "softmax")
ACTIVATIONS = (keras.layers.ReLU, keras.layers.Activation)


def modulate(h, embedding, kind: str):
    """Modulates the pre-activations `h` `[..., C]` of one task with its head output `embedding` (`[2C]` for
    FiLM, else `[C]`), broadcast over the examples and spatial positions."""
    if kind == "film":
        gamma, beta = tf.split(embedding, 2, axis=-1)
        return h * (1.0 + gamma) + beta
    if kind == "sigmoid":
        return h * tf.sigmoid(embedding)
    if kind == "softmax":
        return h * tf.nn.softmax(embedding)
    raise ValueError(f"Unknown modulation {kind!r}; choose one of {', '.join(MODULATIONS)}.")


@keras.saving.register_keras_serializable(package="maml_tf")
class Modulated(keras.Model):
    """A chain network (a functional Keras model: the original fc or conv net) whose pre-activations can be
    modulated per task.

    `call(x, training, condition)`: `condition` is a list of head outputs, the
    k-th modulating the input of the k-th activation layer (lowest first);
    fewer entries than activations leave the upper layers unmodulated; None
    runs the wrapped network unchanged. The trainable variables are the
    wrapped network's, in its order.

    Args:
      network: a built functional Keras model whose hidden blocks end in
        `ReLU`/`Activation` layers.
      modulation: 'film', 'sigmoid' or 'softmax' (see `modulate`).
    """

    def __init__(self, network: keras.Model, modulation: str = "film", **kwargs):
        if modulation not in MODULATIONS:
            raise ValueError(f"Unknown modulation {modulation!r}; choose one of {', '.join(MODULATIONS)}.")
        chain = chain_layers(network)
        if chain is None:
            raise ValueError(f"Modulated wraps a single-input chain of layers (a Sequential or linear functional "
                             f"model); {network.name!r} is not one.")
        # Keras casts a model's inputs to its compute dtype: the layers', not float32 (a float64 network stays exact).
        kwargs.setdefault("dtype", chain[0].dtype_policy)
        super().__init__(name=kwargs.pop("name", f"modulated_{network.name}"), **kwargs)
        self.modulation = modulation
        self.chain = chain
        activations = [layer for layer in self.chain if isinstance(layer, ACTIVATIONS)]
        if not activations:
            raise ValueError(f"Network {network.name!r} has no ReLU/Activation layer to modulate.")
        # Channels at each activation: what one head modulates.
        self.modulation_sizes = [int(layer.input.shape[-1]) for layer in activations]
        # One example's input and output shapes (the encoder reads support sets of them).
        self.example_shapes = (tuple(network.input_shape[1:]), tuple(network.output_shape[1:]))
        self._network_config = keras.saving.serialize_keras_object(network)
        self.build(network.input_shape)

    def build(self, input_shape):
        self.built = True  # The wrapped network's layers are built.

    def head_sizes(self, num_layers: Optional[int] = None) -> list:
        """Output sizes of the encoder heads that modulate the first `num_layers` layers (default all)."""
        sizes = self.modulation_sizes[:num_layers or len(self.modulation_sizes)]
        return [2 * c if self.modulation == "film" else c for c in sizes]

    def call(self, x, training=None, condition=None):
        h, k = x, 0
        for layer in self.chain:
            if isinstance(layer, ACTIVATIONS):
                if condition is not None and k < len(condition):
                    h = modulate(h, tf.cast(condition[k], h.dtype), self.modulation)
                k += 1
            h = layer(h, training=training)
        return h

    def get_config(self):
        return {"network": self._network_config, "modulation": self.modulation, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config.pop("network")), **config)


def _torch_dense(units: int, fan_in: int, activation=None, name=None, dtype=None) -> keras.layers.Dense:
    """A Dense layer initialised as PyTorch's `nn.Linear` (weights and biases uniform in +-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.layers.Dense(units, activation=activation, name=name, dtype=dtype,
                              kernel_initializer=keras.initializers.RandomUniform(-bound, bound),
                              bias_initializer=keras.initializers.RandomUniform(-bound, bound))


@keras.saving.register_keras_serializable(package="maml_tf")
class RecurrentEncoder(keras.Model):
    """The authors' regression encoder: a bidirectional LSTM over a task's support pairs `(x, y)`.

    `call((support_x, support_y))` -> `(embedding [2 * hidden], [head outputs])`.
    """

    def __init__(self, head_sizes: Sequence[int], hidden: int = 40, num_layers: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.head_sizes, self.hidden, self.num_layers = [int(s) for s in head_sizes], int(hidden), int(num_layers)
        init = keras.initializers.RandomUniform(-1.0 / math.sqrt(hidden), 1.0 / math.sqrt(hidden))  # PyTorch's.

        def lstm(go_backwards: bool):
            return keras.layers.LSTM(hidden, return_sequences=True, unroll=True, go_backwards=go_backwards,
                                     kernel_initializer=init, recurrent_initializer=init, bias_initializer=init,
                                     unit_forget_bias=False, dtype=self.dtype_policy)

        # Both directions given: Keras would otherwise copy the forward layer through its serialisation, which
        # inside `keras.models.load_model` can return the forward layer itself (object sharing keyed by `id`).
        self.rnns = [keras.layers.Bidirectional(lstm(False), backward_layer=lstm(True), dtype=self.dtype_policy)
                     for _ in range(num_layers)]
        self.heads = [_torch_dense(s, 2 * hidden, name=f"head{i + 1}", dtype=self.dtype_policy)
                      for i, s in enumerate(self.head_sizes)]

    def call(self, inputs):
        x, y = inputs
        flat = lambda t: tf.reshape(t, [tf.shape(t)[0], -1])  # noqa: E731
        h = tf.concat([flat(x), flat(tf.cast(y, x.dtype))], -1)[None]  # One sequence: [1, N, dx + dy].
        for rnn in self.rnns:
            h = rnn(h)
        embedding = tf.concat([h[0, -1, :self.hidden], h[0, 0, self.hidden:]], -1)  # Each direction's last output.
        return embedding, [head(embedding[None])[0] for head in self.heads]

    def get_config(self):
        return {**super().get_config(), "head_sizes": self.head_sizes, "hidden": self.hidden,
                "num_layers": self.num_layers}


@keras.saving.register_keras_serializable(package="maml_tf")
class ConvEncoder(keras.Model):
    """The authors' image encoder: per support image four stride-2 3x3 convolutions with batch norm and ReLU and
    a spatial mean, a ReLU layer, then the mean over the support set.

    `call((support_x, support_y))` -> `(embedding [hidden], [head outputs])` (the labels are not read).
    """

    def __init__(self, head_sizes: Sequence[int], hidden: int = 128, channels: int = 32, num_conv: int = 4,
                 max_channels: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.head_sizes, self.hidden = [int(s) for s in head_sizes], int(hidden)
        self.channels, self.num_conv, self.max_channels = int(channels), int(num_conv), int(max_channels)
        widths = [min(max_channels, channels * 2 ** i) for i in range(num_conv)]
        torch_conv = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")  # PyTorch's default.
        self.convs = [keras.layers.Conv2D(w, 3, strides=2, padding="same", kernel_initializer=torch_conv,
                                          dtype=self.dtype_policy) for w in widths]
        self.norms = [BatchNormTF1(dtype=self.dtype_policy) for _ in widths]
        self.dense = _torch_dense(hidden, widths[-1], activation="relu", dtype=self.dtype_policy)
        self.heads = [_torch_dense(s, hidden, name=f"head{i + 1}", dtype=self.dtype_policy)
                      for i, s in enumerate(self.head_sizes)]

    def call(self, inputs, training=None):
        h, _ = inputs
        for conv, norm in zip(self.convs, self.norms):
            h = tf.nn.relu(norm(conv(h), training=training))
        h = self.dense(tf.reduce_mean(h, [1, 2]))
        embedding = tf.reduce_mean(h, 0)
        return embedding, [head(embedding[None])[0] for head in self.heads]

    def get_config(self):
        return {**super().get_config(), "head_sizes": self.head_sizes, "hidden": self.hidden,
                "channels": self.channels, "num_conv": self.num_conv, "max_channels": self.max_channels}


def task_encoder(model: "Modulated", num_layers: Optional[int] = None, hidden: Optional[int] = None) -> keras.Model:
    """The authors' encoder for `model`'s inputs, built: recurrent over (x, y) pairs for vector inputs, convolutional
    for images; heads for the first `num_layers` modulated layers (default all); `hidden`: the LSTM's units (default
    40) or the conv encoder's last layer (default 128)."""
    input_shape, output_shape = model.example_shapes
    heads = model.head_sizes(num_layers)
    dtype = model.trainable_variables[0].dtype
    policy = dtype if model.dtype_policy.compute_dtype == dtype else model.dtype_policy.name
    if len(input_shape) == 3:
        encoder = ConvEncoder(heads, hidden or 128, dtype=policy, name="encoder")
    elif len(input_shape) == 1:
        encoder = RecurrentEncoder(heads, hidden or 40, dtype=policy, name="encoder")
    else:
        raise ValueError(f"No default encoder for inputs of shape {input_shape}; pass encoder= yourself.")
    encoder((tf.zeros((2,) + input_shape, dtype), tf.zeros((2,) + output_shape, dtype)))  # Builds it.
    return encoder


class MMAML(MAML):
    """MMAML on a network that takes a `condition` (a `Modulated` network, or any Keras model whose
    `call(x, training, condition)` uses the encoder's head outputs).

    Args:
      model: the network (the meta-learned initialisation MAML adapts).
      loss_fn: as `MAML`.
      encoder: a built Keras model, `encoder((support_x, support_y)) -> (embedding, [head outputs])`, its weights
        meta-learned; default `task_encoder(model)`.
      inner_grad_clip: clip the inner gradients elementwise to this (None: not clipped).
      clip_norm: clip the network's and the encoder's meta-gradients each to this norm (None: not clipped).
      **maml_options: `MAML`'s options (`inner_lr`, `num_inner_steps`, `first_order`, `meta_lr`, ...).
    """

    name = "mmaml"
    task_batched = False  # Each task's network is modulated by its own condition.
    evaluators = MAML.evaluators + ("embeddings",)  # Its task encoder's view of the test tasks.
    compiled_steps = MAML.compiled_steps + ("task_embedding",)

    def __init__(self, model: keras.Model, loss_fn: Callable, *, encoder: Optional[keras.Model] = None,
                 inner_grad_clip: Optional[float] = MMAMLOptions.inner_grad_clip,
                 clip_norm: Optional[float] = MMAMLOptions.clip_norm, **maml_options):
        if not takes_argument(model, "condition"):
            raise ValueError(f"MMAML modulates the network: {type(model).__name__}.call must take a `condition` "
                             "argument (wrap a chain network in maml_tf.algorithms.mmaml.Modulated).")
        self.encoder = encoder if encoder is not None else task_encoder(model)
        if not self.encoder.built or not self.encoder.trainable_variables:
            raise ValueError("The encoder must be a built Keras model with trainable weights (call it once).")
        self.inner_grad_clip = inner_grad_clip
        super().__init__(model, loss_fn, clip_norm=clip_norm, **maml_options)

    @classmethod
    def build_model(cls, config) -> keras.Model:
        """The original network modulated (`Modulated`); on regression the authors' initialisation (N(0, 0.01)
        kernels, zero biases)."""
        if config.classification:
            network = networks.build_network(config)
        else:
            spec = config.datasource_spec
            network = networks.build_fc(spec.input_shape, 1, config.network_spec.fc_hidden, config.norm,
                                        dtype="mixed_float16" if config.mixed_precision else "float32",
                                        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))
        return Modulated(network, config.options.modulation)

    @classmethod
    def from_config(cls, config, model: keras.Model) -> "MMAML":
        loss_fn, metric_fn = cls.task_losses(config)
        o = config.options
        encoder = task_encoder(model, o.modulated_layers or None, o.encoder_hidden or None)
        return cls(model, loss_fn, metric_fn=metric_fn, encoder=encoder, **cls.config_kwargs(config))

    @classmethod
    def config_kwargs(cls, config) -> dict:
        o = config.options
        return dict(super().config_kwargs(config), inner_grad_clip=o.inner_grad_clip or None,
                    clip_norm=o.clip_norm or None)

    def build_meta_parameters(self) -> None:
        self.meta_parameters.encoder = self.encoder  # A sub-layer: its weights are the algorithm's own.
        mine = [id(v) for v in self.meta_parameters.trainable_variables]
        assert mine == [id(v) for v in self.encoder.trainable_variables], "own meta-parameters = the encoder's"

    def inner_optimizer(self, view: TaskView, own: Sequence) -> InnerOptimizer:
        return clipped_sgd(self.inner_lr, self.inner_grad_clip)

    def encode(self, own: Sequence, support_x, support_y):
        """`(embedding, modulations)` of one task from the encoder with weights `own`."""
        outputs, _ = self.encoder.stateless_call(list(own), current_non_trainable(self.encoder),
                                                 (support_x, support_y))
        return cast_floats(outputs, self.dtype)

    def task_view(self, view: TaskView, support, own: Sequence) -> TaskView:
        """The network modulated by the task's encoding of its support set."""
        return view.with_condition(self.encode(own, *support)[1])

    def _task_embedding(self, support_x, support_y) -> tf.Tensor:
        """`task_embedding`: the encoder's embedding of one task's support set (what its heads read)."""
        return self.encode(self.unpack(self.params())[1], support_x, support_y)[0]

    def clip_groups(self) -> list:
        """The network's and the encoder's meta-gradients are clipped to `clip_norm` each (the authors' two Adam
        optimisers, each with its gradient-norm clipping)."""
        n = len(self.model.trainable_variables)
        return [n, len(self.meta_variables) - n]
