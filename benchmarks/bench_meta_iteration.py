"""Seconds per meta-iteration and peak memory of `main.py`'s train step, for one configuration.

Runs the same `train.build_algorithm` step as `main.py` on task batches of the
right shapes: sinusoid tasks from the real sampler; for images either random
pixels (`--data=synthetic`, no data set needed) or the real task pipeline
(`--data=real`, needs the prepared data). Reports the median, min and max over
`--iterations` steps after `--warmup` steps, the median time a step waited for
its batch (`batch_wait_median_s`: whether the input pipeline keeps up), the
peak resident memory of the process (TensorFlow included), and the peak
memory of TensorFlow's tensors during the timed steps (`peak_tensors_gb`, the
allocator's own count, reset after warm-up): on a GPU always, on the CPU with
`TF_CPU_ALLOCATOR_USE_BFC=true` in the environment (TensorFlow's BFC allocator
on the CPU, which keeps that count).

    python benchmarks/bench_meta_iteration.py --preset=omniglot5 --iterations=30
    python benchmarks/bench_meta_iteration.py --preset=omniglot5 --set=algorithm=reptile,meta_batch_size=5
    python benchmarks/run_suite.py   # every case of the README table

`--set` overrides any `Config` field (`main.py` flag), e.g.
`--set=algorithm=imaml,imaml_n_steps=16,imaml_lam=2`.
"""

import dataclasses
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
from presets import PRESETS  # noqa: E402

flags.DEFINE_enum("preset", "sinusoid", list(PRESETS), "configuration to time.")
flags.DEFINE_list("set", [], "Config overrides, key=value (e.g. algorithm=reptile,meta_batch_size=5).")
flags.DEFINE_integer("iterations", 200, "timed iterations.")
flags.DEFINE_integer("warmup", 10, "untimed iterations first (tracing).")
flags.DEFINE_bool("stop_grad", False, "first-order MAML (same as --set=stop_grad=True).")
flags.DEFINE_enum("data", "synthetic", ["synthetic", "real"], "image batches: random pixels or the real pipeline.")
FLAGS = flags.FLAGS


def parse_overrides(pairs):
    """`['key=value', ...]` -> typed `Config` fields."""
    from maml_tf import algorithms

    fields = {f.name: f for f in dataclasses.fields(Config)}
    for entry in algorithms.ALGORITHMS.values():  # Prefixed options, as main.py's flags.
        fields.update({f"{entry.prefix}_{f.name}": f for f in dataclasses.fields(entry.options)})
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in fields:
            raise app.UsageError(f"--set: {key!r} is not a Config field (a main.py flag).")
        default = fields[key].default
        if isinstance(default, bool):
            out[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            out[key] = int(value)
        elif isinstance(default, float):
            out[key] = float(value)
        else:
            out[key] = value
    return out


def synthetic_batches(config):
    """The same random task batch forever: pixels in [0, 1], one-hot labels in the shot-major layout."""
    from maml_tf import networks
    from maml_tf.algorithms import TaskBatch

    rng = np.random.default_rng(0)
    shape = networks.input_shape(config)
    n, ns, nq = config.num_classes, config.support_per_class("train"), config.num_query_per_class
    labels = lambda k: np.tile(np.eye(n, dtype=np.float32), (config.meta_batch_size, k, 1))
    batch = TaskBatch(rng.random((config.meta_batch_size, n * ns, *shape), np.float32), labels(ns),
                      rng.random((config.meta_batch_size, n * nq, *shape), np.float32), labels(nq))
    return iter(lambda: batch, None)


def main(_):
    import tensorflow as tf
    from maml_tf import train
    from maml_tf.data import make_tasks

    overrides = {**PRESETS[FLAGS.preset], "stop_grad": FLAGS.stop_grad, **parse_overrides(FLAGS.set)}
    config = Config(**overrides).validate()
    train.configure_threads(config)  # As main.py.
    algo = train.build_algorithm(config)
    if not config.classification or FLAGS.data == "real":  # Regression tasks come from their sampler.
        tasks = make_tasks(config, "train", 0).batches(config.meta_batch_size)
    else:
        tasks = synthetic_batches(config)
    gpu = bool(tf.config.list_physical_devices("GPU"))
    device = "GPU:0" if gpu else "CPU:0"
    times, waits = [], []
    for i in range(FLAGS.warmup + FLAGS.iterations):
        if i == FLAGS.warmup:
            reset_tensor_memory(tf, device)
        start = time.perf_counter()
        batch = next(tasks)
        if i >= FLAGS.warmup:
            waits.append(time.perf_counter() - start)  # Time the step waited for its batch.
        start = time.perf_counter()
        results = algo.train_step(batch)
        float(results["objective_loss"])  # Waits for the step.
        if i >= FLAGS.warmup:
            times.append(time.perf_counter() - start)
    report = {"preset": FLAGS.preset, "set": overrides, "data": FLAGS.data, "iterations": FLAGS.iterations,
              "median_s": round(float(np.median(times)), 5), "min_s": round(float(np.min(times)), 5),
              "max_s": round(float(np.max(times)), 5), "batch_wait_median_s": round(float(np.median(waits)), 5),
              "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 3),
              "peak_tensors_gb": peak_tensor_memory_gb(tf, device),
              "device": "GPU" if gpu else "CPU", "cpus": os.cpu_count(), "tensorflow": tf.__version__}
    print(json.dumps(report))


def reset_tensor_memory(tf, device: str) -> None:
    """Resets the allocator's peak count of `device` (where it keeps one)."""
    try:
        tf.config.experimental.reset_memory_stats(device)
    except ValueError:
        pass


def peak_tensor_memory_gb(tf, device: str):
    """The peak memory of `device`'s tensors since `reset_tensor_memory`, or None where the allocator does not
    count it (the CPU without `TF_CPU_ALLOCATOR_USE_BFC=true`)."""
    try:
        return round(tf.config.experimental.get_memory_info(device)["peak"] / 1024 ** 3, 4)
    except ValueError:
        return None


if __name__ == "__main__":
    app.run(main)
