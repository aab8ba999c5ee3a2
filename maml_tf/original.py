"""The ORIGINAL code (github.com/cbfinn/maml) run unmodified under TensorFlow 2's `tf.compat.v1`.

Used by `python -m maml_tf.compare` (side by side with this port) and by
`benchmarks/bench_original.py` (its speed). The original's files are not part
of this repository: they are imported from a user's checkout (`original_dir`:
`maml.py`, `utils.py`, `data_generator.py`).

What stands in for TensorFlow 1 (`import_original`):

* `tensorflow` is `tf.compat.v1` with TF 1 semantics switched on
  (`disable_v2_behavior`: TF 1 control flow for the original's `tf.map_fn`,
  reference variables). That is process-wide, so the original runs in a
  process of its own: `Worker` starts `python -m maml_tf.original` and talks
  to it through pickles on its standard input and output.
* `tf.contrib`: batch norm as TF 1.0's `tf.contrib.layers.batch_norm` (beta
  only, epsilon 1e-3, batch statistics, moments from TF 1.0's shifted
  sufficient statistics, exact at every order), layer norm, the Xavier
  initialisers and `tf.contrib.metrics.accuracy`. `bench_original.py
  --check_golden` checks this against the golden files.
* `os.listdir` in `data_generator.py` and `utils.py` returns sorted names: the
  original builds its Omniglot character list from `os.listdir`, whose order
  depends on the file system, before shuffling it with `random.seed(1)`; sorted,
  its split is this port's (`maml_tf/data/omniglot.py`) on every disk.

The graphs are the original `main()`'s: `MAML(dim_input, dim_output,
test_num_updates)`, `construct_model(prefix='metatrain_')` for training and, on
the same weights, `construct_model(prefix='metaval_')` with a meta-batch of 1 for
testing, with placeholders of static shape for the inputs (the original feeds
sinusoid batches through placeholders the same way; here image tasks too, so
that both programs see the same tasks).
"""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
import traceback
import types
from typing import Dict, Optional

import numpy as np

# The original main.py's flags that maml.py, utils.py and data_generator.py read, with its defaults.
ORIGINAL_FLAGS = dict(datasource="sinusoid", num_classes=5, meta_batch_size=25, meta_lr=0.001,
                      metatrain_iterations=15000, update_batch_size=5, update_lr=1e-3, num_updates=1,
                      norm="batch_norm", num_filters=64, conv=True, max_pool=False, stop_grad=False,
                      test_set=False, baseline="")
ORIGINAL_FILES = ("maml.py", "utils.py", "data_generator.py")


class OriginalError(RuntimeError):
    """The original code could not be run (missing files, or it failed; the message says which)."""


# ------------------------------------------------------------ the tf.contrib stand-in
def contrib_stand_in(v1, moments: str = "tf1_shift"):
    """The `tf.contrib` functions the original calls, in TF 1.0's semantics.

    Args:
      v1: `tf.compat.v1`.
      moments: 'tf1_shift' (TF 1.0's `nn.moments`, as the golden files were
        made) or 'centred' (the mean, then the variance of the centred values,
        as this port's `networks.exact_normalize`).
    """

    def batch_moments(x, axes):
        if moments == "centred":
            mean = v1.reduce_mean(x, axes, keepdims=True)
            return mean, v1.reduce_mean(v1.square(x - mean), axes, keepdims=True)
        # TF 1.0's nn.moments: shifted sufficient statistics; exact at every order as the shift cancels.
        shift = v1.stop_gradient(v1.reduce_mean(x, axes, keepdims=True))
        count = float(np.prod([x.shape[a] for a in axes]))  # Placeholders of static shape: every input has one.
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
            mean, variance = batch_moments(inp, axes)
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


def _sorted_os():
    """`os` with a sorted `listdir` (see the module docstring)."""
    shim = types.ModuleType("os")
    shim.__getattr__ = lambda name: getattr(os, name)
    shim.listdir = lambda path=".": sorted(os.listdir(path))
    return shim


def check_original_dir(original_dir: Optional[str], files=("maml.py", "utils.py")) -> str:
    """`original_dir` if it holds `files`, else an `OriginalError` saying what to point it at."""
    missing = [f for f in files if not os.path.isfile(os.path.join(original_dir or "", f))]
    if missing:
        raise OriginalError(f"--original_dir={original_dir!r} has no {', '.join(missing)}: point it at a checkout "
                            "of https://github.com/cbfinn/maml (git clone https://github.com/cbfinn/maml).")
    return os.path.abspath(original_dir)


def import_original(original_dir: str, moments: str = "tf1_shift", modules=("maml",)):
    """Imports the original's modules with `tensorflow` standing for `tf.compat.v1` plus the stand-in.

    Switches the process to TF 1 semantics (`disable_v2_behavior`). Returns the
    modules, in the order of `modules`.
    """
    import tensorflow as tf

    original_dir = check_original_dir(original_dir, [m + ".py" for m in modules])
    v1 = tf.compat.v1
    v1.disable_eager_execution()
    v1.disable_v2_behavior()
    contrib = contrib_stand_in(v1, moments)
    shim = types.ModuleType("tensorflow")
    shim.__getattr__ = lambda name: getattr(v1, name)
    shim.contrib = contrib
    stand_ins = {"tensorflow": shim, "tensorflow.contrib": contrib, "tensorflow.contrib.layers": contrib.layers,
                 "tensorflow.contrib.layers.python": contrib.layers.python}
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    sys.path.insert(0, original_dir)
    try:
        imported = [importlib.import_module(m) for m in modules]
        for name in ("utils", "data_generator"):
            if name in sys.modules and hasattr(sys.modules[name], "os"):
                sys.modules[name].os = _sorted_os()
        return imported
    finally:
        sys.path.pop(0)
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name)
            else:
                sys.modules[name] = module


def set_original_flags(values: Dict) -> None:
    """Defines the original's flags (absl, as its main.py) where missing, and sets those in `values`.

    Names the original does not have (e.g. the golden files' logdir, train, resume) are ignored.
    """
    from absl import flags

    FLAGS = flags.FLAGS
    for name, default in ORIGINAL_FLAGS.items():
        if name not in FLAGS:
            define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
                      str: flags.DEFINE_string}[type(default)]
            define(name, default, "the original main.py's flag.")
    if not FLAGS.is_parsed():
        FLAGS.mark_as_parsed()
    for name, value in values.items():
        if name not in ORIGINAL_FLAGS:
            continue
        kind = type(ORIGINAL_FLAGS[name])
        setattr(FLAGS, name, (str(value).lower() in ("1", "true")) if kind is bool else kind(value))


def original_dims(datasource: str, num_classes: int, baseline: str = "") -> tuple:
    """(dim_input, dim_output) of the original's network for a datasource."""
    if datasource == "sinusoid":
        return (3 if baseline == "oracle" else 1), 1
    return (84 * 84 * 3 if datasource == "miniimagenet" else 28 * 28), num_classes


def build_model(maml_module, test_num_updates: int, num_support: int, num_query: int, prefix: str = "metatrain_",
                model=None):
    """The original `main()`'s model: `MAML(...)` (or `model`, to share its weights), then `construct_model`.

    The inputs are placeholders of static shape `[meta_batch_size, num_support or
    num_query, dim]` (batch norm needs a known rank), read from the flags.

    Returns:
      `(model, placeholders)`, the latter keyed inputa, labela, inputb, labelb.
    """
    import tensorflow as tf
    from absl import flags

    FLAGS, v1 = flags.FLAGS, tf.compat.v1
    dim_input, dim_output = original_dims(FLAGS.datasource, FLAGS.num_classes, FLAGS.baseline)
    shapes = {"inputa": (num_support, dim_input), "labela": (num_support, dim_output),
              "inputb": (num_query, dim_input), "labelb": (num_query, dim_output)}
    inputs = {k: v1.placeholder(tf.float32, (FLAGS.meta_batch_size, *shape), name=prefix + k)
              for k, shape in shapes.items()}
    if model is None:
        model = maml_module.MAML(dim_input, dim_output, test_num_updates=test_num_updates)
    model.test_num_updates = test_num_updates
    model.construct_model(input_tensors=inputs, prefix=prefix)
    return model, inputs


# ------------------------------------------------------------ the worker process
class Session:
    """The original's graphs in this (TF 1) process; `Worker` calls its methods from another process."""

    def __init__(self, original_dir: str, moments: str = "tf1_shift"):
        self.maml, self.data_generator = import_original(original_dir, moments, ("maml", "data_generator"))
        import tensorflow as tf

        self.v1 = tf.compat.v1

    def build(self, flags: Dict, train_shapes: Optional[tuple], train_steps: int, test_shapes: Optional[tuple],
              test_steps: int, seed: int) -> Dict[str, np.ndarray]:
        """The training graph (meta-batch of the flags) and the test graph (meta-batch 1) on shared weights.

        Args:
          flags: the original's flags.
          train_shapes, test_shapes: (support, query) examples per task, or None to leave that graph out.
          train_steps, test_steps: `test_num_updates` of `main()` when training and when testing.
          seed: the graph-level seed of the initialisers.

        Returns:
          The initial trainable weights by name (`model/conv1`, ...).
        """
        from absl import flags as absl_flags

        v1, FLAGS = self.v1, absl_flags.FLAGS
        set_original_flags(flags)
        if getattr(self, "sess", None) is not None:
            self.sess.close()
        v1.reset_default_graph()
        v1.set_random_seed(seed)
        self.model, self.train_inputs, self.test_inputs = None, None, None
        if train_shapes is not None:
            self.model, self.train_inputs = build_model(self.maml, train_steps, *train_shapes)
        if test_shapes is not None:
            meta_batch_size = FLAGS.meta_batch_size
            FLAGS.meta_batch_size = 1  # As the original main() when testing.
            try:
                self.model, self.test_inputs = build_model(self.maml, test_steps, *test_shapes, prefix="metaval_",
                                                           model=self.model)
            finally:
                FLAGS.meta_batch_size = meta_batch_size
        self.variables = {v.name[:-2]: v for v in v1.trainable_variables()}
        self.saver = v1.train.Saver(list(self.variables.values()), max_to_keep=None)
        # One thread per op, as the port's default (--num_threads); reproducible reductions.
        config = v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
        self.sess = v1.InteractiveSession(config=config)  # As the original main(): the graph as built.
        self.sess.run(v1.global_variables_initializer())
        return self.weights()

    def weights(self) -> Dict[str, np.ndarray]:
        return dict(zip(self.variables, self.sess.run(list(self.variables.values()))))

    def assign(self, values: Dict[str, np.ndarray]) -> None:
        for name, value in values.items():
            self.variables[name].load(value, self.sess)

    def save(self, prefix: str) -> str:
        return self.saver.save(self.sess, prefix, write_meta_graph=False)

    def restore(self, prefix: str) -> Dict[str, np.ndarray]:
        self.saver.restore(self.sess, prefix)
        return self.weights()

    def _feed(self, inputs, batch):
        return {inputs[k]: batch[k] for k in inputs}

    def meta_gradient(self, batch: Dict[str, np.ndarray]) -> Dict:
        """Outputs, losses and the meta-gradient of `metatrain_op` on one batch, without updating."""
        from absl import flags as absl_flags

        FLAGS, m = absl_flags.FLAGS, self.model
        names = [v.name[:-2] for _, v in m.gvs]
        grads = [g for g, _ in m.gvs]  # `model.gvs` keeps the gradients before maml.py clips them.
        fetch = {"outputas": m.outputas, "outputbs": m.outputbs, "total_loss1": m.total_loss1,
                 "total_losses2": m.total_losses2, "grads": grads}
        if FLAGS.datasource == "miniimagenet":  # metatrain_op applies them clipped, as maml.py does it.
            fetch["unclipped"], fetch["grads"] = grads, [self.v1.clip_by_value(g, -10, 10) for g in grads]
        out = self.sess.run(fetch, self._feed(self.train_inputs, batch))
        out["grads"] = dict(zip(names, out["grads"]))
        if "unclipped" in out:
            out["unclipped"] = dict(zip(names, out["unclipped"]))
        return out

    def _train_fetch(self):
        from absl import flags as absl_flags

        m, last = self.model, absl_flags.FLAGS.num_updates - 1
        fetch = {"pre_loss": m.total_loss1, "post_loss": m.total_losses2[last]}
        if m.classification:
            fetch.update(pre_accuracy=m.total_accuracy1, post_accuracy=m.total_accuracies2[last])
        return fetch

    def train_step(self, batch: Dict[str, np.ndarray], pretrain: bool = False) -> Dict[str, float]:
        """One `metatrain_op` (or `pretrain_op`), with the losses (and accuracies) it reads, as main.py's train()."""
        fetch = {"op": self.model.pretrain_op if pretrain else self.model.metatrain_op, **self._train_fetch()}
        out = self.sess.run(fetch, self._feed(self.train_inputs, batch))
        out.pop("op")
        return {k: float(v) for k, v in out.items()}

    def validate(self, batch: Dict[str, np.ndarray]) -> Dict[str, float]:
        """The training graph's losses on a batch without an update (as main.py validates sinusoid batches)."""
        out = self.sess.run(self._train_fetch(), self._feed(self.train_inputs, batch))
        return {k: float(v) for k, v in out.items()}

    def test(self, tasks: Dict[str, np.ndarray]) -> np.ndarray:
        """main.py's test() on the given tasks, one at a time: [tasks, 1 + steps] accuracies (MSEs for regression)."""
        m = self.model
        if m.classification:
            fetch = [m.metaval_total_accuracy1] + m.metaval_total_accuracies2
        else:
            fetch = [m.metaval_total_loss1] + m.metaval_total_losses2
        rows = []
        for i in range(len(tasks["inputa"])):
            one = {k: v[i:i + 1] for k, v in tasks.items()}
            rows.append(self.sess.run(fetch, {**self._feed(self.test_inputs, one), m.meta_lr: 0.0}))
        return np.asarray(rows, np.float64)

    def split(self, flags: Dict, data_folder: str, sorted_listing: bool = True) -> Dict[str, list]:
        """The Omniglot characters of each split as the original `DataGenerator` lists them: with the stand-in's
        sorted listing, or (`sorted_listing=False`) with this file system's `os.listdir` order, as the original."""
        self.data_generator.os = _sorted_os() if sorted_listing else os
        out = {}
        for test_set in (False, True):
            set_original_flags({**flags, "datasource": "omniglot", "test_set": test_set})
            generator = self.data_generator.DataGenerator(2, 1, {"data_folder": data_folder})
            relative = [os.path.relpath(f, data_folder) for f in generator.metaval_character_folders]
            out["test" if test_set else "val"] = relative
            out["train"] = [os.path.relpath(f, data_folder) for f in generator.metatrain_character_folders]
        return out


def serve(original_dir: str, moments: str = "tf1_shift") -> None:
    """The worker's loop: `(method, kwargs)` pickles in on stdin, `('ok', result)` or `('error', text)` out."""
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # The original's prints go to the log, not into the channel.
    sys.stdout = sys.stderr
    try:
        session = Session(original_dir, moments)
        pickle.dump(("ok", "ready"), channel)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it.
        pickle.dump(("error", f"{type(e).__name__}: {e}"), channel)
        return
    channel.flush()
    while True:
        try:
            method, kwargs = pickle.load(sys.stdin.buffer)
        except EOFError:
            return
        try:
            reply = ("ok", getattr(session, method)(**kwargs))
        except Exception as e:  # noqa: BLE001
            reply = ("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        pickle.dump(reply, channel)
        channel.flush()


class Worker:
    """A process running the original code (`Session`); each method call is a round trip.

    `submit` sends a call without waiting, so that the port can compute while the
    original does (`result` collects it).
    """

    def __init__(self, original_dir: str, log_path: Optional[str] = None, moments: str = "tf1_shift"):
        check_original_dir(original_dir, ORIGINAL_FILES)
        self.log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": os.environ.get(
            "CUDA_VISIBLE_DEVICES", "")}
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        # A session of its own: Ctrl-C in the terminal reaches the parent only, which finishes the step in flight
        # and writes what it has. The worker ends when the parent closes (or loses) the pipe.
        self.proc = subprocess.Popen([sys.executable, "-m", "maml_tf.original", os.path.abspath(original_dir), moments],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env,
                                     start_new_session=True)
        self.pending = 0
        self._receive()  # 'ready', or the import's error.

    def _receive(self):
        try:
            status, value = pickle.load(self.proc.stdout)
        except EOFError:
            raise OriginalError(f"the original code's process ended (exit status {self.proc.wait()}); "
                                f"see {getattr(self.log, 'name', 'its log')}") from None
        if status == "error":
            raise OriginalError(f"the original code failed: {value}")
        return value

    def submit(self, method: str, **kwargs) -> None:
        pickle.dump((method, kwargs), self.proc.stdin)
        self.proc.stdin.flush()
        self.pending += 1

    def result(self):
        self.pending -= 1
        return self._receive()

    def call(self, method: str, **kwargs):
        self.submit(method, **kwargs)
        return self.result()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.log is not subprocess.DEVNULL:
            self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":
    serve(sys.argv[1], *sys.argv[2:3])
