"""Registry of meta-learning algorithms, looked up by `--algorithm`."""

from maml_tf.algorithms.maml import MAML, TaskBatch, tf1_adam
from maml_tf.algorithms.reptile import Reptile

ALGORITHMS = {"maml": MAML, "reptile": Reptile}

__all__ = ["ALGORITHMS", "MAML", "Reptile", "TaskBatch", "tf1_adam"]
