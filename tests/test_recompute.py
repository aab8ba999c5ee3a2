"""`recompute_inner_steps`: the meta-gradient by recomputing each inner step in the backward pass equals the
one taken through the whole stored inner loop (float64, 1e-10), for MAML (first and second order), Meta-SGD
(own meta-parameters in the step), ANIL, LLAMA (an objective term), MMAML (a conditioned view) and MAML++
(multi-step loss, per-step batch norm and its running statistics)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf import losses
from maml_tf.algorithms import ANIL, LLAMA, MAML, MetaSGD
from maml_tf.algorithms.mmaml import MMAML, Modulated
from maml_tf.config import Config, ConfigError
from tests.test_meta_sgd_anil import batch64, fc64

CASES = {
    "maml": lambda model, **kw: MAML(model, losses.mse, inner_lr=0.1, num_inner_steps=3, **kw),
    "fomaml": lambda model, **kw: MAML(model, losses.mse, inner_lr=0.1, num_inner_steps=3, first_order=True, **kw),
    "meta_sgd": lambda model, **kw: MetaSGD(model, losses.mse, num_inner_steps=3, seed=1, **kw),
    "anil": lambda model, **kw: ANIL(model, losses.mse, inner_lr=0.1, num_inner_steps=3, **kw),
    "llama": lambda model, **kw: LLAMA(model, losses.mse, inner_lr=0.1, num_inner_steps=3, eta=0.1, **kw),
    "mmaml": lambda model, **kw: MMAML(Modulated(model), losses.mse, inner_lr=0.1, num_inner_steps=3, **kw),
}


def pair(name):
    out = []
    for recompute in (False, True):
        keras.utils.set_random_seed(0)
        out.append(CASES[name](fc64(), recompute_inner_steps=recompute, batch_tasks=False))
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_recomputed_meta_gradient_equals_the_stored_one(name):
    stored, recomputed = pair(name)
    for a, b in zip(stored.meta_variables, recomputed.meta_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    batch = batch64()
    want, want_results = stored.meta_gradients(batch)
    got, got_results = recomputed.meta_gradients(batch)
    assert any(float(tf.reduce_max(tf.abs(g))) > 0 for g in want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got_results["objective_loss"], want_results["objective_loss"], rtol=1e-12)


def test_weights_after_three_recomputed_updates_equal_the_stored_ones():
    stored, recomputed = pair("maml")
    for i in range(3):
        stored.train_step(batch64(seed=i))
        recomputed.train_step(batch64(seed=i))
    for a, b in zip(stored.meta_variables, recomputed.meta_variables):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-10, atol=1e-12)


def test_recompute_flag_applies_to_maml_s_inner_loop_only():
    assert Config(recompute_inner_steps=True).validate().recompute_inner_steps
    with pytest.raises(ConfigError, match="--recompute_inner_steps applies to MAML's inner loop"):
        Config(algorithm="reptile", recompute_inner_steps=True).validate()
    with pytest.raises(ConfigError, match="mixed_precision"):
        Config(recompute_inner_steps=True, mixed_precision=True).validate()


def test_recomputed_maml_plus_plus_with_per_step_batch_norm_equals_the_stored_one():
    from maml_tf.algorithms import MAMLPlusPlus
    from tests.test_mamlpp import image_batch, plain, tiny_per_step_net

    learners = [MAMLPlusPlus(tiny_per_step_net(3), losses.mean_xent, recompute_inner_steps=r,
                             **plain(msl=True, lslr=True, msl_epochs=5)) for r in (False, True)]
    for i in range(3):
        results = [learner.train_step(image_batch(tasks=2, seed=i)) for learner in learners]
        np.testing.assert_allclose(results[1]["objective_loss"], results[0]["objective_loss"], rtol=1e-12)
    for a, b in zip(*[learner.meta_variables + learner.model.non_trainable_variables for learner in learners]):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-10, atol=1e-12)
