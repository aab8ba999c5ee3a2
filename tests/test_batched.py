"""Task-batched networks (`maml_tf.batched`) compute exactly the per-task computation."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf import losses, networks
from maml_tf.algorithms import MAML, TaskBatch
from maml_tf.batched import TaskBatchedNetwork, unsupported_reason
from maml_tf.functional import functional_call


def sequential_net():
    return keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3, padding="valid", activation="relu"),
                             keras.layers.AveragePooling2D(2), keras.layers.Activation("tanh"),
                             keras.layers.Flatten(), keras.layers.Dense(4), keras.layers.LeakyReLU(0.1),
                             networks.BatchNormTF1(), keras.layers.Dense(3, activation="softmax")])


NETS = {
    "conv_strided_bn": lambda: networks.build_conv((8, 8, 1), 3, 4, "batch_norm", False, "mean"),
    "conv_maxpool_flatten": lambda: networks.build_conv((16, 16, 3), 3, 4, "batch_norm", True, "flatten"),
    "conv_layer_norm": lambda: networks.build_conv((8, 8, 1), 3, 4, "layer_norm", False, "mean"),
    "fc_images_bn": lambda: networks.build_fc((4, 4, 1), 3, [5, 4], "batch_norm"),
    "fc_layer_norm": lambda: networks.build_fc((2,), 1, [5], "layer_norm"),
    "sequential": sequential_net,
    "norm_before_conv": lambda: keras.Sequential([
        keras.Input((6, 6, 2)), networks.LayerNormTF1(), keras.layers.MaxPooling2D(2), keras.layers.Conv2D(3, 2),
        networks.BatchNormTF1(), keras.layers.Flatten(), keras.layers.Dense(2)]),
}


def per_task_weights(net, model, num_tasks, rng):
    """Different weights for every task, in task layout."""
    theta = [tf.convert_to_tensor(v) for v in model.trainable_variables]
    return [w + tf.constant(0.3 * rng.standard_normal(w.shape), w.dtype) for w in net.per_task(theta, num_tasks)]


@pytest.mark.parametrize("name", list(NETS))
def test_forward_and_gradients_equal_per_task_calls(name):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = NETS[name]()
    assert unsupported_reason(model) is None
    net = TaskBatchedNetwork(model)
    num_tasks = 3
    weights = per_task_weights(net, model, num_tasks, rng)
    x = tf.constant(rng.standard_normal((num_tasks, 4) + tuple(model.input_shape[1:])), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(weights)
        got = net(weights, x)
        total = tf.reduce_sum(tf.sin(got))
    grads = tape.gradient(total, weights)
    for t in range(num_tasks):
        task_w = net.task_weights(weights, t, num_tasks)
        with tf.GradientTape() as ref_tape:
            ref_tape.watch(task_w)
            want = functional_call(model, task_w, x[t])
            ref_total = tf.reduce_sum(tf.sin(want))
        # float32: the grouped and the per-task convolutions sum in different orders, which oneDNN picks per
        # CPU. On one CPU an output of 4.4376 came out 1.1e-4 apart (2.6e-5 of the largest output), against
        # the former 1e-5 tolerance; 1e-4 of the largest output leaves a 4x margin over that measurement.
        out_scale = float(tf.reduce_max(tf.abs(want)))
        np.testing.assert_allclose(got[t].numpy(), want.numpy(), rtol=0, atol=1e-4 * max(out_scale, 1.0))
        ref = ref_tape.gradient(ref_total, task_w)
        # float32, other summation orders: relative to the largest gradient entry (biases right before a
        # batch norm have analytically zero gradients, i.e. float32 noise).
        scale = max(float(tf.reduce_max(tf.abs(r))) for r in ref)
        for g, r in zip(net.task_weights(grads, t, num_tasks), ref):
            np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=0, atol=1e-5 * scale)


def class_batch(rng, num_tasks, shape, ways=3, shots=2):
    x = lambda: tf.constant(rng.random((num_tasks, ways * shots) + shape), tf.float32)  # noqa: E731
    y = tf.constant(np.tile(np.eye(ways, dtype=np.float32), (num_tasks, shots, 1)))
    return TaskBatch(x(), y, x(), y)


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_meta_gradients_equal_mapped_tasks(first_order):
    """Second-order MAML through grouped convolutions and exact batch norm equals the tf.map_fn path,
    for one and for several task groups (5 tasks in groups of 2, 2, 1)."""
    keras.utils.set_random_seed(1)
    model = networks.build_conv((8, 8, 1), 3, 4, "batch_norm", False, "mean")
    batch = class_batch(np.random.default_rng(1), 5, (8, 8, 1))
    common = dict(inner_lr=0.4, num_inner_steps=2, first_order=first_order, metric_fn=losses.accuracy)
    mapped = MAML(model, losses.scaled_xent(2), batch_tasks=False, **common)
    assert mapped.batched is None
    want, want_results = mapped.meta_gradients(batch, num_steps=3)
    for groups in (1, 3):
        batched = MAML(model, losses.scaled_xent(2), batch_tasks=True, task_groups=groups, **common)
        got, results = batched.meta_gradients(batch, num_steps=3)
        for g, w, v in zip(got, want, model.trainable_variables):
            if v.path.startswith("conv") and v.path.endswith("bias"):
                continue  # Right before a batch norm: analytically 0, float32 noise (see test_golden.py).
            np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=0, atol=1e-4 * float(tf.reduce_max(tf.abs(w))),
                                       err_msg=v.path)
        for key in ("support_loss", "query_losses", "query_outputs", "query_metrics", "total_losses2"):
            np.testing.assert_allclose(results[key].numpy(), want_results[key].numpy(), rtol=1e-4, atol=5e-5)


def test_lean_training_step_runs_only_the_objective():
    """Without num_steps only the last step's query pass runs: the same gradient and objective, no per-step list."""
    keras.utils.set_random_seed(2)
    model = networks.build_fc((2,), 1, [5], "batch_norm", dtype="float64")
    rng = np.random.default_rng(2)
    batch = TaskBatch(*[tf.constant(rng.standard_normal((4, 5, d))) for d in (2, 1, 2, 1)])
    for batch_tasks in (True, False):
        algo = MAML(model, losses.mse, inner_lr=0.1, num_inner_steps=3, batch_tasks=batch_tasks)
        full, full_results = algo.meta_gradients(batch, num_steps=4)
        lean, lean_results = algo.meta_gradients(batch)
        assert "total_losses2" not in lean_results and lean_results["query_losses"].shape == (4, 1)
        np.testing.assert_allclose(lean_results["objective_loss"], full_results["total_losses2"][2], rtol=1e-12)
        np.testing.assert_allclose(lean_results["total_loss1"], full_results["total_loss1"], rtol=1e-12)
        for a, b in zip(lean, full):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-14)


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


def test_unsupported_models_fall_back_to_the_per_task_loop():
    dropout = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dropout(0.5),
                                keras.layers.Dense(2)])
    keras_bn = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.BatchNormalization(),
                                 keras.layers.Dense(2)])
    subclassed = Subclassed()
    subclassed(tf.zeros([1, 3]))
    a, b = keras.Input((3,)), keras.Input((3,))
    two_inputs = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])))
    conv64 = networks.build_conv((8, 8, 1), 3, 4, "batch_norm", False, "mean", dtype="float64")
    for model, why in [(dropout, "non-trainable state"), (keras_bn, "non-trainable state"), (subclassed, "chain"),
                       (two_inputs, "chain"), (conv64, "float64")]:
        reason = unsupported_reason(model)
        assert reason is not None and why in reason, reason
        with pytest.raises(ValueError, match="cannot run task-batched"):
            MAML(model, losses.mse, inner_lr=0.1, num_inner_steps=1, batch_tasks=True, first_order=True)
        assert MAML(model, losses.mse, inner_lr=0.1, num_inner_steps=1, first_order=True).batched is None


@pytest.mark.parametrize("fn", [losses.mse, losses.scaled_xent(2), losses.mean_xent, losses.accuracy])
def test_batched_losses_equal_per_task_losses(fn):
    rng = np.random.default_rng(3)
    outputs = tf.constant(rng.standard_normal((4, 6, 3)))
    labels = tf.constant(np.eye(3)[rng.integers(0, 3, (4, 6))])
    want = [fn(outputs[t], labels[t]).numpy() for t in range(4)]
    np.testing.assert_allclose(fn.batched(outputs, labels).numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(losses.per_task(lambda o, y: fn(o, y), outputs, labels).numpy(), want, rtol=1e-12)


def test_unknown_number_of_tasks():
    """A meta-batch whose task axis is unknown when traced (e.g. Keras datasets) runs as one group."""
    keras.utils.set_random_seed(4)
    model = networks.build_conv((8, 8, 1), 3, 4, "batch_norm", False, "mean")
    algo = MAML(model, losses.scaled_xent(1), inner_lr=0.1, num_inner_steps=1, batch_tasks=True, task_groups=2)
    spec = TaskBatch(*[tf.TensorSpec([None, 3] + shape) for shape in ([8, 8, 1], [3], [8, 8, 1], [3])])
    traced = tf.function(lambda b: algo.meta_gradients(b)[1]["objective_loss"], input_signature=[spec])
    batch = class_batch(np.random.default_rng(4), 5, (8, 8, 1), shots=1)
    np.testing.assert_allclose(float(traced(batch)), float(algo.meta_gradients(batch)[1]["objective_loss"]),
                               rtol=1e-5)


def test_default_task_groups_two_per_core_on_a_cpu_one_under_xla():
    model = networks.build_fc((1,), 1, [4], "None")
    algo = MAML(model, losses.mse, inner_lr=0.1, num_inner_steps=1, batch_tasks=True)
    rng = np.random.default_rng(5)
    x = lambda: tf.constant(rng.random((25, 3, 1), np.float32))
    batch = TaskBatch(x(), x(), x(), x())
    cpu_only = not tf.config.list_physical_devices("GPU")
    groups = lambda algo: algo.execution.backend(batch).split(batch)  # noqa: E731
    assert len(groups(algo)) == (min(2 * os.cpu_count(), 25) if cpu_only else 1)
    algo.compile(jit_compile=True)
    assert len(groups(algo)) == 1
    assert len(groups(MAML(model, losses.mse, inner_lr=0.1, num_inner_steps=1, task_groups=3))) == 3


def test_conv_nets_run_task_batched_by_default_only_for_small_support_sets():
    conv = networks.build_conv((8, 8, 1), 3, 4, "batch_norm", False, "mean")
    fc = networks.build_fc((1,), 1, [4], "None")
    tasks = lambda model, n: TaskBatch(*[tf.zeros((2, n) + tuple(model.inputs[0].shape[1:]))] * 4)

    def runs_batched(model, n, **options):
        return MAML(model, losses.mse, inner_lr=0.1, num_inner_steps=1, **options).runs_batched(tasks(model, n))

    assert runs_batched(conv, 9) and not runs_batched(conv, 10)
    assert runs_batched(conv, 30, batched_conv_max_support=0) and runs_batched(conv, 30, batch_tasks=True)
    assert not runs_batched(conv, 5, batch_tasks=False)
    assert runs_batched(fc, 100)
