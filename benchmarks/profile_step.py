"""Where the time of one meta-training step goes: a TensorFlow profiler trace and an op-type summary.

    python benchmarks/profile_step.py --preset=omniglot5 --steps=5 --logdir=logs/profile
    tensorboard --logdir=logs/profile   # Profile tab (needs tensorboard-plugin-profile)

Runs `--warmup` untraced steps, then traces `--steps` train steps of the
same configuration as `bench_meta_iteration.py` (random images), and prints
the share of device time per TensorFlow op type (from the trace's
`framework_op_stats` table), e.g. how much goes to convolutions and their
first and second derivatives, batch norm, and the per-task loop.
"""

import collections
import glob
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from bench_meta_iteration import PRESETS, parse_overrides, synthetic_batches  # noqa: E402

flags.DEFINE_integer("steps", 5, "traced steps.")
flags.DEFINE_string("logdir", "logs/profile", "trace folder (TensorBoard).")
flags.DEFINE_integer("top", 15, "op types listed.")
FLAGS = flags.FLAGS


def op_type_table(logdir: str):
    """[(op type, self time us, share)] from the newest trace in `logdir`."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    path = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))[-1]
    data, _ = plugin.xspace_to_tools_data([path], "framework_op_stats", {})
    table = json.loads(data)
    table = table[0] if isinstance(table, list) else table
    columns = [c["id"] for c in table["cols"]]
    totals = collections.Counter()
    for row in table["rows"]:
        values = dict(zip(columns, (c.get("v") for c in row["c"])))
        if values["type"] != "IDLE":
            totals[values["type"]] += float(values["total_self_time"])
    whole = sum(totals.values()) or 1.0
    return [(op, t, t / whole) for op, t in totals.most_common()]


def main(_):
    import tensorflow as tf
    from maml_tf import train
    from maml_tf.config import Config

    config = Config(**{**PRESETS[FLAGS.preset], **parse_overrides(FLAGS.set)}).validate()
    train.configure_threads(config)  # As main.py.
    algo = train.build_algorithm(config)
    tasks = synthetic_batches(config)
    for _ in range(FLAGS.warmup):
        float(algo.train_step(next(tasks))["total_loss1"])
    tf.profiler.experimental.start(FLAGS.logdir)
    for _ in range(FLAGS.steps):
        float(algo.train_step(next(tasks))["total_loss1"])
    tf.profiler.experimental.stop()
    print(f"Trace of {FLAGS.steps} steps of {FLAGS.preset} {FLAGS.set or ''} in {FLAGS.logdir}")
    # Self times add up over the threads that run ops in parallel, so their sum can exceed the wall time.
    print("| op type | self time (ms per step, summed over threads) | share |\n|---|---|---|")
    for op, us, share in op_type_table(FLAGS.logdir)[:FLAGS.top]:
        print(f"| {op} | {us / 1000 / FLAGS.steps:.1f} | {100 * share:.1f}% |")


if __name__ == "__main__":
    app.run(main)
