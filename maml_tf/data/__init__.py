"""Task sources by datasource name: `make_tasks(config, split, seed)`.

A task source has `batches(meta_batch_size, num_batches=None)`, an iterator of
`TaskBatch`es (endless unless `num_batches` is given).
"""

from __future__ import annotations

from maml_tf.config import Config

# Task sources are imported when used: `maml_tf.data.prepare` (Pillow only) must not pull in TensorFlow.


def _sinusoid(config: Config, split: str, seed: int):
    from maml_tf.data.sinusoid import SinusoidTasks
    # Sinusoid tasks are infinite: no splits, as the original.
    k = config.update_batch_size
    return SinusoidTasks(config.support_per_class(split), k, seed, oracle=config.baseline == "oracle")


def _images(config: Config, split: str, seed: int):
    from maml_tf.data.images import make_image_tasks  # Imports tensorflow-datasets lazily.
    return make_image_tasks(config, split, seed)


DATASOURCES = {"sinusoid": _sinusoid, "omniglot": _images, "miniimagenet": _images}


def make_tasks(config: Config, split: str, seed: int):
    """The task source of `config.datasource` for split 'train', 'val' or 'test'."""
    return DATASOURCES[config.datasource](config, split, seed)
