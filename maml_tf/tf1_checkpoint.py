"""Weights by the original TF1 variable names: golden files, checkpoint import and export.

The original code saves its trainable variables with `tf.train.Saver`, under
names such as `model/conv1`, `model/Variable_1` (unnamed `tf.Variable`s, in
creation order) and `model/0/beta`; `networks.original_variable_names` maps the
port's Keras variables to them.
"""

from __future__ import annotations

from typing import Dict, Mapping

import keras
import numpy as np
import tensorflow as tf

from maml_tf.networks import original_variable_names


def assign_by_original_names(model: keras.Model, values: Mapping[str, np.ndarray], strict: bool = True) -> None:
    """Sets `model`'s trainable variables from arrays keyed by original TF1 names.

    Args:
      model: a network built by `maml_tf.networks`.
      values: original name (e.g. `model/conv1`) -> array.
      strict: also fail on names in `values` that the model does not have.

    Raises:
      ValueError: a name is missing or a shape does not fit, with what to change.
    """
    names = original_variable_names(model)
    missing = [n for n in names if n not in values]
    extra = sorted(set(values) - set(names))
    if missing or (strict and extra):
        raise ValueError(
            f"The weights do not fit this network. Missing: {missing or 'none'}; unexpected: {extra or 'none'}. "
            "Check --datasource, --conv, --norm, --num_filters and --max_pool against the run that wrote them.")
    for var, name in zip(model.trainable_variables, names):
        value = np.asarray(values[name])
        if tuple(value.shape) != tuple(var.shape):
            raise ValueError(f"{name} has shape {value.shape} but the network expects {tuple(var.shape)} "
                             f"({var.path}); check --num_filters, --num_classes and --datasource.")
        var.assign(value.astype(var.dtype))


def read_tf1_checkpoint(path: str) -> Dict[str, np.ndarray]:
    """All variables of a TF1 checkpoint (`path` = prefix such as `.../model59000`)."""
    try:
        reader = tf.train.load_checkpoint(path)
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
        raise FileNotFoundError(f"Cannot read a TF1 checkpoint at {path!r} (give the prefix, without "
                                f".index): {e}") from None
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def read_tf1_weights(path: str) -> Dict[str, np.ndarray]:
    """The trainable weights of a TF1 checkpoint: without Adam slots, `beta*_power` entries (present if it
    holds global variables) and batch norm's never-updated moving statistics."""
    return {k: v for k, v in read_tf1_checkpoint(path).items()
            if "Adam" not in k and "power" not in k and "moving_" not in k}


def load_tf1_checkpoint(model: keras.Model, path: str) -> None:
    """Loads a checkpoint written by the original `main.py` into `model`; every trainable variable must be there."""
    assign_by_original_names(model, read_tf1_weights(path))


def export_tf1_checkpoint(model: keras.Model, path: str) -> str:
    """Writes `model`'s weights as a TF1 checkpoint the original code can restore.

    Returns:
      The checkpoint prefix (`path`).
    """
    names = original_variable_names(model)
    values = [v.numpy() for v in model.trainable_variables]
    graph = tf.Graph()
    with graph.as_default():
        tf1_vars = [tf.compat.v1.Variable(value, name=name) for name, value in zip(names, values)]
        saver = tf.compat.v1.train.Saver({name: v for name, v in zip(names, tf1_vars)})
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            return saver.save(sess, path, write_meta_graph=False)
