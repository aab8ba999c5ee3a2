"""The core pieces on their own: parameter arithmetic, inner optimisers, objective weights, HVP, outer update."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from maml_tf.core import objective, params as P
from maml_tf.core.hvp import hvp
from maml_tf.core.inner import adam, learned_sgd, sgd
from maml_tf.core.outer import outer_update
from maml_tf.core.transforms import apply_updates, chain, clip_by_value, weight_decay
from tests.conftest import ROOT


def c(*values):
    return tf.constant(np.array(values, np.float64))


def test_parameter_arithmetic():
    a, b = [c(1.0, 2.0), c(3.0)], [c(5.0, -2.0), c(1.0)]
    np.testing.assert_array_equal(P.axpy(2.0, a, b)[1], [7.0])
    np.testing.assert_array_equal(P.mean([a, b])[0], [3.0, 0.0])
    assert float(P.dot(a, b)) == 1 * 5 + 2 * -2 + 3 * 1
    np.testing.assert_array_equal(P.scale(-1.0, P.sub(a, b))[0], [4.0, -4.0])


def step(opt, g, state, w, k):
    """One step of an inner optimiser: `(new weights, state)`."""
    updates, state = opt.update(g, state, w, step=k)
    return apply_updates(w, updates), state


def test_inner_optimisers_against_hand_computed_updates():
    w, g = [c(1.0, -1.0)], [c(0.5, 2.0)]
    np.testing.assert_allclose(step(sgd(0.1), g, (), w, 0)[0][0], [0.95, -1.2])
    # Meta-SGD: one step size per parameter; MAML++: per layer and step (the step indexes them).
    np.testing.assert_allclose(step(learned_sgd([c(0.1, 0.2)]), g, (), w, 0)[0][0], [0.95, -1.4])
    per_step = learned_sgd([c(0.1, 0.3)], per_step=True)
    np.testing.assert_allclose(step(per_step, g, (), w, 1)[0][0], [0.85, -1.6])
    # TF1 Adam, beta1 = 0, two steps: lr_t = lr sqrt(1 - b2^t) / (1 - b1^t), m = g, v = b2 v + (1 - b2) g^2.
    opt = adam(0.1, beta1=0.0, beta2=0.9, epsilon=0.0)
    state = opt.init(w)
    w1, state = step(opt, g, state, w, 0)
    w2, state = step(opt, g, state, w1, 1)
    v1, v2 = 0.1 * 0.25, 0.9 * 0.1 * 0.25 + 0.1 * 0.25
    want = 1.0 - 0.1 * np.sqrt(0.1) * 0.5 / np.sqrt(v1) - 0.1 * np.sqrt(1 - 0.81) * 0.5 / np.sqrt(v2)
    np.testing.assert_allclose(w2[0][0], want, rtol=1e-12)
    assert int(state[2]) == 2
    np.testing.assert_allclose(chain(weight_decay(0.5), sgd(0.1)).prepare(w)[0], [0.5, -0.5])


def test_objective_weights():
    losses = {0: tf.constant(2.0), 2: tf.constant(5.0)}
    assert objective.last_step(3) == [0.0, 0.0, 1.0]
    assert objective.steps_needed([0.0, 0.0, 1.0]) == [2]
    assert objective.combine(losses, [0.0, 0.0, 1.0]) is losses[2]  # MAML: the loss itself, bit for bit.
    assert float(objective.combine(losses, [0.5, 0.0, 0.5])) == 3.5
    annealed = tf.constant([0.2, 0.3, 0.5])  # MAML++'s multi-step weights change over training: a tensor.
    assert objective.steps_needed(annealed) == [0, 1, 2]
    step_losses = {k: tf.constant(v) for k, v in enumerate([1.0, 2.0, 4.0])}
    np.testing.assert_allclose(float(objective.combine(step_losses, annealed)), 2.8, rtol=1e-6)


def test_hvp_of_a_quadratic_is_the_matrix_product():
    a = np.array([[3.0, 1.0], [1.0, 2.0]])

    def loss_and_grads(weights):
        with tf.GradientTape() as tape:
            tape.watch(weights)
            loss = 0.5 * tf.tensordot(weights[0], tf.linalg.matvec(tf.constant(a), weights[0]), 1)
        return loss, tape.gradient(loss, weights)

    got = hvp(loss_and_grads, [c(0.3, -0.7)], [c(1.0, 2.0)])
    np.testing.assert_allclose(got[0], a @ [1.0, 2.0], rtol=1e-12)


def test_outer_update_clips_then_applies():
    v = tf.Variable([1.0, 1.0], dtype=tf.float64)
    outer_update([c(30.0, -0.5)], [v], None, transform=clip_by_value(10.0))  # None: the output is the update.
    np.testing.assert_array_equal(v.numpy(), [11.0, 0.5])


def test_validating_flags_imports_no_tensorflow():
    code = ("import sys; sys.argv = ['main.py', '--algorithm=meta_sgd', '--metasgd_init=update_lr'];"
            "import main; from absl import flags; flags.FLAGS(sys.argv); c = main.cli.config_from_flags().validate();"
            "assert c.options.init == 'update_lr', c; assert 'tensorflow' not in sys.modules, 'TensorFlow imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "main.py", "--norm=batchnorm"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "--norm" in proc.stderr


def test_functional_call_passes_the_inner_step_and_a_condition():
    import keras

    from maml_tf.functional import functional_call

    class StepAware(keras.Model):  # Per-step parameters (MAML++'s per-step batch norm) and FiLM conditioning.
        def build(self, input_shape):
            self.w = self.add_weight(shape=(2,), initializer="ones")

        def call(self, x, step=None, condition=None):
            y = x * (self.w[0] if step is None else self.w[step])
            return y if condition is None else y * condition

    model = StepAware()
    model(tf.zeros([1, 1]))
    x, weights = tf.ones([1, 1]), [tf.constant([2.0, 3.0])]
    assert float(functional_call(model, weights, x, step=1)[0, 0]) == 3.0
    assert float(functional_call(model, weights, x, condition=tf.constant(5.0))[0, 0]) == 10.0
    plain = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    plain_weights = [tf.convert_to_tensor(v) for v in plain.trainable_variables]
    functional_call(plain, plain_weights, x, step=1)  # A model without per-step parameters ignores the step.
    with pytest.raises(ValueError, match="condition"):
        functional_call(plain, plain_weights, x, condition=tf.constant(1.0))
