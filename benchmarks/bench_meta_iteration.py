"""Seconds per meta-iteration and peak memory of `main.py`'s train step.

Runs the same `train.build_algorithm` step as `main.py` on task batches of the
right shapes (sinusoid tasks from the real sampler; random images for
Omniglot/MiniImagenet, so no data set is needed), and reports the median over
`--iterations` steps after `--warmup` steps, and the peak resident memory.

    python benchmarks/bench_meta_iteration.py --preset=sinusoid --iterations=300
    python benchmarks/bench_meta_iteration.py --preset=omniglot5 --iterations=30
"""

import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from maml_tf.config import Config  # noqa: E402

PRESETS = {  # The original README's settings.
    "sinusoid": dict(datasource="sinusoid", norm="None", update_batch_size=10, meta_batch_size=25),
    "omniglot5": dict(datasource="omniglot", meta_batch_size=32, update_batch_size=1, update_lr=0.4, num_updates=1),
    "omniglot20": dict(datasource="omniglot", num_classes=20, meta_batch_size=16, update_batch_size=1,
                       update_lr=0.1, num_updates=5),
    "miniimagenet": dict(datasource="miniimagenet", meta_batch_size=4, update_batch_size=1, update_lr=0.01,
                         num_updates=5, num_filters=32, max_pool=True),
}

flags.DEFINE_enum("preset", "sinusoid", list(PRESETS), "configuration to time.")
flags.DEFINE_integer("iterations", 200, "timed iterations.")
flags.DEFINE_integer("warmup", 10, "untimed iterations first (tracing).")
flags.DEFINE_bool("stop_grad", False, "first-order MAML.")
FLAGS = flags.FLAGS


def main(_):
    from maml_tf import networks, train
    from maml_tf.algorithms import TaskBatch
    from maml_tf.data import make_tasks

    config = Config(**PRESETS[FLAGS.preset], stop_grad=FLAGS.stop_grad).validate()
    algo = train.build_algorithm(config)
    if config.datasource == "sinusoid":
        tasks = make_tasks(config, "train", 0).batches(config.meta_batch_size)
    else:
        rng = np.random.default_rng(0)
        shape = networks.input_shape(config)
        n, ns, nq = config.num_classes, config.update_batch_size, config.num_query_per_class
        labels = lambda k: np.tile(np.eye(n, dtype=np.float32), (config.meta_batch_size, k, 1))
        batch = TaskBatch(rng.random((config.meta_batch_size, n * ns, *shape), np.float32), labels(ns),
                          rng.random((config.meta_batch_size, n * nq, *shape), np.float32), labels(nq))
        tasks = iter(lambda: batch, None)
    times = []
    for i in range(FLAGS.warmup + FLAGS.iterations):
        batch = next(tasks)
        start = time.perf_counter()
        results = algo.train_step(batch)
        float(results["total_losses2"][config.num_updates - 1])  # Waits for the step.
        if i >= FLAGS.warmup:
            times.append(time.perf_counter() - start)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(json.dumps({"preset": FLAGS.preset, "stop_grad": FLAGS.stop_grad, "iterations": FLAGS.iterations,
                      "median_s": round(float(np.median(times)), 5), "p90_s": round(float(np.percentile(times, 90)), 5),
                      "peak_rss_gb": round(peak_gb, 2), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    app.run(main)
