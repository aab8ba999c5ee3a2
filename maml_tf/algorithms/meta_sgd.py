"""Meta-SGD: MAML with a meta-learned step size for every parameter.

Li, Zhou, Chen & Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot
Learning", arXiv:1707.09835, 2017. The inner update is
`theta' = theta - alpha o grad L_support(theta)` (elementwise), and both
`theta` and `alpha` are meta-learned on the query loss after adaptation.
The paper's defaults: one inner step, `alpha` initialised uniformly in
[0.005, 0.1] (its regression experiments), the meta-batch and outer Adam of
MAML. The authors published no code, so there is no reference
implementation to follow beyond the paper.

Differences from the paper: the step sizes cover the weights MAML adapts
(not the normalisation offsets, as the original MAML code; pass `adapt` to
change that), and more than one inner step reuses the same `alpha`, as in the
paper's definition. `init='update_lr'` with `learn_lr=False` is exactly MAML.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import keras
import tensorflow as tf

from maml_tf.algorithms.maml import MAML
from maml_tf.algorithms.options import MetaSGDOptions
from maml_tf.core.execution import TaskView
from maml_tf.core.inner import InnerOptimizer, learned_sgd


class MetaSGD(MAML):
    """Meta-SGD on a Keras model.

    Args:
      model, loss_fn: as `MAML`.
      init: initial step sizes: 'uniform' in [`init_low`, `init_high`], or
        'update_lr' (every step size `inner_lr`).
      learn_lr: meta-learn the step sizes (False: frozen at their initial values).
      seed: seed of the uniform initialisation (default: Keras' global seed).
      **maml_options: `MAML`'s options (`inner_lr`, `num_inner_steps`, `first_order`, `meta_lr`, ...).
    """

    name = "meta_sgd"

    def __init__(self, model: keras.Model, loss_fn: Callable, *, init: str = MetaSGDOptions.init,
                 init_low: float = MetaSGDOptions.init_low, init_high: float = MetaSGDOptions.init_high,
                 learn_lr: bool = MetaSGDOptions.learn_lr, seed=None, inner_lr: float = 0.0, **maml_options):
        if init not in ("uniform", "update_lr"):
            raise ValueError(f"init must be 'uniform' or 'update_lr'; got {init!r}.")
        self.init, self.init_low, self.init_high, self.learn_lr, self.seed = init, init_low, init_high, learn_lr, seed
        super().__init__(model, loss_fn, inner_lr=inner_lr, **maml_options)

    @classmethod
    def config_kwargs(cls, config) -> dict:
        return dict(super().config_kwargs(config), **dataclasses.asdict(config.options), seed=config.seed)

    def build_meta_parameters(self) -> None:
        """One step size per adapted parameter."""
        for i in self.split.adapted_indices:
            var = self.model.trainable_variables[i]
            if self.init == "update_lr":
                value = tf.fill(var.shape, tf.constant(self.inner_lr, var.dtype))
            else:
                value = keras.random.uniform(var.shape, self.init_low, self.init_high, var.dtype, seed=self.seed)
            self.meta_parameters.add(f"alpha_{i}", value, trainable=self.learn_lr)

    def inner_optimizer(self, view: TaskView, own: Sequence) -> InnerOptimizer:
        sizes = own if self.learn_lr else [tf.convert_to_tensor(v) for v in self.meta_parameters.weights]
        return learned_sgd(view.layout(sizes, self.split.adapted_indices))
