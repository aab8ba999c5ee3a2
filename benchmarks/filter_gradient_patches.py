"""Is a convolution's filter gradient faster as image patches times the output gradient?

    python benchmarks/filter_gradient_patches.py --tasks=8 --examples=5

For the layers of the Omniglot 5-way conv net in the task-batched layout
(`maml_tf/batched.py`: `--tasks` tasks' channels side by side, grouped
convolutions, 3x3 kernels, stride 2, 64 filters), times on one thread, in a
`tf.while_loop`, oneDNN's `Conv2DBackpropFilter` against
`tf.image.extract_patches` followed by one batched matmul per task group, and
the forward convolution for reference. Prints milliseconds and GFLOPS per
layer, and the two gradients' largest relative difference.

Measured here (2-core AMD EPYC, TF 2.21, 2026-11-23): the patches were slower
on every layer (README, Speed and memory), so the step keeps oneDNN's kernel.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_integer("tasks", 8, "tasks in a group (grouped convolution).")
flags.DEFINE_integer("examples", 5, "examples per task.")
flags.DEFINE_integer("filters", 64, "filters per task and layer.")
flags.DEFINE_integer("repeats", 50, "runs per timing.")
FLAGS = flags.FLAGS


def seconds_per_run(fn, *args, repeats: int) -> float:
    """Median over 5 timings of one `fn(*args)`, run `repeats` times one after the other."""

    @tf.function
    def loop(*a):
        return tf.while_loop(lambda i, _: i < repeats, lambda i, acc: (i + 1, acc + 0 * tf.reduce_sum(fn(*a))),
                             (0, tf.constant(0.0)), parallel_iterations=1)[1]

    loop(*args)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        loop(*args).numpy()
        times.append((time.perf_counter() - start) / repeats)
    return sorted(times)[2]


def filter_gradient_by_patches(x, dy, tasks: int, channels_in: int, stride: int):
    """`Conv2DBackpropFilter` of a grouped 3x3 'SAME' convolution, as patches^T @ dy per task."""
    patches = tf.image.extract_patches(x, [1, 3, 3, 1], [1, stride, stride, 1], [1, 1, 1, 1], "SAME")
    rows = patches.shape[0] * patches.shape[1] * patches.shape[2]
    patches = tf.reshape(tf.transpose(tf.reshape(patches, [rows, 9, tasks, channels_in]), [2, 1, 3, 0]),
                         [tasks, 9 * channels_in, rows])
    channels_out = dy.shape[-1] // tasks
    grads = tf.transpose(tf.reshape(dy, [rows, tasks, channels_out]), [1, 0, 2])
    w = tf.reshape(tf.matmul(patches, grads), [tasks, 3, 3, channels_in, channels_out])
    return tf.reshape(tf.transpose(w, [1, 2, 3, 0, 4]), [3, 3, channels_in, tasks * channels_out])


def main(_):
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    t, n, f = FLAGS.tasks, FLAGS.examples, FLAGS.filters
    print("| layer input | Conv2DBackpropFilter ms (GFLOPS) | patches @ dy ms (GFLOPS) | forward ms | rel. diff |")
    print("|---|---|---|---|---|")
    for size, channels_in in ((28, 1), (14, f), (7, f), (4, f)):
        x = tf.random.normal([n, size, size, t * channels_in])
        out = (size + 1) // 2
        dy = tf.random.normal([n, out, out, t * f])
        shape = [3, 3, channels_in, t * f]

        def oned(x, dy, shape=shape):
            return tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=shape, out_backprop=dy,
                                                   strides=[1, 2, 2, 1], padding="SAME")

        def patches(x, dy, channels_in=channels_in):
            return filter_gradient_by_patches(x, dy, t, channels_in, 2)

        reference = oned(x, dy)
        diff = float(tf.reduce_max(tf.abs(reference - patches(x, dy))) / tf.reduce_max(tf.abs(reference)))
        a = seconds_per_run(oned, x, dy, repeats=FLAGS.repeats)
        b = seconds_per_run(patches, x, dy, repeats=FLAGS.repeats)
        c = seconds_per_run(lambda x, w: tf.nn.conv2d(x, w, 2, "SAME"), x, tf.random.normal(shape),
                            repeats=FLAGS.repeats)
        gflop = 2 * n * out * out * 9 * channels_in * f * t / 1e9
        print(f"| {n}x{size}x{size}x{t * channels_in} | {a * 1e3:.3f} ({gflop / a:.0f}) | "
              f"{b * 1e3:.3f} ({gflop / b:.0f}) | {c * 1e3:.3f} | {diff:.1e} |")


if __name__ == "__main__":
    app.run(main)
