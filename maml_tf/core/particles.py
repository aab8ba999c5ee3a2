"""Sets of weights for one task: M particles (BMAML, EMAML) or M posterior samples (PLATIPUS), run at once.

A particle set is a list of tensors aligned with the model's trainable
variables (then any extra per-particle entries, e.g. BMAML's log-precisions),
each with a leading particle axis `[M, ...]` ("stacked"). `particle_forward`
runs the model once per particle on the same inputs; for a model the
task-batched network supports (`maml_tf.batched`), all particles go through
it at once as if they were tasks (batched matmuls, grouped convolutions),
else one `functional_call` per particle. Both are the same computation.

`ParticleView` is a `TaskView` for the particles of one task, so that the
shared inner loop (`maml_tf.core.inner.inner_loop`) adapts a whole particle set
with any inner optimiser (SVGD, or SGD on each particle independently).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import tensorflow as tf

from maml_tf.batched import unsupported_reason
from maml_tf.core.execution import TaskView
from maml_tf.functional import takes_argument, task_batched_network


def stack(particles: Sequence[Sequence[tf.Tensor]]) -> list:
    """M aligned weight lists -> one stacked list `[M, ...]`."""
    return [tf.stack(entries) for entries in zip(*particles)]


def unstack(stacked: Sequence[tf.Tensor], index: int) -> list:
    """Particle `index` of a stacked list."""
    return [t[index] for t in stacked]


def particle_forward(learner, stacked: Sequence[tf.Tensor], x, *, step=None, differentiated_once: bool = False):
    """Outputs `[M, N, ...]` of each of M particles (`stacked`: entries `[M, ...]` aligned with the model's
    trainable variables) on the same inputs `x` `[N, ...]`. `step`: the inner step, for a step-aware model."""
    m = stacked[0].shape[0]
    model = learner.model
    if unsupported_reason(model) is None and not takes_argument(model, "step"):
        network = task_batched_network(model)
        weights = [_grouped(w) if grouped else w for w, grouped in zip(stacked, network.grouped)]
        inputs = tf.tile(x[None], tf.concat([[m], tf.ones([x.shape.rank], tf.int32)], 0))
        return learner.forward(weights, inputs, differentiated_once=differentiated_once, task_layout=True)
    return tf.stack([learner.forward(unstack(stacked, i), x, step=step, differentiated_once=differentiated_once)
                     for i in range(m)])


def _grouped(w: tf.Tensor) -> tf.Tensor:
    """`[M, ..., C]` -> the grouped task layout `[..., M*C]` (particle-major blocks, as `per_task` tiles)."""
    rank = w.shape.rank
    moved = tf.transpose(w, list(range(1, rank - 1)) + [0, rank - 1])
    return tf.reshape(moved, moved.shape[:-2].as_list() + [-1])


class AllAdapted:
    """The `ParameterSplit` of a particle set: the inner loop moves every entry."""

    def __init__(self, size: int):
        self.adapted_indices = list(range(size))

    def adapted(self, weights: Sequence) -> list:
        return list(weights)

    def replace(self, weights: Sequence, adapted: Sequence) -> list:
        return list(adapted)


class ParticleView:
    """The particles of one task, as the inner loop sees them.

    Args:
      learner: the algorithm (its forward pass, task loss, metric and gradient).
      num_network: how many leading entries of a particle set are the model's weights (the rest are extra
        per-particle entries, which the forward pass does not read).
      energy: `energy(particles, outputs, labels) -> scalar`, the inner loss of the whole set (summed over the
        particles, so that each particle's gradient is its own), e.g. a negative log posterior. Default: the
        task loss of each particle, summed.
      split: which entries the inner loop moves (default all; PLATIPUS: the model's `ParameterSplit`, whose
        indices apply to stacked lists alike).
    """

    batched = False

    def __init__(self, learner, num_network: int, size: Optional[int] = None, energy: Optional[Callable] = None,
                 split=None):
        self.learner, self.num_network = learner, num_network
        self.split = split or AllAdapted(size or num_network)
        self.dtype = learner.dtype
        self.energy = energy or (lambda particles, outputs, labels: tf.add_n(
            [learner.task_loss(outputs[i], labels) for i in range(outputs.shape[0])]))

    def forward(self, weights: Sequence, x, *, step=None, differentiated_once: bool = False):
        """`[M, N, ...]`: every particle's outputs on `x`."""
        return particle_forward(self.learner, weights[:self.num_network], x, step=step,
                                differentiated_once=differentiated_once)

    support, query = staticmethod(TaskView.support), staticmethod(TaskView.query)

    def inner_loss(self, weights: Sequence, data, step=None):
        x, y = data
        outputs = self.forward(weights, x, step=step)
        return outputs, self.energy(weights, outputs, y)

    def query_loss(self, weights: Sequence, data, step=None):
        x, y = data
        outputs = self.forward(weights, x, step=step, differentiated_once=True)
        return outputs, self.loss(outputs, y)

    @staticmethod
    def prediction(outputs):
        """The set's prediction from its members' outputs `[M, N, ...]`: their mean (the ensemble)."""
        return tf.reduce_mean(outputs, axis=0)

    def loss(self, outputs, labels):
        """The task loss of the set's prediction (the ensemble's query loss)."""
        return self.learner.task_loss(self.prediction(outputs), labels)

    def gradient(self, tape, loss, sources):
        return self.learner.gradient(tape, loss, sources)
