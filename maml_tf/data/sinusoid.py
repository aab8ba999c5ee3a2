"""Sinusoid regression tasks, as the original `DataGenerator.generate_sinusoid_batch`.

Amplitude U[0.1, 5.0], phase U[0, pi], x U[-5, 5], y = A sin(x - phase). Each
task has `num_points` points: the first K are the support set, the rest the
query set. The numpy draws are made in the original's order (amplitudes,
phases, then each task's inputs), so a `RandomState` seeded as the original's
global `np.random.seed` reproduces the original's tasks exactly (the test
protocol seeds 1).
"""

from __future__ import annotations

from typing import Iterator, List, Optional

import numpy as np

from maml_tf.data.regression import Family, FunctionTask
from maml_tf.types import TaskBatch

# The original's sinusoid as a function family (no observation noise), for the uncertainty measures and plots.
ORIGINAL_SINE = Family("sine", {"amplitude": (0.1, 5.0), "phase": (0.0, np.pi)},
                       lambda x, amplitude, phase: amplitude * np.sin(x - phase), lambda p: 0.0)


class SinusoidTasks:
    """An endless source of sinusoid task batches.

    Args:
      num_support: K, points in the support set.
      num_query: points in the query set.
      seed: seed of the numpy `RandomState`.
      oracle: append amplitude and phase to each input (the `--baseline=oracle`).
      amp_range, phase_range, input_range: the original ranges.
    """

    def __init__(self, num_support: int, num_query: int, seed: int, oracle: bool = False,
                 amp_range=(0.1, 5.0), phase_range=(0.0, np.pi), input_range=(-5.0, 5.0)):
        self.num_support = num_support
        self.num_points = num_support + num_query
        self.oracle = oracle
        self.rng = np.random.RandomState(seed)
        self.amp_range, self.phase_range, self.input_range = amp_range, phase_range, input_range

    def sample(self, batch_size: int, num_points: Optional[int] = None):
        """Draws `batch_size` tasks of `num_points` points (default the source's).

        Returns:
          `(x, y, amp, phase)`: x and y are `[batch, num_points, 1]` float64,
          amp and phase `[batch]`.
        """
        num_points = self.num_points if num_points is None else num_points
        amp = self.rng.uniform(self.amp_range[0], self.amp_range[1], [batch_size])
        phase = self.rng.uniform(self.phase_range[0], self.phase_range[1], [batch_size])
        x = np.zeros([batch_size, num_points, 1])
        y = np.zeros([batch_size, num_points, 1])
        for t in range(batch_size):
            x[t] = self.rng.uniform(self.input_range[0], self.input_range[1], [num_points, 1])
            y[t] = amp[t] * np.sin(x[t] - phase[t])
        return x, y, amp, phase

    def sample_tasks(self, num_tasks: int, num_query: Optional[int] = None) -> List[FunctionTask]:
        """`num_tasks` tasks with their descriptions (`maml_tf.data.regression.FunctionTask`, noise 0), drawn as
        `sample` draws them; `num_query` held-out points each (default the source's)."""
        if self.oracle:
            raise ValueError("The oracle's inputs carry amplitude and phase; its tasks have no function description.")
        x, y, amp, phase = self.sample(num_tasks, None if num_query is None else self.num_support + num_query)
        return [FunctionTask(ORIGINAL_SINE, {"amplitude": float(a), "phase": float(p)}, 0.0, xi, yi, self.num_support)
                for a, p, xi, yi in zip(amp, phase, x, y)]

    def to_inputs(self, x, amp, phase):
        """Model inputs for points `x` [batch, n, 1]: x itself, or x with amplitude and phase (oracle)."""
        if not self.oracle:
            return x
        extra = np.broadcast_to(np.stack([amp, phase], -1)[:, None, :], x.shape[:2] + (2,))
        return np.concatenate([x, extra], -1)

    def batches(self, meta_batch_size: int, num_batches: Optional[int] = None, start: int = 0) -> Iterator[TaskBatch]:
        """Task batches as float32 `TaskBatch`es; endless unless `num_batches` is given.

        `start`: skip that many batches first (drawn and discarded, so that the
        stream stays the original's sequential one): a resumed run continues it.
        """
        for _ in range(start):
            self.sample(meta_batch_size)
        i = 0
        while num_batches is None or i < num_batches:
            x, y, amp, phase = self.sample(meta_batch_size)
            inputs = self.to_inputs(x, amp, phase).astype(np.float32)
            y = y.astype(np.float32)
            k = self.num_support
            yield TaskBatch(inputs[:, :k], y[:, :k], inputs[:, k:], y[:, k:])
            i += 1


def sinusoid_tasks(config, split: str, seed: int) -> SinusoidTasks:
    """The sinusoid task source of `config` (tasks are infinite: no splits, as the original)."""
    return SinusoidTasks(config.support_per_class(split), config.update_batch_size, seed,
                         oracle=config.baseline == "oracle")
