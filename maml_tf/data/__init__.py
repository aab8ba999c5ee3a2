"""The datasource registry: name -> task source, input shape and the original's protocol (no TensorFlow import).

A task source is what `make_tasks(config, split, seed)` builds for
`config.datasource`. The training loop draws meta-batches from it through
`task_stream(source, meta_batch_size, start)`, a function `next_batch(learner)`:

- a source of tasks fixed before training (every supervised one) has
  `batches(meta_batch_size, num_batches=None, start=0)`, an iterator of
  meta-batches (endless unless `num_batches` is given), and ignores the
  learner; a resumed run skips the `start` batches it already drew;
- a source whose tasks depend on the learner (reinforcement learning: query
  episodes sampled with each task's adapted weights) has
  `next_batch(meta_batch_size, learner)`, and `checkpoint_objects()`: its
  random state, saved in every checkpoint, so that a resumed run continues
  it exactly.

A meta-batch is any nested structure of tensors with a leading task axis
(`maml_tf.types.TaskBatch` for supervised tasks); the learner's task view
reads it (`maml_tf.core.execution`).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Dict, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class Datasource:
    """A datasource and the protocol the original `main()` runs on it.

    Attributes:
      tasks: 'module:function' with `function(config, split, seed)` -> a task source.
      input_shape: one example's shape.
      classification: N-way classification (else regression, one output).
      test_num_updates: inner steps reported, in training and in testing.
      print_interval: iterations between progress lines in training.
      clip_value: elementwise meta-gradient clipping of MAML (None: none).
      train_query_per_class: query examples per class of training tasks (None: K).
    """

    tasks: str
    input_shape: Tuple[int, ...]
    classification: bool
    test_num_updates: Tuple[int, int] = (10, 10)
    print_interval: int = 100
    clip_value: Optional[float] = None
    train_query_per_class: Optional[int] = None

    def sampler(self):
        """The function named by `tasks` (imports its module: TensorFlow)."""
        module, name = self.tasks.split(":")
        return getattr(importlib.import_module(module), name)


DATASOURCES: Dict[str, Datasource] = {
    "sinusoid": Datasource("maml_tf.data.sinusoid:sinusoid_tasks", (1,), False,
                           test_num_updates=(5, 10), print_interval=1000),
    # BMAML's sinusoids (frequency and phase in [0, 2 pi], 1% noise).
    "bmaml_sinusoid": Datasource("maml_tf.data.regression:bmaml_sinusoid_tasks", (1,), False,
                                 test_num_updates=(5, 10), print_interval=1000),
    # PLATIPUS's ambiguous regression: sines or lines, noise 0.3.
    "sine_line": Datasource("maml_tf.data.regression:sine_line_tasks", (1,), False,
                            test_num_updates=(5, 10), print_interval=1000),
    # MMAML's multimodal regression (--num_modes of sinusoid, line, quadratic, tanh, l1-norm), noise 0.3.
    "multimodal_regression": Datasource("maml_tf.data.regression:multimodal_tasks", (1,), False,
                                        test_num_updates=(5, 10), print_interval=1000),
    "omniglot": Datasource("maml_tf.data.omniglot:omniglot_tasks", (28, 28, 1), True),
    "miniimagenet": Datasource("maml_tf.data.miniimagenet:miniimagenet_tasks", (84, 84, 3), True,
                               test_num_updates=(1, 10), clip_value=10.0, train_query_per_class=15),
}


TEST_SEED = 1  # The original seeds numpy and random with 1 before testing (and its validation tasks).


def task_stream(source, meta_batch_size: int, start: int = 0):
    """The training loop's view of `source`: `next_batch(learner) -> the next meta-batch` (see the module)."""
    if hasattr(source, "next_batch"):
        return lambda learner: source.next_batch(meta_batch_size, learner)
    batches = source.batches(meta_batch_size, start=start)
    return lambda learner: next(batches)


def source_state(source) -> dict:
    """The objects a checkpoint must hold to resume `source` (none for a source of fixed tasks)."""
    return source.checkpoint_objects() if hasattr(source, "checkpoint_objects") else {}


def make_tasks(config, split: str, seed: int):
    """The task source of `config.datasource` for split 'train', 'val' or 'test'."""
    return DATASOURCES[config.datasource].sampler()(config, split, seed)
