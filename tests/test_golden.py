"""Parity with the ORIGINAL code's numbers in ../shared/golden (see its README).

Each golden file holds the original's initial weights, one task batch, and
what the original computed from them. The port loads the weights by their
original names and runs the batch through the same code path as `main.py`
(`train.build_algorithm`). Tolerances are relative to each tensor's largest
magnitude. The golden README measures an independent float64 computation at
<=2e-6 (outputs) and <=4e-5 (meta-gradients) from these files; the port in
float64 is held to about that. In float32 a few ReLU inputs lie within 1e-7 of
zero and land on either side of the kink (omni5w1s_strided_bn task 2: one of
4,900 activations), which moves the meta-gradient by up to 2%: float32 gets a
bound of 5%, still far below the Keras batch-norm trap (60% and more).
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from maml_tf import networks, train
from maml_tf.algorithms import TaskBatch
from maml_tf.compare import rel_err  # Max |got - expected| over the largest |expected|.
from maml_tf.config import Config
from maml_tf.tf1_checkpoint import assign_by_original_names, load_tf1_checkpoint, read_tf1_checkpoint
from tests.conftest import shared_path

TRAIN_FILES = ["sine_nonorm_1step", "sine_batchnorm_1step", "omni5w1s_strided_bn", "omni20w1s_5step",
               "omni5w1s_nonorm_fc", "mini5w1s_maxpool", "extra_mini5w1s_maxpool_2step"]
TOLERANCES = {"float64": (2e-5, 2e-4), "float32": (2e-3, 5e-2)}  # (outputs, meta-gradients)
# The golden README: omni5w1s_nonorm_fc agrees with exact float64 only to 9e-5 (outputs) and 1.6e-4
# (meta-gradient), relative to its tiny logits.
FILE_TOLERANCES = {("omni5w1s_nonorm_fc", "float64"): (2e-4, 4e-4)}
OUTPUT_TOL = TOLERANCES["float32"][0]


def load(name):
    z = np.load(shared_path("golden", f"{name}.npz"))
    flags = json.loads(str(z["flags_json"]))
    meta = json.loads(str(z["meta_json"]))
    config = Config(**{k: v for k, v in flags.items() if k in Config.__dataclass_fields__})
    return z, meta, config


def batch_of(z, config, dtype="float32"):
    shape = networks.input_shape(config)
    reshape = lambda a: tf.constant(a.reshape(a.shape[:2] + tuple(shape)), dtype)
    return TaskBatch(reshape(z["inputa"]), tf.constant(z["labela"], dtype), reshape(z["inputb"]),
                     tf.constant(z["labelb"], dtype))


def pre_bn_bias(name, config):
    """Biases right before a batch norm: meta-gradient analytically 0, golden values are noise."""
    return config.norm == "batch_norm" and name.startswith("model/Variable")


def build(z, config, prefix="init/", dtype="float32"):
    algo = train.build_algorithm(config, networks.build_network(config, dtype))
    names = networks.original_variable_names(algo.model)
    assign_by_original_names(algo.model, {n: z[prefix + n] for n in names})
    return algo, names


def compare_forward(results, z, num_steps, classification, output_tol=OUTPUT_TOL):
    """Max relative error of every reported quantity of the first `num_steps` steps."""
    errs = {
        "outputas": rel_err(results["support_outputs"], z["outputas"]),
        "outputbs": max(rel_err(np.asarray(results["query_outputs"])[:, j], z["outputbs"][j])
                        for j in range(num_steps)),
        "total_loss1": rel_err(results["total_loss1"], z["total_loss1"]),
        "total_losses2": rel_err(np.asarray(results["total_losses2"])[:num_steps], z["total_losses2"][:num_steps]),
    }
    # Golden per-example losses (xent / K) sum to the port's per-task losses.
    lossesa = z["lossesa"].sum(-1) if classification else z["lossesa"]
    lossesb = z["lossesb"].sum(-1) if classification else z["lossesb"]
    errs["lossesa"] = rel_err(results["support_loss"], lossesa)
    errs["lossesb"] = rel_err(np.asarray(results["query_losses"]).T[:num_steps], lossesb[:num_steps])
    if classification:
        np.testing.assert_allclose(results["support_metric"], z["accuraciesa"], atol=1e-6)
        if output_tol <= TOLERANCES["float64"][0]:  # A float32 knife-edge logit may flip an argmax.
            np.testing.assert_allclose(np.asarray(results["query_metrics"]).T[:num_steps],
                                       z["accuraciesb"][:num_steps], atol=1e-6)
    return errs


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", TRAIN_FILES)
def test_forward_and_meta_gradient(name, dtype):
    z, meta, config = load(name)
    output_tol, grad_tol = FILE_TOLERANCES.get((name, dtype), TOLERANCES[dtype])
    algo, names = build(z, config, dtype=dtype)
    steps = meta["num_updates_built"]
    batch = batch_of(z, config, dtype)
    if name == "mini5w1s_maxpool":
        # Chaotic in float32 after inner step 2 (golden README): compare the first two steps' outputs;
        # its meta-gradient is checked on extra_mini5w1s_maxpool_2step. (No gradient: saves ~10 GB.)
        errs = compare_forward(algo.evaluate(batch, 2), z, 2, config.classification, output_tol)
        grads = []
    else:
        # Compiled, as training runs it (the graph-mode batch-norm gradient; see networks.exact_normalize).
        grads, results = tf.function(lambda b: algo.meta_gradients(b, num_steps=steps))(batch)
        errs = compare_forward(results, z, steps, config.classification, output_tol)
    for n, g, c in zip(names, grads, algo.clip(grads)):
        if pre_bn_bias(n, config):
            continue
        scale = None
        if config.clip_value is not None:
            errs[f"metagrad_unclipped/{n}"] = rel_err(g, z[f"metagrad_unclipped/{n}"])
            # Clipping is 1-Lipschitz: the clipped error is measured on the unclipped scale.
            scale = np.max(np.abs(z[f"metagrad_unclipped/{n}"]))
        errs[f"metagrad/{n}"] = rel_err(c, z[f"metagrad/{n}"], scale)
    print(name, dtype, {k: f"{v:.1e}" for k, v in errs.items()})
    bad = {k: v for k, v in errs.items() if v > (grad_tol if k.startswith("metagrad") else output_tol)}
    assert not bad, bad


@pytest.mark.parametrize("name", ["sine_batchnorm_1step", "omni5w1s_strided_bn", "omni20w1s_5step"])
def test_weights_and_adam_state_after_meta_steps(name):
    """Weights and Adam slots after 1 and 3 runs of the original metatrain_op on one batch."""
    z, meta, config = load(name)
    # float64: float32 knife-edge ReLUs move the meta-gradient by up to 2% (see the module docstring).
    algo, names = build(z, config, dtype="float64")
    batch = batch_of(z, config, "float64")
    grad_tol = TOLERANCES["float64"][1]
    lr = config.meta_lr
    variables = algo.model.trainable_variables
    # Keras' Adam lists its variables as the iteration, the learning rate, then each built variable's momentum and
    # velocity in order (the model's trainable variables first: `MAML` builds it on `meta_variables`).
    slots = [s for s in algo.optimizer.variables if s.path.endswith(("_momentum", "_velocity"))]
    momentums, velocities = slots[0::2], slots[1::2]
    assert all(m.path.endswith("_momentum") for m in momentums) and len(momentums) >= len(variables)
    for k in (1, 2, 3):
        algo.train_step(batch)
        if k == 2:
            continue
        for n, v, m, vv in zip(names, variables, momentums, velocities):
            if pre_bn_bias(n, config):
                continue
            # Adam's first step moves each weight by about lr * sign(g). Where |g| is within the error
            # of the meta-gradient its sign may flip (golden README): there allow 2*k*lr; by step 3 the
            # gradients are taken at weights that differ that way, so every element gets 2*k*lr.
            # At step 1 the bulk (median) must also stay within 1% of lr.
            g = np.abs(z[f"metagrad/{n}"])
            diff = np.abs(v.numpy() - z[f"step{k}/{n}"])
            atol = np.where(g < grad_tol * g.max(), 2 * k * lr, 0.05 * lr) if k == 1 else 2 * k * lr
            assert np.all(diff <= atol), (n, k, diff.max())
            assert k > 1 or np.median(diff) < 0.01 * lr, (n, k, np.median(diff))
            if k == 1:
                # Step-3 slots hold gradients taken at weights whose noise-level elements moved by
                # +-lr in the original (measured: 40% apart for omni20w1s conv1): step 1 only.
                for slot, value in (("m", m), ("v", vv)):
                    expected = z[f"step{k}_adam_{slot}/{n}"]
                    assert rel_err(value.numpy(), expected) < 2 * grad_tol, (n, slot, k)
        assert int(algo.optimizer.iterations.numpy()) == k


@pytest.mark.parametrize("name", ["sine_nonorm_1step", "omni5w1s_strided_bn"])
def test_more_steps_reported_as_original_main(name):
    """The original main() builds test_num_updates steps; the extra steps match the golden `mainTNU/`."""
    z, meta, config = load(name)
    algo, _ = build(z, config, dtype="float64")  # Ten steps at lr 0.4 amplify float32 knife edges.
    steps = meta["mainTNU"]["num_updates_built"]
    results = algo.evaluate(batch_of(z, config, "float64"), steps)
    tol = TOLERANCES["float64"][0]
    assert rel_err(results["total_losses2"], z["mainTNU/total_losses2"]) < tol
    assert rel_err(np.moveaxis(np.asarray(results["query_outputs"]), 1, 0), z["mainTNU/outputbs"]) < tol


def test_released_checkpoint_matches_original_outputs():
    """The released MiniImagenet model59000, imported and evaluated for 10 test-time steps."""
    z = np.load(shared_path("golden", "mini_released_ckpt.npz"))
    prefix = str(shared_path("golden", "released_checkpoint", "model59000.index"))[:-len(".index")]
    flags = json.loads(str(z["flags_json"]))
    config = Config(**{k: v for k, v in flags.items() if k in Config.__dataclass_fields__})
    config.train = False
    algo = train.build_algorithm(config)
    load_tf1_checkpoint(algo.model, prefix)
    stored = read_tf1_checkpoint(prefix)
    for n, v in zip(networks.original_variable_names(algo.model), algo.model.trainable_variables):
        np.testing.assert_array_equal(v.numpy(), z[f"ckpt/{n}"])
        np.testing.assert_array_equal(stored[n], z[f"ckpt/{n}"])
    results = algo.evaluate(batch_of(z, config), 10)
    errs = compare_forward(results, z, 10, True)
    print("mini_released_ckpt", {k: f"{v:.1e}" for k, v in errs.items()})
    assert max(errs.values()) < OUTPUT_TOL, errs
