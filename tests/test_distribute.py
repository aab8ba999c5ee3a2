"""tf.distribute (`maml_tf/core/distribute.py`): a meta-batch split across replicas equals one device.

The replicas are the four logical CPU devices of `tests/conftest.py`. Each
strategy reduces through one device (`ReductionToOneDevice`): several
strategies of different sizes in one process would otherwise share collective
group keys. `main.py --distribute=mirrored` runs with its default all-reduce in a
process of its own, and a two-process `multi_worker` run talks over localhost.
"""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf import networks, train
from maml_tf.algorithms.mmaml import Modulated
from maml_tf.config import Config
from maml_tf.core.distribute import distribute
from maml_tf.data import make_tasks
from tests.conftest import ROOT

STEPS = 3


def mirrored(replicas: int):
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)],
                                          cross_device_ops=tf.distribute.ReductionToOneDevice())


def config_for(algorithm, **kwargs):
    values = dict(norm="None", meta_batch_size=4, update_batch_size=3, num_updates=2, algorithm=algorithm)
    values.update(kwargs)
    return Config(**values).validate()


def build(config, dtype="float64"):
    keras.utils.set_random_seed(0)
    model = networks.build_network(config, dtype)
    return train.build_algorithm(config, Modulated(model) if config.algorithm == "mmaml" else model)


def batches(config, dtype="float64"):
    tasks = make_tasks(config, "train", 0).batches(config.meta_batch_size)
    return [tf.nest.map_structure(lambda t: tf.cast(t, dtype), next(tasks)) for _ in range(STEPS)]


def state(algo):
    """Every meta-parameter and non-trainable variable (batch-norm statistics, counters)."""
    variables = algo.meta_variables + algo.model.non_trainable_variables
    return [np.asarray(v.numpy(), np.float64) for v in variables]


def trained(config, replicas, dtype="float64", refresh=False):
    """The state after `STEPS` meta-updates, on one device (0 replicas) or split across `replicas`."""
    if replicas:
        strategy = mirrored(replicas)
        with strategy.scope():
            algo = build(config, dtype)
    else:
        algo = build(config, dtype)
    algo.update_moving_statistics = refresh
    if replicas:
        distribute(algo, strategy)
    losses = [float(algo.train_step(b)["objective_loss"]) for b in batches(config, dtype)]
    return state(algo), losses


def assert_close(got, expected, rtol):
    """Each tensor within `rtol` of its largest magnitude. Biases followed by a batch norm have a meta-gradient of 0
    in exact arithmetic, so Adam moves them by float noise only (below 1e-9): those are compared to 1e-9."""
    for a, b in zip(got, expected):
        scale = float(np.max(np.abs(b)))
        scale = 1e-9 / rtol if scale < 1e-9 else scale
        assert float(np.max(np.abs(a - b))) <= rtol * scale, (float(np.max(np.abs(a - b))) / scale)


@pytest.mark.parametrize("algorithm,replicas,options", [
    ("maml", 4, {"stop_grad": True, "norm": "batch_norm", "refresh": True}),  # Moving statistics refreshed.
    ("maml++", 2, {}),  # Per-step batch norm and its running statistics, the epoch counter.
    ("imaml", 4, {}), ("bmaml", 2, {}), ("mmaml", 2, {}), ("meta_sgd", 2, {}), ("anil", 4, {}), ("emaml", 2, {}),
    ("llama", 2, {}),
    ("maml", 2, {"recompute_inner_steps": True, "batch_tasks": False}),
])
def test_replicas_equal_one_device_in_float64(algorithm, replicas, options):
    """Weights (and batch-norm statistics, counters) after three meta-updates, and the losses on the way."""
    refresh = options.pop("refresh", False)  # The library's `update_moving_statistics` (the whole meta-batch's).
    config = config_for(algorithm, **options)
    expected, expected_losses = trained(config, 0, refresh=refresh)
    got, losses = trained(config, replicas, refresh=refresh)
    assert_close(got, expected, 1e-10)
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-12)


def test_meta_gradient_of_replicas_is_the_meta_batch_mean_and_float32_agrees_to_rounding():
    config = config_for("maml")
    single = build(config)
    batch = batches(config)[0]
    expected, _ = single.meta_gradients(batch)
    strategy = mirrored(4)
    with strategy.scope():
        algo = build(config)

    @tf.function
    def replicated(b):
        from maml_tf.core.distribute import all_reduce_mean, shard

        return strategy.run(lambda t: all_reduce_mean(algo.meta_gradients(t)[0]), args=(shard(strategy, b),))

    per_replica = replicated(batch)
    for replica in range(4):  # Every replica holds the mean over all four replicas' tasks.
        grads = [strategy.experimental_local_results(g)[replica] for g in per_replica]
        assert_close([g.numpy() for g in grads], [g.numpy() for g in expected], 1e-12)
    # float32: equal to rounding.
    batch32 = tf.nest.map_structure(lambda t: tf.cast(t, tf.float32), batch)
    single32 = build(config, "float32")
    with strategy.scope():
        algo = build(config, "float32")
    expected32, _ = single32.meta_gradients(batch32)
    got32 = replicated(batch32)
    assert_close([strategy.experimental_local_results(g)[0].numpy() for g in got32],
                 [g.numpy() for g in expected32], 1e-6)


def test_metamodel_fit_under_a_strategy_scope():
    from maml_tf import MetaModel

    config = config_for("maml")
    data = batches(config)
    dataset = tf.data.Dataset.from_tensors(tuple(data[0])).concatenate(
        tf.data.Dataset.from_tensor_slices(tuple(np.stack(f) for f in zip(*data[1:])))).unbatch().batch(4)

    def fit(strategy):
        with strategy.scope() if strategy else tf.distribute.get_strategy().scope():
            keras.utils.set_random_seed(0)
            meta = MetaModel(networks.build_network(config, "float64"), "maml", loss="mse", inner_lr=config.update_lr,
                             num_inner_steps=2)
            meta.compile(optimizer=keras.optimizers.Adam(1e-3))
        history = meta.fit(dataset, epochs=1, verbose=0).history
        return [v.numpy() for v in meta.learner.meta_variables], history["loss"][0]

    expected, expected_loss = fit(None)
    got, loss = fit(mirrored(2))
    assert_close(got, expected, 1e-10)
    assert loss == pytest.approx(expected_loss, rel=1e-12)


def test_resume_on_another_number_of_replicas(tmp_path):
    """Two updates on two replicas, saved; the third on four replicas: the single device's three updates."""
    config = config_for("maml")
    data = batches(config)
    expected, _ = trained(config, 0)
    strategy = mirrored(2)
    with strategy.scope():
        algo = build(config)
        checkpoints = train.Checkpoints(algo, str(tmp_path))
    distribute(algo, strategy)
    for b in data[:2]:
        algo.train_step(b)
    checkpoints.save(1)
    strategy = mirrored(4)
    with strategy.scope():
        algo = build(config)
        checkpoints = train.Checkpoints(algo, str(tmp_path))
    distribute(algo, strategy)
    assert checkpoints.restore_latest() and int(checkpoints.iteration.numpy()) == 2
    algo.train_step(data[2])
    assert_close(state(algo), expected, 1e-10)


def run_main(*args):
    proc = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr
    return proc


def test_main_mirrored_then_resumed_on_one_device(tmp_path):
    common = ["--norm=None", "--meta_batch_size=4", "--update_batch_size=2", "--progress=False"]
    folder = "cls_5.mbs_4.ubs_2.numstep1.updatelr0.001nonorm"
    out = run_main(*common, f"--logdir={tmp_path}", "--metatrain_iterations=2", "--distribute=mirrored",
                   "--distribute_devices=/cpu:0,/cpu:1").stdout
    assert "Distributed over 2 replicas (MirroredStrategy): 2 tasks of each meta-batch on each." in out
    # Resumed on one device, in this process: the same four updates as on one device, as main.py builds them.
    config = Config(norm="None", meta_batch_size=4, update_batch_size=2, logdir=str(tmp_path), metatrain_iterations=4,
                    progress=False).validate()
    train.run(config)
    keras.utils.set_random_seed(config.seed)
    algo = train.build_algorithm(config)
    for batch in make_tasks(config, "train", config.seed).batches(4, 4):
        algo.train_step(batch)
    restored = train.build_algorithm(config)
    assert train.Checkpoints(restored, str(tmp_path / folder)).restore_latest().endswith("model-3")
    assert_close([v.numpy() for v in restored.meta_variables], [v.numpy() for v in algo.meta_variables], 1e-5)


def test_reptile_is_refused_by_the_library():
    config = Config(algorithm="reptile", norm="None", meta_batch_size=4).validate()
    with pytest.raises(ValueError, match="reptile cannot be split across replicas: its tasks run one after another"):
        distribute(train.build_algorithm(config), mirrored(2))


def test_meta_batch_must_split_evenly():
    config = Config(meta_batch_size=3, distribute="mirrored", distribute_devices="/cpu:0,/cpu:1").validate()
    with pytest.raises(train.TrainingError, match="does not split evenly across 2 replicas"):
        train.make_strategy(config)


@pytest.mark.parametrize("flags,message", [
    (["--algorithm=reptile", "--distribute=mirrored"], "cannot be split across replicas"),
    (["--algorithm=platipus", "--distribute=mirrored"], "cannot be split across replicas"),
    (["--distribute=mirrored", "--jit_compile=True"], "--jit_compile is not supported with --distribute"),
    (["--distribute_devices=/gpu:0"], "--distribute_devices needs --distribute=mirrored"),
])
def test_bad_distribute_flags(flags, message):
    from maml_tf.config import ConfigError

    values = {f.split("=")[0][2:]: f.split("=")[1] for f in flags}
    values = {k: (v == "True") if v in ("True", "False") else v for k, v in values.items()}
    with pytest.raises(ConfigError, match=message):
        Config(**values).validate()


WORKER = """
import json, os, sys
import numpy as np
import tensorflow as tf
sys.path.insert(0, {root!r})
from tests.test_distribute import batches, build, config_for, state
from maml_tf.core.distribute import distribute, make_strategy
strategy = make_strategy("multi_worker")
config = config_for("maml")
with strategy.scope():
    algo = build(config)
distribute(algo, strategy)
for b in batches(config):
    algo.train_step(b)
np.savez(sys.argv[1], *state(algo))
"""


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_on_localhost_equal_one_device(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(ROOT)))
    cluster = {"worker": [f"localhost:{p}" for p in free_ports(2)]}
    procs = []
    for i in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path / f"worker{i}.npz")], cwd=ROOT,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    expected, _ = trained(config_for("maml"), 0)
    for i in range(2):
        with np.load(tmp_path / f"worker{i}.npz") as z:
            assert_close([z[f"arr_{k}"] for k in range(len(z.files))], expected, 1e-10)


def test_main_two_workers_then_resumed(tmp_path):
    """main.py --distribute=multi_worker in two processes: the chief writes the experiment folder, worker 1 its
    copies in .worker1; both resume from the chief's checkpoint; the weights are a single device's."""
    folder = tmp_path / "cls_5.mbs_4.ubs_2.numstep1.updatelr0.001nonorm"
    common = ["main.py", f"--logdir={tmp_path}", "--norm=None", "--meta_batch_size=4", "--update_batch_size=2",
              "--progress=False", "--distribute=multi_worker"]
    for iterations in (2, 4):
        cluster = {"worker": [f"localhost:{p}" for p in free_ports(2)]}
        procs = [subprocess.Popen([sys.executable, *common, f"--metatrain_iterations={iterations}"], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": json.dumps(
                                      {"cluster": cluster, "task": {"type": "worker", "index": i}})})
                 for i in range(2)]
        outs = [p.communicate(timeout=300) for p in procs]
        for p, (_, err) in zip(procs, outs):
            assert p.returncode == 0, err[-3000:]
        assert f"Saved {folder}/model-{iterations - 1}" in outs[0][0]
        assert f"Saved {folder}/.worker1/model-{iterations - 1}" in outs[1][0]
    assert "Restoring model weights from " + str(folder / "model-1") in outs[1][0]  # The chief's checkpoint.
    config = Config(norm="None", meta_batch_size=4, update_batch_size=2).validate()
    keras.utils.set_random_seed(config.seed)
    algo = train.build_algorithm(config)
    for batch in make_tasks(config, "train", config.seed).batches(4, 4):
        algo.train_step(batch)
    for directory in (folder, folder / ".worker1"):
        restored = train.build_algorithm(config)
        assert train.Checkpoints(restored, str(directory)).restore_latest().endswith("model-3")
        assert_close([v.numpy() for v in restored.meta_variables], [v.numpy() for v in algo.meta_variables], 1e-5)
