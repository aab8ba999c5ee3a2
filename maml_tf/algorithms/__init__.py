"""Registry of meta-learning algorithms, looked up by `--algorithm`."""

from maml_tf.algorithms.base import MetaLearner, TaskBatch
from maml_tf.algorithms.maml import MAML, tf1_adam
from maml_tf.algorithms.reptile import Reptile
from maml_tf.algorithms.imaml import IMAML

ALGORITHMS = {"maml": MAML, "reptile": Reptile, "imaml": IMAML}

__all__ = ["ALGORITHMS", "IMAML", "MAML", "MetaLearner", "Reptile", "TaskBatch", "tf1_adam"]
