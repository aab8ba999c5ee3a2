"""No retracing: each algorithm's compiled train step and evaluation trace once over many task batches."""

import pytest

from maml_tf import train
from maml_tf.config import Config
from maml_tf.data import make_tasks


@pytest.mark.parametrize("algorithm", ["maml", "reptile", "imaml"])
def test_train_step_and_evaluate_trace_once(algorithm):
    config = Config(algorithm=algorithm, norm="None", update_batch_size=3, meta_batch_size=2, reptile_inner_iters=2,
                    reptile_eval_iters=2, reptile_inner_batch=3, imaml_n_steps=2, imaml_cg_steps=2).validate()
    algo = train.build_algorithm(config)
    tasks = make_tasks(config, "train", 0).batches(config.meta_batch_size)
    for _ in range(4):
        algo.train_step(next(tasks))
        algo.evaluate(next(tasks), config.num_steps_reported)
    assert algo.train_step.experimental_get_tracing_count() == 1
    assert algo.evaluate.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("algorithm", ["maml", "reptile", "imaml"])
def test_xla_compiled_steps_give_the_same_updates(algorithm):
    """`--jit_compile`: the XLA-compiled train step and evaluation equal the plain ones."""
    import numpy as np
    import tensorflow as tf

    # No batch norm: the biases before it get noise-level gradients, which Adam turns into +-lr steps.
    config = Config(algorithm=algorithm, norm="None", update_batch_size=3, meta_batch_size=2,
                    reptile_inner_iters=2, reptile_eval_iters=2, reptile_inner_batch=3, imaml_n_steps=2,
                    imaml_cg_steps=2)
    batches = make_tasks(config, "train", 0).batches(config.meta_batch_size)
    batches = [next(batches) for _ in range(2)]
    weights, results = [], []
    for jit in (False, True):
        tf.keras.utils.set_random_seed(0)
        algo = train.build_algorithm(Config(**{**config.__dict__, "jit_compile": jit}).validate())
        for batch in batches:
            algo.train_step(batch)
        results.append(algo.evaluate(batches[0], 2)["total_losses2"].numpy())
        weights.append([v.numpy() for v in algo.model.trainable_variables])
    # Float rounding differs under XLA; Reptile's inner Adam (step ~ lr * sign of the gradient) amplifies it.
    np.testing.assert_allclose(results[1], results[0], rtol=1e-3)
    for a, b in zip(*weights):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)
