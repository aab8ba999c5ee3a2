"""maml_tf: gradient-based meta-learning (MAML and its family) in TensorFlow 2 / Keras 3.

Public API (imported lazily, so that `maml_tf.data.prepare` runs without TensorFlow):

- `MetaModel(model, algorithm, loss, metrics, **options)`: a `keras.Model`
  whose `compile`/`fit`/`evaluate`/`save` meta-train any built Keras model;
  `adapt`, `adapted_model`, `evaluate_tasks`.
- `meta_learner(model, algorithm, loss=..., metrics=..., **options)`: the
  algorithm object itself (`train_step`, `evaluate`, `adapt`, `meta_gradients`).
- `MAML`, `Reptile`, `IMAML`, `MetaSGD`, `ANIL`, `TaskBatch`: the algorithms (registry:
  `maml_tf.algorithms.ALGORITHMS`) and the task-batch type.
- `classification_tasks`, `regression_tasks`: task datasets from your own data.
- `functional_call`: run a Keras model with other weights.

Modules: `config` (run options), `core` (the pieces every algorithm composes;
docs/architecture.md), `networks` (the original MAML networks and the
exact-gradient `BatchNormTF1`/`LayerNormTF1`), `functional` (the forward
pass), `batched` (its task-layout form), `losses`, `algorithms` (registry and
algorithms), `api`, `data` (datasource registry and task sources), `train`
(the main.py programs), `tf1_checkpoint` (original TF1 checkpoints), `plotting`.
"""

_EXPORTS = {
    "MetaModel": "maml_tf.api", "meta_learner": "maml_tf.api", "FastModel": "maml_tf.api",
    "MAML": "maml_tf.algorithms", "Reptile": "maml_tf.algorithms", "IMAML": "maml_tf.algorithms",
    "MetaSGD": "maml_tf.algorithms", "ANIL": "maml_tf.algorithms", "TaskBatch": "maml_tf.types",
    "classification_tasks": "maml_tf.data.tasks", "regression_tasks": "maml_tf.data.tasks",
    "functional_call": "maml_tf.functional",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'maml_tf' has no attribute {name!r}")
