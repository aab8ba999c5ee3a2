"""Kronecker-factored curvature (K-FAC) of a network's negative log-likelihood, its log-determinant and samples.

LLAMA's Laplace approximation (Grant et al. 2018) needs, at the adapted
weights phi, the curvature H of a task's negative log posterior: its log
determinant (in the meta-objective) and samples from N(phi, H^-1)
(predictions). K-FAC (Martens & Grosse 2015; convolutions: Grosse & Martens
2016) approximates the curvature block of one layer's weights `W` (kernel
rows, then a bias row, `[d_in + 1, d_out]`) by a Kronecker product

    H_W ~ A (x) G,   A = mean over rows of a a^T,   G = sum over rows and columns c of g_c g_c^T

where `a` is the layer's input (a conv layer's input patch) with a 1
appended for the bias, and `g_c = J^T v_c` the back-propagated output
vectors at the layer's pre-activation, for the columns `v_c` of a square root
of the likelihood's Hessian in the network outputs (`output_factor`): so
`A (x) G` is the K-FAC form of the generalised Gauss-Newton matrix, the
expected Fisher, summed over the examples (a "row" is an example; for a
convolution, an example at one output position, with the spatially
uncorrelated-derivatives approximation). For one example, or a linear
Gaussian model, it is the exact curvature block.

The prior's curvature `tau I` enters as K-FAC's factored Tikhonov damping
(Martens & Grosse section 6.3), `(A + sqrt(tau) I) (x) (G + sqrt(tau) I)`, which
contains `A (x) G + tau I`; its log-determinant and inverse square root come
from two Cholesky factorisations per layer. We leave out Martens & Grosse's
rescaling of the two dampings by `pi = sqrt((tr A / dim A) / (tr G / dim G))`:
in an objective that is minimised, it lets the log-determinant fall without
bound as one factor vanishes (dead units), where with equal dampings
`log det H >= dim H * log tau`. Different layers are independent blocks
(block-diagonal H).

Supported models: the chains of layers the task-batched network runs
(`maml_tf.batched.unsupported_reason`, in any float dtype); the curvature covers each Dense and
Conv2D layer whose kernel the inner loop adapts (with its bias when that is
adapted too). Other adapted weights (e.g. normalisation parameters when a
user adapts them) have no curvature block: they are left out of the log
determinant and not sampled.
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence

import keras
import tensorflow as tf

from maml_tf.batched import chain_layers, unsupported_reason

LIKELIHOODS = ("gaussian", "categorical")


class Block(NamedTuple):
    """One layer's curvature block: its position in the chain, kernel and (adapted) bias indices."""

    position: int
    kernel: int
    bias: Optional[int]


class Factors(NamedTuple):
    """A block's (damped) Kronecker factors `A (x) G`."""

    a: tf.Tensor
    g: tf.Tensor


def output_factor(likelihood: str, outputs) -> List[tf.Tensor]:
    """Columns `v_c` `[N, C]` with `sum_c v_c v_c^T` = the Hessian, in one example's outputs, of its negative
    log-likelihood: 'gaussian' (the squared error averaged over the D outputs, as the MSE task loss):
    `(2 / D) I`; 'categorical' (softmax cross-entropy on logits): `diag(p) - p p^T`, whose columns are
    `sqrt(p_c) (e_c - p)`."""
    d = outputs.shape[-1]
    if likelihood == "gaussian":
        eye = tf.eye(d, dtype=outputs.dtype)
        return [tf.broadcast_to(math.sqrt(2.0 / d) * eye[c], tf.shape(outputs)) for c in range(d)]
    if likelihood == "categorical":
        p = tf.nn.softmax(outputs)
        eye = tf.eye(d, dtype=outputs.dtype)
        return [tf.sqrt(p[:, c:c + 1]) * (eye[c][None] - p) for c in range(d)]
    raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}; got {likelihood!r}.")


class KFAC:
    """K-FAC curvature of a model's adapted Dense and Conv2D weights.

    Args:
      model: a Keras model that is a supported chain of layers.
      split: the learner's `ParameterSplit` (which weights adapt).
      likelihood: 'gaussian' or 'categorical' (see `output_factor`).
    """

    def __init__(self, model: keras.Model, split, likelihood: str):
        reason = unsupported_reason(model, grouped_convolutions=False)
        if reason is not None:
            raise ValueError(f"K-FAC needs a chain of supported layers; model {model.name!r} is not: {reason}.")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}; got {likelihood!r}.")
        if any(layer.compute_dtype == "float16" for layer in chain_layers(model)):
            raise ValueError("K-FAC runs in the variables' dtype; model layers computing in float16 (mixed precision) "
                             "are not supported.")
        self.model, self.likelihood = model, likelihood
        self.layers = chain_layers(model)
        index = {id(v): i for i, v in enumerate(model.trainable_variables)}
        adapted = set(split.adapted_indices)
        self.layer_weights = [[index[id(v)] for v in layer.trainable_variables] for layer in self.layers]
        self.blocks: List[Block] = []
        for position, layer in enumerate(self.layers):
            if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
                kernel = index[id(layer.kernel)]
                bias = index[id(layer.bias)] if layer.use_bias else None
                if kernel in adapted:
                    self.blocks.append(Block(position, kernel, bias if bias in adapted else None))
        if not self.blocks:
            raise ValueError(f"Model {model.name!r} has no adapted Dense or Conv2D kernel to take the curvature of.")

    # ------------------------------------------------------------ factors
    def factors(self, weights: Sequence, x, return_outputs: bool = False) -> list:
        """`[(A, G), ...]` per block: the undamped Kronecker factors at `weights` on inputs `x` `[N, ...]` (one
        task), differentiable in `weights` (and the network's outputs, with `return_outputs`)."""
        blocks = {b.position: b for b in self.blocks}
        inputs, probes = {}, {}
        with tf.GradientTape(watch_accessed_variables=False, persistent=True) as tape:
            h = x
            for position, layer in enumerate(self.layers):
                params = [weights[i] for i in self.layer_weights[position]]
                if position not in blocks:
                    h, _ = layer.stateless_call(params, [v.value for v in layer.non_trainable_variables], h)
                    continue
                s = self._linear(layer, params, h)
                inputs[position] = self._rows(layer, h, blocks[position].bias is not None)
                probes[position] = tf.zeros_like(s)  # d outputs / d probe = the pre-activation's gradient.
                tape.watch(probes[position])
                h = layer.activation(s + probes[position])
            outputs = h
        columns = output_factor(self.likelihood, outputs)
        positions = [b.position for b in self.blocks]
        # One backward pass per column reaches every block's probe.
        grads = [tape.gradient(outputs, [probes[p] for p in positions], output_gradients=v) for v in columns]
        out = []
        for i, position in enumerate(positions):
            a = inputs[position]
            g_rows = [tf.reshape(per_column[i], [-1, per_column[i].shape[-1]]) for per_column in grads]
            g_factor = tf.add_n([tf.matmul(g, g, transpose_a=True) for g in g_rows])
            rows = tf.cast(tf.shape(a)[0], a.dtype)
            out.append((tf.matmul(a, a, transpose_a=True) / rows, g_factor))
        del tape
        return (out, outputs) if return_outputs else out

    @staticmethod
    def _linear(layer, params, h):
        """The layer's pre-activation `h W + b` (Dense) or `conv(h, K) + b` (Conv2D)."""
        if isinstance(layer, keras.layers.Dense):
            s = tf.matmul(h, params[0])
        else:
            s = tf.nn.conv2d(h, params[0], list(layer.strides), layer.padding.upper())
        return s + params[1] if layer.use_bias else s

    @staticmethod
    def _rows(layer, h, with_bias: bool):
        """The layer's input rows `[R, d_in (+1)]`: examples (Dense) or examples x output positions of the
        input patches, laid out as the kernel's `[kh, kw, C_in]` (Conv2D)."""
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            sh, sw = layer.strides
            h = tf.image.extract_patches(h, [1, kh, kw, 1], [1, sh, sw, 1], [1, 1, 1, 1], layer.padding.upper())
        rows = tf.reshape(h, [-1, h.shape[-1]])
        if with_bias:
            rows = tf.concat([rows, tf.ones_like(rows[:, :1])], axis=1)
        return rows

    # ----------------------------------------------------- damped blocks
    def damped(self, weights: Sequence, x, tau: float) -> List[Factors]:
        """Each block's factors with the factored Tikhonov damping of a prior curvature `tau I`."""
        return [damp(a, g, tau) for a, g in self.factors(weights, x)]

    def log_det(self, weights: Sequence, x, tau: float) -> tf.Tensor:
        """`log det H`: the sum over blocks of `log det(A_d (x) G_d) = dim(G) log det A_d + dim(A) log det G_d`."""
        return tf.add_n([kronecker_log_det(f) for f in self.damped(weights, x, tau)])

    def matrix(self, weights: Sequence, block: Block) -> tf.Tensor:
        """A block's weights as one matrix `[d_in (+1), d_out]`: the kernel's rows, then the bias."""
        kernel = weights[block.kernel]
        rows = tf.reshape(kernel, [-1, kernel.shape[-1]])
        return rows if block.bias is None else tf.concat([rows, weights[block.bias][None]], axis=0)

    def sample(self, weights: Sequence, x, tau: float, num_samples: int, rng: tf.random.Generator) -> list:
        """`num_samples` draws from N(weights, H^-1) over the curvature blocks (every other weight fixed), as
        full weight lists stacked `[S, ...]`: per block `W + L_A^-T Z L_G^-1`, Z standard normal."""
        stacked = [tf.repeat(w[None], num_samples, axis=0) for w in weights]
        for block, f in zip(self.blocks, self.damped(weights, x, tau)):
            mean = self.matrix(weights, block)
            z = rng.normal(tf.concat([[num_samples], tf.shape(mean)], 0), dtype=mean.dtype)
            draws = mean[None] + kronecker_inverse_sqrt(f, z)
            kernel_rows = weights[block.kernel].shape.num_elements() // weights[block.kernel].shape[-1]
            stacked[block.kernel] = tf.reshape(draws[:, :kernel_rows], [num_samples] + weights[block.kernel].shape)
            if block.bias is not None:
                stacked[block.bias] = draws[:, kernel_rows]
        return stacked


def damp(a, g, tau: float) -> Factors:
    """`(A + sqrt(tau) I, G + sqrt(tau) I)`."""
    if not tau:
        return Factors(a, g)
    root = math.sqrt(tau)
    return Factors(a + root * tf.eye(a.shape[-1], dtype=a.dtype), g + root * tf.eye(g.shape[-1], dtype=g.dtype))


@tf.custom_gradient
def spd_log_det(m):
    """`log det M` of a symmetric positive-definite matrix, from its Cholesky factor, with the gradient `M^-1`
    from one Cholesky solve (TensorFlow's Cholesky gradient costs several times as much; only the first
    derivative is defined, which is all the meta-gradient takes of it)."""
    chol = tf.linalg.cholesky(m)
    value = 2.0 * tf.reduce_sum(tf.math.log(tf.linalg.diag_part(chol)))

    def grad(upstream):
        return upstream * tf.linalg.cholesky_solve(chol, tf.eye(m.shape[-1], dtype=m.dtype))

    return value, grad


def kronecker_log_det(f: Factors) -> tf.Tensor:
    """`log det(A (x) G) = dim(G) log det A + dim(A) log det G`."""
    return f.g.shape[-1] * spd_log_det(f.a) + f.a.shape[-1] * spd_log_det(f.g)


def kronecker_inverse_sqrt(f: Factors, z) -> tf.Tensor:
    """`L_A^-T Z L_G^-1` (`L`: lower Cholesky factors) for `Z` `[S, dim A, dim G]`: if Z is standard normal, the
    result's rows-major vectorisation has covariance `(A (x) G)^-1 = A^-1 (x) G^-1`."""
    s = tf.shape(z)[0]
    upper_a, upper_g = [tf.broadcast_to(tf.linalg.matrix_transpose(tf.linalg.cholesky(m)),
                                        tf.concat([[s], tf.shape(m)], 0)) for m in (f.a, f.g)]
    x = tf.linalg.triangular_solve(upper_a, z, lower=False)  # L_A^T X = Z
    y = tf.linalg.triangular_solve(upper_g, tf.linalg.matrix_transpose(x), lower=False)  # L_G^T Y^T = X^T
    return tf.linalg.matrix_transpose(y)
