"""Regression tasks from families of functions with observation noise (BMAML's sinusoids, PLATIPUS's sines and
lines, MMAML's multimodal functions), and the description of each task that the uncertainty measures need
(`maml_tf.uncertainty`).

A task draws a family (uniformly, or in turn: `balanced`), its parameters
(uniformly in their ranges; a `signed` parameter's sign at random),
`num_support + num_query` inputs uniform in `input_range`, and noisy
observations `y = f(x) + noise_std * eps`. The first points are the support
set, the rest the query set; query labels are noisy too (held-out
observations). Numpy draws from a `RandomState(seed)`, in a fixed order, so a
seed gives the same tasks on every machine.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from maml_tf.types import TaskBatch


@dataclasses.dataclass(frozen=True)
class Family:
    """A family of functions: `fn(x, **params)`, each parameter uniform in its range (times a random sign for
    those in `signed`), and the observation noise `noise(params) -> std`."""

    name: str
    ranges: Dict[str, Tuple[float, float]]
    fn: Callable
    noise: Callable
    signed: Tuple[str, ...] = ()


@dataclasses.dataclass
class FunctionTask:
    """One task: its family, parameters, noise level and points (`x`, noisy `y`, `[points, 1]`; the first
    `num_support` are the support set)."""

    family: Family
    params: Dict[str, float]
    noise_std: float
    x: np.ndarray
    y: np.ndarray
    num_support: int

    def f(self, x: np.ndarray) -> np.ndarray:
        """The true (noise-free) function at `x`."""
        return self.family.fn(x, **self.params)


# BMAML's sinusoid (`jsikyoon/bmaml`, `bmaml_main.py`): A sin(w x + b), noise 1% of the amplitude.
BMAML_SINE = Family("sine", {"amplitude": (0.1, 5.0), "frequency": (0.5, 2.0), "phase": (0.0, 2 * np.pi)},
                    lambda x, amplitude, frequency, phase: amplitude * np.sin(frequency * x + phase),
                    lambda p: 0.01 * p["amplitude"])
# PLATIPUS's ambiguous regression (and MMAML's two modes): sines and lines, noise 0.3.
SINE = Family("sine", {"amplitude": (0.1, 5.0), "phase": (0.0, np.pi)},
              lambda x, amplitude, phase: amplitude * np.sin(x - phase), lambda p: 0.3)
LINE = Family("line", {"slope": (-3.0, 3.0), "intercept": (-3.0, 3.0)},
              lambda x, slope, intercept: slope * x + intercept, lambda p: 0.3)
# MMAML's other modes (`vuoristo/MMAML-Regression`, `maml/datasets/simple_functions.py`), noise 0.3: the quadratic's
# curvature has magnitude in [0.02, 0.15] and a random sign.
QUADRATIC = Family("quadratic", {"curvature": (0.02, 0.15), "center": (-3.0, 3.0), "bias": (-3.0, 3.0)},
                   lambda x, curvature, center, bias: curvature * (x - center) ** 2 + bias, lambda p: 0.3,
                   signed=("curvature",))
TANH = Family("tanh", {"slope": (-3.0, 3.0), "center": (-3.0, 3.0), "bias": (-3.0, 3.0)},
              lambda x, slope, center, bias: slope * np.tanh(x - center) + bias, lambda p: 0.3)
L1_NORM = Family("l1-norm", {"slope": (-3.0, 3.0), "center": (-3.0, 3.0), "bias": (-3.0, 3.0)},
                 lambda x, slope, center, bias: slope * np.abs(x - center) + bias, lambda p: 0.3)
# MMAML's task distributions take the first 2, 3 or 5 of these (the authors' `mixed`, `many` and `five`).
MULTIMODAL = (SINE, LINE, QUADRATIC, TANH, L1_NORM)


class FunctionTasks:
    """An endless source of regression task batches from `families`.

    Args:
      families: the function families.
      num_support, num_query: points per task.
      seed: seed of the numpy `RandomState`.
      input_range: inputs are uniform in it.
      balanced: the families in turn (the i-th task drawn is of family `i % len(families)`), so that
        a meta-batch whose size is a multiple of their number has as many tasks of each, as MMAML's authors
        draw them; else a family at random per task.
    """

    def __init__(self, families: Sequence[Family], num_support: int, num_query: int, seed: int,
                 input_range=(-5.0, 5.0), balanced: bool = False):
        self.families, self.num_support, self.num_query = list(families), num_support, num_query
        self.input_range, self.balanced = input_range, balanced
        self.rng = np.random.RandomState(seed)
        self.drawn = 0  # Tasks drawn so far.

    def sample_tasks(self, num_tasks: int, num_query: Optional[int] = None) -> List[FunctionTask]:
        """`num_tasks` tasks with their descriptions (`FunctionTask`); `num_query` held-out points each (default
        the source's)."""
        num_query = self.num_query if num_query is None else num_query
        tasks = []
        for _ in range(num_tasks):
            if self.balanced:
                family = self.families[self.drawn % len(self.families)]
            else:
                family = self.families[self.rng.randint(len(self.families))] if len(self.families) > 1 \
                    else self.families[0]
            self.drawn += 1
            params = {k: float(self.rng.uniform(lo, hi)) for k, (lo, hi) in family.ranges.items()}
            for k in family.signed:
                params[k] *= float(self.rng.choice((-1.0, 1.0)))
            x = self.rng.uniform(*self.input_range, size=[self.num_support + num_query, 1])
            noise_std = float(family.noise(params))
            y = family.fn(x, **params) + noise_std * self.rng.standard_normal(x.shape)
            tasks.append(FunctionTask(family, params, noise_std, x, y, self.num_support))
        return tasks

    def batches(self, meta_batch_size: int, num_batches: Optional[int] = None, start: int = 0) -> Iterator[TaskBatch]:
        """Task batches as float32 `TaskBatch`es; endless unless `num_batches` is given; `start` batches are drawn
        and discarded first (a resumed run continues the stream)."""
        for _ in range(start):
            self.sample_tasks(meta_batch_size)
        i = 0
        while num_batches is None or i < num_batches:
            yield to_batch(self.sample_tasks(meta_batch_size), self.num_support)
            i += 1


def to_batch(tasks: Sequence[FunctionTask], num_support: int) -> TaskBatch:
    """Tasks -> a float32 `TaskBatch` (the first `num_support` points of each are the support set)."""
    x = np.stack([t.x for t in tasks]).astype(np.float32)
    y = np.stack([t.y for t in tasks]).astype(np.float32)
    return TaskBatch(x[:, :num_support], y[:, :num_support], x[:, num_support:], y[:, num_support:])


def bmaml_sinusoid_tasks(config, split: str, seed: int) -> FunctionTasks:
    """`--datasource=bmaml_sinusoid`: BMAML's sinusoids (frequency, phase in [0, 2 pi], 1% noise)."""
    return FunctionTasks([BMAML_SINE], config.support_per_class(split), config.update_batch_size, seed)


def sine_line_tasks(config, split: str, seed: int) -> FunctionTasks:
    """`--datasource=sine_line`: PLATIPUS's ambiguous regression, sines or lines with noise 0.3."""
    return FunctionTasks([SINE, LINE], config.support_per_class(split), config.update_batch_size, seed)


def multimodal_tasks(config, split: str, seed: int) -> FunctionTasks:
    """`--datasource=multimodal_regression`: MMAML's tasks from the first `--num_modes` of sinusoid, line,
    quadratic, tanh and l1-norm, in turn (balanced), noise 0.3; `--task_mode=k`: mode k only (Multi-MAML)."""
    families = MULTIMODAL[:config.num_modes] if config.task_mode < 0 else [MULTIMODAL[config.task_mode]]
    return FunctionTasks(families, config.support_per_class(split), config.update_batch_size, seed, balanced=True)
