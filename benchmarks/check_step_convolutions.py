"""The compiled MAML train step runs exactly the convolutions its meta-gradient needs, no more (an
implementation check, not a behaviour test: `python -m pytest benchmarks/check_step_convolutions.py`).

Counted in the step's graph by `benchmarks/convolutions.py` (ops feeding no
result left out, loops counted once per run), as `benchmarks/conv_floor.py`
counts them. For K inner steps on the original network of L conv layers, per
task (per-task loop) or per task group (batched):

* second order, per inner step: every layer's forward convolution, its inner
  gradients (input and filter) and their three derivatives each (forward,
  input gradient and filter gradient of each): 3 of each op type per layer;
  the first layer has no input gradient to take (its input is data), which
  leaves it 2 forward and 2 filter-gradient convolutions;
* first order: the support passes are not differentiated by the outer tape:
  one forward, one filter gradient and (but on the first layer) one input
  gradient per layer and pass, over K support passes and the query pass;
* both: one query pass, forward and backward, at the meta-objective's step.
"""

import os
import sys

import pytest

from maml_tf import train
from maml_tf.config import Config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_meta_iteration import synthetic_batches  # noqa: E402
from convolutions import count_convolutions, flops, summary  # noqa: E402

LAYERS = 4  # The original's conv network.


def expected(steps: int, first_order: bool) -> dict:
    L = LAYERS
    if first_order:
        return {"Conv2D": (steps + 1) * L, "Conv2DBackpropInput": (steps + 1) * (L - 1),
                "Conv2DBackpropFilter": (steps + 1) * L}
    return {"Conv2D": steps * (3 * L - 1) + L, "Conv2DBackpropInput": steps * 3 * (L - 1) + L - 1,
            "Conv2DBackpropFilter": steps * (3 * L - 1) + L}


def _counts(**overrides):
    config = Config(datasource="omniglot", num_classes=2, update_batch_size=1, meta_batch_size=3, num_filters=4,
                    **overrides).validate()
    algo = train.build_algorithm(config)
    counts = count_convolutions(algo.train_step.get_concrete_function(next(synthetic_batches(config))).graph)
    return counts, summary(counts)["runs"]


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("batch_tasks", [False, True])
def test_train_step_runs_only_the_needed_convolutions(batch_tasks, first_order):
    # Per-task loop: 3 tasks, each in the loop body. Batched: 2 groups (one of 2 tasks, one of 1).
    units = 2 if batch_tasks else 3
    _, by_type = _counts(num_updates=2, stop_grad=first_order, batch_tasks=batch_tasks, task_groups=2,
                         batched_conv_max_support=0)
    assert by_type == {k: units * v for k, v in expected(2, first_order).items()}
    # One more inner step adds exactly one step's share.
    _, more_steps = _counts(num_updates=3, stop_grad=first_order, batch_tasks=batch_tasks, task_groups=2,
                            batched_conv_max_support=0)
    assert more_steps == {k: units * v for k, v in expected(3, first_order).items()}


def test_flops_of_a_convolution():
    """2 * multiply-adds of the second layer (14x14 -> 7x7, stride 2) in all three forms."""
    counts, _ = _counts(num_updates=1, batch_tasks=False)
    layer2 = [key for key in counts if key[2][:3] == (3, 3, 4) and key[1][1:3] == (14, 14)]
    assert {key[0] for key in layer2} == {"Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter"}
    for key in layer2:  # x [2, 14, 14, 4], kernel [3, 3, 4, 4], output [2, 7, 7, 4].
        assert flops(key) == 2 * (2 * 7 * 7 * 4) * 3 * 3 * 4
