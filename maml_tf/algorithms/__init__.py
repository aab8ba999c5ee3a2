"""The algorithm registry: name -> the algorithm class and its options (imports no TensorFlow).

Each entry names the class by module path, so that `main.py` can build the
flags and validate them without importing TensorFlow; `get(name)` imports it.
An algorithm's options dataclass lives in its registry entry's module
(`maml_tf/algorithms/options.py`) for the same reason.

Adding an algorithm: one module with the class (composing `maml_tf.core`),
its options dataclass, one entry here, and its tests.
"""

from __future__ import annotations

import importlib
from typing import Dict, NamedTuple, Tuple

from maml_tf.algorithms import options as _options
from maml_tf.types import TaskBatch


class AlgorithmEntry(NamedTuple):
    """`target`: 'module:Class'; `options`: its options dataclass; `prefix`: of its flags."""

    target: str
    options: type
    prefix: str
    aliases: Tuple[str, ...] = ()

    def load(self) -> type:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)


ALGORITHMS: Dict[str, AlgorithmEntry] = {
    "maml": AlgorithmEntry("maml_tf.algorithms.maml:MAML", _options.MAMLOptions, "maml"),
    "reptile": AlgorithmEntry("maml_tf.algorithms.reptile:Reptile", _options.ReptileOptions, "reptile"),
    "imaml": AlgorithmEntry("maml_tf.algorithms.imaml:IMAML", _options.IMAMLOptions, "imaml"),
    "meta_sgd": AlgorithmEntry("maml_tf.algorithms.meta_sgd:MetaSGD", _options.MetaSGDOptions, "metasgd",
                               aliases=("metasgd", "meta-sgd")),
    "anil": AlgorithmEntry("maml_tf.algorithms.anil:ANIL", _options.ANILOptions, "anil"),
    "maml++": AlgorithmEntry("maml_tf.algorithms.mamlpp:MAMLPlusPlus", _options.MAMLPPOptions, "mamlpp",
                             aliases=("mamlpp", "maml_pp")),
    "bmaml": AlgorithmEntry("maml_tf.algorithms.bmaml:BMAML", _options.BMAMLOptions, "bmaml"),
    "emaml": AlgorithmEntry("maml_tf.algorithms.bmaml:EMAML", _options.EMAMLOptions, "emaml"),
    "platipus": AlgorithmEntry("maml_tf.algorithms.platipus:PLATIPUS", _options.PLATIPUSOptions, "platipus"),
    "llama": AlgorithmEntry("maml_tf.algorithms.llama:LLAMA", _options.LLAMAOptions, "llama"),
    "mmaml": AlgorithmEntry("maml_tf.algorithms.mmaml:MMAML", _options.MMAMLOptions, "mmaml"),
}


DEFAULT = "maml"  # The original code's algorithm: `main.py`'s and the library's default.


def canonical(name: str) -> str:
    """The registry name of `name` or of one of its aliases; raises `ValueError` for an unknown one."""
    for key, entry in ALGORITHMS.items():
        if name == key or name in entry.aliases:
            return key
    raise ValueError(f"Unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}.")


def get(name: str) -> type:
    """The algorithm class registered as `name` (imports TensorFlow)."""
    return ALGORITHMS[canonical(name)].load()


def __getattr__(name):  # `from maml_tf.algorithms import MAML, TaskBatch, MetaLearner` without an eager TF import.
    for entry in ALGORITHMS.values():
        if entry.target.endswith(":" + name):  # A registered class, by its class name.
            return entry.load()
    if name == "TaskBatch":
        return TaskBatch
    if name in ("MetaLearner", "tf1_adam"):
        module = "base" if name == "MetaLearner" else "maml"
        return getattr(importlib.import_module(f"maml_tf.algorithms.{module}"), name)
    raise AttributeError(f"module 'maml_tf.algorithms' has no attribute {name!r}")
