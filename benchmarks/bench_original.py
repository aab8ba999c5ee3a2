"""Seconds per meta-iteration and peak memory of the ORIGINAL code's train step, on this machine.

The ratios in the speed table compare this port with the original TF1 code.
The VM's speed drifts by about 20% within an hour, so ratios against figures
measured on another day are uncertain; this script times the original's own
`metatrain_op` now, in the same run as the port (`run_suite.py
--original_dir=...`). It needs a checkout of the original code, which this
repository does not include:

    git clone https://github.com/cbfinn/maml /tmp/cbfinn-maml
    python benchmarks/bench_original.py --original_dir=/tmp/cbfinn-maml --preset=omniglot5
    python benchmarks/bench_original.py --original_dir=/tmp/cbfinn-maml --check_golden   # the shim is faithful

The unmodified `maml.py`/`utils.py` run under TF 2's `tf.compat.v1` with the
stand-in for the `tf.contrib` pieces they use that `python -m maml_tf.compare`
also uses (`maml_tf/original.py`: TF 1.0's batch norm with exact moments, layer
norm, the Xavier initialisers, `tf.contrib.metrics.accuracy`). The graph is the original `main.py`'s training
graph (`MAML(dim_input, dim_output, test_num_updates)` then
`construct_model(prefix='metatrain_')`), fed through its placeholders with one
random batch of the preset's shapes; each timed iteration is
`sess.run(model.metatrain_op)`, as the original's training loop runs it.
TF 1 semantics are on (`tf.compat.v1.disable_v2_behavior()`: TF 1 control
flow for the original's `tf.map_fn`, reference variables); with TF 2's control
flow its step is ten times slower. The session runs each op on one thread by
default, as this port does (`--intra_op_threads=1`); issue 8's figures for the
original match that setting, and TensorFlow's default session (every core per
op, `--intra_op_threads=0`, the original `main.py`'s) is up to twice as slow
on a 2-core machine.
`--count_convolutions` also reports the convolutions a traced step runs and
their GFLOP, as `conv_floor.py` counts the port's.
`--check_golden` instead runs the golden files' inputs and initial weights
through the same graph and compares the losses and meta-gradients with
`../shared/golden` (made by the original code under another such shim).
"""

import glob
import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from presets import PRESETS  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from maml_tf.original import (ORIGINAL_FLAGS, OriginalError, build_model, import_original,  # noqa: E402
                              set_original_flags)

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, os.pardir, os.pardir, "shared", "golden")

flags.DEFINE_string("original_dir", None, "a checkout of github.com/cbfinn/maml (maml.py, utils.py).")
flags.DEFINE_enum("preset", "sinusoid", list(PRESETS), "configuration to time.")
flags.DEFINE_list("set", [], "flag overrides of the original's main.py, key=value (e.g. stop_grad=True).")
flags.DEFINE_integer("iterations", 30, "timed iterations.")
flags.DEFINE_integer("warmup", 3, "untimed iterations first.")
flags.DEFINE_enum("moments", "tf1_shift", ["tf1_shift", "centred"],
                  "batch-norm moments: TF 1.0's nn.moments (as the golden files were made), or the mean and "
                  "then the variance of the centred values (as this port).")
flags.DEFINE_integer("intra_op_threads", 1, "threads per op: 1, as the port's default (issue 8's figures match "
                     "it); 0: TensorFlow's default session, as the original main.py (slower on 2 cores).")
flags.DEFINE_enum("session", "interactive", ["interactive", "plain"],
                  "interactive: `tf.InteractiveSession`, as the original main.py, which runs the graph as built "
                  "(TensorFlow skips its Grappler graph optimisations there); plain: `tf.Session`, optimised (conv "
                  "and bias fused, the first layer's unused input gradients pruned).")
flags.DEFINE_bool("check_golden", False, "compare with the golden files instead of timing.")
flags.DEFINE_string("golden_dir", GOLDEN, "folder of the golden .npz files.")
flags.DEFINE_bool("count_convolutions", False, "also report the convolutions one (traced) step runs and their "
                  "GFLOP, as `conv_floor.py` counts the port's.")
FLAGS = flags.FLAGS


def parse_overrides(pairs):
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in ORIGINAL_FLAGS:
            raise app.UsageError(f"--set: {key!r} is not one of the original's flags {sorted(ORIGINAL_FLAGS)}.")
        out[key] = value
    return out


def main_test_num_updates():
    """The original main.py's `test_num_updates` when training."""
    return {"sinusoid": 5, "miniimagenet": 1}.get(FLAGS.datasource, 10)


def time_preset(maml_module):
    import tensorflow as tf

    v1 = tf.compat.v1
    rng = np.random.default_rng(0)
    k, mb = FLAGS.update_batch_size, FLAGS.meta_batch_size
    if FLAGS.datasource == "sinusoid":  # Any values time alike.
        n_a = n_b = k
    else:  # Images: update_batch_size support and 1 query example per class (15 queries on MiniImagenet).
        n_a = FLAGS.num_classes * k
        n_b = FLAGS.num_classes * (15 if FLAGS.datasource == "miniimagenet" else 1)
    model, inputs = build_model(maml_module, main_test_num_updates(), n_a, n_b)
    feed = {}
    for name, placeholder in inputs.items():
        shape = placeholder.shape.as_list()
        if name.startswith("label") and FLAGS.datasource != "sinusoid":  # One-hot, class after class.
            feed[placeholder] = np.tile(np.eye(shape[-1], dtype=np.float32), (mb, shape[1] // shape[-1], 1))
        else:
            feed[placeholder] = rng.random(shape, np.float32)
    config = v1.ConfigProto(intra_op_parallelism_threads=FLAGS.intra_op_threads)  # 0: the original's session.
    sess = (v1.InteractiveSession if FLAGS.session == "interactive" else v1.Session)(config=config)
    sess.run(v1.global_variables_initializer())
    times = []
    for i in range(FLAGS.warmup + FLAGS.iterations):
        start = time.perf_counter()
        sess.run(model.metatrain_op, feed)
        if i >= FLAGS.warmup:
            times.append(time.perf_counter() - start)
    report = {"preset": FLAGS.preset, "iterations": FLAGS.iterations,
              "median_s": round(float(np.median(times)), 5), "min_s": round(float(np.min(times)), 5),
              "max_s": round(float(np.max(times)), 5),
              "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 3),
              "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU", "cpus": os.cpu_count(),
              "tensorflow": tf.__version__, "code": "original", "moments": FLAGS.moments,
              "intra_op_threads": FLAGS.intra_op_threads, "session": FLAGS.session}
    if FLAGS.count_convolutions:  # After the timing: a traced step.
        from convolutions import count_traced_v1, summary

        report["convolutions"] = summary(count_traced_v1(sess, model.metatrain_op, feed))
    return report


def check_golden(maml_module, path):
    """Largest relative differences of this shim's losses and meta-gradient from one golden file's."""
    import tensorflow as tf

    v1 = tf.compat.v1
    golden = np.load(path)
    meta = json.loads(str(golden["meta_json"]))
    set_original_flags(json.loads(str(golden["flags_json"])))
    v1.reset_default_graph()
    model, inputs = build_model(maml_module, meta["test_num_updates_used"], golden["inputa"].shape[1],
                          golden["inputb"].shape[1])
    sess = v1.Session()
    sess.run(v1.global_variables_initializer())
    by_name = {v.name[:-2]: v for v in v1.trainable_variables()}
    for key in golden.files:
        if key.startswith("init/"):
            by_name[key[5:]].load(golden[key], sess)
    feed = {placeholder: golden[name] for name, placeholder in inputs.items()}
    names = [v.name[:-2] for _, v in model.gvs]
    grad_key = "metagrad_unclipped/" if any(k.startswith("metagrad_unclipped/") for k in golden.files) else "metagrad/"
    if grad_key == "metagrad_unclipped/":  # MiniImagenet clips the meta-gradient: compare it before clipping.
        grad_tensors = v1.gradients(model.total_losses2[FLAGS.num_updates - 1], [v for _, v in model.gvs])
    else:
        grad_tensors = [g for g, _ in model.gvs]
    grads, losses = sess.run([grad_tensors, model.total_losses2], feed)
    # Biases that batch norm follows: their meta-gradient is 0 up to float32 noise (golden README).
    keys = meta["inner_weights_dict_key_to_variable"]
    last_bias = max(int(k[1:]) for k in keys if k.startswith("b"))
    biases_before_bn = {keys[f"b{i}"] for i in range(1, last_bias)} if FLAGS.norm == "batch_norm" else set()
    rel = lambda a, b: float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))
    grad_err = max(rel(g, golden[grad_key + n]) for g, n in zip(grads, names) if n not in biases_before_bn)
    return {"file": os.path.basename(path), "losses": rel(np.array(losses), golden["total_losses2"]),
            "meta_gradient": grad_err}


def main(_):
    logging.set_verbosity(logging.ERROR)  # The original's summary names and TF1 deprecations log lines.
    try:
        maml_module, = import_original(FLAGS.original_dir, FLAGS.moments)
    except OriginalError as e:
        raise app.UsageError(str(e)) from None
    if FLAGS.check_golden:
        files = sorted(f for f in glob.glob(os.path.join(FLAGS.golden_dir, "*.npz"))
                       if "released_ckpt" not in f)
        if not files:
            raise app.UsageError(f"no golden files in {FLAGS.golden_dir}.")
        for path in files:
            print(json.dumps(check_golden(maml_module, path)), flush=True)
        return
    set_original_flags({**PRESETS[FLAGS.preset], **parse_overrides(FLAGS.set)})
    print(json.dumps(time_preset(maml_module)))


if __name__ == "__main__":
    app.run(main)
