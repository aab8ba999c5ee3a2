"""MAML and first-order MAML, and the template of the gradient-based family (Meta-SGD, ANIL, MAML++).

Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of
Deep Networks", ICML 2017 (reference code: `cbfinn/maml`, TensorFlow 1).

The structure mirrors the original `MAML.construct_model`: per task, inner
SGD steps on the support loss with step size `inner_lr`, the query loss
after every step, and the meta-objective = mean over tasks of the query loss
after `num_inner_steps` steps, minimised with Adam. Second-order
meta-gradients come from nested `tf.GradientTape`s; `first_order=True` stops
the gradient through the inner gradients (the original `--stop_grad`).

A variant overrides `inner_optimizer` (the inner update rule and its
meta-learned state) and `objective_weights` (the meta-objective over the
inner steps), and chooses which weights adapt (`adapt`); everything else,
and how the tasks are run (`maml_tf.core.execution`), is shared.
"""

from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional, Sequence

import keras
import tensorflow as tf

from maml_tf.algorithms.base import MetaLearner, TaskBatch, refresh_statistics
from maml_tf.core import objective
from maml_tf.core.execution import Execution, TaskView
from maml_tf.core.inner import (InnerOptimizer, Trajectory, inner_loop, inner_step, recomputed_gradient, sgd,
                                stack_steps)
from maml_tf.core.outer import outer_update


class Phase(NamedTuple):
    """What one traced computation of the gradient-based family is built with: a value given to it, never an
    attribute flipped while tracing (MAML++'s schedules pick one per epoch; evaluation has its own).

    first_order: stop the gradient through the inner gradients.
    objective_weights: the meta-objective's weights over the inner steps (a list, or a tensor that changes
      every iteration: MAML++'s multi-step loss).
    training: Keras' training flag of every forward pass (MAML++'s non-transductive evaluation: False).
    meta_training: a pass of meta-training, not an evaluation (PLATIPUS then draws from q; MAML++ collects the
      batch moments for its running statistics).
    """

    first_order: bool
    objective_weights: object
    training: bool
    meta_training: bool


def tf1_adam(learning_rate: float) -> keras.optimizers.Optimizer:
    """Adam with the TF1 `AdamOptimizer` defaults the original uses.

    Keras 3 Adam's update (`lr_t = lr*sqrt(1-b2^t)/(1-b1^t)`,
    `w -= lr_t*m/(sqrt(v)+eps)`) is the TF1 update; only epsilon differs by default.
    """
    return keras.optimizers.Adam(learning_rate=learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-8)


class MAML(MetaLearner):
    """Model-agnostic meta-learning on a Keras model.

    Args:
      model: a built Keras 3 model (its trainable variables are the
        meta-parameters).
      loss_fn: `loss_fn(outputs, labels) -> scalar` loss of one task.
      inner_lr: inner SGD step size (alpha, `--update_lr`).
      num_inner_steps: inner steps whose query loss is meta-optimised
        (`--num_updates`).
      first_order: stop the gradient through inner gradients (`--stop_grad`).
      adapt: which variables the inner loop adapts (see `ParameterSplit`);
        default: all but normalisation parameters, as the original.
      metric_fn: optional `metric_fn(outputs, labels) -> scalar` per task
        (accuracy for classification).
      clip_value: clip each meta-gradient element to [-clip_value, clip_value].
      clip_norm: clip the meta-gradient to this global norm first (`--clip_norm`).
      optimizer: outer optimiser (default: TF1-style Adam with `meta_lr`).
      pretrain_optimizer: optimiser of the pretraining phase (default: a
        separate TF1-style Adam, as the original).
      meta_lr: Adam step size when the optimisers are defaults.
      training: Keras training flag for every forward pass.
      update_moving_statistics: after each meta-update, refresh the model's
        non-trainable state (e.g. Keras `BatchNormalization` moving averages)
        with one pass over the meta-batch's support sets at the new weights,
        so that `training=False` inference can use it. Default: off, as the
        original (batch statistics everywhere).
      return_outputs: keep the per-task model outputs in the results (the
        CLI and parity tests read them; they must be single tensors).
      batch_tasks, task_groups, batched_conv_max_support: how the tasks of a
        meta-batch run; see `maml_tf.core.execution.Execution` (default: at
        once where the model allows it and it was faster, else `tf.map_fn`).
      recompute_inner_steps: take the meta-gradient by recomputing each inner
        step in the backward pass (`maml_tf.core.inner.recomputed_gradient`):
        the same meta-gradient with memory flat in the number of inner steps,
        for about one more forward pass per step; tasks then run one at a time.
    """

    name = "maml"
    compiled_steps = ("train_step", "pretrain_step", "evaluate", "predictive")
    task_batched = True  # Whether its tasks may run at once in task layout (else always with tf.map_fn).
    evaluators = ("adapted_function", "predictive")  # `predictive`: its point estimate as a distribution of one.
    has_objective_term = False  # Whether `objective_term` adds to the meta-objective (LLAMA).
    library_defaults = {"return_outputs": False}  # Any output structure; the library does not need the outputs.

    def __init__(self, model: keras.Model, loss_fn: Callable, *, inner_lr: float, num_inner_steps: int,
                 first_order: bool = False, adapt=None, metric_fn: Optional[Callable] = None,
                 clip_value: Optional[float] = None, optimizer=None, pretrain_optimizer=None,
                 meta_lr: float = 1e-3, training: bool = True, update_moving_statistics: bool = False,
                 return_outputs: bool = True, batch_tasks: Optional[bool] = None,
                 task_groups: Optional[int] = None, batched_conv_max_support: int = 10,
                 recompute_inner_steps: bool = False, clip_norm: Optional[float] = None):
        if num_inner_steps < 1:
            raise ValueError(f"num_inner_steps must be at least 1; got {num_inner_steps}.")
        super().__init__(model, loss_fn, metric_fn=metric_fn, adapt=adapt, training=training,
                         second_order=not first_order)
        self.recompute_inner_steps = bool(recompute_inner_steps)
        if self.recompute_inner_steps:
            if self.loss_scale is not None:
                raise ValueError("recompute_inner_steps does not support float16 layers (loss scaling).")
            batch_tasks = False  # Each task's gradient is taken inside tf.map_fn, step by step.
        if not self.task_batched:
            batch_tasks = False
        self.execution = Execution(model, batch_tasks, task_groups, batched_conv_max_support)
        self.inner_lr = float(inner_lr)
        self.num_inner_steps = int(num_inner_steps)
        self.first_order = bool(first_order)
        self.clip_value, self.clip_norm = clip_value, clip_norm
        self.update_moving_statistics = update_moving_statistics
        self.return_outputs = return_outputs
        self.objective_step = self.num_inner_steps - 1  # Index of the meta-objective in `total_losses2`.
        self.build_meta_parameters()
        self.optimizer = optimizer or tf1_adam(meta_lr)
        self.pretrain_optimizer = pretrain_optimizer or tf1_adam(meta_lr)
        self.optimizer.build(self.meta_variables)
        self.pretrain_optimizer.build(model.trainable_variables)
        self.compile()

    # ------------------------------------------------------- variant hooks
    def build_meta_parameters(self) -> None:
        """Declares the algorithm's own meta-parameters in `self.meta_parameters` (MAML: none)."""

    def inner_optimizer(self, view: TaskView, own: Sequence) -> InnerOptimizer:
        """The inner update rule. `own`: the algorithm's own meta-parameters as tensors; those aligned with
        weights go through `view.layout` (one copy per task when tasks run at once)."""
        return sgd(self.inner_lr)

    def objective_weights(self) -> Sequence[float]:
        """The meta-objective's weights over the inner steps (MAML: the last step only)."""
        return objective.last_step(self.num_inner_steps)

    def phase_for(self, meta_training: bool) -> Phase:
        """The phase of a meta-training pass or of an evaluation (MAML: its options, the same in both)."""
        return Phase(self.first_order, self.objective_weights(), self.training, meta_training)

    def objective_term(self, view: TaskView, trajectory, tasks, own: Sequence):
        """A per-task term added to the meta-objective, from the inner loop's `trajectory`, where
        `has_objective_term` (LLAMA: eta/2 times the log-determinant of the curvature at the adapted weights)."""
        raise NotImplementedError

    def task_view(self, view: TaskView, support, own: Sequence) -> TaskView:
        """The view a task is adapted and evaluated through (MMAML: conditioned on the task's modulations, which
        its encoder computes from the support set); MAML: `view`."""
        return view

    def extra_task_outputs(self, phase: Phase) -> tuple:
        """Keys of `task_forward`'s results kept per task besides MAML's (MAML++: the batch moments)."""
        return ()

    @classmethod
    def from_config(cls, config, model: keras.Model) -> "MAML":
        """The algorithm `main.py` runs (the original's losses and flags, and the algorithm's options)."""
        loss_fn, metric_fn = cls.task_losses(config)
        return cls(model, loss_fn, metric_fn=metric_fn, **cls.config_kwargs(config))

    @classmethod
    def config_kwargs(cls, config) -> dict:
        """Keyword arguments of the constructor from `config` (a variant adds its options)."""
        return dict(inner_lr=config.update_lr, num_inner_steps=config.num_updates, first_order=config.first_order,
                    clip_value=config.clip_value, meta_lr=config.meta_lr,
                    batch_tasks=None if config.batch_tasks else False, task_groups=config.task_groups or None,
                    batched_conv_max_support=config.batched_conv_max_support,
                    recompute_inner_steps=config.recompute_inner_steps, clip_norm=config.clip_norm or None)

    def _checkpoint_objects(self) -> Dict[str, object]:
        """What a checkpoint must hold to resume exactly: weights and both Adam states."""
        return {"model": self.model, "optimizer": self.optimizer, "pretrain_optimizer": self.pretrain_optimizer}

    # ------------------------------------------------------------- per task
    def task_forward(self, view: TaskView, params: Sequence, tasks: TaskBatch, num_steps: int,
                     query_steps: Sequence[int], phase: Optional[Phase] = None,
                     own_gradient: bool = False) -> Dict[str, tf.Tensor]:
        """The original `task_metalearn`: adaptation and the query loss after each of `query_steps`.

        Written once for every backend: `tasks` is one task (`tf.map_fn`) or
        a group in task layout (then every entry has a leading task axis).

        Returns a dict: `support_outputs`, `support_loss` (pre-update),
        `query_outputs` [query steps, ...], `query_losses` [query steps],
        `objective` (and `support_metric`, `query_metrics` with a metric);
        with `own_gradient`, also `grads`, the objective's gradient with respect
        to `params` by recomputing the inner steps (`recompute_inner_steps`).
        `phase`: the derivative order, objective weights and training flag it is built with (default: a
        meta-training pass's).
        """
        phase = self.phase_for(meta_training=True) if phase is None else phase
        weights, own = self.unpack(params)
        support, query = view.support(tasks), view.query(tasks)
        view = view.with_training(phase.training)
        base_view, view = view, self.task_view(view, support, own)
        trajectory = inner_loop(view, view.layout(weights), self.inner_optimizer(view, own), support, num_steps,
                                query=query, query_steps=query_steps, first_order=phase.first_order,
                                keep_weights=own_gradient)
        axis = 1 if view.batched else 0  # The step axis follows the task axis.
        out = {"support_outputs": trajectory.support_outputs, "support_loss": trajectory.support_loss,
               "query_outputs": stack_steps(trajectory.query_outputs, axis),
               "query_losses": stack_steps(trajectory.query_losses, axis)}
        weights_over_steps = phase.objective_weights
        if set(objective.steps_needed(weights_over_steps)) <= set(trajectory.query_losses):  # Not in short evaluations.
            out["objective"] = objective.combine(trajectory.query_losses, weights_over_steps)
            if self.has_objective_term:
                term = self.objective_term(view, trajectory, tasks, own)
                out["objective"] += term
                out["objective_term"] = term
            if own_gradient:
                out["grads"] = self.recomputed_meta_gradient(base_view, params, tasks, trajectory.history, phase)
        if self.metric_fn is not None:
            out["support_metric"] = view.metric(trajectory.support_outputs, support)
            out["query_metrics"] = stack_steps({k: view.metric(o, query)
                                                for k, o in trajectory.query_outputs.items()}, axis)
        return out

    def recomputed_meta_gradient(self, view: TaskView, params: Sequence, tasks, history: Sequence,
                                 phase: Phase) -> list:
        """`task_forward`'s objective differentiated with respect to `params` by recomputing the inner steps of
        `history` one at a time in the backward pass (`maml_tf.core.inner.recomputed_gradient`). Everything a
        step depends on (the task's view, the inner optimiser, the algorithm's own meta-parameters) is rebuilt
        from `params` inside the step's tape, so that their gradients flow. The inner optimisers of the
        algorithms that allow it are stateless (SGD with fixed or learned step sizes)."""
        weights_over_steps = phase.objective_weights
        needed = objective.steps_needed(weights_over_steps)
        has_term = self.has_objective_term
        last = max(needed + [self.objective_step] * has_term)
        support, query = view.support(tasks), view.query(tasks)

        def step_fn(k, w, p):
            own = self.unpack(p)[1]
            view_k = self.task_view(view, support, own)
            optimizer = self.inner_optimizer(view_k, own)
            new = inner_step(view_k, w, optimizer, optimizer.init(view_k.split.adapted(w)), support, k,
                             first_order=phase.first_order)[2]
            terms = []
            if k in needed:
                terms.append(tf.cast(weights_over_steps[k], self.dtype) * view_k.query_loss(new, query, k)[1])
            if has_term and k == self.objective_step:
                reached = Trajectory(new, (), None, None, {}, {}, {k: new})
                terms.append(self.objective_term(view_k, reached, tasks, own))
            return new, tf.add_n(terms) if terms else None

        grads, grad_w0 = recomputed_gradient(history[:last + 2], params, step_fn)
        n = len(self.model.trainable_variables)
        return [g + g0 for g, g0 in zip(grads[:n], grad_w0)] + grads[n:]

    def adapt(self, support_x, support_y, steps: Optional[int] = None, weights: Optional[Sequence] = None) -> list:
        """Fast weights after `steps` inner steps on one task's support set."""
        return self.adapt_view(support_x, support_y, steps, weights)[1]

    def adapt_view(self, support_x, support_y, steps: Optional[int] = None, weights: Optional[Sequence] = None):
        """`(view, fast weights)`: `adapt`, and the task's view to run the adapted model through (`task_view`)."""
        weights = self.weights() if weights is None else list(weights)
        _, own = self.unpack(self.params())
        support = (support_x, support_y)
        view = self.task_view(self.task_view_class(self), support, own)
        steps = self.num_inner_steps if steps is None else steps
        return view, inner_loop(view, weights, self.inner_optimizer(view, own), support, steps).weights

    def _predictive(self, support_x, support_y, x, steps: Optional[int] = None, num_samples: Optional[int] = None):
        """`(outputs [S, N, ...], noise_std)`: the predictive samples on `x` after adapting to one task's support
        set (`maml_tf.uncertainty`). MAML: one sample, its point estimate, and no noise model (None);
        BMAML/EMAML: the particles; PLATIPUS: `num_samples` draws. `steps` defaults to `num_inner_steps`."""
        del num_samples
        steps = self.num_inner_steps if steps is None else steps
        view, weights = self.adapt_view(support_x, support_y, steps)
        return view.forward(weights, x, step=steps - 1)[None], None

    # ------------------------------------------------------------ meta-batch
    def batch_forward(self, params: Sequence, batch: TaskBatch, num_steps: Optional[int],
                      with_gradients: bool = False, phase: Optional[Phase] = None) -> Dict[str, tf.Tensor]:
        """`task_forward` for every task of a meta-batch, and the totals.

        The backend (`self.execution`) runs the tasks at once when the model
        allows it, else maps over them with `tf.map_fn` (as the original).
        Per-task entries have a leading task axis (`query_losses` [tasks, steps]).
        With `with_gradients`, `grads` holds the meta-gradient: the gradient of
        the mean meta-objective with respect to `params`.

        `num_steps=None` runs what the meta-objective needs and nothing more,
        as the original's training iterations do (TF1 runs only the ops
        `metatrain_op` depends on): `num_inner_steps` steps, the query set only
        after the steps the objective weighs. The results then hold
        `total_loss1` and the `objective_loss` (`objective_metric`) but no
        per-step `total_losses2`. An algorithm with an `objective_term`
        (LLAMA) also returns it per task and its mean, `total_objective_term`.
        `phase` defaults to a meta-training pass's with gradients, an evaluation's without.
        """
        batch = self.task_view_class.check(batch)
        phase = self.phase_for(meta_training=with_gradients) if phase is None else phase
        lean = num_steps is None
        num_steps = self.num_inner_steps if lean else num_steps
        needed = objective.steps_needed(phase.objective_weights)
        query_steps = sorted(set(needed + [self.objective_step])) if lean else list(range(num_steps))
        keys = ["support_loss", "query_losses"]
        keys += ["support_outputs", "query_outputs"] if self.return_outputs else []
        keys += ["support_metric", "query_metrics"] if self.metric_fn is not None else []
        keys += list(self.extra_task_outputs(phase))
        # The algorithm's own objective term (LLAMA's), where the objective's steps run.
        term = self.has_objective_term and set(needed) <= set(query_steps)
        keys += ["objective_term"] if term else []
        backend = self.execution.backend(batch)
        own_gradient = with_gradients and self.recompute_inner_steps  # The task function differentiates itself.

        def task_fn(view, p, tasks):
            if own_gradient:
                return self.task_forward(view, p, tasks, num_steps, query_steps, phase, own_gradient=True)
            return self.task_forward(view, p, tasks, num_steps, query_steps, phase)  # EMAML's takes no own_gradient.

        per_task = backend.run(self, task_fn, list(params), batch, keys + ["grads"] * own_gradient,
                               with_gradients and not own_gradient)
        if own_gradient:
            per_task["grads"] = [tf.reduce_mean(g, 0) for g in per_task["grads"]]
        # Totals as the original: sums over tasks divided by the meta-batch size.
        per_task.update(self.totals(per_task["support_loss"], per_task["query_losses"],
                                    per_task.get("support_metric"), per_task.get("query_metrics"),
                                    objective=query_steps.index(self.objective_step)
                                    if self.objective_step in query_steps else len(query_steps)))
        if term:
            per_task["total_objective_term"] = tf.reduce_mean(per_task["objective_term"])
        if lean:
            per_task.pop("total_losses2")
            per_task.pop("total_accuracies2", None)
        return per_task

    def meta_gradients(self, batch: TaskBatch, weights: Optional[Sequence] = None, num_steps: Optional[int] = None,
                       phase: Optional[Phase] = None):
        """Meta-gradient of the mean meta-objective (MAML: the query loss after `num_inner_steps` steps).

        Args:
          batch: the task batch.
          weights: meta-parameters as tensors, aligned with `meta_variables`
            (default: their current values).
          num_steps: inner steps to build and report (>= num_inner_steps);
            default: only what the meta-objective needs (see `batch_forward`).
          phase: what it is built with (default: a meta-training pass's, `phase_for(True)`).

        Returns:
          `(gradients, results)`: unclipped gradients aligned with
          `meta_variables`, and the `batch_forward` results.
        """
        params = self.params() if weights is None else list(weights)
        results = self.batch_forward(params, batch, num_steps, with_gradients=True, phase=phase)
        return results.pop("grads"), results

    def _train_step(self, batch: TaskBatch, num_steps: Optional[int] = None, phase: Optional[Phase] = None):
        """One meta-update (the original `metatrain_op`). Returns the batch results.

        `num_steps` (a Python int) builds and reports that many steps
        (`total_losses2`); by default only what the update needs runs, and the
        results hold `objective_loss` (see `batch_forward`). The update is the same.
        """
        grads, results = self.meta_gradients(batch, num_steps=num_steps, phase=phase)
        results.update(self.outer_step(grads, self.optimizer))
        if self.update_moving_statistics:
            refresh_statistics(self.model, TaskBatch(*batch).support_x, self.training)
        return results

    def _pretrain_step(self, batch: TaskBatch):
        """One step of plain multi-task training on the pre-update loss (`pretrain_op`)."""
        batch = TaskBatch(*batch)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            weights = self.weights()
            tape.watch(weights)
            losses = tf.map_fn(lambda t: self.task_loss(self.forward(weights, t[0]), t[1]),
                               (batch.support_x, batch.support_y), fn_output_signature=self.dtype)
            loss = tf.reduce_mean(losses)
        grads = self.gradient(tape, loss, weights)
        # The original's pretrain_op is a plain Adam minimize: no clipping.
        return {"total_loss1": loss, **outer_update(grads, self.model.trainable_variables, self.pretrain_optimizer,
                                                    loss_scale=self.loss_scale)}

    def _evaluate(self, batch: TaskBatch, num_steps: int):
        """Pre-update and per-step post-update results, without any update."""
        return self.batch_forward(self.params(), batch, num_steps)
