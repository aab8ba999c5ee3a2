"""Where the time of one meta-training step goes: a TensorFlow profiler trace and an op-type summary.

    python benchmarks/profile_step.py --preset=omniglot5 --steps=5 --logdir=logs/profile
    tensorboard --logdir=logs/profile   # Profile tab (needs tensorboard-plugin-profile)

Runs `--warmup` untraced steps, then traces `--steps` train steps of the
same configuration as `bench_meta_iteration.py` (random images), and prints
the share of time per TensorFlow op type, e.g. how much goes to convolutions
and their first and second derivatives, batch norm, and the per-task loop. On
a CPU it reads the trace's events on the op threads (`op_type_table`); on a
GPU, the profiler's `framework_op_stats` table of device time.
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


# Events of TensorFlow's executor around each op: their self time is the executor's own work.
EXECUTOR_EVENTS = ("ThreadpoolListener::Region", "ExecutorState::Process", "ExecutorDoneCallback")


def _newest_trace(logdir: str) -> str:
    return sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))[-1]


def device_op_type_table(logdir: str):
    """[(op type, self time us, share)] from the profiler's `framework_op_stats` table (for a GPU)."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    data, _ = plugin.xspace_to_tools_data([_newest_trace(logdir)], "framework_op_stats", {})
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


def self_times(spans) -> collections.Counter:
    """Self time per name of one thread's `(start, duration, name)` events: each event's duration less
    that of the events nested in it."""
    totals = collections.Counter()
    stack = []  # [end, name, self time] of the enclosing events.
    for start, duration, name in sorted(spans, key=lambda s: (s[0], -s[1])):  # Outer events first.
        while stack and stack[-1][0] <= start:
            _, done, own = stack.pop()
            totals[done] += own
        if stack:
            stack[-1][2] -= duration
        stack.append([start + duration, name, duration])
    for _, done, own in stack:
        totals[done] += own
    return totals


def op_type_table(logdir: str):
    """[(op type, self time us, share)] from the newest trace in `logdir`, on a CPU.

    Read from the trace's events on TensorFlow's op threads (`tf_Compute`, and
    the intra-op `Eigen` pool), each event's self time being its duration less
    that of the events nested in it on the same thread; the executor's events
    around the ops are summed as "(executor)". Durations are wall-clock, so
    they may include time a thread waited for a core, and the total can
    exceed the cores' time (on the MiniImagenet step, 2.3 core-seconds per
    step, which takes about 0.95 s on 2 cores untraced). The profiler's own
    `framework_op_stats` table undercounts instead: on one MiniImagenet trace it gave Mul 27 ms per step
    where the events on the op threads gave 171 ms, and its total fell
    0.5 core-seconds short of the step, although both threads were busy 99% of
    it. Before batch norm's closed-form second derivative, its ops here added
    up to about the 30% of the step that removing batch norm saved
    (`--set=norm=None`); in that table, to 20%.
    """
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    data, _ = plugin.xspace_to_tools_data([_newest_trace(logdir)], "trace_viewer@", {})
    events = json.loads(data)["traceEvents"]
    threads = {(e["pid"], e["tid"]) for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"
               and any(k in e["args"]["name"] for k in ("tf_Compute", "Eigen"))}
    by_thread = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and (e["pid"], e["tid"]) in threads:
            name = "(executor)" if e["name"] in EXECUTOR_EVENTS else e["name"]
            by_thread[e["pid"], e["tid"]].append((e["ts"], e["dur"], name))
    totals = collections.Counter()
    for spans in by_thread.values():
        totals.update(self_times(spans))
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
    table = device_op_type_table if tf.config.list_physical_devices("GPU") else op_type_table
    for op, us, share in table(FLAGS.logdir)[:FLAGS.top]:
        print(f"| {op} | {us / 1000 / FLAGS.steps:.1f} | {100 * share:.1f}% |")


if __name__ == "__main__":
    app.run(main)
