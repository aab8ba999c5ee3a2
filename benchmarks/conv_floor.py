"""The convolution floor of a train step: how fast it could be if it did nothing but its convolutions.

    python benchmarks/conv_floor.py --preset=omniglot20 --iterations=10 --warmup=3
    python benchmarks/conv_floor.py --preset=omniglot5 --set=stop_grad=True --iterations=10 --warmup=3

Lists every convolution the compiled train step runs (forward, input gradient
and filter gradient, at every order of differentiation; ops that feed none of
the step's results are left out, as TensorFlow prunes them), counted once per
run of the loop that holds it (`tf.map_fn` runs its body once per task). Then
times each distinct convolution alone on one thread, `--repeats` times in a
`tf.while_loop` so that the call overhead does not count, and prints:

- per op type: how many run per step, their GFLOP (2 * multiply-adds), and
  the core-seconds they take at their own kernel's speed;
- the floor: those core-seconds over the CPU cores, a lower bound on the step
  time for the oneDNN kernels of this TensorFlow on this machine (the step
  runs one thread per op, `--intra_op_threads=1`, and its convolutions can at
  best keep every core busy);
- the same FLOPs at one thread's speed on a large matmul (the arithmetic
  peak these kernels reach here), over the cores: a floor for any
  convolution kernel as fast as the matmul;
- the step's measured median over `--iterations` steps after `--warmup`
  (flags of `bench_meta_iteration.py`, which measures it the same way).

The last line is the same as JSON.
"""

import collections
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from bench_meta_iteration import PRESETS, parse_overrides, synthetic_batches  # noqa: E402
from convolutions import CONVOLUTIONS, count_convolutions, flops  # noqa: E402

flags.DEFINE_integer("repeats", 20, "runs of each distinct convolution per timing.")
flags.DEFINE_integer("timings", 5, "timings of each distinct convolution (the median is kept).")
FLAGS = flags.FLAGS


def _seconds_per_run(run, args, out_shape, repeats: int, timings: int) -> float:
    """Seconds one `run(*args)` takes alone, one at a time in a `tf.while_loop` (median of `timings`)."""

    @tf.function
    def loop(*a):  # Each iteration's result is the next loop value, so each runs; one at a time.
        return tf.while_loop(lambda i, _: i < repeats, lambda i, _: (i + 1, run(*a)), (0, tf.zeros(out_shape)),
                             parallel_iterations=1)[1]

    loop(*args).numpy()
    seconds = []
    for _ in range(timings):
        start = time.perf_counter()
        loop(*args).numpy()
        seconds.append((time.perf_counter() - start) / repeats)
    return float(np.median(seconds))


def time_alone(key, repeats: int, timings: int) -> float:
    """Seconds one run of the convolution `key` takes alone."""
    kind, x, w, y, attrs = key
    attrs = dict(attrs)
    rng = tf.random.Generator.from_seed(0)
    if kind == "Conv2D":
        def run(inputs, kernel):
            return tf.raw_ops.Conv2D(input=inputs, filter=kernel, **attrs)
        return _seconds_per_run(run, (rng.normal(x), rng.normal(w)), y, repeats, timings)
    if kind == "Conv2DBackpropInput":
        def run(kernel, grad):
            return tf.raw_ops.Conv2DBackpropInput(input_sizes=x, filter=kernel, out_backprop=grad, **attrs)
        return _seconds_per_run(run, (rng.normal(w), rng.normal(y)), x, repeats, timings)

    def run(inputs, grad):
        return tf.raw_ops.Conv2DBackpropFilter(input=inputs, filter_sizes=w, out_backprop=grad, **attrs)
    return _seconds_per_run(run, (rng.normal(x), rng.normal(y)), w, repeats, timings)


def matmul_gflops(repeats: int, timings: int, n: int = 1024) -> float:
    """One thread's float32 matmul speed (an n x n product): the arithmetic peak the kernels can reach here."""
    rng = tf.random.Generator.from_seed(0)
    seconds = _seconds_per_run(tf.matmul, (rng.normal([n, n]), rng.normal([n, n])), [n, n], repeats, timings)
    return 2 * n ** 3 / seconds / 1e9


def main(_):
    from maml_tf import train
    from maml_tf.config import Config

    config = Config(**{**PRESETS[FLAGS.preset], **parse_overrides(FLAGS.set)}).validate()
    if config.datasource == "sinusoid" or not config.conv:
        raise app.UsageError("this network has no convolutions: pick an image preset with the conv net.")
    if config.intra_op_threads != 1:
        raise app.UsageError("conv_floor.py times each convolution on one thread: leave intra_op_threads at 1.")
    train.configure_threads(config)  # As main.py.
    algo = train.build_algorithm(config)
    batch = next(synthetic_batches(config))
    counts = count_convolutions(algo.train_step.get_concrete_function(batch).graph)

    rows = collections.defaultdict(lambda: [0, 0.0, 0.0])  # type: [runs, GFLOP, core-s]
    for key, n in counts.items():
        seconds = time_alone(key, FLAGS.repeats, FLAGS.timings)
        row = rows[key[0]]
        row[0] += n
        row[1] += n * flops(key) / 1e9
        row[2] += n * seconds
    steps = []
    for i in range(FLAGS.warmup + FLAGS.iterations):
        start = time.perf_counter()
        float(algo.train_step(batch)["objective_loss"])
        if i >= FLAGS.warmup:
            steps.append(time.perf_counter() - start)

    cores = os.cpu_count() or 1
    total_gflop, core_s = sum(r[1] for r in rows.values()), sum(r[2] for r in rows.values())
    floor, step = core_s / cores, float(np.median(steps))
    peak = matmul_gflops(FLAGS.repeats, FLAGS.timings)
    print(f"Convolutions of one {FLAGS.preset} {','.join(FLAGS.set)} train step, each timed alone on one thread:")
    print("| op type | runs per step | GFLOP | core-s alone | GFLOPS alone |\n|---|---|---|---|---|")
    for kind in CONVOLUTIONS:
        if kind in rows:
            n, gflop, seconds = rows[kind]
            print(f"| {kind} | {n} | {gflop:.2f} | {seconds:.3f} | {gflop / seconds:.0f} |")
    runs = sum(r[0] for r in rows.values())
    print(f"| all | {runs} | {total_gflop:.2f} | {core_s:.3f} | {total_gflop / core_s:.0f} |")
    print(f"\nFloor on {cores} cores: {floor:.4f} s; the step's median: {step:.4f} s "
          f"(convolutions alone would be {100 * floor / step:.0f}% of it).")
    print(f"At one thread's matmul speed ({peak:.0f} GFLOPS) the convolutions would take "
          f"{total_gflop / peak / cores:.4f} s on {cores} cores.")
    print(json.dumps({"preset": FLAGS.preset, "set": FLAGS.set, "conv_gflop": round(total_gflop, 3),
                      "conv_core_s": round(core_s, 4), "cores": cores, "floor_s": round(floor, 4),
                      "matmul_gflops_per_thread": round(peak, 1),
                      "floor_at_matmul_speed_s": round(total_gflop / peak / cores, 4),
                      "step_median_s": round(step, 4), "tensorflow": tf.__version__}))


if __name__ == "__main__":
    app.run(main)
