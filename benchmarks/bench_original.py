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

The unmodified `maml.py`/`utils.py` run under TF 2's `tf.compat.v1` with a
small stand-in for the `tf.contrib` pieces they use (below): batch norm as TF
1.0's `tf.contrib.layers.batch_norm` (beta only, epsilon 1e-3, batch
statistics, moments from TF 1.0's shifted sufficient statistics, so their
derivatives of every order are exact), layer norm, the Xavier initialisers and
`tf.contrib.metrics.accuracy`. The graph is the original `main.py`'s training
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
import importlib
import json
import os
import resource
import sys
import time
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from presets import PRESETS  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, os.pardir, os.pardir, "shared", "golden")

# The original main.py's flags that maml.py/utils.py read, with its defaults.
ORIGINAL_FLAGS = dict(datasource="sinusoid", num_classes=5, meta_batch_size=25, meta_lr=0.001,
                      metatrain_iterations=15000, update_batch_size=5, update_lr=1e-3, num_updates=1,
                      norm="batch_norm", num_filters=64, conv=True, max_pool=False, stop_grad=False)

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


# ------------------------------------------------------------ tf.contrib shim
def _contrib(v1):
    """The `tf.contrib` functions the original calls, in TF 1.0's semantics."""

    def moments(x, axes):
        if FLAGS.moments == "centred":  # As this port's networks.exact_normalize.
            mean = v1.reduce_mean(x, axes, keepdims=True)
            return mean, v1.reduce_mean(v1.square(x - mean), axes, keepdims=True)
        # TF 1.0's nn.moments: shifted sufficient statistics; exact at every order as the shift cancels.
        shift = v1.stop_gradient(v1.reduce_mean(x, axes, keepdims=True))
        count = float(np.prod([x.shape[a] for a in axes]))  # build() gives every input a static shape.
        m_ss = v1.reduce_sum(x - shift, axes, keepdims=True)
        v_ss = v1.reduce_sum(v1.squared_difference(x, shift), axes, keepdims=True)
        shifted_mean = m_ss / count
        return shifted_mean + shift, v_ss / count - v1.square(shifted_mean)

    def _norm(inp, axes, params_shape, epsilon, scale, activation_fn, reuse, scope, moving):
        with v1.variable_scope(scope, reuse=reuse):
            beta = v1.get_variable("beta", params_shape, initializer=v1.zeros_initializer())
            gamma = v1.get_variable("gamma", params_shape, initializer=v1.ones_initializer()) if scale else None
            if moving:  # Created (and never updated by the train op) as contrib's batch_norm does.
                for name, init in (("moving_mean", v1.zeros_initializer()), ("moving_variance", v1.ones_initializer())):
                    v1.get_variable(name, params_shape, initializer=init, trainable=False)
            mean, variance = moments(inp, axes)
            out = v1.nn.batch_normalization(inp, mean, variance, beta, gamma, epsilon)
        return activation_fn(out) if activation_fn is not None else out

    def batch_norm(inp, activation_fn=None, reuse=None, scope=None):
        rank = inp.shape.ndims
        return _norm(inp, list(range(rank - 1)), inp.shape[-1:], 1e-3, False, activation_fn, reuse, scope, True)

    def layer_norm(inp, activation_fn=None, reuse=None, scope=None):
        rank = inp.shape.ndims
        return _norm(inp, list(range(1, rank)), inp.shape[-1:], 1e-12, True, activation_fn, reuse, scope, False)

    def xavier_initializer(dtype=v1.float32):  # Uniform, fan average, kernel area in both fans.
        return v1.glorot_uniform_initializer(dtype=dtype)

    def accuracy(predictions, labels):
        return v1.reduce_mean(v1.cast(v1.equal(predictions, labels), v1.float32))

    layers = types.SimpleNamespace(batch_norm=batch_norm, layer_norm=layer_norm, xavier_initializer=xavier_initializer,
                                   xavier_initializer_conv2d=xavier_initializer)
    layers.python = types.SimpleNamespace(layers=layers)
    return types.SimpleNamespace(layers=layers, metrics=types.SimpleNamespace(accuracy=accuracy))


def import_original(original_dir):
    """Imports the original `maml` module with `tensorflow` standing for `tf.compat.v1` plus the shim."""
    import tensorflow as tf

    missing = [f for f in ("maml.py", "utils.py") if not os.path.isfile(os.path.join(original_dir or "", f))]
    if missing:
        raise app.UsageError(f"--original_dir={original_dir!r} has no {', '.join(missing)}: point it at a "
                             "checkout of https://github.com/cbfinn/maml.")
    v1 = tf.compat.v1
    v1.disable_eager_execution()
    v1.disable_v2_behavior()
    contrib = _contrib(v1)
    shim = types.ModuleType("tensorflow")
    shim.__getattr__ = lambda name: getattr(v1, name)
    shim.contrib = contrib
    stand_ins = {"tensorflow": shim, "tensorflow.contrib": contrib, "tensorflow.contrib.layers": contrib.layers,
                 "tensorflow.contrib.layers.python": contrib.layers.python}
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    sys.path.insert(0, os.path.abspath(original_dir))
    try:
        return importlib.import_module("maml")
    finally:
        sys.path.pop(0)
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name)
            else:
                sys.modules[name] = module


def set_original_flags(values):
    """Defines the original's flags (absl, as its main.py) and sets them."""
    for name, default in ORIGINAL_FLAGS.items():
        if name not in FLAGS:
            define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
                      str: flags.DEFINE_string}[type(default)]
            define(name, default, "the original main.py's flag.")
    for name, value in values.items():
        if name not in ORIGINAL_FLAGS:
            continue  # e.g. the golden files' logdir, train, resume.
        kind = type(ORIGINAL_FLAGS[name])
        setattr(FLAGS, name, (str(value).lower() in ("1", "true")) if kind is bool else kind(value))


def parse_overrides(pairs):
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in ORIGINAL_FLAGS:
            raise app.UsageError(f"--set: {key!r} is not one of the original's flags {sorted(ORIGINAL_FLAGS)}.")
        out[key] = value
    return out


def build(maml_module, test_num_updates, n_a, n_b):
    """The original main.py's training model: `MAML(...)`, `construct_model(...)`.

    The inputs are placeholders of static shape `[meta_batch, n_a or n_b, dim]`,
    as the original's image queues give (batch norm needs a known rank).
    """
    import tensorflow as tf

    if FLAGS.datasource == "sinusoid":
        dim_input, dim_output = 1, 1
    else:
        dim_input = 84 * 84 * 3 if FLAGS.datasource == "miniimagenet" else 28 * 28
        dim_output = FLAGS.num_classes
    mb, v1 = FLAGS.meta_batch_size, tf.compat.v1
    shapes = {"inputa": (n_a, dim_input), "labela": (n_a, dim_output), "inputb": (n_b, dim_input),
              "labelb": (n_b, dim_output)}
    inputs = {k: v1.placeholder(tf.float32, (mb, *shape), name=k) for k, shape in shapes.items()}
    model = maml_module.MAML(dim_input, dim_output, test_num_updates=test_num_updates)
    model.construct_model(input_tensors=inputs, prefix="metatrain_")
    return model, inputs


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
    model, inputs = build(maml_module, main_test_num_updates(), n_a, n_b)
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
    model, inputs = build(maml_module, meta["test_num_updates_used"], golden["inputa"].shape[1],
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
    maml_module = import_original(FLAGS.original_dir)
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
