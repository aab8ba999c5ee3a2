"""Task datasets from your own data: N-way K-shot classification from labelled arrays, regression from a sampler.

Both return a `tf.data.Dataset` of `TaskBatch(support_x, support_y, query_x,
query_y)` meta-batches (every field with a leading task axis), ready for
`MetaModel.fit` or an algorithm's `train_step`.

    tasks = classification_tasks(x_train, y_train, num_ways=5, num_shots=1, num_query=15, meta_batch_size=8)
    tasks = regression_tasks(sample_sinusoid, num_support=10, num_query=10, meta_batch_size=25)
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from maml_tf.types import TaskBatch
from maml_tf.data.images import ImageTasks, from_class_lists


def classification_tasks(x, labels, *, num_ways: int, num_shots: int, num_query: int, meta_batch_size: int,
                         seed: Optional[int] = None, rotate: bool = False) -> tf.data.Dataset:
    """N-way K-shot tasks drawn from labelled examples, with the project's sampler (`ImageTasks`).

    Each task draws `num_ways` classes without replacement and
    `num_shots + num_query` examples of each; labels are one-hot in the
    task's class order; the layout is shot-major (see `maml_tf.data.images`).

    Args:
      x: [num_examples, ...] examples (uint8 images are scaled to [0, 1];
        other dtypes are only cast to float32).
      labels: [num_examples] integer (or any sortable) class labels.
      num_ways, num_shots, num_query: N, K and query examples per class.
      meta_batch_size: tasks per dataset element.
      seed: seed of the task stream (None: from the operating system).
      rotate: give each class of a task one random rot90 (square images only).

    Raises:
      ValueError: mismatched lengths, fewer than N classes, or a class with
        fewer than K + Q examples (the message names it).
    """
    x, labels = np.asarray(x), np.asarray(labels)
    if len(x) != len(labels):
        raise ValueError(f"x has {len(x)} examples but labels has {len(labels)}.")
    if labels.ndim != 1:
        raise ValueError(f"labels must be one integer per example (shape [n]); got shape {labels.shape}.")
    classes = np.unique(labels)
    per_class = [x[labels == c] for c in classes]
    data = from_class_lists(per_class, [str(c) for c in classes])
    if x.dtype != np.uint8:  # from_class_lists stores images; keep other examples as they are.
        data = data._replace(images=np.concatenate(per_class))
    tasks = ImageTasks(data, num_ways=num_ways, num_support=num_shots, num_query=num_query, seed=seed,
                       rotate=rotate, name="the dataset")
    return tasks.dataset(meta_batch_size)


def regression_tasks(sample_task: Callable, *, num_support: int, num_query: int, meta_batch_size: int,
                     seed: int = 0) -> tf.data.Dataset:
    """Regression tasks from a sampler: `sample_task(rng, num_points) -> (x [num_points, ...], y [num_points, ...])`.

    `rng` is a `numpy.random.Generator` seeded from `seed`; the first
    `num_support` points of a task are its support set, the rest its query set.
    """
    num_points = num_support + num_query

    def one_batch(rng):
        xs, ys = zip(*[sample_task(rng, num_points) for _ in range(meta_batch_size)])
        x, y = np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)
        if x.shape[1] != num_points or y.shape[1] != num_points:
            raise ValueError(f"sample_task must return {num_points} points; got x {x.shape[1:]}, y {y.shape[1:]}.")
        return TaskBatch(x[:, :num_support], y[:, :num_support], x[:, num_support:], y[:, num_support:])

    first = one_batch(np.random.default_rng(seed))
    signature = TaskBatch(*[tf.TensorSpec(t.shape, tf.float32) for t in first])

    def generate():
        rng = np.random.default_rng(seed)
        while True:
            yield one_batch(rng)

    return tf.data.Dataset.from_generator(generate, output_signature=signature).prefetch(2)
