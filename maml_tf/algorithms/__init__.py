"""Registry of meta-learning algorithms, looked up by `--algorithm`."""

from maml_tf.algorithms.maml import MAML, TaskBatch, tf1_adam

ALGORITHMS = {"maml": MAML}

__all__ = ["ALGORITHMS", "MAML", "TaskBatch", "tf1_adam"]
