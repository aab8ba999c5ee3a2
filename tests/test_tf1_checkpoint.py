"""TF1 checkpoint export and import by the original variable names."""

import numpy as np
import pytest
import tensorflow as tf

from maml_tf import networks
from maml_tf.config import Config
from maml_tf.tf1_checkpoint import export_tf1_checkpoint, load_tf1_checkpoint, read_tf1_checkpoint


def test_export_then_import_round_trip(tmp_path):
    config = Config(datasource="omniglot", num_filters=8)
    source = networks.build_network(config)
    prefix = export_tf1_checkpoint(source, str(tmp_path / "model100"))
    stored = read_tf1_checkpoint(prefix)
    assert set(stored) == set(networks.original_variable_names(source))
    assert "model/conv1" in stored and "model/Variable_3" in stored and "model/3/beta" in stored
    tf.keras.utils.set_random_seed(1)
    target = networks.build_network(config)
    load_tf1_checkpoint(target, prefix)
    for a, b in zip(source.get_weights(), target.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_import_errors_name_the_problem(tmp_path):
    prefix = export_tf1_checkpoint(networks.build_network(Config(datasource="omniglot", num_filters=8)),
                                   str(tmp_path / "model1"))
    with pytest.raises(ValueError, match="shape"):
        load_tf1_checkpoint(networks.build_network(Config(datasource="omniglot", num_filters=16)), prefix)
    with pytest.raises(ValueError, match="Missing"):
        load_tf1_checkpoint(networks.build_network(Config(datasource="omniglot", num_filters=8,
                                                          norm="layer_norm")), prefix)
    with pytest.raises(FileNotFoundError, match="TF1 checkpoint"):
        load_tf1_checkpoint(networks.build_network(Config()), str(tmp_path / "nothing"))
