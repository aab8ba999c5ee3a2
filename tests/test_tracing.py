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
