"""ANIL (Almost No Inner Loop): MAML where only the network's head adapts in the inner loop.

Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse? Towards
Understanding the Effectiveness of MAML", ICLR 2020. The inner loop adapts
the final layer only; the body is meta-learned through the query loss after
the head's adaptation (second order, as the paper's ANIL, unless
`first_order`). The paper keeps MAML's hyper-parameters and networks, so the
defaults are MAML's flags; `head_layers` widens the head (the paper: 1).

Difference: none intended. The head is counted in layers that own trainable
weights, from the output back.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List

import keras

from maml_tf.algorithms.maml import MAML
from maml_tf.algorithms.options import ANILOptions


def head_mask(model: keras.Model, head_layers: int) -> List[bool]:
    """Which of `model.trainable_variables` belong to its last `head_layers` layers with trainable weights."""
    owner = {}
    for layer in model._flatten_layers(include_self=False):
        for var in layer._trainable_variables:  # Weights the layer itself owns (not its sublayers').
            owner[id(var)] = id(layer)
    layers = list(dict.fromkeys(owner.get(id(v), id(v)) for v in model.trainable_variables))
    head = set(layers[-head_layers:])
    return [owner.get(id(v), id(v)) in head for v in model.trainable_variables]


class ANIL(MAML):
    """ANIL on a Keras model.

    Args:
      model, loss_fn: as `MAML`.
      head_layers: how many layers with weights, from the output back, adapt
        in the inner loop (ignored when `adapt` is given).
      **maml_options: `MAML`'s options (`inner_lr`, `num_inner_steps`, `first_order`, `adapt`, ...).
    """

    name = "anil"

    def __init__(self, model: keras.Model, loss_fn: Callable, *, head_layers: int = ANILOptions.head_layers, adapt=None,
                 **maml_options):
        if head_layers < 1:
            raise ValueError(f"head_layers must be at least 1; got {head_layers}.")
        self.head_layers = head_layers
        super().__init__(model, loss_fn, adapt=head_mask(model, head_layers) if adapt is None else adapt,
                         **maml_options)

    @classmethod
    def config_kwargs(cls, config) -> dict:
        return dict(super().config_kwargs(config), **dataclasses.asdict(config.options))
