"""MAML++: MAML with the six fixes of "How to train your MAML".

Antoniou, Edwards & Storkey, ICLR 2019; the authors' code:
`AntreasAntoniou/HowToTrainYourMAMLPytorch` (`few_shot_learning_system.py`,
`meta_neural_network_architectures.py`, `inner_loop_optimizers.py`,
`experiment_config/*.json`). Each fix is a core piece or a hook of the MAML
template, switchable on its own:

- MSL (`msl`): the meta-objective weighs the query loss after every inner
  step with the authors' importance vector, annealed toward the last step
  over the first `msl_epochs` epochs, then the last step alone
  (`core.objective.multi_step_loss_weights`).
- DA (`first_order_to_second_order_epoch`): first-order meta-gradients up to
  and including that epoch, second-order after (-1, the authors' configs:
  second order throughout).
- BNRS, BNWB: the network's `PerStepBatchNorm` layers (`mamlpp_network.PerStepNetwork`,
  built by `build_model`): running statistics and scale/offset per inner step.
- LSLR (`lslr`): one meta-learned inner step size per adapted weight tensor and
  inner step (`core.inner.learned_sgd(per_step=True)`), initialised to
  `inner_lr` (the authors' `task_learning_rate`, 0.1); frozen at it when off.
- CA (`cosine_annealing`): the meta step size follows the cosine from
  `meta_lr` to `min_meta_lr` over `total_epochs`: the default outer Adam's
  schedule (`core.outer.CosineAnnealing`; with `MetaModel`, compile with
  `keras.optimizers.Adam(CosineAnnealing(...))`).

Epochs are `iterations_per_epoch` meta-updates, counted by `iterations`, a
meta-parameter saved with the checkpoints (so a resumed run continues every
schedule exactly). The CLI's `train_step` runs one compiled step per phase
(derivative order, multi-step loss on or off), chosen by the epoch: the
multi-step loss costs the query pass after every step only while it is on.
`meta_gradients` (used by `MetaModel.fit`) chooses inside the graph.

Authors' defaults kept: 5 inner steps, inner step sizes 0.1, the loss the
mean cross-entropy, outer Adam 1e-3 annealed to 1e-5 over 100 epochs of 500
iterations, MSL over 10 epochs, transductive evaluation (batch statistics:
the authors' code always normalises with them), batch-norm parameters
meta-learned but not adapted in the inner loop.

Deliberate differences:
- The running statistics are updated once per meta-update from the mean,
  over the tasks and passes of the batch, of the batch moments at each step
  (with the momentum compounded over those passes, `1 - 0.9^passes`); the
  authors' layers update them in every forward pass, one task after another.
  They only matter for the non-transductive evaluation (`transductive=False`),
  which normalises every pass with them.
- The authors' `CosineAnnealingLR` continues the cosine past `total_epochs`;
  here the step size stays at its minimum.
- Evaluation beyond the trained number of steps reuses the last step's batch
  norm and step sizes.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import keras
import tensorflow as tf

from maml_tf import losses, networks
from maml_tf.algorithms.maml import MAML, Phase, tf1_adam
from maml_tf.algorithms.options import MAMLPPOptions
from maml_tf.core import objective
from maml_tf.replicas import assign, gather_tasks
from maml_tf.core.execution import TaskView
from maml_tf.core.inner import InnerOptimizer, learned_sgd
from maml_tf.core.outer import CosineAnnealing
from maml_tf.algorithms.mamlpp_network import PerStepBatchNorm, PerStepNetwork, collect_moments


_O = MAMLPPOptions  # Its defaults are the options' (the authors' configs), declared there once.

class MAMLPlusPlus(MAML):
    """MAML++ on a Keras model (per-step batch norm needs `mamlpp_network.PerStepNetwork`'s layers).

    Args:
      model, loss_fn: as `MAML`.
      inner_lr: initial inner step sizes (the authors' 0.1).
      num_inner_steps: inner steps (the authors' 5).
      msl, msl_epochs: multi-step loss, annealed over this many epochs.
      lslr: meta-learn per-layer per-step inner step sizes (False: frozen at `inner_lr`).
      first_order_to_second_order_epoch: first order up to this epoch (-1: never).
      cosine_annealing, total_epochs, min_meta_lr: the meta step size's schedule (of the default optimiser).
      iterations_per_epoch: meta-updates per epoch (the authors' `total_iter_per_epoch`).
      transductive: evaluate with batch statistics (the authors' code); False:
        with the per-step running statistics.
      **maml_options: `MAML`'s options (`meta_lr`, `first_order`, `clip_value`, ...).
    """

    name = "maml++"
    compiled_steps = ("train_step", "evaluate", "predictive")  # The train step: one per phase (`PhasedStep`).

    def __init__(self, model: keras.Model, loss_fn: Callable, *, inner_lr: float = _O.init_inner_lr,
                 num_inner_steps: int = 5, msl: bool = _O.msl, msl_epochs: int = _O.multi_step_loss_num_epochs,
                 lslr: bool = _O.lslr, first_order_to_second_order_epoch: int = _O.first_order_to_second_order_epoch,
                 cosine_annealing: bool = _O.ca, total_epochs: int = 100, min_meta_lr: float = _O.min_learning_rate,
                 iterations_per_epoch: int = 500, transductive: bool = _O.transductive,
                 meta_lr: float = 1e-3, **maml_options):
        if iterations_per_epoch < 1 or total_epochs < 1 or msl_epochs < 1:
            raise ValueError("iterations_per_epoch, total_epochs and msl_epochs must be at least 1.")
        self.msl, self.msl_epochs, self.lslr = bool(msl), int(msl_epochs), bool(lslr)
        self.da_epoch = int(first_order_to_second_order_epoch)
        self.total_epochs = int(total_epochs)
        self.iterations_per_epoch, self.transductive = int(iterations_per_epoch), bool(transductive)
        self.norms = [layer for layer in model._flatten_layers(include_self=False)
                      if isinstance(layer, PerStepBatchNorm)]
        self._moment_rows = []
        if cosine_annealing and maml_options.get("optimizer") is None:
            maml_options["optimizer"] = tf1_adam(CosineAnnealing(meta_lr, min_meta_lr, total_epochs,
                                                                 iterations_per_epoch))
        super().__init__(model, loss_fn, inner_lr=inner_lr, num_inner_steps=num_inner_steps, meta_lr=meta_lr,
                         **maml_options)

    @classmethod
    def config_kwargs(cls, config) -> dict:
        o = config.options
        per_epoch = config.epoch_length
        return dict(super().config_kwargs(config), inner_lr=o.init_inner_lr, msl=o.msl,
                    msl_epochs=o.multi_step_loss_num_epochs, lslr=o.lslr,
                    first_order_to_second_order_epoch=o.first_order_to_second_order_epoch,
                    cosine_annealing=o.ca, min_meta_lr=o.min_learning_rate, iterations_per_epoch=per_epoch,
                    total_epochs=max(1, math.ceil(config.metatrain_iterations / per_epoch)),
                    transductive=o.transductive)

    @classmethod
    def build_model(cls, config) -> keras.Model:
        """The authors' network for `config` (`mamlpp_network.PerStepNetwork`): 4 conv stages of 64 filters
        (MiniImagenet: 48) with max-pooling, or the original fc net's widths for regression."""
        o = config.options
        conv = config.classification and config.conv
        filters = o.filters or (48 if config.datasource == "miniimagenet" else 64)
        widths = [filters] * 4 if conv else list(config.network_spec.fc_hidden)
        return PerStepNetwork(
            networks.input_shape(config), config.num_ways, widths,
            config.num_updates, conv=conv, norm=config.norm == "batch_norm", per_step_weights=o.bnwb,
            per_step_statistics=o.bnrs, dtype="mixed_float16" if config.mixed_precision else None)

    @classmethod
    def task_losses(cls, config):
        """The authors' mean cross-entropy (MAML's is summed over the query set and divided by K)."""
        if config.classification:
            return losses.mean_xent, losses.accuracy
        return losses.mse, None

    # ------------------------------------------------------- variant hooks
    def build_meta_parameters(self) -> None:
        """The meta-update counter, and one step size per adapted weight tensor and inner step (LSLR)."""
        self.iterations = self.meta_parameters.add("iterations", tf.constant(0, tf.int64), trainable=False)
        self.step_sizes = [
            self.meta_parameters.add(f"lslr_{i}", tf.fill([self.num_inner_steps], tf.constant(self.inner_lr,
                                                                                           self.dtype)),
                                     trainable=self.lslr)
            for i in self.split.adapted_indices]

    def inner_optimizer(self, view: TaskView, own: Sequence) -> InnerOptimizer:
        sizes = own if self.lslr else [tf.convert_to_tensor(v) for v in self.step_sizes]
        return learned_sgd(sizes, per_step=True)  # Per-layer sizes: the same tensors in any layout.

    def phase_at(self, schedule: tuple) -> Phase:
        """The meta-training phase of `schedule`, `(second order, multi-step loss)` (`phase`): the multi-step loss's
        weights are this epoch's (a tensor of the update counter)."""
        second_order, msl = schedule
        weights = objective.last_step(self.num_inner_steps)
        if msl:
            weights = tf.cast(objective.multi_step_loss_weights(self.epoch_tensor(), self.num_inner_steps,
                                                                self.msl_epochs), self.dtype)
        return Phase(not second_order, weights, self.training, meta_training=True)

    def phase_for(self, meta_training: bool) -> Phase:
        """A meta-training pass: this epoch's phase; an evaluation: the last step's loss, with the batch statistics
        (transductive, the authors') or the per-step running statistics (`training=False`)."""
        if meta_training:
            return self.phase_at(self.phase(self.epoch()))
        return Phase(self.first_order, objective.last_step(self.num_inner_steps), self.training and self.transductive,
                     meta_training=False)

    def extra_task_outputs(self, phase: Phase) -> tuple:
        return ("moments",) if self.norms and phase.meta_training else ()

    # --------------------------------------------------------------- epochs
    def epoch(self) -> int:
        return int(self.iterations.numpy()) // self.iterations_per_epoch

    def epoch_tensor(self) -> tf.Tensor:
        return tf.convert_to_tensor(self.iterations) // self.iterations_per_epoch

    def phase(self, epoch: int) -> tuple:
        """`(second order, multi-step loss)` at `epoch`."""
        return not self.first_order and epoch > self.da_epoch, self.msl and epoch < self.msl_epochs

    # ---------------------------------------------------------- training
    def compiled_step(self, name: str):
        return PhasedStep(self) if name == "train_step" else super().compiled_step(name)

    def _phase_step(self, schedule, batch, num_steps=None):
        return self._train_step(batch, num_steps, phase=self.phase_at(schedule))

    def meta_gradients(self, batch, weights=None, num_steps=None, phase=None):
        """MAML's meta-gradient in `phase`; updates the running statistics from the batch moments (a meta-training
        pass). Without a phase (traced once for every epoch: `MetaModel.fit`), the epoch chooses the derivative
        order in the graph, with the multi-step loss's weights of the epoch."""
        if phase is None:
            def at(second_order):
                return self.meta_gradients(batch, weights, num_steps, self.phase_at((second_order, self.msl)))
            if self.first_order or self.da_epoch < 0:
                return at(not self.first_order)
            return tf.cond(self.epoch_tensor() > self.da_epoch, lambda: at(True), lambda: at(False))
        grads, results = super().meta_gradients(batch, weights, num_steps, phase)
        if "moments" in results:
            self._update_statistics(results.pop("moments"))
        return grads, results

    def outer_step(self, grads, optimizer) -> dict:
        """The update, counted (the epochs of MSL and DA)."""
        results = super().outer_step(grads, optimizer)
        assign(self.iterations, self.iterations + 1)
        return results

    # ----------------------------------------------- running statistics
    def task_forward(self, view, params, tasks, num_steps, query_steps, phase=None, own_gradient=False):
        phase = self.phase_for(meta_training=True) if phase is None else phase
        if "moments" not in self.extra_task_outputs(phase):
            return super().task_forward(view, params, tasks, num_steps, query_steps, phase, own_gradient)
        with collect_moments() as records:
            out = super().task_forward(view, params, tasks, num_steps, query_steps, phase, own_gradient)
        # One row per (layer, statistics index) seen: the mean over its passes of the batch moments.
        rows = {}
        for layer, k, mean, var in records:
            rows.setdefault((id(layer), k), (layer, k, []))[2].append((mean, var))
        self._moment_rows = [(layer, k, len(seen)) for layer, k, seen in rows.values()]
        out["moments"] = tf.concat([tf.concat([tf.add_n([m for m, _ in seen]) / len(seen),
                                               tf.add_n([v for _, v in seen]) / len(seen)], 0)
                                    for _, _, seen in rows.values()], 0)
        return out

    def recomputed_meta_gradient(self, *args):
        with collect_moments():  # The recomputed passes repeat the forward's moments: not counted again.
            return super().recomputed_meta_gradient(*args)

    def _update_statistics(self, moments) -> None:
        """Running statistics <- their EMA with the batch's moments (mean over tasks), the momentum
        compounded over the passes that row saw (`1 - (1 - momentum)^passes`)."""
        moments = gather_tasks(moments)  # Distributed: every replica's tasks, so that each updates alike.
        mean = tf.reduce_mean(moments, 0)
        tasks = tf.cast(tf.shape(moments)[0], mean.dtype)
        offset, updates = 0, {}
        for layer, k, passes in self._moment_rows:
            c = layer.moving_mean.shape[-1]
            m, v = mean[offset:offset + c], mean[offset + c:offset + 2 * c]
            offset += 2 * c
            keep = tf.pow(tf.constant(1.0 - layer.momentum, mean.dtype), passes * tasks)
            updates.setdefault(id(layer), (layer, {}))[1][k] = (m, v, keep)
        for layer, rows in updates.values():
            layer.update_statistics(rows)



class PhasedStep:
    """MAML++'s `train_step(batch, num_steps=None)`: one compiled meta-update per phase (derivative order,
    multi-step loss), the current epoch's chosen at each call; each is traced when its phase first comes."""

    def __init__(self, learner: MAMLPlusPlus):
        self.learner, self.steps = learner, {}

    def __call__(self, batch, num_steps=None):
        learner = self.learner
        phase = learner.phase(learner.epoch())
        if phase not in self.steps:
            self.steps[phase] = learner.function(functools.partial(learner._phase_step, phase), distributed=True)
        return self.steps[phase](batch, num_steps)

    def experimental_get_tracing_count(self) -> int:
        return sum(step.experimental_get_tracing_count() for step in self.steps.values())
