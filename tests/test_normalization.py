"""The exact normalisation: its graph-mode gradient and the fused kernel of `differentiated_once`."""

import contextlib

import numpy as np
import pytest
import tensorflow as tf

from maml_tf import losses, networks
from maml_tf.algorithms import MAML, TaskBatch
from maml_tf.config import Config

# (x shape, moment axes, parameter shape, with a scale): the layouts of networks.py and batched.py.
LAYOUTS = [((4, 5, 5, 3), (0, 1, 2), (3,), False),  # Batch norm, NHWC.
           ((4, 5, 5, 3), (1, 2, 3), (3,), True),  # Layer norm.
           ((2, 6, 4), (1,), (2, 1, 4), False),  # Task-batched dense batch norm [T, N, F].
           ((3, 4, 4, 2, 3), (1, 2, 4), (2, 3), True)]  # Task-batched conv layer norm [N, H, W, T, C].


def _derivatives(normalize, x, params, axes, weights):
    """Loss and its first, second and third derivatives (of chained scalar functions) w.r.t. x and params."""
    sources = [x] + params
    with tf.GradientTape(persistent=True) as t3:
        t3.watch(sources)
        with tf.GradientTape() as t2:
            t2.watch(sources)
            with tf.GradientTape() as t1:
                t1.watch(sources)
                loss = tf.reduce_sum(tf.sin(normalize(x, axes, 1e-3, *params)) * weights)
            first = t1.gradient(loss, sources)
            second_of = sum(tf.reduce_sum(tf.cos(g)) for g in first)
        second = t2.gradient(second_of, sources)
        third_of = sum(tf.reduce_sum(tf.square(g)) for g in second)
    return [loss] + first + second + t3.gradient(third_of, sources)


@pytest.mark.parametrize("shape, axes, param_shape, with_scale", LAYOUTS)
def test_graph_mode_gradient_is_exact_to_third_order(shape, axes, param_shape, with_scale):
    """The closed-form gradient (compiled) against automatic differentiation of the forward ops."""
    rng = np.random.RandomState(0)
    x = tf.constant(rng.randn(*shape) * 3 + 5)
    params = [tf.constant(rng.randn(*param_shape))] + ([tf.constant(rng.randn(*param_shape) + 1)] if with_scale else [])
    weights = tf.constant(rng.randn(*shape))
    compiled = tf.function(lambda x, *p: _derivatives(networks._normalize_closed_form, x, list(p), axes, weights))
    got = compiled(x, *params)
    want = _derivatives(networks._normalize_autodiff, x, params, axes, weights)
    assert len(got) == 1 + 3 * len([x] + params)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-9, atol=1e-12 * np.abs(w.numpy()).max())
    # The compiled path is the closed form (not autodiff again): its graph holds the custom gradient.
    graph = compiled.get_concrete_function(x, *params).graph
    assert any(op.type == "IdentityN" for op in graph.get_operations())


def _op_types(fn, *args):
    """The types of the ops of `fn` traced on `args`, including those of loop bodies (`tf.map_fn`)."""
    graph_def = tf.function(fn).get_concrete_function(*args).graph.as_graph_def()
    return [node.op for node in graph_def.node] + [node.op for f in graph_def.library.function for node in f.node_def]


@pytest.mark.parametrize("shape", [(6, 4, 4, 3), (6, 3)])  # Conv activations, and dense ones (reshaped).
def test_differentiated_once_uses_the_fused_kernel_with_the_same_first_derivative(shape):
    rng = np.random.RandomState(1)
    x = tf.constant(rng.randn(*shape).astype("float32") * 2 + 3)
    beta = tf.constant(rng.randn(3).astype("float32"))
    c = tf.constant(rng.randn(*shape).astype("float32"))
    axes = list(range(len(shape) - 1))

    def value_and_grads(x, beta, once):
        with tf.GradientTape() as tape:
            tape.watch([x, beta])
            with networks.differentiated_once() if once else contextlib.nullcontext():
                y = networks.exact_normalize(x, axes, 1e-3, beta)
            loss = tf.reduce_sum(tf.sin(y) * c)
        return [loss] + tape.gradient(loss, [x, beta])

    assert "FusedBatchNormV3" in _op_types(lambda x, b: value_and_grads(x, b, True), x, beta)
    assert "FusedBatchNormV3" not in _op_types(lambda x, b: value_and_grads(x, b, False), x, beta)
    fused = tf.function(lambda x, b: value_and_grads(x, b, True))(x, beta)
    exact = tf.function(lambda x, b: value_and_grads(x, b, False))(x, beta)
    for f, e in zip(fused, exact):
        np.testing.assert_allclose(f.numpy(), e.numpy(), rtol=1e-4, atol=1e-5 * np.abs(e.numpy()).max())
    # Layouts the kernel does not cover (a scale, other axes, float64) stay on the exact path.
    with networks.differentiated_once():
        layer_norm = _op_types(lambda x: networks.exact_normalize(x, list(range(1, len(shape))), 1e-3, beta, beta), x)
        float64 = _op_types(lambda x: networks.exact_normalize(x, axes, 1e-3, beta), tf.cast(x, tf.float64))
    assert "FusedBatchNormV3" not in layer_norm + float64


@pytest.mark.parametrize("batch_tasks", [True, False])
@pytest.mark.parametrize("first_order", [False, True])
def test_maml_fuses_batch_norm_on_query_passes_only(first_order, batch_tasks):
    """The query pass (differentiated once by the outer tape) runs the fused kernel; the support passes,
    whose inner gradients the meta-gradient or the next step differentiates, stay exact."""
    config = Config(datasource="omniglot", num_classes=3, update_batch_size=1, num_filters=4, num_updates=2,
                    stop_grad=first_order).validate()
    model = networks.build_network(config)
    algo = MAML(model, losses.scaled_xent(1), inner_lr=0.4, num_inner_steps=2, first_order=first_order,
                batch_tasks=batch_tasks, task_groups=1)
    rng = np.random.RandomState(2)
    images = lambda n: tf.constant(rng.rand(2, n, *networks.input_shape(config)).astype("float32"))
    labels = tf.one_hot(np.tile(np.arange(3), (2, 1)), 3)
    batch = TaskBatch(images(3), labels, images(3), labels)
    types = _op_types(lambda b: algo.meta_gradients(b)[0], batch)
    norms = 4  # One batch norm per conv block; the lean step runs the query set once (per task with map_fn).
    assert types.count("FusedBatchNormV3") == norms
    assert types.count("FusedBatchNormGradV3") == norms


def test_gradient_through_map_fn_equals_eager():
    """The pretraining step differentiates through `tf.map_fn` (a while loop): the closed-form gradient,
    registered for graph mode, must serve there too. Compiled against eager (autodiff), one SGD step."""
    config = Config(datasource="omniglot", num_classes=3, update_batch_size=1, num_filters=4).validate()
    rng = np.random.RandomState(3)
    images = tf.constant(rng.rand(2, 3, *networks.input_shape(config)).astype("float32"))
    labels = tf.one_hot(np.tile(np.arange(3), (2, 1)), 3)
    batch = TaskBatch(images, labels, images, labels)
    steps = []
    for eager in (False, True):
        tf.keras.utils.set_random_seed(0)
        model = networks.build_network(config)
        algo = MAML(model, losses.scaled_xent(1), inner_lr=0.4, num_inner_steps=1,
                    pretrain_optimizer=tf.keras.optimizers.SGD(1.0))
        before = [v.numpy() for v in model.trainable_variables]
        tf.config.run_functions_eagerly(eager)
        try:
            algo.pretrain_step(batch)
        finally:
            tf.config.run_functions_eagerly(False)
        steps.append({v.path: b - v.numpy() for b, v in zip(before, model.trainable_variables)})
    for path, want in steps[1].items():
        if "conv" in path and "bias" in path:
            continue  # Right before batch norm: gradient 0 up to float noise.
        np.testing.assert_allclose(steps[0][path], want, rtol=1e-4, atol=1e-5 * np.abs(want).max(), err_msg=path)
