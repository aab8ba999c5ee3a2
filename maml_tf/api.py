"""Meta-learning your own Keras model: `meta_learner` (library) and `MetaModel` (Keras front end).

Both run the same algorithm objects as `main.py` (`maml_tf.algorithms`): one
implementation, two front ends.

    learner = meta_learner(model, "maml", loss="categorical_crossentropy", metrics=["accuracy"],
                           inner_lr=0.4, num_inner_steps=1)
    learner.train_step(task_batch)                    # compiled meta-update (its own outer Adam)
    fast = learner.adapt(support_x, support_y, steps=5)

    meta = MetaModel(model, "maml", loss="categorical_crossentropy", metrics=["accuracy"],
                     inner_lr=0.4, num_inner_steps=1)
    meta.compile(optimizer=keras.optimizers.Adam(1e-3))
    meta.fit(task_dataset, epochs=10, steps_per_epoch=100, callbacks=[...])
    meta.save("meta.keras"); meta = keras.models.load_model("meta.keras")
    adapted = meta.adapted_model(support_x, support_y)  # .predict(x) / __call__

Losses and metrics follow Keras' convention, `fn(y_true, y_pred)` (a name,
a `keras.losses.Loss`, or a function returning per-example values, averaged
over a task's examples); `meta_learner` also accepts the algorithms' own
convention through `loss_fn=` / `metric_fn=` (`fn(outputs, labels) -> scalar`).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import keras
import tensorflow as tf

from maml_tf import algorithms
from maml_tf.algorithms.base import as_float_tensor, refresh_statistics
from maml_tf.core.execution import check_task_batch
from maml_tf.types import TaskBatch
from maml_tf.functional import functional_call

_METRIC_ALIASES = {"accuracy": "categorical_accuracy", "acc": "categorical_accuracy", "mse": "mean_squared_error",
                   "mae": "mean_absolute_error"}


def _name(fn) -> str:
    return fn if isinstance(fn, str) else getattr(fn, "name", None) or getattr(fn, "__name__", type(fn).__name__)


def task_loss(loss) -> Callable:
    """A Keras-style loss (`fn(y_true, y_pred)`, a name or a `Loss`) as `loss_fn(outputs, labels) -> scalar`."""
    fn = keras.losses.get(loss) if isinstance(loss, (str, dict)) else loss
    if not callable(fn):
        raise TypeError(f"loss must be a Keras loss name, a keras.losses.Loss or a callable; got {loss!r}.")
    return lambda outputs, labels: tf.reduce_mean(as_float_tensor(fn(labels, outputs), f"Loss {_name(loss)!r}"))


def task_metrics(metrics) -> Optional[Callable]:
    """Keras-style metrics (names or `fn(y_true, y_pred)`) as one `metric_fn(outputs, labels) -> [num_metrics]`."""
    if not metrics:
        return None
    fns = []
    for m in metrics:
        fn = _metric_function(m) if isinstance(m, str) else m
        if isinstance(fn, keras.metrics.Metric):
            raise TypeError(f"Metric {_name(m)!r} is a stateful keras.metrics.Metric; pass its function "
                            "(e.g. 'categorical_accuracy' or keras.metrics.categorical_accuracy) instead.")
        fns.append(fn)
    return lambda outputs, labels: tf.stack([tf.reduce_mean(tf.cast(f(labels, outputs), outputs.dtype))
                                             for f in fns])


def _metric_function(name: str) -> Callable:
    fn = getattr(keras.metrics, _METRIC_ALIASES.get(name, name), None)
    if not callable(fn) or isinstance(fn, type):
        raise ValueError(f"Unknown metric {name!r}: use a function name of keras.metrics (e.g. "
                         "'categorical_accuracy', 'mean_squared_error') or pass a function fn(y_true, y_pred).")
    return fn


def meta_learner(model: keras.Model, algorithm: str = algorithms.DEFAULT, *, loss=None, metrics: Sequence = (),
                 loss_fn: Optional[Callable] = None, metric_fn: Optional[Callable] = None, **options):
    """The algorithm `algorithm` (a name of `maml_tf.algorithms.ALGORITHMS`) on a built Keras model.

    Args:
      model: a built Keras 3 model (Sequential, functional or subclassed; any inputs).
      algorithm: registry name.
      loss: Keras-style loss (name, `Loss`, or `fn(y_true, y_pred)`), averaged over a task's examples.
      metrics: Keras-style metric names or functions; results hold a vector with one entry per metric.
      loss_fn, metric_fn: alternatively, the algorithms' own `fn(outputs, labels) -> scalar`.
      **options: the algorithm's keyword arguments (e.g. MAML: `inner_lr`,
        `num_inner_steps`, `first_order`, `adapt`, `clip_value`, `meta_lr`,
        `training`, `update_moving_statistics`; see each class).

    Returns:
      An instance of the registered class (`maml_tf.algorithms.get(algorithm)`).
    """
    cls = algorithms.get(algorithm)  # ValueError naming the choices for an unknown name.
    if (loss is None) == (loss_fn is None):
        raise ValueError("Give exactly one of loss= (Keras convention) or loss_fn= (outputs, labels).")
    loss_fn = loss_fn or task_loss(loss)
    metric_fn = metric_fn or task_metrics(metrics)
    try:
        return cls(model, loss_fn, metric_fn=metric_fn, **{**cls.library_defaults, **options})
    except TypeError as e:
        raise TypeError(f"{algorithm}: {e}. See help(maml_tf.algorithms.{cls.__name__}) for its options.") from None


class FastModel:
    """A model with adapted (fast) weights: `predict(x)` and `__call__(x)` run it without touching the original.
    `step`: the last inner step taken, for a model whose `call` takes `step` (MAML++'s per-step batch norm)."""

    def __init__(self, model: keras.Model, weights: Sequence, training: bool, step: Optional[int] = None):
        self.model, self.weights, self.training, self.step = model, list(weights), training, step

    def __call__(self, x):
        return functional_call(self.model, self.weights, x, training=self.training, step=self.step)

    def predict(self, x):
        """Outputs as numpy arrays."""
        return tf.nest.map_structure(lambda t: t.numpy(), self(x))


def _to_task_batch(data) -> TaskBatch:
    if isinstance(data, dict):
        return check_task_batch(TaskBatch(**{k: data[k] for k in TaskBatch._fields}))
    if isinstance(data, (tuple, list)) and len(data) == 4:
        return check_task_batch(TaskBatch(*data))
    raise ValueError("MetaModel expects task batches: TaskBatch(support_x, support_y, query_x, query_y), a 4-tuple "
                     "or a dict with those keys, each with a leading task axis (see maml_tf.data.tasks).")


@keras.saving.register_keras_serializable(package="maml_tf")
class MetaModel(keras.Model):
    """A Keras model whose `fit`/`evaluate` meta-train/evaluate the wrapped model.

    `compile(optimizer=...)` sets the outer optimiser (loss and metrics are
    given here, because they are per-task); `fit(task_dataset)` runs one
    meta-update per dataset element (a task meta-batch), with Keras' progress
    bar, callbacks and `History`; `evaluate` reports pre- and post-adaptation
    results without updating. Logs: `loss` (query loss after the inner loop,
    the meta-objective), `pre_loss` (before adaptation), and for each metric
    `<name>` and `pre_<name>`.

    Algorithms: any of `maml_tf.algorithms.ALGORITHMS` ('maml' and first-order,
    'meta_sgd', 'anil', 'imaml'); their own meta-parameters (Meta-SGD's step
    sizes) are meta-learned by the compiled optimiser and saved with the
    model. 'reptile' applies its direction `theta - mean(phi)` with the
    compiled optimiser (SGD with learning rate epsilon is exactly Reptile; its
    inner-optimiser state is not saved with the model).

    Args:
      model: the built Keras model to meta-learn.
      algorithm: a registry name (`maml_tf.algorithms.ALGORITHMS`).
      loss: Keras-style loss (name, `Loss` or registered function).
      metrics: Keras-style metric names or registered functions.
      eval_steps: inner steps in `evaluate` (MAML; default its training steps).
      **options: the algorithm's options (serialisable values only: numbers,
        strings, booleans, lists).
    """

    def __init__(self, model: keras.Model, algorithm: str = algorithms.DEFAULT, loss=None,
                 metrics: Sequence = (), eval_steps: Optional[int] = None, name: str = "meta_model",
                 **options):
        for key in ("optimizer", "pretrain_optimizer", "meta_lr"):
            if key in options:
                raise ValueError(f"{key} is set by MetaModel.compile(optimizer=...), not by MetaModel(...).")
        super().__init__(name=name)
        self.base_model = model
        self.algorithm = algorithm
        self.loss_spec, self.metric_specs = loss, list(metrics)
        self.eval_steps = eval_steps
        self.options = dict(options)
        self.learner = meta_learner(model, algorithm, loss=loss, metrics=self.metric_specs, **self.options)
        self.meta_parameters = self.learner.meta_parameters  # Saved with the model (e.g. Meta-SGD's step sizes).
        self.metric_names = [_name(m) for m in self.metric_specs]
        self._trackers = {n: keras.metrics.Mean(name=n) for n in
                          ["loss", "pre_loss"] + [p + n for n in self.metric_names for p in ("", "pre_")]}
        self.built = True

    # ------------------------------------------------------------- Keras API
    def call(self, inputs, training=False):
        """The wrapped model before adaptation."""
        return self.base_model(inputs, training=training)

    def fit(self, *args, shuffle=False, **kwargs):
        """Keras `fit`; task datasets are already random, so `shuffle` defaults to False."""
        return super().fit(*args, shuffle=shuffle, **kwargs)

    def compile(self, optimizer="adam", **kwargs):
        for key in ("loss", "metrics", "weighted_metrics", "loss_weights"):
            if kwargs.get(key) is not None:
                raise ValueError(f"MetaModel.compile: {key}= is per task; pass it to MetaModel(...) instead.")
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            raise ValueError("MetaModel.compile: pass the plain optimizer; a float16 model's losses are scaled by "
                             "the meta-learner itself (inner loop included), see maml_tf.algorithms.base.")
        super().compile(optimizer=optimizer, **kwargs)
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):  # Keras wraps under mixed_float16.
            self.optimizer = self.optimizer.inner_optimizer

    def get_compile_config(self):
        if getattr(self, "optimizer", None) is None:
            return None
        return {"optimizer": keras.saving.serialize_keras_object(self.optimizer)}

    def compile_from_config(self, config):
        self.compile(optimizer=keras.saving.deserialize_keras_object(config["optimizer"]))
        self.optimizer.build(self.learner.meta_variables)  # So that its saved state loads.

    @property
    def metrics(self):
        return list(self._trackers.values())

    def _logs(self, results: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        def track():
            self._trackers["loss"].update_state(results["objective_loss"])
            self._trackers["pre_loss"].update_state(results["total_loss1"])
            for i, n in enumerate(self.metric_names):
                self._trackers[n].update_state(results["objective_metric"][i])
                self._trackers["pre_" + n].update_state(results["total_accuracy1"][i])

        if "update_skipped" in results:  # Loss scaling skipped an overflowing step: its losses are not counted.
            tf.cond(results["update_skipped"], lambda: None, track)
        else:
            track()
        return {n: t.result() for n, t in self._trackers.items()}

    def train_step(self, data):
        batch = _to_task_batch(data)
        grads, results = self.learner.meta_gradients(batch)
        results.update(self.learner.outer_step(grads, self.optimizer))  # The learner's model is base_model.
        if self.learner.update_moving_statistics:
            refresh_statistics(self.base_model, batch.support_x, self.learner.training)
        return self._logs(results)

    def test_step(self, data):
        return self._logs(self.learner._evaluate(_to_task_batch(data), self._eval_steps()))

    def _eval_steps(self) -> Optional[int]:
        return self.eval_steps or getattr(self.learner, "num_inner_steps", None)

    # ------------------------------------------------------------ adaptation
    def adapt(self, support_x, support_y, steps: Optional[int] = None) -> list:
        """Fast weights (aligned with `base_model.trainable_variables`) after adapting to one support set."""
        return self.learner.adapt(support_x, support_y, steps=steps)

    def adapted_model(self, support_x, support_y, steps: Optional[int] = None) -> FastModel:
        """A `FastModel` (with `predict`) adapted to one support set; the meta-parameters are untouched."""
        steps = steps or getattr(self.learner, "num_inner_steps", None)
        return FastModel(self.base_model, self.adapt(support_x, support_y, steps), self.learner.training,
                         None if steps is None else steps - 1)

    def evaluate_tasks(self, batch, steps: Optional[int] = None) -> Dict[str, object]:
        """Mean over the tasks of `batch` of the query loss and metrics before and after each inner step.

        Returns numpy arrays: `pre_loss`, `loss` [steps] (and `pre_<metric>`, `<metric>` [steps]).
        """
        results = self.learner.evaluate(_to_task_batch(batch), steps or self._eval_steps())
        out = {"pre_loss": results["total_loss1"].numpy(), "loss": results["total_losses2"].numpy()}
        for i, n in enumerate(self.metric_names):
            out["pre_" + n] = results["total_accuracy1"].numpy()[i]
            out[n] = results["total_accuracies2"].numpy()[:, i]
        return out

    # ----------------------------------------------------------------- saving
    def get_config(self):
        return {"model": keras.saving.serialize_keras_object(self.base_model), "algorithm": self.algorithm,
                "loss": keras.saving.serialize_keras_object(self.loss_spec),
                "metrics": [keras.saving.serialize_keras_object(m) for m in self.metric_specs],
                "eval_steps": self.eval_steps, "name": self.name, **self.options}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        algorithms.get(config["algorithm"])  # Its module registers the layers its networks use (MAML++'s).
        model = keras.saving.deserialize_keras_object(config.pop("model"))
        loss = config.pop("loss")
        loss = loss if isinstance(loss, str) else keras.saving.deserialize_keras_object(loss)
        metrics = [m if isinstance(m, str) else keras.saving.deserialize_keras_object(m)
                   for m in config.pop("metrics")]
        return cls(model, loss=loss, metrics=metrics, **config)
