"""`benchmarks/profile_step.py`: the op-type table read from a profiler trace."""

import os
import sys

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

from profile_step import op_type_table, self_times  # noqa: E402


def test_self_time_excludes_nested_events():
    spans = [(0.0, 10.0, "outer"), (2.0, 3.0, "A"), (2.5, 1.0, "B"), (6.0, 2.0, "A"), (12.0, 1.0, "C"),
             (12.0, 4.0, "outer")]  # Same start: the longer one encloses.
    assert self_times(spans) == {"outer": 10 - 3 - 2 + 4 - 1, "A": 3 - 1 + 2, "B": 1, "C": 1}


def test_op_type_table_of_a_traced_function(tmp_path):
    x = tf.constant(np.random.RandomState(0).rand(256, 256).astype("float32"))

    @tf.function
    def work(x):
        for _ in range(20):
            x = tf.tanh(tf.matmul(x, x) / 256.0)
        return x

    work(x)
    tf.profiler.experimental.start(str(tmp_path))
    for _ in range(3):
        work(x).numpy()
    tf.profiler.experimental.stop()
    table = op_type_table(str(tmp_path))
    names = [op for op, _, _ in table]
    assert any("MatMul" in op for op in names) and "Tanh" in names, names
    assert abs(sum(share for _, _, share in table) - 1) < 1e-9
    assert all(us >= 0 for _, us, _ in table)
