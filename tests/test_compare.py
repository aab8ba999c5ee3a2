"""`python -m maml_tf.compare` against the original code in ../shared/original/cbfinn-maml (skipped without it).

One process runs the original (`maml_tf.original.Worker`) for the whole module;
the configurations are tiny (few filters, two tasks, a few iterations).
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from maml_tf import compare
from maml_tf.config import Config
from tests.conftest import ROOT, shared_path


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    from maml_tf.original import Worker

    original = shared_path("original", "cbfinn-maml")
    with Worker(str(original), str(tmp_path_factory.mktemp("original") / "original.log")) as w:
        yield w


def run(config, tmp_path, worker, **kwargs):
    return compare.run(config.validate(), str(shared_path("original", "cbfinn-maml")), str(tmp_path),
                       worker=worker, **kwargs)


def test_golden_file_through_the_worker(worker):
    """The shared tf.contrib stand-in gives the golden files' numbers (made by the original under another one)."""
    z = np.load(shared_path("golden", "omni5w1s_strided_bn.npz"))
    flags = json.loads(str(z["flags_json"]))
    meta = json.loads(str(z["meta_json"]))
    worker.call("build", flags=flags, train_shapes=(z["inputa"].shape[1], z["inputb"].shape[1]),
                train_steps=meta["test_num_updates_used"], test_shapes=None, test_steps=0, seed=0)
    worker.call("assign", values={k[5:]: z[k] for k in z.files if k.startswith("init/")})
    out = worker.call("meta_gradient", batch={k: z[k] for k in ("inputa", "labela", "inputb", "labelb")})
    assert compare.rel_err(out["total_losses2"], z["total_losses2"]) < 1e-5
    for name, grad in out["grads"].items():
        if not name.startswith("model/Variable"):  # Pre-batch-norm biases: noise (golden README).
            assert compare.rel_err(grad, z[f"metagrad/{name}"]) < 1e-4, name


def test_sinusoid_all_parts(worker, tmp_path):
    config = Config(norm="None", meta_batch_size=2, update_batch_size=2, num_test_tasks=4, batch_tasks=False,
                    metatrain_iterations=3, logdir=str(tmp_path))
    result = run(config, tmp_path, worker, iterations=3, val_interval=2)
    assert result.passed, result.failures
    summary = result.gradients["summary"]
    for key in ("outputs_float64", "outputs_float32", "meta_gradient_float64", "meta_gradient_float32"):
        assert summary[key] < 1e-5, key  # Dense layers: rounding only.
    assert sum(k.startswith("meta-gradient") for k in result.gradients["tensors"]) == 6  # w1, b1, ..., b3.
    curves = result.curves
    assert curves["iteration"] == [0, 1, 2] and curves["val_iteration"] == [1, 2]
    np.testing.assert_allclose(curves["port"]["post_loss"], curves["original"]["post_loss"], rtol=1e-5)
    assert curves["identical_until"] >= 1 and curves["parted_at"] is None
    # Tasks one at a time, as the original's map_fn: the same float32 operations, bit for bit.
    assert set(result.cross_eval) == {"original's weights after 3 iterations", "port's weights after 3 iterations"}
    for entry in result.cross_eval.values():
        assert entry["tasks"] == 4 and entry["steps"] == 10
        assert entry["tasks_differing"] == 0 and entry["entries_identical"] == entry["entries"] == 44
    for name in ("report.md", "report.json", "curves.png", "original/model3.index", "port/model3.index"):
        assert (tmp_path / name).exists(), name
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] and report["curves"]["parted_at"] is None
    assert "Parity: **passed**" in (tmp_path / "report.md").read_text()

    # The original's tf.train.Saver restores the port's export (TF1 names), and the port reads the original's.
    from maml_tf.tf1_checkpoint import read_tf1_weights

    restored = worker.call("restore", prefix=str(tmp_path / "port/model3"))
    exported = read_tf1_weights(str(tmp_path / "port/model3"))
    assert set(restored) == set(exported) and all(np.array_equal(restored[k], exported[k]) for k in exported)
    # Either program's checkpoint evaluates alike in both.
    again = run(config, tmp_path / "again", worker, parts=["cross_eval"], checkpoint=str(tmp_path / "original/model3"))
    entry = again.cross_eval[f"checkpoint {tmp_path / 'original/model3'}"]
    assert again.passed and entry["tasks_differing"] == 0
    assert entry["original_mean"] == result.cross_eval["original's weights after 3 iterations"]["original_mean"]


def test_interrupted_curves_are_reported(worker, tmp_path, monkeypatch):
    """Ctrl-C during the curves: the iterations both programs finished are reported, then KeyboardInterrupt."""
    config = Config(norm="None", meta_batch_size=2, update_batch_size=2, batch_tasks=False, logdir=str(tmp_path))
    submit, steps = worker.submit, []

    def interrupting_submit(method, **kwargs):
        if method == "train_step":
            steps.append(1)
            if len(steps) == 3:
                raise KeyboardInterrupt
        submit(method, **kwargs)

    monkeypatch.setattr(worker, "submit", interrupting_submit)
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path, worker, iterations=10)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["curves"]["interrupted"] and report["curves"]["iteration"] == [0, 1]
    assert report["cross_eval"] == {} and not (tmp_path / "port").exists()
    assert "Interrupted (Ctrl-C)" in (tmp_path / "report.md").read_text()


def test_sinusoid_batch_norm_gradients_and_a_failure(worker, tmp_path, monkeypatch):
    config = Config(meta_batch_size=2, update_batch_size=3, num_updates=2, logdir=str(tmp_path))
    result = run(config, tmp_path, worker, parts=["gradients"])
    assert result.passed, result.failures
    tensors = result.gradients["tensors"]
    assert max(r["float64"] for r in tensors.values()) < 1e-5
    assert "loss after step 5" in tensors  # The original main() builds test_num_updates = 5 steps.
    # The hidden biases feed a batch norm: left out; the output bias is compared.
    assert {k for k in tensors if k.startswith("meta-gradient")} == {
        f"meta-gradient model/{n}" for n in ("Variable", "Variable_2", "Variable_4", "Variable_5", "0/beta",
                                             "2/beta")}
    # Without the tolerance floor the float64 port differs from the float32 original by more than 0 x rounding.
    monkeypatch.setattr(compare, "TOLERANCES", {"outputs": 0.0, "meta_gradient": 0.0})
    monkeypatch.setattr(compare, "ROUNDING_FACTOR", 0.0)
    failed = compare.Comparison(config=result.config)
    compare.judge_gradients(tensors, failed)
    assert not failed.passed and "tensors differ beyond the tolerance" in failed.failures[0]
    compare.write_report(failed, config, str(tmp_path))
    assert "Parity: **FAILED**" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("norm,first_order", [("batch_norm", False), ("layer_norm", True)])
def test_omniglot_gradients_and_split(worker, tmp_path, norm, first_order):
    tfds_dir = shared_path("data", "tfds", "omniglot")
    config = Config(datasource="omniglot", omniglot_source="tfds", tfds_data_dir=str(tfds_dir.parent), norm=norm,
                    stop_grad=first_order, num_filters=4, meta_batch_size=2, update_batch_size=1, update_lr=0.4,
                    logdir=str(tmp_path))
    result = run(config, tmp_path, worker, parts=["gradients"])
    assert result.passed, result.failures
    assert result.gradients["steps"] == 10  # The original main() builds test_num_updates = 10 steps.
    assert result.gradients["summary"]["meta_gradient_float64"] < 1e-4
    # The original's DataGenerator with a sorted listing makes the port's split.
    for split, count in (("train", 1100), ("val", 100), ("test", 423)):
        assert result.split[split]["characters"] == result.split[split]["same_characters"] == count
        assert result.split[split]["same_order"]


def test_miniimagenet_shaped_max_pool(worker, tmp_path, miniimagenet_dir):
    config = Config(datasource="miniimagenet", data_dir=str(miniimagenet_dir), max_pool=True, num_filters=4,
                    meta_batch_size=2, update_batch_size=1, update_lr=0.01,
                    logdir=str(tmp_path))
    result = run(config, tmp_path, worker, parts=["gradients", "curves"], iterations=2)
    assert result.passed, result.failures
    tensors = result.gradients["tensors"]
    assert "meta-gradient model/w5 (unclipped)" in tensors  # The original clips to [-10, 10].
    # Four filters over noise images: batch norm divides by small variances, and float32 rounding moves the
    # meta-gradient by about 1e-3 (the float32 port against the float64 one); the original's float32 as much.
    assert all(r["passed"] for r in tensors.values())
    # Tasks of 5 support and 75 query images (15 per class), as the original trains. Adam's first step moves each
    # weight by about meta_lr * sign(gradient), and gradient elements within rounding of 0 flip their sign.
    curves = result.curves
    assert curves["port"]["post_loss"][0] == pytest.approx(curves["original"]["post_loss"][0], rel=1e-5)
    assert curves["port"]["post_loss"][1] == pytest.approx(curves["original"]["post_loss"][1], rel=1e-2)


def test_command_line_errors():
    proc = subprocess.run([sys.executable, "-m", "maml_tf.compare", "--original_dir=/nonexistent"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("python -m maml_tf.compare: error: --original_dir='/nonexistent' has no maml.py")
    from maml_tf.config import ConfigError

    for config, parts, message in ((Config(algorithm="reptile"), compare.PARTS, "runs MAML only"),
                                   (Config(), ["gradients", "everything"], "--parts: everything"),
                                   (Config(clip_norm=2.0), compare.PARTS, "--clip_norm: not in the original")):
        with pytest.raises(ConfigError, match=message):
            compare.check_config(config.validate(), parts, 10)
